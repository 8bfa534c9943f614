"""Ranks on several hosts: network namespaces as hosts (netns.py), MPI between them over its network module.

`make test-multihost` runs these (root; they refuse with one line where namespaces cannot be made).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMOKE_CONFIG, kill_job, read_jsonl, start_logged, wait_for_updates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Hosts, leftovers  # noqa: E402

pytestmark = pytest.mark.multihost

MPIEXEC = Path(sys.executable).parent / "mpiexec"
TRAIN = [sys.executable, "-m", "jaxpong", "train", "--config", str(SMOKE_CONFIG)]
QUIET = ["--num-threads", "1", "--tensorboard", "false", "--progress", "log", "--replication-check-every", "1"]


@pytest.fixture(autouse=True)
def namespaces_possible():
    why = Hosts.unavailable()
    if why:
        pytest.fail(why)  # not a skip: `make test-multihost` is asked for on machines that can make them
    yield
    assert not leftovers(), f"left behind: {leftovers()}"


def smoke_parameters() -> int:
    """Parameters of the smoke config's network."""
    import jax
    import numpy as np

    from jaxpong.base import config as config_lib
    from jaxpong.learn.networks import make_network
    from jaxpong.play.preprocess import PREPROCESSORS, to_float

    cfg = config_lib.build(str(SMOKE_CONFIG), {})
    features = PREPROCESSORS[cfg.model.obs_mode](np.zeros((1, 2, 84, 84), np.uint8))
    shapes = jax.eval_shape(make_network(cfg.model).init, jax.random.PRNGKey(0), to_float(features))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def _job(hosts: Hosts, tmp: Path, ranks_per_host: int, *flags: str, log_name: str = "job.log"):
    hostfile = hosts.hostfile(tmp / "hostfile", ranks_per_host)
    cmd = [str(MPIEXEC), *hosts.mpiexec_args(hostfile), "-n", str(hosts.n * ranks_per_host), *TRAIN, *QUIET, *flags]
    return start_logged(cmd, tmp / log_name, env=hosts.mpi_env())


def _finish(proc, log: Path, timeout: float) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        kill_job(proc, log)
    return code, log.read_text()


@pytest.mark.parametrize("ranks_per_host", [1, 2], ids=["2x1", "2x2"])
def test_training_across_two_hosts_goes_over_the_network(tmp_path, ranks_per_host):
    """2 hosts x 1 or 2 ranks train the smoke config to the end: one set of outputs, identical parameters
    on every rank every update, each rank's host in ranks.jsonl and the report, and the gradients' bytes
    through the hosts' links (not shared memory)."""
    run_dir = tmp_path / "run"
    with Hosts(2) as hosts:
        before = hosts.bytes_through()
        proc = _job(hosts, tmp_path, ranks_per_host, "--run-dir", str(run_dir), "--total-steps", "4096")
        code, text = _finish(proc, tmp_path / "job.log", timeout=400)
        through = hosts.bytes_through() - before
    ranks = 2 * ranks_per_host
    assert code == 0, text[-3000:]
    assert f"parameters identical on all {ranks} ranks" in text
    assert text.count("run directory") == 1  # one writer
    updates = len(read_jsonl(run_dir / "metrics.jsonl"))
    # Every update sums the whole gradient across the link at least once (shared memory would leave the
    # links with a few kilobytes of the launcher's messages).
    assert through > updates * 4 * smoke_parameters(), (through, updates)
    records = read_jsonl(run_dir / "ranks.jsonl")
    expected = {r: hosts.names[r // ranks_per_host] for r in range(ranks)}  # hydra fills a host, then the next
    assert {r["rank"]: r["host"] for r in records} == expected
    table = (run_dir / "imbalance.txt").read_text()
    assert all(name in table for name in hosts.names)


def test_a_slow_link_is_named_by_its_host(tmp_path):
    """3 hosts x 1 rank, host 2's link limited to 40 Mbit/s: rank 0's link probe at start measures it far
    slower than host 1's, links.jsonl keeps both, and the report names host 2 (rank 2) as the slow link."""
    run_dir = tmp_path / "run"
    with Hosts(3) as hosts:
        hosts.limit(2, "40mbit")
        proc = _job(hosts, tmp_path, 1, "--run-dir", str(run_dir), "--total-steps", "2048")
        code, text = _finish(proc, tmp_path / "job.log", timeout=400)
        names = list(hosts.names)
    assert code == 0, text[-3000:]
    assert f"links from rank 0's host {names[0]}: " in text, text[-3000:]
    (record,) = read_jsonl(run_dir / "links.jsonl")
    assert record["hosts"] == names
    rates = {k["host"]: k["mb_s"] for k in record["links"]}
    assert set(rates) == {names[1], names[2]}
    assert rates[names[2]] < 6.0 < 4 * 6.0 < rates[names[1]], rates  # 40 Mbit/s is 5 MB/s
    assert record["allreduce_bytes"] == 4 * smoke_parameters()
    report = subprocess.run(
        [sys.executable, "-m", "jaxpong", "report", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"Host {names[2]}'s link is the slow one" in report.stdout, report.stdout[-3000:]
    assert "rank 2 there slow every rank's allreduces alike" in report.stdout


def test_a_link_down_for_a_few_seconds_the_run_goes_on(tmp_path):
    """Host 1's link down for 4 s (hang limit 30 s), then up: the job finishes, with every update on record."""
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    with Hosts(2) as hosts:
        proc = _job(hosts, tmp_path, 1, "--run-dir", str(run_dir), "--total-steps", "6144", "--hang-timeout-s", "30")
        try:
            wait_for_updates(run_dir, proc, 4, timeout=300)
            hosts.link_down(1)
            time.sleep(4)
            hosts.link_up(1)
        finally:
            code, text = _finish(proc, log, timeout=400)
    assert code == 0, text[-3000:]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["update"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert metrics[-1]["step"] >= 6144


def test_a_partition_ends_the_job_and_the_survivor_resumes(tmp_path):
    """Host 1 cut off for good mid-run: the job ends within the hang limit (+30 s), non-zero, with a line that
    names the rank that stopped answering and no traceback; the newest checkpoint is intact, and a resume on
    host 0 alone (fewer ranks) continues from it."""
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    hang = 15
    with Hosts(2) as hosts:
        proc = _job(
            hosts,
            tmp_path,
            1,
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "10000000",
            "--hang-timeout-s",
            str(hang),
            "--checkpoint-every",
            "2",
        )
        try:
            wait_for_updates(run_dir, proc, 5, timeout=300)
            hosts.link_down(1)
            cut_at = time.monotonic()
            code = proc.wait(timeout=hang + 90)
            ended_after = time.monotonic() - cut_at
        finally:
            kill_job(proc, log)
    text = log.read_text()
    assert code != 0, text[-3000:]
    assert ended_after < hang + 30, ended_after
    assert "Traceback" not in text, text[-3000:]
    assert "did not arrive" in text or "stuck for more than" in text, text[-3000:]
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "no checkpoint"
    # The survivor: one process on this machine continues from the newest checkpoint.
    resumed = start_logged(
        [*TRAIN[:4], "--resume", str(run_dir), *QUIET, "--total-steps", str(steps[-1] + 1024)],
        tmp_path / "resume.log",
    )
    code, text = _finish(resumed, tmp_path / "resume.log", timeout=300)
    assert code == 0, text[-3000:]
    assert f"resumed from the checkpoint at step {steps[-1]:,}" in text, text[-2000:]  # the newest one
    assert read_jsonl(run_dir / "metrics.jsonl")[-1]["step"] >= steps[-1] + 1024
    # The two-host start measured its link; the resume on one host adds a line without links, so the report
    # does not speak of a link the last process did not use.
    links = read_jsonl(run_dir / "links.jsonl")
    assert links[0]["links"] and links[-1]["links"] == [], links

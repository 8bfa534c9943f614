"""Sixteen ranks on 2 cores (oversubscribed, a tiny config): what must hold at many ranks. Marked `scale`:
each job takes minutes here (16 JAX start-ups and compiles), so `make test-scale` runs them and
`make test` leaves them out (it keeps a 16-rank exchange check in tests/test_exchange.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SMOKE_CONFIG, kill_job, rank_pids, read_jsonl, start_logged, wait_for_updates

MPIRUN = Path(sys.executable).parent / "mpirun"
RANKS = 16
TRAIN = [
    sys.executable,
    "-m",
    "jaxpong",
    "train",
    "--config",
    str(SMOKE_CONFIG),
    "--num-envs",
    "2",
    "--num-threads",
    "1",
    "--progress",
    "log",
    "--tensorboard",
    "false",
]

pytestmark = [pytest.mark.scale, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def preempted16(tmp_path_factory):
    """16 ranks, stopped by SIGTERM to the launcher (as a scheduler does) after 4 updates."""
    run_dir = tmp_path_factory.mktemp("scale") / "run"
    log = run_dir.parent / "job.log"
    proc = start_logged(
        [
            str(MPIRUN),
            "-n",
            str(RANKS),
            *TRAIN,
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "10000000",
            "--replication-check-every",
            "1",
            "--checkpoint-every",
            "1000",
        ],
        log,
    )
    try:
        wait_for_updates(run_dir, proc, 4, timeout=900)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    finally:
        kill_job(proc, log)
    return run_dir, code, log.read_text()


def test_sixteen_ranks_stop_on_sigterm_with_a_checkpoint_and_identical_parameters(preempted16):
    run_dir, code, log = preempted16
    assert code == 75, log[-3000:]
    assert "SIGTERM received" in log and f"parameters identical on all {RANKS} ranks" in log
    assert log.count("run directory") == 1  # one writer
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == last["step"]
    records = read_jsonl(run_dir / "ranks.jsonl")
    updates = sorted({r["update"] for r in records})
    assert updates == list(range(1, last["update"] + 1))
    for u in updates:  # every rank in every round
        assert sorted(r["rank"] for r in records if r["update"] == u) == list(range(RANKS))


def test_resume_sixteen_ranks_on_two(preempted16, tmp_path):
    src, _, _ = preempted16
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    before = read_jsonl(run_dir / "metrics.jsonl")[-1]
    two = subprocess.run(
        [
            str(MPIRUN),
            "-n",
            "2",
            *TRAIN[:4],
            "--resume",
            str(run_dir),
            *TRAIN[6:],
            "--total-steps",
            str(before["step"] + 600),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"checkpointed with {RANKS} rank(s) on 2 rank(s)" in two.stderr
    after = read_jsonl(run_dir / "metrics.jsonl")
    assert [l["update"] for l in after] == list(range(1, after[-1]["update"] + 1))  # counters go on, none twice
    assert after[-1]["step"] >= before["step"] + 600 and after[-1]["comm/world_size"] == 2


def test_a_killed_rank_among_sixteen_ends_the_job_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    proc = start_logged(
        [
            str(MPIRUN),
            "-n",
            str(RANKS),
            *TRAIN,
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "10000000",
            "--hang-timeout-s",
            "10",
        ],
        log,
    )
    try:
        wait_for_updates(run_dir, proc, 3, timeout=900)
        pids = rank_pids(log.read_text())
        assert len(pids) == RANKS
        victim = pids[11]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        code = proc.wait(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        kill_job(proc, log)
    text = log.read_text()
    assert code != 0 and elapsed < 60, (code, elapsed, text[-3000:])
    assert f"11=pid {victim}@" in text  # the ranks line maps the launcher's PID to rank 11
    assert str(victim) in text.split("ranks:")[-1]  # and the launcher's message names that PID

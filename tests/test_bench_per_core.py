"""`jaxpong bench --per-core` end to end: the 2016 setup, one core per rank, against raw envpool on those cores."""

from __future__ import annotations

import json
import os

import pytest

from conftest import read_jsonl

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("ranks", [1, 2])
def test_per_core_bench_end_to_end(jaxpong_cli, tmp_path, ranks):
    """One short repeat of configs/seed_ppg.yaml (0.5-s windows to keep it short): the trainer's ranks
    (mpirun for 2) stopped as a process group for slices of raw envpool in one pinned process per core;
    the last JSON line's ratio is the trainer's steps/s over the raw cores' summed steps/s."""
    if len(os.sched_getaffinity(0)) < ranks:
        pytest.skip(f"needs {ranks} cores")
    code, out, err = jaxpong_cli(
        "bench",
        "--per-core",
        "--ranks",
        ranks,
        "--config",
        "configs/seed_ppg.yaml",
        "--deadline-s",
        "0.5",
        "--seconds",
        3,
        "--repeats",
        1,
        "--run-dir",
        tmp_path / "bench",
        timeout=400,
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["mode"] == "per_core" and result["ranks"] == ranks and len(result["cores"]) == ranks
    assert result["host_policy"] is True  # one game per rank: the NumPy policy step (model.host_policy auto)
    assert result["env_sps"] > 0 and result["trainer_sps"] > 0 and result["raw_slices"] >= 1
    assert result["ratio"] == pytest.approx(result["trainer_sps"] / result["env_sps"], abs=1e-3)
    assert result["trainer_updates"] > 6  # past the per-core warm-up
    records = read_jsonl(tmp_path / "bench" / "repeat_1" / "ranks.jsonl")
    assert {r["rank"] for r in records} == set(range(ranks))
    config = (tmp_path / "bench" / "repeat_1" / "config.yaml").read_text()
    assert "num_threads: 1" in config and "xla_threads: 1" in config


def test_cpu_per_step_arithmetic():
    """CPU per step between the first and last metrics lines seen after the warm-up; raw / trainer ratio."""
    from jaxpong.bench.throughput import _cpu_per_step

    lines = [{"step": s} for s in (10, 100, 1000, 2000, 3000)]
    # Lines 2 (warm-up), 4 and 5 seen appearing; line 1 before the warm-up is ignored.
    cpu_at = {1: 0.5, 2: 1.0, 4: 2.5, 5: 3.1}
    out = _cpu_per_step(lines, cpu_at, warmup=2, raw_cpu_per_step=0.0008)
    assert out["trainer_cpu_us_per_step"] == pytest.approx((3.1 - 1.0) / (3000 - 100) * 1e6, abs=0.1)
    assert out["cpu_ratio"] == pytest.approx(0.0008 / ((3.1 - 1.0) / 2900), abs=1e-4)
    assert _cpu_per_step(lines, {2: 1.0}, warmup=2, raw_cpu_per_step=0.001) == {}


def test_process_tree_and_cpu_time_of_this_process():
    import subprocess
    import sys

    from jaxpong.bench.throughput import _cpu_s, _process_tree

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = _process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        assert child.pid in _process_tree(os.getpid(), leaves=True)
        assert os.getpid() not in _process_tree(os.getpid(), leaves=True)
    finally:
        child.kill()
        child.wait()
    before = _cpu_s([os.getpid()])
    sum(i * i for i in range(3_000_000))
    assert _cpu_s([os.getpid()]) > before

"""Reliability with real processes and real signals: preemption, dead and hung ranks, NaNs, damaged
checkpoints, resume on another number of ranks. Each test injects the fault and checks what a user sees."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SMOKE_CONFIG, kill_job, rank_pids, read_jsonl, run_jaxpong, start_logged, wait_for_updates

MPIRUN = Path(sys.executable).parent / "mpirun"
TRAIN = [sys.executable, "-m", "jaxpong", "train", "--config", str(SMOKE_CONFIG)]


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory):
    """A one-rank run stopped by SIGTERM in the middle, as Slurm does before killing a job."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    log = run_dir.parent / "preempt.log"
    proc = start_logged(
        [*TRAIN, "--run-dir", str(run_dir), "--total-steps", "10000000", "--checkpoint-every", "2"], log
    )
    wait_for_updates(run_dir, proc, 3)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = proc.wait(timeout=60)
    return run_dir, code, time.monotonic() - t0, log.read_text()


def test_sigterm_finishes_the_round_checkpoints_and_exits_75(preempted_run):
    run_dir, code, seconds, log = preempted_run
    assert code == 75, log
    assert seconds < 30
    assert "SIGTERM received" in log
    assert "to continue: " in log and f"-m jaxpong train --resume {run_dir}" in log  # the command that continues it
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == last["step"]  # the checkpoint holds exactly the last logged update


@pytest.mark.slow
def test_resume_on_two_ranks_then_one(preempted_run, tmp_path):
    """1 -> 2 -> 1 ranks: counters continue, the log says so, no update is logged twice."""
    src, _, _, _ = preempted_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    before = read_jsonl(run_dir / "metrics.jsonl")[-1]
    two = subprocess.run(
        [
            str(MPIRUN),
            "-n",
            "2",
            *TRAIN[:-2],
            "--resume",
            str(run_dir),
            "--num-envs",
            "4",
            "--num-threads",
            "1",
            "--total-steps",
            str(before["step"] + 1500),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert "checkpointed with 1 rank(s) on 2 rank(s)" in two.stderr
    mid = read_jsonl(run_dir / "metrics.jsonl")
    assert mid[-1]["comm/world_size"] == 2 and mid[-1]["step"] >= before["step"] + 1500
    one = subprocess.run(
        [*TRAIN[:-2], "--resume", str(run_dir), "--total-steps", str(mid[-1]["step"] + 500)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert "checkpointed with 2 rank(s) on 1 rank(s)" in one.stderr
    lines = read_jsonl(run_dir / "metrics.jsonl")
    updates = [l["update"] for l in lines]
    assert updates == list(range(1, len(updates) + 1))  # continued, no duplicates, no gaps
    steps = [l["step"] for l in lines]
    assert steps == sorted(steps)
    assert "resume_count: 2" in (run_dir / "config.yaml").read_text()


def _damaged_copy(src: Path, dst: Path) -> tuple[Path, list[int]]:
    shutil.copytree(src, dst)
    steps = sorted(int(p.name) for p in (dst / "checkpoints").iterdir() if p.name.isdigit())
    return dst, steps


def test_truncated_checkpoint_is_a_clear_error_and_fallback_resumes(tmp_path, preempted_run):
    src, _, _, _ = preempted_run
    run_dir, steps = _damaged_copy(src, tmp_path / "run")
    assert len(steps) >= 2, "the smoke run keeps two checkpoints"
    newest = run_dir / "checkpoints" / str(steps[-1])
    victims = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 64 and "state" in str(p)]
    assert victims
    for p in victims:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])  # truncated, as by a crash or a full disk
    code, out, err = run_jaxpong("train", "--resume", run_dir, "--total-steps", steps[-1] + 512)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if "error" in l]
    assert len(lines) == 1 and str(newest) in lines[0] and "--resume-fallback" in lines[0]
    code, out, err = run_jaxpong("train", "--resume", run_dir, "--resume-fallback", "--total-steps", steps[-1] + 512)
    assert code == 0, err
    assert f"newest good checkpoint, step {steps[-2]:,}" in err


def test_incompatible_checkpoint_names_the_file(tmp_path, preempted_run):
    src, _, _, _ = preempted_run
    run_dir, steps = _damaged_copy(src, tmp_path / "run")
    code, out, err = run_jaxpong("train", "--resume", run_dir, "--hidden-size", "64")
    assert code == 2 and "Traceback" not in err
    assert str(run_dir / "checkpoints" / str(steps[-1])) in err


def test_nan_updates_are_skipped_then_stop_the_run(tmp_path):
    # One NaN update: skipped on every rank, counted, training goes on.
    code, out, err = run_jaxpong(
        "train",
        "--config",
        SMOKE_CONFIG,
        "--run-dir",
        tmp_path / "one",
        "--debug-nan-at-update",
        "2",
        "--total-steps",
        "1536",
    )
    assert code == 0, err
    lines = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    assert lines[-1]["faults/skipped_updates"] == 1
    assert [l["faults/skipped_updates"] for l in lines[:2]] == [0, 0] and lines[2]["faults/skipped_updates"] == 1
    # K consecutive NaN updates: exit 1, a clear error, the last good checkpoint kept and nothing after it.
    run_dir = tmp_path / "many"
    code, out, err = run_jaxpong(
        "train",
        "--config",
        SMOKE_CONFIG,
        "--run-dir",
        run_dir,
        "--checkpoint-every",
        "2",
        "--debug-nan-at-update",
        "3",
        "--debug-nan-count",
        "100",
        "--max-bad-updates",
        "3",
        "--total-steps",
        "100000",
    )
    assert code == 1, err
    assert "3 consecutive updates had non-finite gradients" in err
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert len(lines) == 6 and lines[-1]["faults/skipped_updates"] == 3
    assert steps[-1] == lines[3]["step"]  # saved at update 4 (after the first skip); not after later skips


def test_run_dir_problems_before_training(tmp_path, preempted_run):
    src, _, _, _ = preempted_run
    code, out, err = run_jaxpong("train", "--config", SMOKE_CONFIG, "--run-dir", src)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "Traceback" not in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = run_jaxpong("train", "--config", SMOKE_CONFIG, "--run-dir", blocker / "run")
    assert code == 2 and "cannot be created" in err and "Traceback" not in err
    code, out, err = run_jaxpong("train", "--resume", tmp_path / "nothing-here")
    assert code == 2 and "not a jaxpong run directory" in err


@pytest.mark.parametrize("how", ["SIGKILL", pytest.param("SIGSTOP", marks=pytest.mark.slow)])
def test_dead_or_hung_rank_ends_the_job(tmp_path, how):
    """A rank killed (the launcher notices) or frozen (the others' watchdog notices): the job ends non-zero
    within 60 s, and the log says which rank and how far training got."""
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    proc = start_logged(
        [
            str(MPIRUN),
            "-n",
            "2",
            *TRAIN,
            "--run-dir",
            str(run_dir),
            "--num-envs",
            "4",
            "--num-threads",
            "1",
            "--total-steps",
            "10000000",
            "--hang-timeout-s",
            "10",
            "--progress",
            "log",
        ],
        log,
    )
    try:
        wait_for_updates(run_dir, proc, 3)
        pids = rank_pids(log.read_text())
        assert len(pids) == 2, log.read_text()[-2000:]
        victim = pids[-1]
        os.kill(victim, getattr(signal, how))
        t0 = time.monotonic()
        code = proc.wait(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        kill_job(proc, log)
    text = log.read_text()
    assert code != 0, text[-2000:]
    assert elapsed < 60, elapsed
    # The ranks line maps PIDs to ranks, so the launcher's "PID ..." message names the rank.
    assert f"=pid {victim}@" in text
    if how == "SIGSTOP":
        assert "did not arrive" in text or "stuck for more than" in text
    else:
        assert str(victim) in text.split("ranks:")[-1]
    assert read_jsonl(run_dir / "metrics.jsonl")  # the last completed update is on record

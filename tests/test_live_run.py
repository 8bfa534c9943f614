"""Watching a run while it trains: readers (jaxpong.load_policy, eval, export) of a real training that checkpoints
every update and rotates its checkpoints never fail, and a checkpoint removed under a reader is taken again, never
reported as another model."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jaxpong
from conftest import REPO, SMOKE_CONFIG, start_logged, wait_for
from jaxpong.watch import policy as policy_lib

READS = 50
TRAIN = [sys.executable, "-m", "jaxpong", "train", "--config", SMOKE_CONFIG]


def test_readers_of_a_live_run_never_fail(tmp_path, monkeypatch):
    run_dir = tmp_path / "live"
    flags = ["--total-steps", 10**8, "--checkpoint-every", 1, "--time-limit-s", 400]
    # --keep-checkpoints 1: the newest is removed as soon as the next is written, the narrowest window a reader has.
    trainer = start_logged([*TRAIN, "--run-dir", run_dir, *flags, "--keep-checkpoints", 1], tmp_path / "train.log")
    copies, steps = [], set()
    real_copy = shutil.copytree

    def counted(src, dst, *args, **kwargs):  # every attempt: how often the writer rotated a checkpoint under a reader
        if Path(dst).parent.name.startswith("jaxpong-read-"):  # the reader's copy, not copytree's own recursion
            copies.append(Path(src).name)
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(policy_lib.shutil, "copytree", counted)
    try:
        wait_for(lambda: len(policy_lib.checkpoint_steps(run_dir / "checkpoints")) >= 2, trainer, "two checkpoints")
        loaded = 0
        # At least READS reads, and on until the run has moved past six checkpoints (the reads followed a moving
        # run): on a busy machine the trainer may write fewer checkpoints in READS reads, and how fast it goes is
        # not what this tests.
        while loaded < READS or len(steps) <= 5:
            assert trainer.poll() is None, (tmp_path / "train.log").read_text()[-2000:]
            policy = jaxpong.load_policy(run_dir)  # the newest complete checkpoint, whatever the writer does
            assert policy.step is not None and policy.params is not None
            steps.add(policy.step)
            loaded += 1
            if loaded >= READS:
                time.sleep(0.2)  # give the writer the machine
        # The command line's readers too, while it still trains.
        for argv in (
            ["export", str(run_dir), "--out", str(tmp_path / "p.npz")],
            ["eval", str(run_dir), "--episodes", "1"],
        ):
            proc = subprocess.run([sys.executable, "-m", "jaxpong", *argv], cwd=REPO, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        assert trainer.poll() is None  # it trained all along
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=120)
    assert trainer.returncode == 75
    retried = len(copies) - loaded
    print(f"{loaded} reads of {len(steps)} checkpoints; {retried} retried after a rotation")  # shown with -s


def test_a_checkpoint_removed_while_it_is_read_is_taken_again_not_called_another_model(
    smoke_run, tmp_path, monkeypatch
):
    """The rotation, made to happen between choosing the newest checkpoint and copying it to read: the reader
    takes the next newest; a checkpoint asked for by step that goes away gets a line that says so, not
    "another model". (A checkpoint that is there and damaged is still reported as damaged:
    tests/test_eval_video.py.)"""
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    steps = policy_lib.checkpoint_steps(run_dir / "checkpoints")
    assert len(steps) == 2
    real_copy = shutil.copytree
    removed = []

    def rotate_then_copy(src, dst, *args, **kwargs):
        if not removed:  # the writer removes the checkpoint this reader chose, just before it is copied
            shutil.rmtree(src)
            removed.append(int(Path(src).name))
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(policy_lib.shutil, "copytree", rotate_then_copy)
    assert jaxpong.load_policy(run_dir).step == steps[0]  # the next newest
    assert removed == [steps[1]]
    removed.clear()
    with pytest.raises(jaxpong.ConfigError) as err:
        jaxpong.load_policy(run_dir, checkpoint=steps[0])
    message = str(err.value)
    assert f"--checkpoint {steps[0]}: the run removed that checkpoint while it was read" in message
    assert "model" not in message


def test_a_copy_that_fails_with_nothing_moved_says_so(smoke_run, tmp_path, monkeypatch):
    """No space to copy a checkpoint into, while the run holds still: one line that says the copy failed and
    where, not that the run rotated its checkpoints (nor 8 retries)."""
    import errno

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(policy_lib.shutil, "copytree", full)
    with pytest.raises(jaxpong.ConfigError) as err:
        jaxpong.load_policy(smoke_run, checkpoint="Latest")
    message = str(err.value)
    assert "could not be copied to read it (OSError: No space left on device)" in message, message
    assert "replaced" not in message and "removed" not in message

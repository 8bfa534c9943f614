"""Shared fixtures: run the real CLI in a subprocess, and a few training runs shared by the whole session.

Every subprocess gets the same JAX persistent compilation cache (JAXPONG_COMPILE_CACHE, a temporary
folder of this session), so only the first run of a given shape pays for XLA compilation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = REPO / "configs" / "smoke.yaml"

# Set before anything imports jax, so that subprocesses inherit it; one cache for the whole session.
_CACHE_DIR = Path(tempfile.mkdtemp(prefix="jaxpong-test-xla-"))
os.environ.setdefault("JAXPONG_COMPILE_CACHE", str(_CACHE_DIR))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def run_jaxpong(*args, timeout: float = 180, env: dict | None = None) -> tuple[int, str, str]:
    """`python -m jaxpong ARGS` from the repository root: (exit status, stdout, stderr)."""
    full_env = {**os.environ, "COLUMNS": "1000", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxpong", *map(str, args)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def nan_equal(a, b) -> bool:
    """Deep equality where NaN equals NaN (configs hold target_return: nan)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# -- a training started in the background, for tests that signal, kill or race it ----------------------


def start_logged(cmd, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` from the repository root in its own session, stdout and stderr into `log`."""
    return subprocess.Popen(
        [str(c) for c in cmd],
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "1000", **(env or {})},
        start_new_session=True,
    )


def logged_updates(run_dir: Path) -> int:
    path = Path(run_dir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    """Poll `predicate` until it holds; fail if `proc` ends first or `timeout` passes."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def wait_for_updates(run_dir: Path, proc: subprocess.Popen, n: int, timeout: float = 240) -> None:
    wait_for(lambda: logged_updates(run_dir) >= n, proc, f"{n} updates", timeout)


def rank_pids(log_text: str) -> list[int]:
    """PIDs of the ranks, from rank 0's start-up line `ranks: 0=pid P@host, 1=pid Q@host`."""
    line = next((l for l in log_text.splitlines() if "ranks: " in l), "")
    return [
        int(part.split("=pid ")[1].split("@")[0]) for part in line.split("ranks: ")[-1].split(", ") if "=pid " in part
    ]


def kill_job(proc: subprocess.Popen, log: Path) -> None:
    """SIGKILL a launcher's session and every rank its log names (mpich's ranks have sessions of their own)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in rank_pids(log.read_text()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _train(run_dir: Path, *flags, timeout: float = 600) -> Path:
    code, out, err = run_jaxpong("train", "--config", SMOKE_CONFIG, "--run-dir", run_dir, *flags, timeout=timeout)
    assert code == 0, f"train exited {code}\nstdout:\n{out}\nstderr:\n{err}"
    (run_dir / "stderr.txt").write_text(err)  # kept for tests that read the log lines
    return run_dir


@pytest.fixture(scope="session")
def jaxpong_cli():
    return run_jaxpong


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """configs/smoke.yaml exactly as shipped (8,192 steps, 33 updates, a few games finish). Read-only for tests."""
    return _train(tmp_path_factory.mktemp("smoke") / "run")


@pytest.fixture(scope="session")
def long_run(smoke_run, tmp_path_factory) -> Path:
    """A copy of the smoke run as if it had crashed before its final checkpoint (that one removed; the
    one of update 32 kept), resumed to 12,000 steps: more finished games (a random policy loses a game
    in about 750-1200 agent steps; 8 envs play about 1,500 steps each here). Used for the resume checks
    and for the outputs that need several finished games."""
    run_dir = tmp_path_factory.mktemp("long") / "run"
    shutil.copytree(smoke_run, run_dir)
    (run_dir / "stderr.txt").unlink()
    shutil.rmtree(max((p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)))
    code, out, err = run_jaxpong("train", "--resume", run_dir, "--total-steps", 12000, timeout=600)
    assert code == 0, f"resume exited {code}\nstdout:\n{out}\nstderr:\n{err}"
    (run_dir / "stderr.txt").write_text(err)
    return run_dir

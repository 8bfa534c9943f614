"""Shared fixtures: run the real CLI in a subprocess, and a few training runs shared by the whole session.

Every subprocess gets the same JAX persistent compilation cache (JAXPONG_COMPILE_CACHE, a temporary
folder of this session), so only the first run of a given shape pays for XLA compilation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
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
    proc = subprocess.run([sys.executable, "-m", "jaxpong", *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
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

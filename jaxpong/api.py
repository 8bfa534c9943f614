"""jaxpong from Python: a config, a training run, a saved policy.

    import jaxpong

    config = jaxpong.Config.default(num_envs=8, total_steps=2048)   # or Config.from_yaml(path, **overrides)
    result = jaxpong.train(config, run_dir="runs/demo")             # -> RunResult
    policy = jaxpong.load_policy("runs/demo")                       # -> Policy: make_env, act, play

These are the functions the command line runs (`jaxpong train` calls `train`, `jaxpong eval` plays with
a `Policy`), with the same rules: bad input raises `ConfigError` with the command line's one-line message,
before anything is trained or loaded.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.watch.policy import Policy

__all__ = ["Config", "ConfigError", "Policy", "RunResult", "load_policy", "train"]


@dataclass(frozen=True)
class RunResult:
    """How a training run ended (this process's view of it; under MPI every rank gets one)."""

    run_dir: Path
    exit_status: int  # what `jaxpong train` exits with: 0 finished, 1 fault, 74 a file not written, 75 signal
    reason: str  # one line, e.g. "reached --total-steps 2,048"
    agent_steps: int  # valid agent steps learnt from, all ranks, the whole run (resumes included)
    updates: int
    games: int  # full games finished, all ranks, the whole run
    return_last20: float | None  # mean of the last 20 full games (rank 0; None before the first game, or elsewhere)

    @property
    def ok(self) -> bool:
        """The run reached a stop rule (exit status 0)."""
        return self.exit_status == 0


def train(
    config: Config | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_fallback: bool = False,
    clock_start: float | None = None,
) -> RunResult:
    """Train with `config` in `run_dir` (default runs/<env>__<algo>__<seed>__<unix time>) and return how it
    ended; the command line's `jaxpong train`.

    It runs in this process as one rank or, when this process was started by mpirun or srun, as one of
    their ranks (every rank calls it; rank 0 writes the run directory). `resume=True` continues the run in
    `run_dir` from its latest checkpoint, with `config` (default: the run's saved one; use
    `Config.from_run(run_dir, **changes)` to change some of its settings). `overwrite` replaces an existing
    run in `run_dir`; `resume_fallback` resumes from the newest good checkpoint if the latest is damaged.

    While it trains, Ctrl-C or SIGTERM stop it cleanly at the end of the round with a checkpoint (exit
    status 75 in the result); the process's own handlers are back when it returns. `time_limit_s` counts
    from the start of this call (`clock_start`, a time.time() value, moves that moment: the command line
    passes its process's start, so that start-up counts there). Bad input raises ConfigError (one line) before
    anything is trained; a failed write before training raises jaxpong.store.rundir.WriteFailed.
    """
    from jaxpong.training import launch

    clock_start = time.time() if clock_start is None else clock_start
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError(
            "jaxpong.train must be called from the main thread (it handles SIGINT and SIGTERM "
            "to stop a run cleanly); start another process for a training in the background"
        )
    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir, the run to continue")
    if config is None:
        config = Config.from_run(run_dir) if resume and run_dir is not None else Config.default()
    if not isinstance(config, Config):
        raise ConfigError(
            f"config must be a jaxpong.Config (Config.default(), Config.from_yaml(...)), not {type(config).__name__}"
        )
    _check_jax_settings(config)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        end = launch.train(
            config,
            run_dir=None if run_dir is None else Path(run_dir),
            resume=resume,
            overwrite=overwrite,
            resume_fallback=resume_fallback,
            clock_start=clock_start,
        )
    finally:
        # The run's clean-stop handlers and its frozen set-up objects are this run's, not the caller's.
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        gc.unfreeze()
    recent = end.counters.recent_returns
    return RunResult(
        run_dir=Path(end.run_dir),
        exit_status=int(end.code),
        reason=str(end.reason),
        agent_steps=int(end.counters.step),
        updates=int(end.counters.update),
        games=int(end.counters.episodes),
        return_last20=float(sum(recent) / len(recent)) if recent else None,
    )


def load_policy(source: str | os.PathLike[str], checkpoint: str | int = "latest") -> Policy:
    """A saved policy: from a run directory (`checkpoint`: "latest", "best" (the best evaluation during
    training, kept with eval_every) or an agent step) or from a file written by `jaxpong export`; what
    `jaxpong eval SOURCE --checkpoint ...` plays with. Bad input raises ConfigError (one line)."""
    from jaxpong.ranks.jaxsetup import setup_jax
    from jaxpong.watch import policy as policy_lib

    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (str, int)):
        raise ConfigError(f"--checkpoint {checkpoint!r} is not accepted; give an agent step, latest or best")
    if not _jax_is_set_up():
        setup_jax()
    return policy_lib.load(os.fspath(source), str(checkpoint))


def _jax_is_set_up() -> bool:
    """JAX's process settings (jaxpong/ranks/jaxsetup.py) take effect when JAX first starts a backend; after
    that they are fixed for the process."""
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another JAX layout: imported counts as set up
        return True


def _check_jax_settings(config: Config) -> None:
    """A second run in one process shares the JAX of the first: say so where this one asks for another platform."""
    if not _jax_is_set_up():
        return
    import jax

    from jaxpong.base.console import log_line
    from jaxpong.ranks import placement

    wanted, _ = placement.jax_platform(config.run.jax_platform, config.model.network, placement.gpu_visible())
    running = jax.default_backend()
    if wanted != running and not (wanted == "cuda" and running == "gpu"):
        log_line(
            f"JAX already runs on {running} in this process (its settings are made once, at its start); "
            f"this run asks for {wanted} and runs on {running}; start a new process to change it"
        )

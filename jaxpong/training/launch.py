"""Starting or resuming a training run: its config, its run directory (checked, locked and prepared by
rank 0), the ranks, and the run itself (jaxpong/training/run.py).

Heavy imports (jax, envpool, MPI) happen inside the functions, after JAX's process settings are made.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jaxpong.base import config as config_lib
from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError


def train_config(
    config_file: str | None, overrides: dict, run_dir: str | None = None, resume: str | None = None
) -> Config:
    """The run's config: defaults < `config_file` < `overrides`; with `resume` (a run directory), the
    run's saved config instead of the defaults. `run_dir`, if given with `resume`, must name the same folder."""

    if resume and run_dir and Path(run_dir) != Path(resume):
        raise ConfigError("--run-dir and --resume name different folders; --resume RUN_DIR continues RUN_DIR in place")
    if resume and not Path(resume).exists():
        # The words `eval` uses for a missing run directory.
        raise ConfigError(
            f"--resume {resume!r} does not exist (not a jaxpong run directory); give a run "
            "directory (with config.yaml and checkpoints/)"
        )
    base = config_lib.read_config(Path(resume)) if resume else None
    return config_lib.build(config_file, overrides, base=base)


def train(
    cfg: Config,
    run_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    resume_fallback: bool = False,
    clock_start: float | None = None,
):
    """Train with `cfg` on the ranks this process was launched with (one, or mpirun/srun's), in `run_dir`
    (default runs/<env>__<algo>__<seed>__<unix time>); with `resume`, continue `run_dir` from its latest
    checkpoint; --time-limit-s counts from `clock_start` (time.time(); default the process's start).
    Returns how it ended (jaxpong.training.finish.RunEnd: exit status, reason, run directory, counters)."""
    from jaxpong.ranks import placement
    from jaxpong.ranks.jaxsetup import setup_jax

    platform, why = placement.jax_platform(cfg.run.jax_platform, cfg.model.network, placement.gpu_visible())
    setup_jax(cfg.run.xla_threads, platform)
    from jaxpong.ranks.comm import make_comm

    return run_training(
        cfg,
        make_comm(),
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        resume_fallback=resume_fallback,
        platform_line=f"JAX on {platform} ({why})",
        clock_start=clock_start,
    )


def run_training(
    cfg: Config,
    comm,
    run_dir,
    resume: bool,
    overwrite: bool = False,
    resume_fallback: bool = False,
    platform_line: str = "",
    clock_start: float | None = None,
):
    """Check the run directory on rank 0, then train on every rank (-> jaxpong.training.finish.RunEnd)."""
    from jaxpong.store import rundir

    decision, lock = None, None
    if comm.rank == 0:
        try:
            path = Path(run_dir) if run_dir else rundir.default_run_dir(cfg)
            resume_step = None
            if resume and not rundir.is_run_dir(path):
                latest_checkpoint_step(path)  # says what is wrong with the folder, before a lock creates it
            # Rank 0 owns the run directory until it exits: taken before anything in it is read or removed.
            lock = rundir.RunLock(path).acquire()
            if resume:
                resume_step = latest_checkpoint_step(path)
                rundir.check_writable(path)
            else:
                rundir.prepare_new(path, overwrite)
            decision = {"run_dir": str(path), "resume_step": resume_step}
        except ConfigError as err:
            decision = {"error": str(err)}
        finally:
            if lock is not None and (decision is None or "error" in decision):
                lock.release()  # not training there after all; this process may go on (the Python API)
                lock = None
    decision = comm.bcast(decision)
    if "error" in decision:
        raise ConfigError(decision["error"])
    path = Path(decision["run_dir"])

    try:
        return _train_in(path, cfg, comm, decision["resume_step"], resume, resume_fallback, platform_line, clock_start)
    finally:
        if lock is not None:
            lock.release()


def _train_in(
    path: Path,
    cfg: Config,
    comm,
    resume_step,
    resume: bool,
    resume_fallback: bool,
    platform_line: str = "",
    clock_start: float | None = None,
):
    from jaxpong.base.console import log_line
    from jaxpong.ranks import placement
    from jaxpong.store import rundir
    from jaxpong.training.run import Training

    training = Training(cfg, comm, path, resume_step=resume_step, resume_fallback=resume_fallback)
    where = comm.gather_to_root(f"{comm.rank}=pid {os.getpid()}@{os.uname().nodename}")
    affinity = len(os.sched_getaffinity(0))
    seat = comm.gather_to_root((os.uname().nodename, placement.this_rank_cores(), affinity < (os.cpu_count() or 1)))
    if comm.rank == 0:
        hosts = len({host for host, _, _ in seat})
        log_line(
            placement.describe(
                comm.size,
                hosts,
                os.cpu_count() or affinity,
                seat[0][1],
                training.round.cfg.env.num_envs,
                bound=all(b for _, _, b in seat),
            )
            + (f"  |  {platform_line}" if platform_line else "")
        )
        if comm.size > 1:
            log_line("ranks: " + ", ".join(where) + " (a launcher's message about a PID names the rank here)")
        try:
            rundir.write_config(path, cfg, comm.size, {"resume_count": training.counters.resume_count})
        except OSError as err:  # every rank stops after the first round, as for any failed write
            training.io_failure = rundir.WriteFailed("config", path / "config.yaml", rundir.write_failure_reason(err))
        log_line(
            f"run directory {path}  |  {comm.size} rank(s), MPI: {comm.library}  |  algo {cfg.algo.algo}, "
            f"{cfg.model.network} on {cfg.model.obs_mode}, {training.round.cfg.env.num_envs} envs "
            f"({'async' if training.round.cfg.is_async else 'sync'}), preset {cfg.preset_name}"
        )
        if resume:
            log_line(
                f"resumed from the checkpoint at step {training.resumed_from:,} (update {training.counters.update}, "
                f"resume #{training.counters.resume_count})"
            )
    # After a resume --time-limit-s counts only this process; --total-steps counts the whole run.
    try:
        end = training.run(clock_start=clock_start)
        end.counters.recent_returns = list(training.recent)  # also where no final checkpoint took them along
        return end
    except Exception:
        if comm.size == 1:
            raise
        # An unexpected error on one rank would leave the others waiting in a collective forever.
        import traceback

        traceback.print_exc()
        print(f"jaxpong: rank {comm.rank} failed (above); aborting the MPI job", file=sys.stderr, flush=True)
        comm.abort(1)


def latest_checkpoint_step(run_dir: Path) -> int:
    from jaxpong.store.checkpoint import Checkpoints

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {str(run_dir)!r} is not a jaxpong run directory (no config.yaml)")
    ckpt_dir = run_dir / "checkpoints"
    steps = Checkpoints(ckpt_dir, read_only=True).steps() if ckpt_dir.is_dir() else []
    if not steps:
        raise ConfigError(f"--resume {str(run_dir)!r} has no checkpoint to resume from (no {ckpt_dir}/<step>/)")
    return steps[-1]

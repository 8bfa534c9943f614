"""When a run stops, why, with which exit status, and the command that continues it.

The stop rules are pure functions of the config, the step count and the facts every rank agrees on
after a round's exchange, so every rank reaches the same decision in the same round.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
from pathlib import Path

from jaxpong.base.config import Config

EXIT_OK, EXIT_FAULT, EXIT_USAGE, EXIT_IO_ERROR, EXIT_PREEMPTED = 0, 1, 2, 74, 75  # 74: sysexits' EX_IOERR
RECENT_GAMES = 20


class Stop(Exception):
    """Ends the run loop with `reason` and exit status `code`."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.reason, self.code = reason, code


def target_reached(target: float, recent) -> bool:
    """The last RECENT_GAMES full games average at least `target` (nan: never)."""
    import numpy as np  # here, not at the top: the command line imports this module before any heavy import

    return not math.isnan(target) and len(recent) >= RECENT_GAMES and float(np.mean(recent)) >= target


def stop_reason(
    cfg: Config,
    step: int,
    facts: dict,
    time_limit_s: float | None,
    run_dir: Path,
    world_size: int,
    recent_mean: float | None = None,
) -> str:
    """Why every rank stops after this round ("" to go on), from the agreed facts alone, so all agree.

    A signal on any rank stops first; then --total-steps (counted over the whole run), --time-limit-s
    (rank 0's seconds since its process started; `time_limit_s` replaces the configured limit), and
    --target-return, which rank 0 asks for one round after its games reached it (`recent_mean`: its
    last-20 mean, for the message).
    """
    if facts["signal"]:
        return (
            f"signal {signal.Signals(int(facts['signal'])).name} received; checkpoint written; to continue: "
            f"{resume_command(run_dir, world_size)}"
        )
    if step >= cfg.run.total_steps:
        return f"reached --total-steps {cfg.run.total_steps:,}"
    limit = time_limit_s if time_limit_s is not None else cfg.run.time_limit_s
    if limit and facts["rank0_process_s"] >= limit:
        return f"reached --time-limit-s {limit:g}"
    if facts["stop_request"]:
        mean = f" (mean of the last {RECENT_GAMES} games {recent_mean:+.2f})" if recent_mean is not None else ""
        return f"reached --target-return {cfg.run.target_return:g}{mean}"
    return ""


def program() -> str:
    """How this process's jaxpong is typed again: the console script, or python -m jaxpong."""
    if Path(sys.argv[0]).name == "jaxpong":
        return "jaxpong"
    python = Path(sys.executable)
    try:  # the venv's python, as typed from the repository: .venv/bin/python
        python = python.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{shlex.quote(str(python))} -m jaxpong"


def resume_command(run_dir, ranks: int = 1, flags: tuple[str, ...] = ()) -> str:
    """The command that continues `run_dir` with `flags` added, as this process was started: `make train`,
    `train --ranks N`, mpirun (or srun) around `train`, or plain `train`."""
    run = shlex.quote(str(run_dir))
    by_ranks = ranks > 1 and "JAXPONG_LAUNCH_START" in os.environ  # started by `train --ranks N` (jaxpong/cli/train.py)
    if os.environ.get("JAXPONG_UNDER_MAKE"):  # set by `make train`
        args = f" ARGS={shlex.quote(' '.join(flags))}" if flags else ""
        return f"make train RESUME={run}" + (f" RANKS={ranks}" if ranks > 1 else "") + args
    launcher = f"mpirun -n {ranks} " if ranks > 1 and not by_ranks else ""
    extra = (f" --ranks {ranks}" if by_ranks else "") + "".join(f" {shlex.quote(f)}" for f in flags)
    return f"{launcher}{program()} train --resume {run}{extra}"


# How a run stopped, for the line that says what to do next (`next_line`).
SIGNAL, TOTAL_STEPS, TIME_LIMIT, TARGET, FAILED = "signal", "total_steps", "time_limit", "target", "failed"


def stop_kind(reason: str, code: int) -> str:
    """The kind of a stop, from its exit status and the reason `stop_reason` (or a Stop) gave."""
    if code != EXIT_OK:
        return FAILED
    for prefix, kind in (
        ("signal ", SIGNAL),
        ("reached --total-steps", TOTAL_STEPS),
        ("reached --time-limit-s", TIME_LIMIT),
        ("reached --target-return", TARGET),
    ):
        if reason.startswith(prefix):
            return kind
    return FAILED


def next_line(
    kind: str, cfg: Config, run_dir, ranks: int, recent_mean: float | None, has_checkpoint: bool = True
) -> str | None:
    """The run's last line: how to go on from this stop (None where the stop line says it already: a signal,
    an I/O failure), and after a reached target, where the agent is and how to watch it."""
    if kind == SIGNAL or not has_checkpoint:
        return None
    if kind == TOTAL_STEPS:
        more = 2 * cfg.run.total_steps
        return f"to train further: {resume_command(run_dir, ranks, ('--total-steps', str(more)))}"
    if kind == TARGET:
        target = cfg.run.target_return
        mean = f"the last {RECENT_GAMES} games averaged {recent_mean:+.2f}, " if recent_mean is not None else ""
        what = "won Pong" if target >= 20 else f"reached --target-return {target:g}"
        run = shlex.quote(str(run_dir))
        return (
            f"{what} ({mean}target {target:+g}); the agent is in {run}: watch it with `{program()} eval {run}` "
            f"or `{program()} video {run}`; to train on: {resume_command(run_dir, ranks, ('--target-return', 'nan'))}"
        )
    return f"to continue: {resume_command(run_dir, ranks)}"

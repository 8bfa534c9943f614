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

from jaxpong.config import Config

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


def resume_command(run_dir, ranks: int = 1) -> str:
    """The command that continues `run_dir`, as this process was started (console script or python -m)."""
    if os.environ.get("JAXPONG_UNDER_MAKE"):  # set by `make train`
        return f"make train RESUME={shlex.quote(str(run_dir))}"
    if Path(sys.argv[0]).name == "jaxpong":
        program = "jaxpong"
    else:
        python = Path(sys.executable)
        try:  # the venv's python, as typed from the repository: .venv/bin/python
            python = python.relative_to(Path.cwd())
        except ValueError:
            pass
        program = f"{shlex.quote(str(python))} -m jaxpong"
    launcher = f"mpirun -n {ranks} " if ranks > 1 else ""
    return f"{launcher}{program} train --resume {shlex.quote(str(run_dir))}"

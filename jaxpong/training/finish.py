"""The end of a run, after its last round (a part of `Training`, jaxpong/training/run.py): a final exchange on
every rank (the last round's timings and a replication check), then rank 0's last files (the final
checkpoint and logs, the late-sender report, the learning curve and a final clip: jaxpong/training/end_of_run.py)
and the line that says what to do next.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxpong.base.config import Config
from jaxpong.base.console import log_line
from jaxpong.learn import noise_scale
from jaxpong.learn.learner import TrainState
from jaxpong.ranks.exchange import agreed_layout, read_rows, record_row
from jaxpong.report.finding import useful_ranks_line
from jaxpong.store.checkpoint import Checkpoints
from jaxpong.store.logger import RunLogger
from jaxpong.store.rundir import WriteFailed
from jaxpong.training.between_rounds import fmt_return
from jaxpong.training.end_of_run import write_imbalance_report, write_media
from jaxpong.training.round import Counters, Round, param_checksum
from jaxpong.training.stop import (
    EXIT_FAULT,
    EXIT_IO_ERROR,
    EXIT_OK,
    EXIT_PREEMPTED,
    RECENT_GAMES,
    next_line,
    resume_command,
    stop_kind,
)


@dataclass
class RunEnd:
    """How a run (this process's part of it) ended: the exit status, the reason (one line), the run
    directory and the counters at the end (the whole run's, resumes included)."""

    code: int
    reason: str
    run_dir: Path
    counters: Counters


class RunEnding:
    """The end of a run (a part of `Training`), after its last round: a final exchange on every rank that
    carries the last round's timings and checks that the parameters are still identical, then rank 0's last
    files (the final checkpoint, the late-sender report, the learning curve, a final clip) and the line that
    says what to do next. The attributes below are Training's."""

    cfg: Config
    comm: Any
    counters: Counters
    state: TrainState
    round: Round
    run_dir: Path
    is_main: bool
    logger: RunLogger | None
    checkpoints: Checkpoints | None
    io_failure: WriteFailed | None
    recent: collections.deque
    _live_t0: float | None
    save: Callable[[], None]
    recent_mean: Callable[[], float | None]

    def _end(self, pending: dict | None, code: int, reason: str, t0: float) -> RunEnd:
        """Every rank, after the last round (`pending`: this rank's record of it; `code` and `reason`: how the
        rounds stopped; `t0`: when they started, time.perf_counter())."""
        cfg, comm, c = self.cfg, self.comm, self.counters
        # The last round's timings and a final replication check: one more exchange, which every rank makes.
        layout = self.round.agreed_layout or agreed_layout(1)
        checksum = param_checksum(self.state.params)
        reduced, rows = comm.exchange(
            layout.pack({"checksum_max": checksum, "checksum_neg_min": -checksum}),
            layout,
            record_row(self.round.log_layout, pending, []),
            timeout_s=self.round.hang_limit(c.update),
            label="the final exchange",
        )
        final_records = read_rows(self.round.log_layout, rows)[0] if rows is not None else []
        c.elapsed_s += time.perf_counter() - t0
        self._live_t0 = None
        facts = layout.unpack(reduced)
        high, low = facts["checksum_max"], -facts["checksum_neg_min"]
        if high - low > 1e-6 * max(1.0, abs(high)):
            code, reason = (
                EXIT_FAULT,
                f"ranks ended with different parameters (checksums from {low} to {high}); replication broke",
            )
        if self.is_main:
            if comm.size > 1 and code != EXIT_FAULT:
                log_line(f"parameters identical on all {comm.size} ranks at the end (checksum {high:.6g})")
            code, reason = self._finish_files(final_records, code, reason)
            log_line(
                f"stopped: {reason} (update {c.update}, step {c.step:,}, {c.episodes} games, "
                f"return(last {RECENT_GAMES}) {fmt_return(self.recent_mean())})"
            )
            noise = noise_scale.log_metrics(self.round.noise)
            if batch_line := useful_ranks_line(
                noise["charts/noise_scale"], noise["charts/optimizer_batch"], comm.size, cfg
            ):
                log_line(batch_line)
            if code != EXIT_IO_ERROR:
                if comm.size > 1:
                    write_imbalance_report(self.run_dir)
                write_media(
                    cfg,
                    self.state.params,
                    self.run_dir,
                    self.round.policy_step,
                    final_clip=code != EXIT_FAULT and not reason.startswith("signal"),
                )
            assert self.logger is not None  # rank 0 has the logger
            self.logger.finish_tracking()  # W&B gets the media now, not at process exit
            if code != EXIT_IO_ERROR:  # (an I/O failure's stop line says where to resume from)
                assert self.checkpoints is not None  # rank 0 has them
                last = next_line(
                    stop_kind(reason, code),
                    cfg,
                    self.run_dir,
                    comm.size,
                    self.recent_mean(),
                    has_checkpoint=self.checkpoints.newest_complete() is not None,
                )
                if last:
                    log_line(last)
        self.round.env.close()
        if code == EXIT_OK and reason.startswith("signal"):
            code = EXIT_PREEMPTED
        return RunEnd(code, reason, self.run_dir, c)

    def _finish_files(self, final_records: list, code: int, reason: str) -> tuple[int, str]:
        """Rank 0 at the end: the last timings, the final checkpoint (unless the last checkpoint write
        failed: the disk is most likely still full), closing the logs. Any failed write makes the exit
        status EXIT_IO_ERROR and the reason one line that says what failed and where to resume from."""
        logger, checkpoints = self.logger, self.checkpoints
        assert logger is not None and checkpoints is not None  # rank 0 has both

        def attempt(action) -> None:
            try:
                action()
            except WriteFailed as err:
                self.io_failure = self.io_failure or err

        if self.io_failure is None:
            attempt(lambda: logger.log_ranks(final_records))
        if code != EXIT_FAULT and (self.io_failure is None or self.io_failure.what != "checkpoint"):
            attempt(self.save)
        attempt(logger.close)
        if self.io_failure is None:
            return code, reason
        newest = checkpoints.newest_complete()
        where = (
            f"the newest good checkpoint is step {newest:,} ({checkpoints.directory / str(newest)}); "
            f"fix the cause (free space, permissions), then resume with: {resume_command(self.run_dir, self.comm.size)}"
            if newest is not None
            else "no checkpoint was kept; fix the cause and start the run again"
        )
        return EXIT_IO_ERROR, f"{self.io_failure}; {where}"

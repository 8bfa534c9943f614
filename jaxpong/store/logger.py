"""What rank 0 writes while training: metrics.jsonl, ranks.jsonl, TensorBoard, W&B (--track, in
jaxpong/store/tracking.py) and the progress display.

Nothing here runs inside jit or per env step: it is called once per update round.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from jaxpong.base.config import require_wandb
from jaxpong.base.console import log_line
from jaxpong.base.errors import ConfigError
from jaxpong.store.rundir import WriteFailed, write_failure_reason

if TYPE_CHECKING:
    from jaxpong.store.tracking import Tracker


def _truncate_jsonl(path: Path, last_update: int) -> None:
    """Drop lines written after the checkpoint we resume from, so no update appears twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("update", 0) <= last_update:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in kept))
    tmp.replace(path)


def _append_lines(file, rows: list[dict]) -> None:
    """One JSON line per row, flushed: a failed write shows here, not at some later close."""
    file.write("".join(json.dumps(r) + "\n" for r in rows))
    file.flush()


def _from_tensorboardx(obj) -> bool:
    return (getattr(obj, "__module__", None) or type(obj).__module__ or "").startswith("tensorboardX")


class _WriterThreadErrors:
    """tensorboardX writes events from a thread of its own, and closes its writer again at exit. After a
    failed write (a full disk) both would print tracebacks: the thread's exception, and at exit the
    writer's second attempt to flush. These hooks keep the thread's error for the main thread to report
    (as one line) and drop tensorboardX's errors at exit, which that line has already reported. They stay
    for the life of the process; everything not from tensorboardX goes to the previous hooks."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._previous_thread_hook = threading.excepthook
        self._previous_unraisable_hook = sys.unraisablehook
        threading.excepthook = self._thread_hook
        sys.unraisablehook = self._unraisable_hook

    def _thread_hook(self, args) -> None:
        if _from_tensorboardx(args.thread):
            self.error = self.error or args.exc_value
        else:
            self._previous_thread_hook(args)

    def _unraisable_hook(self, unraisable) -> None:
        if not (_from_tensorboardx(unraisable.object) and isinstance(unraisable.exc_value, OSError)):
            self._previous_unraisable_hook(unraisable)


class RunLogger:
    """Rank 0's files. A failed write raises rundir.WriteFailed (what, path, why), never a raw OSError."""

    def __init__(
        self, run_dir: Path, tensorboard: bool, resume_update: int | None = None, resume_step: int | None = None
    ):
        try:
            self._open(run_dir, tensorboard, resume_update, resume_step)
        except OSError as err:
            raise WriteFailed("the run's logs in", Path(run_dir), write_failure_reason(err)) from None

    def _open(self, run_dir, tensorboard, resume_update, resume_step) -> None:
        self.run_dir = Path(run_dir)
        self.hosts: list[str] | None = None  # each rank's host (set by the trainer of a multi-rank run)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.ranks_path = self.run_dir / "ranks.jsonl"
        if resume_update is not None:
            _truncate_jsonl(self.metrics_path, resume_update)
            _truncate_jsonl(self.ranks_path, resume_update)
        self.games_path = self.run_dir / "games.jsonl"
        if resume_update is not None:
            _truncate_jsonl(self.games_path, resume_update)
        self.games_file = open(self.games_path, "a")
        self.metrics_file = open(self.metrics_path, "a", buffering=1)
        self.ranks_file = open(self.ranks_path, "a")
        self.tb = None
        self._tb_errors = None
        self.tracker: Tracker | None = None  # started at the first log() when the run's config asks
        self._tracking_checked = False
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb_errors = _WriterThreadErrors()
            # On resume, TensorBoard hides points logged after the checkpoint's step (its x axis is agent steps).
            # The queue is long enough never to block the training thread should the writer thread die:
            # its error is reported at the next log() instead.
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step, max_queue=100_000)

    def _write(self, what: str, path: Path, action) -> None:
        try:
            action()
        except OSError as err:
            raise WriteFailed(what, path, write_failure_reason(err)) from None

    def _check_tensorboard(self) -> None:
        if self._tb_errors is not None and self._tb_errors.error is not None:
            raise WriteFailed("TensorBoard events in", self.run_dir / "tb", write_failure_reason(self._tb_errors.error))

    def _start_tracking(self) -> None:
        """Start W&B when RUN_DIR/config.yaml (written before the first round) says run.track: it is then
        the resolved config W&B records. A failure is one line; training goes on without W&B."""
        self._tracking_checked = True
        try:
            doc = yaml.safe_load((self.run_dir / "config.yaml").read_text()) or {}
            run = doc.get("run") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return  # an unwritten config.yaml ends the run at this round's exchange (rundir.WriteFailed)
        if not run.get("track"):
            return
        from jaxpong.store import tracking

        try:
            require_wandb()
            self.tracker = tracking.Tracker(
                self.run_dir,
                doc,
                project=run.get("wandb_project") or "jaxpong",
                entity=run.get("wandb_entity") or "",
                group=run.get("wandb_group") or "",
            )
            log_line(
                f"W&B run {self.tracker.id} (project {self.tracker.run.project}; id kept in "
                f"{self.run_dir / tracking.RUN_ID_FILE})"
            )
        except (ConfigError, tracking.TrackingFailed) as err:
            log_line(f"{err}; training goes on without W&B" if isinstance(err, ConfigError) else str(err))

    def _track(self, clean: dict) -> None:
        if not self._tracking_checked:
            self._start_tracking()
        if self.tracker is not None:
            from jaxpong.store.tracking import TrackingFailed

            try:
                self.tracker.log(clean)
            except TrackingFailed as err:
                self.tracker = None
                log_line(str(err))

    def finish_tracking(self) -> None:
        """After the end-of-run media (learning_curve.png, videos/final.mp4): log them and close the W&B run.
        Also done at process exit when nobody calls this."""
        if self.tracker is not None:
            self.tracker.finish()

    def log(self, record: dict) -> None:
        clean = {k: v for k, v in record.items() if not (isinstance(v, float) and not math.isfinite(v))}
        self._write("metrics", self.metrics_path, lambda: self.metrics_file.write(json.dumps(clean) + "\n"))
        self._track(clean)
        if self.tb is not None:
            self._check_tensorboard()
            step = int(record["step"])
            for k, v in clean.items():
                if "/" in k and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            # Flushed from this thread, once per round, so that a full disk shows here as an OSError.
            self._write("TensorBoard events in", self.run_dir / "tb", self.tb.flush)

    def log_games(self, games: list[dict]) -> None:
        """One line per full game finished (any rank): the raw material of learning-speed milestones."""
        if games:
            self._write("games", self.games_path, lambda: _append_lines(self.games_file, games))

    def log_ranks(self, records: list[dict]) -> None:
        """One line per rank per round; with `hosts` (rank 0's gather of the ranks' host names) each line
        also names the rank's host."""
        if self.hosts:
            records = [{**r, "host": self.hosts[r["rank"]]} if 0 <= r["rank"] < len(self.hosts) else r for r in records]
        self._write("per-rank timings", self.ranks_path, lambda: _append_lines(self.ranks_file, records))

    def log_links(self, record: dict) -> None:
        """links.jsonl: one line per process start of a run across hosts, the links rank 0 measured to the
        other hosts then (comm.link_probe), with what the update sends over them each round; a later start
        on one host adds a line with no links."""
        path = self.run_dir / "links.jsonl"

        def append() -> None:
            with open(path, "a") as f:
                _append_lines(f, [record])

        self._write("link measurements", path, append)

    def close(self) -> None:
        """Close every file; the first failure is raised after all have been tried."""
        failure = None
        for what, path, action in (
            ("metrics", self.metrics_path, self.metrics_file.close),
            ("per-rank timings", self.ranks_path, self.ranks_file.close),
            ("games", self.games_path, self.games_file.close),
            ("TensorBoard events in", self.run_dir / "tb", self.tb.close if self.tb is not None else lambda: None),
        ):
            try:
                self._write(what, path, action)
            except WriteFailed as err:
                failure = failure or err
        if self._tb_errors is not None and self._tb_errors.error is not None:
            failure = failure or WriteFailed(
                "TensorBoard events in", self.run_dir / "tb", write_failure_reason(self._tb_errors.error)
            )
        if failure is not None:
            raise failure


def eta_seconds(
    total_steps: int, step: int, sps: float, time_limit_s: float = 0.0, process_s: float = 0.0
) -> tuple[float, str]:
    """Seconds left and which stop rule ends the run first: the steps at this speed, or the time limit
    (which counts from the process start, like --time-limit-s). (inf, "") while the speed is unknown
    and there is no time limit."""
    by_steps = (total_steps - step) / sps if sps > 0 else math.inf
    if time_limit_s and time_limit_s > 0:
        by_time = max(time_limit_s - process_s, 0.0)
        if by_time <= by_steps:
            return by_time, "time limit"
    return by_steps, ("total steps" if math.isfinite(by_steps) else "")


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Progress:
    """A live rich bar on a terminal; plain lines every few seconds otherwise. Called once per round."""

    def __init__(
        self,
        mode: str,
        total_steps: int,
        every_s: float,
        enabled: bool = True,
        time_limit_s: float = 0.0,
        clock_start: float | None = None,
    ):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "off"
        self.total = total_steps
        self.time_limit_s = time_limit_s
        self.clock_start = clock_start  # when the time limit started counting (None: the process's start)
        self.every_s = every_s
        self.last_print = 0.0
        self.bar = None
        if self.mode == "bar":
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            # Our own ETA column: rich's TimeRemainingColumn knows only the step total, not --time-limit-s.
            self.bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed:,.0f} steps"),
                TextColumn("{task.fields[sps]:,.0f} steps/s"),
                TextColumn("return {task.fields[ret]}"),
                TextColumn("eta {task.fields[eta]}"),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total_steps, sps=0.0, ret="-", eta="-")
            self.bar.start()

    def eta(self, step: int, sps: float) -> str:
        from jaxpong.base.clock import PROCESS_START

        start = PROCESS_START if self.clock_start is None else self.clock_start
        seconds, rule = eta_seconds(self.total, step, sps, self.time_limit_s, time.time() - start)
        return format_eta(seconds) + (" (time limit)" if rule == "time limit" else "")

    def update(self, step: int, sps: float, recent_return: float | None, elapsed_s: float) -> None:
        ret = "-" if recent_return is None else f"{recent_return:+.1f}"
        if self.mode == "bar" and self.bar is not None:
            self.bar.update(self.task, completed=step, sps=sps, ret=ret, eta=self.eta(step, sps))
        elif self.mode == "log" and time.monotonic() - self.last_print >= self.every_s:
            self.last_print = time.monotonic()
            log_line(
                f"step {step:,}  {sps:,.0f} steps/s  return(last 20) {ret}  elapsed {elapsed_s:.0f}s  "
                f"eta {self.eta(step, sps)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

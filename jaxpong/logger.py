"""What rank 0 writes while training: metrics.jsonl, ranks.jsonl, TensorBoard, and the progress display.

Nothing here runs inside jit or per env step: it is called once per update round.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


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


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool, resume_update: int | None = None,
                 resume_step: int | None = None):
        self.run_dir = Path(run_dir)
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
        if tensorboard:
            from tensorboardX import SummaryWriter

            # On resume, TensorBoard hides points logged after the checkpoint's step (its x axis is agent steps).
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        clean = {k: v for k, v in record.items() if not (isinstance(v, float) and not math.isfinite(v))}
        self.metrics_file.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = int(record["step"])
            for k, v in clean.items():
                if "/" in k and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def log_games(self, games: list[dict]) -> None:
        """One line per full game finished (any rank): the raw material of learning-speed milestones."""
        for g in games:
            self.games_file.write(json.dumps(g) + "\n")
        if games:
            self.games_file.flush()

    def log_ranks(self, records: list[dict]) -> None:
        for r in records:
            self.ranks_file.write(json.dumps(r) + "\n")
        self.ranks_file.flush()

    def close(self) -> None:
        self.metrics_file.close()
        self.ranks_file.close()
        self.games_file.close()
        if self.tb is not None:
            self.tb.close()


def log_line(message: str) -> None:
    print(f"[jaxpong {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Progress:
    """A live rich bar on a terminal; plain lines every few seconds otherwise. Called once per round."""

    def __init__(self, mode: str, total_steps: int, every_s: float, enabled: bool = True):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "off"
        self.total = total_steps
        self.every_s = every_s
        self.last_print = 0.0
        self.bar = None
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,.0f} steps"),
                                    TextColumn("{task.fields[sps]:,.0f} steps/s"), TextColumn("return {task.fields[ret]}"),
                                    TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total_steps, sps=0.0, ret="-")
            self.bar.start()

    def update(self, step: int, sps: float, recent_return: float | None, elapsed_s: float) -> None:
        ret = "-" if recent_return is None else f"{recent_return:+.1f}"
        if self.mode == "bar":
            self.bar.update(self.task, completed=step, sps=sps, ret=ret)
        elif self.mode == "log" and time.monotonic() - self.last_print >= self.every_s:
            self.last_print = time.monotonic()
            eta = (self.total - step) / sps if sps > 0 else float("inf")
            eta_txt = f"{eta / 60:.1f} min" if math.isfinite(eta) else "-"
            log_line(f"step {step:,}  {sps:,.0f} steps/s  return(last 20) {ret}  elapsed {elapsed_s:.0f}s  eta {eta_txt}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

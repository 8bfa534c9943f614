"""Weights & Biases tracking (`train --track`), on rank 0 beside metrics.jsonl and TensorBoard.

One W&B run per run directory: its id is kept in RUN_DIR/wandb_run_id, so a resumed run continues the
same W&B run. It receives every scalar of each metrics.jsonl line under the same name (`charts/SPS`,
`losses/approx_kl`, `update`, `step`...), plotted against `step` (agent steps, as in TensorBoard); the
resolved config as saved in RUN_DIR/config.yaml (with its `_record`: versions, git commit, world size);
and, when the process ends, the learning curve PNG and the final video written at the end of training.

W&B's own files go to RUN_DIR/wandb/. With WANDB_MODE=offline nothing leaves the machine and
`wandb sync RUN_DIR/wandb/offline-run-*` uploads later. wandb is an optional dependency
(`pip install 'jaxpong[wandb]'`): only this module imports it, and only when tracking is on (the config's
`require_wandb` only checks that it imports, when --track is asked for).
A W&B failure (no API key, no network) turns tracking off with one line; training goes on.
"""

from __future__ import annotations

import atexit
import math
import secrets
import string
import time
from pathlib import Path
from typing import Any

RUN_ID_FILE = "wandb_run_id"
STEP_METRIC = "step"
# Files written at the end of training (jaxpong/training/end_of_run.py), logged when the run finishes.
END_OF_RUN_MEDIA = {"media/learning_curve": "learning_curve.png", "media/final_video": "videos/final.mp4"}


class TrackingFailed(RuntimeError):
    """W&B could not start or log; the message is one line for the user."""


def scalars(record: dict) -> dict[str, float | int]:
    """The numbers of a metrics.jsonl line, under their own names (non-finite values left out, as there)."""
    return {
        k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory: read back on resume, made and kept on the first start."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        kept = path.read_text().strip()
        if kept:
            return kept
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id shape
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    tmp.replace(path)
    return new


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Tracker:
    """One W&B run, fed from RunLogger.log. `finish` (also called at process exit) logs the end-of-run media
    and closes the run."""

    def __init__(self, run_dir: Path, config: dict, project: str, entity: str = "", group: str = ""):
        self.run_dir = Path(run_dir)
        self.started_at = time.time()
        self._finished = False
        try:
            import wandb

            self.id = run_id(self.run_dir)
            self.run = wandb.init(
                project=project,
                entity=entity or None,
                group=group or None,
                name=self.run_dir.name,
                id=self.id,
                resume="allow",
                dir=str(self.run_dir),
                config=config,
                # jaxpong's own lines stay on the terminal only: W&B's console capture wraps stderr.
                settings=wandb.Settings(console="off"),
            )
            # Plotted against agent steps, as in TensorBoard; W&B's own _step only counts log calls, so a
            # resumed run (which repeats the steps after its checkpoint) never logs to an earlier _step.
            self.run.define_metric(STEP_METRIC)
            self.run.define_metric("*", step_metric=STEP_METRIC)
        except Exception as err:  # noqa: BLE001 - any W&B failure is reported as one line; training goes on
            raise TrackingFailed(
                f"W&B tracking is off for this run ({_one_line(err)}); metrics.jsonl and TensorBoard are unaffected"
            ) from None
        atexit.register(self.finish)

    def log(self, record: dict) -> None:
        try:
            self.run.log(scalars(record))
        except Exception as err:  # noqa: BLE001
            self._abandon()
            raise TrackingFailed(
                f"W&B tracking stopped ({_one_line(err)}); metrics.jsonl and TensorBoard go on"
            ) from None

    def end_of_run_media(self) -> dict[str, Any]:
        """The learning curve and final video, when this process wrote them (not a previous process's)."""
        import wandb

        media: dict[str, Any] = {}
        for key, name in END_OF_RUN_MEDIA.items():
            path = self.run_dir / name
            if path.is_file() and path.stat().st_mtime >= self.started_at:
                media[key] = wandb.Image(str(path)) if path.suffix == ".png" else wandb.Video(str(path))
        return media

    def finish(self) -> None:
        """Log the end-of-run media and close the W&B run; once, whoever calls first (training or exit)."""
        if self._finished:
            return
        self._finished = True
        atexit.unregister(self.finish)
        try:
            media = self.end_of_run_media()
            if media:
                self.run.log(media)
            self.run.finish()
        except Exception as err:  # noqa: BLE001 - the run's own files are written; W&B only mirrors them
            from jaxpong.base.console import log_line

            log_line(f"W&B run not finished cleanly ({_one_line(err)}); the run directory is complete")

    def _abandon(self) -> None:
        self._finished = True
        atexit.unregister(self.finish)
        try:
            self.run.finish(exit_code=1)
        except Exception:  # noqa: BLE001, S110 - already reporting a W&B failure
            pass

"""Rank 0 after a run's last checkpoint: the late-sender report (several ranks), learning_curve.png and,
with --capture-video, a clip of the final policy. A failure here is reported but never fails the run."""

from __future__ import annotations

from pathlib import Path

from jaxpong.base.config import Config
from jaxpong.base.console import log_line
from jaxpong.base.errors import ConfigError

CAPTURE_VIDEO_STEPS = 600  # --capture-video: the clip's length in agent steps at most (40 s at real speed)


def write_imbalance_report(run_dir: Path) -> None:
    """`jaxpong report` at the end of a multi-rank run (rank 0): a failure here never fails the run."""
    try:
        from jaxpong.report.make import write_after_training
        from jaxpong.report.pictures import IMAGE_NAME

        finding = write_after_training(run_dir)
        log_line(f"late senders: {finding} (picture: {run_dir / IMAGE_NAME})")
    except Exception as err:  # noqa: BLE001 - the run itself has succeeded; say so and move on
        log_line(f"imbalance report not written ({type(err).__name__}: {err}); try `jaxpong report {run_dir}`")


def write_media(cfg: Config, params, run_dir: Path, policy_step, final_clip: bool) -> None:
    """learning_curve.png, and with --capture-video (and `final_clip`: the run ended neither by a fault nor
    by a signal) a short clip of the final policy (videos/final.mp4)."""
    from jaxpong.watch.plots import plot_runs

    try:
        log_line(f"learning curve: {plot_runs([run_dir], run_dir / 'learning_curve.png')}")
    except (ConfigError, OSError, ValueError, RuntimeError) as err:
        log_line(f"no learning curve written: {err}")
    if not cfg.run.capture_video or not final_clip:
        return
    from jaxpong.watch.video import record

    try:
        info = record(
            cfg,
            params,
            run_dir / "videos" / "final.mp4",
            seed=cfg.run.seed,
            max_steps=CAPTURE_VIDEO_STEPS,
            policy_step=policy_step,
        )
        log_line(
            f"video: {info['out']} ({info['agent_steps']} agent steps, score {info['agent_score']}-"
            f"{info['opponent_score']})"
        )
    except (ConfigError, OSError, RuntimeError) as err:
        log_line(f"no video written: {err}")

"""Rank 0's work between rounds, when due: greedy evaluation (keeping the best checkpoint) and clips.

Rank 0 evaluates between rounds, after the update of every eval_every-th round: greedy full games on
fresh envs of their own (seeded for evaluation, so the same games each time). The other ranks
meanwhile play their next round and then wait for rank 0 at the next gather, so rank 0's evaluation
time shows as their wait (and as rank 0's "eval_s" in ranks.jsonl), and the wall-clock time and
steps/s of the run include it. Every rank knows when an evaluation is due (the schedule is in the
config), and the next collective's hang limit allows for it (`eval_allowance_s`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jaxpong.base.config import Config
from jaxpong.base.console import log_line
from jaxpong.base.errors import ConfigError
from jaxpong.store.rundir import WriteFailed

if TYPE_CHECKING:
    from jaxpong.store.checkpoint import Checkpoints


def eval_due(cfg: Config, update: int) -> bool:
    every = cfg.run.eval_every
    return bool(every) and update > 0 and update % every == 0


def video_due(cfg: Config, update: int) -> bool:
    every = cfg.run.video_every
    return bool(every) and update > 0 and update % every == 0


def eval_allowance_s(cfg: Config, update: int, last_eval_s: float) -> float:
    """Extra seconds the next collective may take because rank 0 is evaluating (or recording a
    --video-every clip) before it, after `update`; `last_eval_s`: how long its last one took."""
    if not (eval_due(cfg, update) or video_due(cfg, update)):
        return 0.0
    return max(10 * cfg.dist.hang_timeout_s, 3 * last_eval_s)


def fmt_return(x) -> str:
    return "-" if x is None else f"{x:+.2f}"


@dataclass
class Evaluation:
    """One evaluation between rounds: the eval/* metrics for its update's line, its seconds, and a failed
    write of the best checkpoint (None if none)."""

    metrics: dict
    seconds: float
    failure: WriteFailed | None


class Evaluations:
    """Rank 0: greedy evaluations between rounds and the best checkpoint (checkpoints_best/, opened at
    the first evaluation; after --resume its best return is the bar to beat)."""

    def __init__(self, cfg: Config, run_dir: Path, policy_step):
        self.cfg, self.run_dir, self.policy_step = cfg, Path(run_dir), policy_step
        self.best_checkpoints: Checkpoints | None = None
        self.best_eval_return: float | None = None

    def evaluate(self, params, update: int, step: int, save, can_write: bool) -> Evaluation:
        """Play the evaluation games with `params`; a new best is saved with `save(checkpoints, extra_meta)`
        (unless `can_write` is False: an earlier write failed)."""
        from jaxpong.store.checkpoint import Checkpoints
        from jaxpong.watch.evaluate import play_games
        from jaxpong.watch.policy import BEST_DIR

        cfg = self.cfg
        result = play_games(
            cfg, params, episodes=cfg.run.eval_episodes, seed=cfg.run.seed, greedy=True, policy_step=self.policy_step
        )
        summary = result.summary()
        if self.best_checkpoints is None:
            self.best_checkpoints = Checkpoints(self.run_dir / BEST_DIR, keep=1)
            self.best_eval_return = saved_best_return(self.best_checkpoints)
        mean = summary["mean_return"]
        improved = mean is not None and (self.best_eval_return is None or mean > self.best_eval_return)
        failure = None
        if improved and can_write:
            self.best_eval_return = mean
            try:
                save(self.best_checkpoints, {"eval": {**summary, "update": update}})
            except WriteFailed as err:
                failure = err
        log_line(
            f"eval at update {update} (step {step:,}): {summary['episodes']} greedy games, mean "
            f"{fmt_return(mean)} (min {fmt_return(summary['min_return'])}, max {fmt_return(summary['max_return'])})"
            f"{'; new best, saved to ' + BEST_DIR if improved else ''} [{result.seconds:.1f} s]"
        )
        metrics = {
            "eval/episodes": summary["episodes"],
            "eval/truncated": summary["truncated"],
            "eval/seconds": round(result.seconds, 3),
        }
        if mean is not None:
            metrics.update(
                {
                    "eval/mean_return": mean,
                    "eval/std_return": summary["std_return"],
                    "eval/min_return": summary["min_return"],
                    "eval/max_return": summary["max_return"],
                    "eval/best_return": self.best_eval_return,
                }
            )
        return Evaluation(metrics, result.seconds, failure)


def saved_best_return(checkpoints: Checkpoints) -> float | None:
    """The best evaluation kept by an earlier process of this run (after --resume), if any."""
    steps = checkpoints.steps()
    if not steps:
        return None
    try:
        return (checkpoints.read_meta(steps[-1]).get("eval") or {}).get("mean_return")
    except ConfigError:
        return None  # unreadable: the next evaluation replaces it


def clip(cfg: Config, params, run_dir: Path, update: int, step: int, policy_step) -> float:
    """Rank 0, every video_every updates: a clip of the current policy; returns its seconds (timed like an
    evaluation, which the other ranks' hang limit allows for). A failure is reported, not fatal."""
    from jaxpong.watch.video import clip_during_training

    start = time.perf_counter()
    try:
        info = clip_during_training(cfg, params, run_dir, step, policy_step=policy_step)
        log_line(
            f"video at update {update}: {info['out']} ({info['agent_steps']} agent steps, "
            f"score {info['agent_score']}-{info['opponent_score']}) [{time.perf_counter() - start:.1f} s]"
        )
    except (ConfigError, OSError, RuntimeError) as err:
        log_line(f"no video written at update {update}: {err}")
    return time.perf_counter() - start

"""What rank 0 records about the rounds of a run (a part of `Training`, jaxpong/training/run.py): the
metrics.jsonl line of a round, the per-rank totals of wait and busy time behind its comm/ fractions, the
mean of the recent games, and links.jsonl's line."""

from __future__ import annotations

import collections
import time
from typing import Any

import jax
import numpy as np

from jaxpong.base.clock import PROCESS_START
from jaxpong.base.config import Config
from jaxpong.base.console import log_line
from jaxpong.learn import noise_scale
from jaxpong.learn.learner import TrainState, lr_fraction, schedule
from jaxpong.report.finding import rate_text
from jaxpong.store.logger import RunLogger
from jaxpong.training.round import Counters, Round, RoundOutcome


class RoundRecords:
    """Training's records of its rounds (rank 0 logs them). The attributes below are Training's."""

    cfg: Config
    comm: Any
    counters: Counters
    state: TrainState
    round: Round
    logger: RunLogger | None
    recent: collections.deque
    rank_totals: dict[int, np.ndarray]
    metric_names: Any
    first_update: int

    def _links_record(self, hosts: list[str], links: list[dict], round_cfg: Config) -> dict:
        """links.jsonl's line: the ranks' hosts, rank 0's measured links, and the bytes the update's
        allreduces carry each round (one float32 buffer of the gradient and a few sums per optimizer step)."""
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
        epochs, minibatches = schedule(round_cfg)
        log_line(
            f"links from rank 0's host {hosts[0]}: "
            + ", ".join(f"{k['host']} {rate_text(k['mb_s'])} (round trip {k['rtt_ms']:.2g} ms)" for k in links)
        )
        return {
            "update": self.counters.update,
            "hosts": hosts,
            "links": links,
            "allreduce_bytes": 4 * params,
            "allreduces_per_round": epochs * minibatches,
        }

    def _account(self, records: list[dict]):
        """Rank 0: per-rank totals of wait, busy time and samples, from the gathered records."""
        for r in records:
            if r["update"] > self.first_update + 1:  # a process's first round includes compilation
                t = self.rank_totals[r["rank"]]
                t += [r["wait_s"], r["collect_s"] + r["compute_s"], r["valid_samples"], r["masked_samples"]]

    def recent_mean(self):
        return float(np.mean(self.recent)) if self.recent else None

    def _log(self, now, sps, out: RoundOutcome, extra: dict | None = None):
        c, games, facts = self.counters, out.games, out.facts
        line = {
            "update": c.update,
            "step": c.step,
            "time_s": round(c.elapsed_s + now, 3),
            "process_s": round(time.time() - PROCESS_START, 3),
            "wall_time": round(time.time(), 3),
            "charts/SPS": round(sps, 1),
            "charts/episodes": c.episodes,
            "charts/env_steps": c.env_steps,
            "charts/learning_rate": self.round.cfg.algo.learning_rate * lr_fraction(self.cfg, c.step) * c.lr_scale,
        }
        if games:
            line["charts/episodic_return"] = float(np.mean([r for r, _ in games]))
            line["charts/episodic_length"] = float(np.mean([n for _, n in games]))
        if self.recent:
            line["charts/return_last20"] = self.recent_mean()
        line["charts/window_reward"] = facts["window_reward"] / self.comm.size
        line["charts/window_reward_ema"] = c.window_reward_ema
        for name, value in zip(self.metric_names, out.metrics):
            line[name] = float(value)
        valid, masked = int(facts["moments"][0]), int(facts["masked"])
        waits = [t[0] / max(t[0] + t[1], 1e-12) for t in self.rank_totals.values()]
        line.update(
            {
                "comm/world_size": self.comm.size,
                "comm/masked_fraction": masked / max(valid + masked, 1),
                "comm/deadline_s": out.record["deadline_s"] or 0.0,
                "faults/skipped_updates": c.skipped_updates,
            }
        )
        if waits:
            line["comm/wait_fraction_max"] = max(waits)
            line["comm/wait_fraction_mean"] = float(np.mean(waits))
        if out.records:
            line["comm/allreduce_ms"] = 1000.0 * min(r["wait_s"] for r in out.records)
        line.update(noise_scale.log_metrics(self.round.noise))
        line.update(extra or {})
        assert self.logger is not None  # rank 0 alone logs
        self.logger.log(line)

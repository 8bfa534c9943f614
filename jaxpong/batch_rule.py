"""The batch-scaling rule: how the update follows the global batch as ranks (or games) are added.

N ranks of G games collect an N-times larger round than one rank. With the same number of minibatches,
each optimizer step then averages N times as many samples, and a sample gets N times fewer optimizer
steps: measured on the default, twice the games needed 1.9x the agent steps to reach +18. Keeping the
minibatch size instead (N times the minibatches per epoch) keeps the optimizer steps per sample of the
reference config, which is what makes more ranks learn sooner in wall-clock (docs/batch_scaling.md).

The rule is applied once per process, from the world size, before anything is built; the run's saved
config keeps the user's values, so a resume at another rank count derives its own.
"""

from __future__ import annotations

import dataclasses

from jaxpong.config import Config


def scaled_minibatches(
    num_minibatches: int, global_games: int, reference_games: int, rank_samples: int, min_rank_minibatch: int
) -> int:
    """Minibatches per epoch for `global_games` games: num_minibatches times the whole multiples of
    reference_games, but never so many that a rank's share of one (of its `rank_samples`) falls below
    min_rank_minibatch samples; never fewer than num_minibatches."""
    factor = max(1, global_games // reference_games)
    cap = max(num_minibatches, rank_samples // min_rank_minibatch)
    return min(num_minibatches * factor, cap)


def apply(cfg: Config, world_size: int) -> tuple[Config, str | None]:
    """(the config this process trains with, one line saying what the rule changed, or None)."""
    algo = cfg.algo
    if algo.algo != "ppo" or algo.batch_rule == "none":
        return cfg, None
    games = cfg.env.num_envs * world_size
    rank_samples = algo.num_steps * cfg.env.num_envs
    mbs = scaled_minibatches(algo.num_minibatches, games, algo.reference_games, rank_samples, algo.min_rank_minibatch)
    if mbs == algo.num_minibatches:
        return cfg, None
    global_mb = algo.num_steps * games // mbs
    line = (
        f"batch rule minibatch: {games} games in all ({games / algo.reference_games:g}x reference_games "
        f"{algo.reference_games}): {mbs} minibatches per epoch instead of {algo.num_minibatches}, "
        f"{global_mb} samples each ({rank_samples // mbs} from each rank); --batch-rule none keeps "
        f"{algo.num_minibatches}"
    )
    return dataclasses.replace(cfg, algo=dataclasses.replace(algo, num_minibatches=mbs)), line

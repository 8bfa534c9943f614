"""The scaling rules: how the games and the update follow the rank count.

First the games (env.share_games): N ranks share the num_envs games of one rank, so the global batch, and
with it every sample's worth to learning, stays that of one rank while N ranks step it. On 2 cores, 2
ranks of 16 games stepped more games per second than one rank of 32 on both cores, with the same update.
A rank needs min_rank_games games to keep its core busy, so past num_envs / min_rank_games ranks the
global batch grows instead, and the second rule applies.

Then the update (algo.batch_rule), how it follows a global batch larger than the reference:

N ranks of G games collect an N-times larger round than one rank. With the same number of minibatches,
each optimizer step then averages N times as many samples, and a sample gets N times fewer optimizer
steps: measured on the default, twice the games needed 1.9x the agent steps to reach +18. Keeping the
minibatch size instead (N times the minibatches per epoch) keeps the optimizer steps per sample of the
reference config, which is what makes more ranks learn sooner in wall-clock (docs/batch_scaling.md).

Past 4x the reference, the minibatch rule too falls off (1.9x the agent steps to +18 at 8x): a round then
holds 8x the optimizer steps, and each round's policy moves further from the one that played it. The
candidates measured against it (docs/batch_scaling.md): `steps` shortens the round as the games grow
(num_steps / sqrt(k), floor min_num_steps), so a round holds sqrt(k) times the samples and optimizer steps;
`sqrt_lr` keeps num_minibatches and raises the learning rate by sqrt(k) (Adam's square-root rule). Two
more live outside this file because they are not about the batch: algo.proximal ewma (the clip measured
against a moving average of recent weights, jaxpong/learn/algorithms/ppo.py) and algo.target_kl (the learning
rate following the late KL, learner.adapt_lr_scale); algo.proximal auto turns the first on from
ewma_from_scale x the reference games (proximal_for).

The rule is applied once per process, from the world size, before anything is built; the run's saved
config keeps the user's values, so a resume at another rank count derives its own.
"""

from __future__ import annotations

import dataclasses
import math

from jaxpong.base.config import Config, parse_batch_size
from jaxpong.base.errors import ConfigError


def scaled_minibatches(
    num_minibatches: int, global_games: int, reference_games: int, rank_samples: int, min_rank_minibatch: int
) -> int:
    """Minibatches per epoch for `global_games` games: num_minibatches times the whole multiples of
    reference_games, but never so many that a rank's share of one (of its `rank_samples`) falls below
    min_rank_minibatch samples; never fewer than num_minibatches."""
    factor = max(1, global_games // reference_games)
    cap = max(num_minibatches, rank_samples // min_rank_minibatch)
    return min(num_minibatches * factor, cap)


def rank_games(num_envs: int, world_size: int, min_rank_games: int) -> int:
    """Games each of `world_size` ranks steps when they share `num_envs`: an equal share rounded up, but no
    fewer than min_rank_games, and never more than num_envs (a small num_envs is not split)."""
    return min(num_envs, max(min_rank_games, -(-num_envs // world_size)))


def share(cfg: Config, world_size: int) -> tuple[Config, str | None]:
    """The env.share_games rule: (the config with this rank's games, one line saying so, or None). An async
    config stays async: with batch_size half a share is rounded up to an even count, and an explicit
    batch_size keeps its fraction of the games."""
    env = cfg.env
    if not env.share_games or world_size == 1:
        return cfg, None
    games = rank_games(env.num_envs, world_size, env.min_rank_games)
    if games == env.num_envs:
        return cfg, None
    batch = parse_batch_size(env.batch_size, env.num_envs)
    batch_size = env.batch_size
    if batch == env.num_envs:  # sync stays sync, whatever the share
        batch_size = "0"
    else:  # async stays async
        if str(env.batch_size) == "half":
            games += games % 2
        elif (batch * games) % env.num_envs or games % (batch * games // env.num_envs):
            raise ConfigError(
                f"env.batch_size: {env.batch_size} of {env.num_envs} games cannot keep its share of the {games} "
                f"games each of {world_size} ranks gets from env.share_games; use --batch-size half, or "
                "--share-games false"
            )
        else:
            batch_size = str(batch * games // env.num_envs)
    floor = (
        f"; no rank gets fewer than min_rank_games {env.min_rank_games}"
        if games > -(-env.num_envs // world_size)
        else ""
    )
    async_note = f", batch_size {batch_size}" if batch_size != env.batch_size else ""
    line = (
        f"share_games: {world_size} ranks share {env.num_envs} games, {games} each{async_note} "
        f"({games * world_size} in all{floor}); --share-games false gives every rank num_envs games"
    )
    return dataclasses.replace(cfg, env=dataclasses.replace(env, num_envs=games, batch_size=batch_size)), line


def round_steps(num_steps: int, scale: float, min_num_steps: int) -> int:
    """Round length under batch_rule steps: num_steps / sqrt(scale), rounded, but no shorter than
    min_num_steps and never longer than num_steps (scale <= 1 changes nothing)."""
    if scale <= 1:
        return num_steps
    return min(num_steps, max(min_num_steps, round(num_steps / math.sqrt(scale))))


def scaled_update(cfg: Config, global_games: int, rank_games: int) -> tuple[Config, str | None]:
    """The algo.batch_rule for `global_games` games in all, `rank_games` of them on each rank: (the config
    with the round length, minibatch count and learning rate the rule gives, one line saying so or None).
    One process standing in for k ranks (the batch study) passes the games of one of those ranks."""
    algo = cfg.algo
    if algo.algo != "ppo" or algo.batch_rule == "none":
        return cfg, None
    scale = global_games / algo.reference_games
    ref_minibatch = algo.num_steps * algo.reference_games / algo.num_minibatches
    head = f"batch rule {algo.batch_rule}: {global_games} games in all ({scale:g}x reference_games "
    head += f"{algo.reference_games})"
    none = f"; --batch-rule none keeps {algo.num_minibatches} minibatches"
    if algo.batch_rule == "sqrt_lr":
        if scale <= 1:
            return cfg, None
        lr = algo.learning_rate * math.sqrt(scale)
        line = (
            f"{head}: learning rate {lr:.3g} (x sqrt {scale:g}), {algo.num_minibatches} minibatches of "
            f"{algo.num_steps * global_games // algo.num_minibatches} samples{none}"
        )
        return dataclasses.replace(cfg, algo=dataclasses.replace(algo, learning_rate=lr)), line
    steps = algo.num_steps
    if algo.batch_rule == "steps":
        steps = round_steps(algo.num_steps, scale, algo.min_num_steps)
        # The minibatches follow the round's samples, at the reference's minibatch size.
        wanted = max(algo.num_minibatches, round(steps * global_games / ref_minibatch))
        mbs = min(wanted, max(algo.num_minibatches, steps * rank_games // algo.min_rank_minibatch))
    else:
        mbs = scaled_minibatches(
            algo.num_minibatches, global_games, algo.reference_games, steps * rank_games, algo.min_rank_minibatch
        )
    if mbs == algo.num_minibatches and steps == algo.num_steps:
        return cfg, None
    round_text = f"rounds of {steps} steps instead of {algo.num_steps}, " if steps != algo.num_steps else ""
    line = (
        f"{head}: {round_text}{mbs} minibatches per epoch instead of {algo.num_minibatches}, "
        f"{steps * global_games // mbs} samples each ({steps * rank_games // mbs} from each rank){none}"
    )
    return dataclasses.replace(cfg, algo=dataclasses.replace(algo, num_steps=steps, num_minibatches=mbs)), line


def proximal_for(cfg: Config, global_games: int) -> tuple[Config, str | None]:
    """algo.proximal auto for `global_games` games in all: (the config with proximal ewma where they are at
    least ewma_from_scale x reference_games, behaviour below, one line saying which), or (cfg, None) when
    proximal is not auto. The state keeps the moving average either way (learner.init_state), so a resume
    at another rank count may switch."""
    algo = cfg.algo
    if algo.algo != "ppo" or algo.proximal != "auto":
        return cfg, None
    scale = global_games / algo.reference_games
    chosen = "ewma" if scale >= algo.ewma_from_scale else "behaviour"
    reference = "a moving average of the weights (ewma)" if chosen == "ewma" else "the policy that played (behaviour)"
    line = (
        f"proximal auto: {global_games} games in all ({scale:g}x reference_games), the clip measured against "
        f"{reference}; ewma from {algo.ewma_from_scale:g}x"
    )
    return dataclasses.replace(cfg, algo=dataclasses.replace(algo, proximal=chosen)), line


def apply(cfg: Config, world_size: int) -> tuple[Config, list[str]]:
    """(the config this process trains with, the lines saying what the rules changed): the games
    first (share), then the update (algo.batch_rule, algo.proximal auto) for the global batch that results."""
    cfg, share_line = share(cfg, world_size)
    global_games = cfg.env.num_envs * world_size
    cfg, rule_line = scaled_update(cfg, global_games, cfg.env.num_envs)
    cfg, proximal_line = proximal_for(cfg, global_games)
    return cfg, [line for line in (share_line, rule_line, proximal_line) if line]


MOST_RANKS = 1 << 14  # where useful_ranks stops counting


def optimizer_batch(cfg: Config, world_size: int) -> float:
    """Samples per optimizer step, all ranks together, when `world_size` ranks train the user's config `cfg`
    under its rules (before any deadline masking)."""
    rank_cfg, _ = apply(cfg, world_size)
    steps_per_epoch = rank_cfg.algo.num_minibatches if rank_cfg.algo.algo == "ppo" else 1
    return rank_cfg.algo.num_steps * rank_cfg.env.num_envs * world_size / steps_per_epoch


def useful_ranks(cfg: Config, world_size: int, measured_batch: float, b_crit: float, most: int = MOST_RANKS) -> int:
    """The most ranks (up to `most`) before the optimizer batch that cfg's rules give first grows past the
    critical batch b_crit: as long as a step averages no more than about b_crit samples, more samples buy
    nearly proportionally fewer steps (McCandlish et al. 2018). `measured_batch` is what `world_size` ranks
    averaged (valid samples, so after masking); other counts are scaled from it by the rules' nominal
    batches. 0 when one rank is already past it."""
    here = optimizer_batch(cfg, world_size)

    def within(n: int) -> bool:
        try:
            return measured_batch * optimizer_batch(cfg, n) / here <= b_crit
        except ConfigError:  # a game count the config cannot share this many ways
            return False

    if not within(1):
        return 0
    # The batch grows with the rank count (up to the rounding of shares), so double, then bisect.
    low = 1
    while low < most and within(min(2 * low, most)):
        low = min(2 * low, most)
    high = min(2 * low, most + 1)  # not within (or past `most`)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if within(mid) else (low, mid)
    return low

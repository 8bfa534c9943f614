"""The batch-scaling rule (jaxpong/batch_rule.py): minibatch counts by hand, and the config it returns."""

from __future__ import annotations

import pytest

from jaxpong import batch_rule
from jaxpong import config as config_lib


@pytest.mark.parametrize(
    "games, rank_samples, expected",
    [
        (32, 2048, 4),  # the reference: as given
        (16, 1024, 4),  # fewer games than the reference: never fewer minibatches
        (64, 2048, 8),  # 2 ranks of 32 games: 2 x 4, each minibatch 2 x 2048 / 8 = 512 samples as at 1 rank
        (48, 2048, 4),  # 1.5x: only whole multiples count
        (256, 2048, 32),  # 8 ranks: 32 minibatches, 64 samples of each rank in each
        (512, 2048, 32),  # 16 ranks: capped at 2048 / 64 = 32 (a rank's share would fall to 32 samples)
        (256, 512, 8),  # 32 ranks of 8 games (8 x 64 steps = 512 samples): 8 x 4 = 32 wanted, capped at 512 / 64 = 8
    ],
)
def test_scaled_minibatches_by_hand(games, rank_samples, expected):
    assert batch_rule.scaled_minibatches(4, games, 32, rank_samples, 64) == expected


def _cfg(**algo):
    return config_lib.build("configs/default.yaml", {"algo": algo} if algo else {})


def test_one_rank_of_the_default_is_unchanged():
    cfg = _cfg()
    assert batch_rule.apply(cfg, 1) == (cfg, None)


def test_eight_ranks_get_eight_times_the_minibatches_and_say_so():
    cfg = _cfg()
    scaled, line = batch_rule.apply(cfg, 8)
    assert scaled.algo.num_minibatches == 32 and cfg.algo.num_minibatches == 4  # the user's config is untouched
    assert scaled.algo.learning_rate == cfg.algo.learning_rate and scaled.env == cfg.env
    assert line.startswith("batch rule minibatch: 256 games in all (8x reference_games 32): 32 minibatches")
    assert "512 samples each (64 from each rank)" in line


def test_rule_none_and_pg_keep_the_minibatches():
    assert batch_rule.apply(_cfg(batch_rule="none"), 8)[1] is None
    assert batch_rule.apply(_cfg(algo="pg"), 8)[1] is None


def test_one_process_with_n_times_the_games_gets_what_n_ranks_get():
    """The batch study stands one process in for N ranks: the same global minibatch either way."""
    cfg = _cfg()
    ranks, _ = batch_rule.apply(cfg, 4)
    one = config_lib.build("configs/default.yaml", {"env": {"num_envs": 128}, "algo": {"min_rank_minibatch": 256}})
    single, _ = batch_rule.apply(one, 1)
    assert single.algo.num_minibatches == ranks.algo.num_minibatches == 16

"""The scaling rules (jaxpong/learn/batch_rule.py): games per rank and minibatch counts by hand, and the config
they give."""

from __future__ import annotations

import dataclasses

import pytest

from jaxpong.base import config as config_lib
from jaxpong.base.errors import ConfigError
from jaxpong.learn import batch_rule


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


def _cfg(env=None, **algo):
    return config_lib.build("configs/default.yaml", {"algo": algo, "env": env or {}})


def test_one_rank_of_the_default_is_unchanged():
    cfg = _cfg()
    assert batch_rule.apply(cfg, 1) == (cfg, [])


@pytest.mark.parametrize(
    "num_envs, ranks, minimum, expected",
    [
        (32, 1, 16, 32),  # one rank: all of them
        (32, 2, 16, 16),  # the default on 2 ranks: 16 each, 32 in all, as on one rank
        (32, 3, 16, 16),  # 32 / 3 rounds up to 11, below the floor: 16 each, 48 in all
        (32, 8, 16, 16),  # 8 ranks: the floor, 128 in all
        (100, 3, 16, 34),  # rounded up: 102 in all, never fewer than asked for
        (8, 2, 16, 8),  # a small num_envs is not split (and never raised to the floor)
        (8, 2, 4, 4),  # unless the floor allows it
    ],
)
def test_rank_games_by_hand(num_envs, ranks, minimum, expected):
    assert batch_rule.rank_games(num_envs, ranks, minimum) == expected


def test_two_ranks_share_the_default_games_and_keep_its_update():
    cfg = _cfg()
    scaled, lines = batch_rule.apply(cfg, 2)
    assert scaled.env.num_envs == 16 and cfg.env.num_envs == 32  # the user's config is untouched
    assert scaled.algo == cfg.algo  # 32 games in all: the reference, so the same minibatches
    assert lines == [
        "share_games: 2 ranks share 32 games, 16 each (32 in all); --share-games false gives every rank num_envs games"
    ]


def test_eight_ranks_get_eight_times_the_minibatches_and_say_so():
    cfg = _cfg(env={"share_games": False})
    scaled, lines = batch_rule.apply(cfg, 8)
    assert scaled.algo.num_minibatches == 32 and cfg.algo.num_minibatches == 4  # the user's config is untouched
    assert scaled.algo.learning_rate == cfg.algo.learning_rate and scaled.env == cfg.env
    (line,) = lines
    assert line.startswith("batch rule minibatch: 256 games in all (8x reference_games 32): 32 minibatches")
    assert "512 samples each (64 from each rank)" in line


def test_shared_games_past_the_floor_grow_the_batch_and_the_minibatches():
    """8 ranks share 32 games down to the floor of 16 each: 128 in all (4x), so 16 minibatches of 512."""
    scaled, (share_line, rule_line) = batch_rule.apply(_cfg(), 8)
    assert scaled.env.num_envs == 16 and scaled.algo.num_minibatches == 16
    assert "16 each (128 in all; no rank gets fewer than min_rank_games 16)" in share_line
    assert "128 games in all (4x reference_games 32): 16 minibatches" in rule_line
    assert "512 samples each (64 from each rank)" in rule_line


@pytest.mark.parametrize(
    "env, ranks, games, batch_size",
    [
        ({"num_envs": 34}, 2, 18, "half"),  # 17 each would run sync: rounded up to 18, still async
        ({"num_envs": 32, "batch_size": "16"}, 2, 16, "8"),  # an explicit batch keeps its half of the games
        ({"num_envs": 64, "batch_size": "16"}, 2, 32, "8"),  # ... or its quarter
        ({"num_envs": 32, "batch_size": "32"}, 2, 16, "0"),  # sync stays sync
        ({"num_envs": 33}, 4, 16, "0"),  # odd with half is sync (envpool needs halves); so is its share
    ],
)
def test_a_shared_config_stays_async_or_sync(env, ranks, games, batch_size):
    scaled, lines = batch_rule.apply(_cfg(env=env), ranks)
    assert (scaled.env.num_envs, scaled.env.batch_size) == (games, batch_size)
    assert scaled.is_async == _cfg(env=env).is_async
    assert f"{games} each" in lines[0]


def test_a_batch_size_that_cannot_be_shared_names_the_fields():
    cfg = _cfg(env={"batch_size": "8", "num_envs": 24})  # 3 ranks: 8 games each, 8 x 8 / 24 is no whole batch
    with pytest.raises(
        ConfigError, match=r"env.batch_size: 8 of 24 games .* 8 games each of 3 ranks .*--share-games false"
    ):
        batch_rule.apply(dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, min_rank_games=8)), 3)


def test_rule_none_and_pg_keep_the_minibatches():
    assert batch_rule.apply(_cfg(env={"share_games": False}, batch_rule="none"), 8)[1] == []
    assert batch_rule.apply(_cfg(env={"share_games": False}, algo="pg"), 8)[1] == []


def test_one_process_with_n_times_the_games_gets_what_n_ranks_get():
    """The batch study stands one process in for N ranks: the same global minibatch either way."""
    cfg = _cfg(env={"share_games": False})
    ranks, _ = batch_rule.apply(cfg, 4)
    one = config_lib.build("configs/default.yaml", {"env": {"num_envs": 128}, "algo": {"min_rank_minibatch": 256}})
    single, _ = batch_rule.apply(one, 1)
    assert single.algo.num_minibatches == ranks.algo.num_minibatches == 16


def test_a_run_saved_before_share_games_keeps_every_ranks_games(tmp_path):
    """Its ranks each stepped num_envs games: a resume, simulate or report reads it that way."""

    (tmp_path / "config.yaml").write_text("env:\n  num_envs: 32\nalgo:\n  num_steps: 64\n")
    assert config_lib.read_config(tmp_path)["env"]["share_games"] is False
    (tmp_path / "config.yaml").write_text("env:\n  num_envs: 32\n  share_games: true\n")
    assert config_lib.read_config(tmp_path)["env"]["share_games"] is True


@pytest.mark.parametrize(
    "scale, expected",
    [
        (1, 64),  # the reference: as given
        (0.5, 64),  # fewer games: never longer
        (8, 23),  # 64 / sqrt(8) = 22.6
        (16, 16),  # 64 / 4
        (64, 16),  # 64 / 8 = 8, held at the floor of 16
    ],
)
def test_round_steps_by_hand(scale, expected):
    assert batch_rule.round_steps(64, scale, 16) == expected


def test_rule_steps_shortens_the_round_and_keeps_the_minibatch_size():
    """8 ranks of 32 games (256 in all, 8x): rounds of 23 steps, 5,888 samples; 512 a minibatch would be 11.5
    -> 12 minibatches, but a rank's 736 samples give at most 736 // 64 = 11: 11 minibatches of 535."""
    cfg = _cfg(env={"share_games": False}, batch_rule="steps")
    scaled, lines = batch_rule.apply(cfg, 8)
    assert (scaled.algo.num_steps, scaled.algo.num_minibatches) == (23, 11)
    assert scaled.algo.learning_rate == cfg.algo.learning_rate and cfg.algo.num_steps == 64
    (line,) = lines
    assert line.startswith("batch rule steps: 256 games in all (8x reference_games 32): rounds of 23 steps instead")
    assert "11 minibatches per epoch instead of 4, 535 samples each (66 from each rank)" in line
    # 2 ranks of 32 games (2x): 45 steps (64 / 1.41), 2,880 samples: 6 minibatches of 480 (5.6 rounded).
    two, _ = batch_rule.apply(cfg, 2)
    assert (two.algo.num_steps, two.algo.num_minibatches) == (45, 6)
    # The reference itself is untouched.
    assert batch_rule.apply(cfg, 1) == (cfg, [])


def test_rule_sqrt_lr_keeps_the_minibatches_and_raises_the_learning_rate():
    cfg = _cfg(env={"share_games": False}, batch_rule="sqrt_lr")
    scaled, (line,) = batch_rule.apply(cfg, 16)
    assert scaled.algo.num_minibatches == 4 and scaled.algo.num_steps == 64
    assert scaled.algo.learning_rate == pytest.approx(4e-3)  # 1e-3 x sqrt(16)
    assert "learning rate 0.004 (x sqrt 16), 4 minibatches of 8192 samples" in line
    assert batch_rule.apply(cfg, 1) == (cfg, [])


@pytest.mark.parametrize(
    "ranks, games, chosen",
    [
        (1, 32, "behaviour"),  # 1x: the policy that played, as today
        (2, 32, "behaviour"),  # shared games: still 1x
        (8, 128, "behaviour"),  # 8 ranks down to the floor of 16 games: 4x, below 8x
        (16, 256, "ewma"),  # 16 ranks of 16: 8x, the moving average
        (32, 512, "ewma"),  # 16x
    ],
)
def test_proximal_auto_clips_to_the_moving_average_from_eight_times_the_games(ranks, games, chosen):
    cfg = _cfg(proximal="auto")
    scaled, lines = batch_rule.apply(cfg, ranks)
    assert scaled.algo.proximal == chosen and cfg.algo.proximal == "auto"  # the user's config keeps auto
    assert scaled.env.num_envs * ranks == games
    line = lines[-1]
    assert line.startswith(f"proximal auto: {games} games in all ({games // 32:g}x reference_games)"), line
    assert ("(ewma)" in line) == (chosen == "ewma") and line.endswith("ewma from 8x")
    # The rule moves only the clip's reference: the other rules give the same update as without it.
    plain, _ = batch_rule.apply(_cfg(), ranks)
    assert dataclasses.replace(scaled.algo, proximal="behaviour") == plain.algo


def test_proximal_other_than_auto_is_left_as_given():
    for given in ("behaviour", "ewma"):
        cfg = _cfg(proximal=given)
        assert batch_rule.proximal_for(cfg, 512) == (cfg, None)

"""The rollout on real envpool Pong, sync and async: fixed-shape buffers, prefix masks, deadlines."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpong.base import config as config_lib
from jaxpong.learn.learner import init_state, make_optimizer
from jaxpong.learn.networks import make_network
from jaxpong.play.envs import PURPOSE_TRAIN, env_seeds, make_env
from jaxpong.play.rollout import Collector, make_policy_step


def _collector(num_envs: int, batch_size: int, num_steps: int, slow_factor: float = 1.0):
    cfg = config_lib.build(
        None,
        {
            "env": {"num_envs": num_envs, "batch_size": batch_size, "num_threads": 1},
            "algo": {"num_steps": num_steps},
            "model": {"hidden_size": 8, "obs_mode": "diff64"},
        },
    )
    net = make_network(cfg.model)
    state = init_state(cfg, net, make_optimizer(cfg), jax.random.PRNGKey(0))
    env = make_env(cfg, seeds=env_seeds(1, 0, PURPOSE_TRAIN, num_envs))
    return Collector(env, cfg, lambda p, x: net.apply(p, x), num_steps=num_steps, slow_factor=slow_factor), state


def _is_prefix(mask: np.ndarray) -> bool:
    """Each column is True for a prefix of rows, then False."""
    lengths = mask.sum(0)
    return all(mask[:n, e].all() and not mask[n:, e].any() for e, n in enumerate(lengths))


@pytest.mark.parametrize("num_envs, batch_size", [(6, 6), (8, 4)], ids=["sync", "async"])
def test_a_round_fills_prefixes_and_stops_at_a_full_buffer(num_envs, batch_size):
    collector, state = _collector(num_envs, batch_size, num_steps=24)
    key = jax.random.PRNGKey(1)
    for r in range(3):  # rounds follow each other without resetting the games
        batch, info = collector.collect(state.params, jax.random.fold_in(key, r), deadline_s=None)
        filled = np.asarray(batch.filled)
        assert filled.shape == (24, num_envs)
        assert _is_prefix(filled)
        assert info.filled_steps == filled.sum() and not info.cut_by_deadline
        assert (np.asarray(batch.valid) <= filled).all()
        if batch_size == num_envs:
            assert filled.all()  # sync: every env steps together until the buffer is full
        else:
            # async: the round stops when one env's row is full; the others are close behind
            assert filled.sum(0).max() == 24 and filled.sum(0).min() >= 12
        assert batch.bootstrap_features.shape == (num_envs, 64, 84)
        assert set(np.unique(np.asarray(batch.actions)[filled])) <= {0, 1}
        assert np.isfinite(np.asarray(batch.logprobs)[filled]).all()
    collector.env.close()


def test_deadline_cuts_the_round():
    collector, state = _collector(4, 4, num_steps=400)
    key = jax.random.PRNGKey(2)
    collector.collect(state.params, key, deadline_s=None)  # compile the policy step outside the clock
    batch, info = collector.collect(state.params, key, deadline_s=0.05)
    # Counted steps, not seconds, show the cut: a busy machine slows the stepping, not the deadline's effect.
    assert info.cut_by_deadline and 0 < info.filled_steps < 4 * 400
    assert _is_prefix(np.asarray(batch.filled))


def test_unfilled_rows_hold_zeros_not_an_earlier_rounds_steps():
    """A round cut short leaves rows that the previous, full round wrote: they come out as zeros (features,
    actions, log-probabilities, values), while the filled rows keep what was played."""
    collector, state = _collector(4, 4, num_steps=64)
    key = jax.random.PRNGKey(3)
    full, _ = collector.collect(state.params, key, deadline_s=None)
    assert np.asarray(full.filled).all() and (np.asarray(full.logprobs) < 0).all()  # every row written
    # deadline 0: the round stops after its first batch
    cut, info = collector.collect(state.params, jax.random.fold_in(key, 1), deadline_s=0.0)
    filled = np.asarray(cut.filled)
    assert info.cut_by_deadline and 0 < filled.sum() < filled.size
    for name in ("features", "actions", "logprobs", "values"):
        array = np.asarray(getattr(cut, name))
        assert not array[~filled].any(), f"{name} of unfilled rows are not zero"
    assert (np.asarray(cut.logprobs)[filled] < 0).all()  # the played steps keep their log-probabilities
    collector.env.close()


@pytest.mark.slow
@pytest.mark.parametrize("num_envs, batch_size", [(8, 8), (16, 8)], ids=["sync", "async"])
def test_slow_factor_divides_the_steps_per_second(num_envs, batch_size):
    """A slow rank with factor 3 steps a third as fast, with async envs too (where the games in flight keep
    stepping while the thread sleeps: the old per-batch sleep slowed it only ~1.3x for factor 2). Rounds of
    the two collectors interleave, so machine load hits both; the band is wide for a shared machine."""
    collectors = {f: _collector(num_envs, batch_size, num_steps=200, slow_factor=f) for f in (1.0, 3.0)}
    key = jax.random.PRNGKey(3)
    rates = {1.0: [], 3.0: []}
    for _, (c, state) in collectors.items():
        c.collect(state.params, key, deadline_s=None)  # compiles this collector's policy step
    for _ in range(3):
        for f, (c, state) in collectors.items():
            _, info = c.collect(state.params, key, deadline_s=0.3)
            assert info.cut_by_deadline and info.collect_s < 0.3 + 0.2  # a stall never outlasts the deadline
            rates[f].append(info.filled_steps / info.collect_s)
    for c, _ in collectors.values():
        c.env.close()
    ratio = np.median(rates[1.0]) / np.median(rates[3.0])
    assert 2.2 < ratio < 4.2, ratio


@pytest.mark.parametrize("obs_mode, frames_shape", [("pool32", (2, 84, 84)), ("stack84", (4, 84, 84))])
def test_packed_step_unpacks_to_the_plain_steps_outputs(obs_mode, frames_shape):
    """The collector's one-transfer step carries exactly what the plain policy step returns, given the
    Gumbel noise that jax.random.categorical draws from the plain step's key."""
    from jaxpong.play.rollout import make_packed_step, unpack_rows

    network = "mlp" if obs_mode == "pool32" else "small_cnn"
    cfg = config_lib.build(None, {"model": {"obs_mode": obs_mode, "network": network, "hidden_size": 8}})
    net = make_network(cfg.model)
    params = init_state(cfg, net, make_optimizer(cfg), jax.random.PRNGKey(0)).params
    step = make_policy_step(lambda p, x: net.apply(p, x), obs_mode)
    frames = np.random.default_rng(3).integers(0, 256, size=(5,) + frames_shape).astype(np.uint8)
    key = jax.random.PRNGKey(7)
    features, action, logp, value, _ = jax.device_get(step(params, frames, key))
    _, sub = jax.random.split(key)
    noise = jax.random.gumbel(sub, (5, len(cfg.model.actions)))
    packed = make_packed_step(lambda p, x: net.apply(p, x), obs_mode)(params, frames, noise)
    rows = np.stack([np.asarray(packed)] * 2)  # [T=2, N=5, bytes], as the collector's buffer
    f, a, l, v = unpack_rows(rows, features.shape[1:], features.dtype)
    assert f.dtype == features.dtype and (f[1] == features).all()
    assert a.dtype == np.int32 and (a[0] == action).all()
    assert (l[1] == logp).all() and (v[0] == value).all()


@pytest.mark.parametrize("num_steps, rounds", [(150, 8), (2, 600)], ids=["long-rounds", "2-step-rounds"])
def test_valid_masks_and_game_scores_follow_the_games_across_rounds(num_steps, rounds):
    """The collector derives `valid`, `dones` and the finished games' scores once per round; check them
    against a by-hand walk over every env's steps, carried across rounds (sync mode, so that each
    round is the same for every env). With 2-step rounds half the game ends fall on a round's last
    row, so the reset step that opens the next round must come out invalid."""
    collector, state = _collector(4, 4, num_steps=num_steps)
    key = jax.random.PRNGKey(3)
    running = np.zeros(4)
    lengths = np.zeros(4, int)
    after_end = np.zeros(4, bool)  # the env's next step is envpool's reset of a finished game
    expected_games = []
    games = []
    for r in range(rounds):  # 1,200 steps per env: a random player loses a game in about 800
        batch, info = collector.collect(state.params, jax.random.fold_in(key, r), deadline_s=None)
        filled, valid = np.asarray(batch.filled), np.asarray(batch.valid)
        dones, rewards = np.asarray(batch.dones), np.asarray(batch.rewards)
        assert filled.all()
        for t in range(filled.shape[0]):
            for e in range(4):
                assert valid[t, e] == (not after_end[e]), (t, e)
                running[e] += rewards[t, e]
                lengths[e] += 1
                if dones[t, e]:
                    expected_games.append((running[e], lengths[e]))
                    running[e], lengths[e] = 0.0, 0
                after_end[e] = dones[t, e]
        assert (rewards[~filled] == 0).all() and not dones[~filled].any()
        games += collector.scores.drain()
    assert len(expected_games) >= 2
    assert sorted(games) == sorted(expected_games)
    assert all(-21 <= r <= 21 for r, _ in games)
    collector.env.close()


def test_a_games_seed_and_draws_follow_its_number_not_its_rank():
    """Games 16-31 held by a second rank get the seeds and Gumbel noise that one process holding games 0-31
    gives them; entry [r, i] is gumbel(fold_in(fold_in(round key, game), r)), by hand."""
    from jaxpong.play.keys import action_noise, round_key, sampling_root

    assert env_seeds(7, 0, PURPOSE_TRAIN, 16, first_game=16) == env_seeds(7, 0, PURPOSE_TRAIN, 32)[16:]
    assert env_seeds(7, 1, PURPOSE_TRAIN, 16) != env_seeds(7, 0, PURPOSE_TRAIN, 16)  # a resume plays new games
    key = round_key(sampling_root(7, 0), 3)
    whole = action_noise(key, np.arange(32), 5, 3)
    half = action_noise(key, np.arange(16, 32), 5, 3)
    assert whole.shape == (5, 32, 3) and whole.dtype == np.float32
    np.testing.assert_array_equal(half, whole[:, 16:])
    by_hand = jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, 20), 4), (3,))
    np.testing.assert_array_equal(whole[4, 20], np.asarray(by_hand))
    assert not np.array_equal(whole, action_noise(round_key(sampling_root(7, 0), 4), np.arange(32), 5, 3))

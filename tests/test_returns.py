"""The returns maths (jaxpong.learn.algorithms.returns) against plain loops and hand-computed numbers, jitted
and not."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpong.learn.algorithms.returns import gae, masked_moments, moments_to_mean_std, point_returns

JIT_MODES = pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])


def call(fn, jitted, *args, static=()):
    """Run `fn` under jax.jit, or with jit disabled altogether (lax.scan then runs as a Python loop)."""
    if jitted:
        return jax.jit(fn, static_argnums=static)(*args)
    with jax.disable_jit():
        return fn(*args)


def gae_reference(rewards, values, dones, bootstrap, lengths, gamma, lam):
    """GAE as a plain double loop over envs and (backwards) over each env's filled prefix."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    ret = np.zeros((T, N))
    for e in range(N):
        last = 0.0
        for t in reversed(range(lengths[e])):
            next_value = bootstrap[e] if t == lengths[e] - 1 else values[t + 1, e]
            not_done = 1.0 - float(dones[t, e])
            if t == lengths[e] - 1:
                last = 0.0  # nothing after the cut: the bootstrap value stands in for the future
            delta = rewards[t, e] + gamma * not_done * next_value - values[t, e]
            last = delta + gamma * lam * not_done * last
            adv[t, e] = last
            ret[t, e] = last + values[t, e]
    return adv, ret


@JIT_MODES
def test_gae_matches_double_loop_with_dones_and_cut_rows(jitted):
    rng = np.random.default_rng(0)
    T, N = 12, 6
    lengths = np.array([12, 7, 0, 1, 12, 5])  # each env's filled prefix; 0 = collected nothing this round
    filled = np.arange(T)[:, None] < lengths[None, :]
    rewards = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    dones = rng.random((T, N)) < 0.2
    dones[4, 0] = True
    dones[6, 1] = True  # a game ending exactly at the cut: the bootstrap must then be ignored
    bootstrap = rng.normal(size=N).astype(np.float32) * 3
    # Padding holds garbage that must not leak into any result.
    rewards = np.where(filled, rewards, 99.0).astype(np.float32)
    values = np.where(filled, values, -77.0).astype(np.float32)
    gamma, lam = 0.97, 0.9

    fn = partial(gae, gamma=gamma, lam=lam)
    adv, ret = call(lambda *a: fn(*a), jitted, rewards, values, dones, bootstrap, filled)
    want_adv, want_ret = gae_reference(
        rewards.astype(np.float64), values.astype(np.float64), dones, bootstrap.astype(np.float64), lengths, gamma, lam
    )
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[~filled] == 0) and np.all(np.asarray(ret)[~filled] == 0)


@JIT_MODES
def test_gae_small_case_by_hand(jitted):
    # One env, 3 filled steps of 4, gamma 0.5, lambda 1 (then A = discounted return - V).
    rewards = np.array([[0.0], [0.0], [1.0], [5.0]], np.float32)
    values = np.array([[0.5], [0.25], [1.0], [9.0]], np.float32)
    dones = np.zeros((4, 1), bool)
    filled = np.array([[True], [True], [True], [False]])
    bootstrap = np.array([2.0], np.float32)
    adv, ret = call(lambda *a: gae(*a, 0.5, 1.0), jitted, rewards, values, dones, bootstrap, filled)
    # returns-to-go with the bootstrap at the cut: G2 = 1 + 0.5*2 = 2, G1 = 0.5*2 = 1, G0 = 0.5
    np.testing.assert_allclose(np.asarray(ret)[:, 0], [0.5, 1.0, 2.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [0.0, 0.75, 1.0, 0.0], rtol=1e-6)


# Two envs written out by hand, gamma 0.5.
#   env A: filled all 8 steps, no episode end: points at t=2 (+1) and t=5 (-1); nothing is scored
#          after t=5, so t=6,7 have G=0 and are unscored.
#   env B: filled 7 of 8 steps (the reward at t=7 lies beyond the cut and must be ignored); a game
#          ends without a point at t=3 (a truncation), so the point at t=5 must not flow back past it.
#   env C: nothing filled.
POINT_REWARDS = np.array(
    [
        # A    B    C
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0],
        [-1.0, -1.0, 1.0],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
    ],
    np.float32,
)
POINT_DONES = np.zeros((8, 3), bool)
POINT_DONES[3, 1] = True
POINT_FILLED = np.stack([np.ones(8, bool), np.arange(8) < 7, np.zeros(8, bool)], axis=1)
POINT_RETURNS = np.array(
    [
        [0.25, 0.5, 0.0],
        [0.5, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [-0.25, 0.0, 0.0],
        [-0.5, -0.5, 0.0],
        [-1.0, -1.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
    ],
    np.float32,
)
POINT_SCORED = np.array(
    [
        [True, True, False],
        [True, True, False],
        [True, False, False],
        [True, False, False],
        [True, True, False],
        [True, True, False],
        [False, False, False],
        [False, False, False],
    ]
)


@JIT_MODES
def test_point_returns_by_hand(jitted):
    g, scored = call(lambda r, d, f: point_returns(r, d, f, 0.5), jitted, POINT_REWARDS, POINT_DONES, POINT_FILLED)
    np.testing.assert_array_equal(np.asarray(g), POINT_RETURNS)
    np.testing.assert_array_equal(np.asarray(scored), POINT_SCORED)


@JIT_MODES
def test_point_returns_point_on_the_last_step_of_a_game(jitted):
    # A game ends with a point at t=1 (done); the next game's point at t=3 must not reach t=1 or t=0.
    rewards = np.array([[0.0], [-1.0], [0.0], [1.0]], np.float32)
    dones = np.array([[False], [True], [False], [False]])
    filled = np.ones((4, 1), bool)
    g, scored = call(lambda r, d, f: point_returns(r, d, f, 0.9), jitted, rewards, dones, filled)
    np.testing.assert_allclose(np.asarray(g)[:, 0], [-0.9, -1.0, 0.9, 1.0], rtol=1e-6)
    assert np.asarray(scored)[:, 0].tolist() == [True, True, True, True]


@JIT_MODES
def test_masked_moments_against_numpy(jitted):
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(16, 5)).astype(np.float32)
    mask = rng.random((16, 5)) < 0.6
    x[~mask] = 1e4  # masked entries must not count
    moments = np.asarray(call(masked_moments, jitted, x, mask))
    valid = x[mask].astype(np.float64)
    np.testing.assert_allclose(moments, [valid.size, valid.sum(), (valid**2).sum()], rtol=1e-5)
    mean, std = call(moments_to_mean_std, jitted, jnp.asarray(moments))
    np.testing.assert_allclose(float(mean), valid.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(std), valid.std(), rtol=1e-4)  # population std (+1e-8)


@JIT_MODES
def test_moments_of_two_ranks_sum_to_the_whole(jitted):
    """The multi-rank property: each rank's [count, sum, sumsq] added = the moments of all data."""
    rng = np.random.default_rng(2)
    x = rng.normal(-1.0, 0.5, size=(10, 8)).astype(np.float32)
    mask = rng.random((10, 8)) < 0.7
    mask[:, :4] &= np.arange(10)[:, None] < 3  # rank 0 was cut early: fewer samples than rank 1
    whole = np.asarray(call(masked_moments, jitted, x, mask))
    first = np.asarray(call(masked_moments, jitted, x[:, :4], mask[:, :4]))
    second = np.asarray(call(masked_moments, jitted, x[:, 4:], mask[:, 4:]))
    assert first[0] != second[0]
    np.testing.assert_allclose(first + second, whole, rtol=1e-6)
    mean, std = moments_to_mean_std(jnp.asarray(first + second))
    valid = x[mask].astype(np.float64)
    np.testing.assert_allclose([float(mean), float(std)], [valid.mean(), valid.std()], rtol=1e-4)


def test_moments_of_nothing_are_safe():
    """A rank (or a round) with no valid sample: count 0 gives mean 0 and a tiny positive std, not NaN."""
    moments = masked_moments(jnp.ones((3, 2)), jnp.zeros((3, 2), bool))
    np.testing.assert_array_equal(np.asarray(moments), [0.0, 0.0, 0.0])
    mean, std = moments_to_mean_std(moments)
    assert float(mean) == 0.0 and 0.0 < float(std) <= 1e-7

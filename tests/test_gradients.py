"""Masked gradient sums and counts: padding adds nothing, and ranks' sums / counts give the whole batch's mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpong.base.config import Config
from jaxpong.learn.algorithms import pg, ppo
from jaxpong.learn.algorithms.returns import masked_moments
from jaxpong.learn.learner import TrainState, make_optimize
from jaxpong.learn.networks import make_network
from jaxpong.play.batch import Batch

T, N, H, W = 6, 4, 5, 7  # a [6, 4] round of 5x7 difference frames


def small_cfg(algo="ppo"):
    cfg = Config()
    cfg.model.hidden_size = 8
    cfg.algo.algo = algo
    cfg.algo.update_epochs = 1
    cfg.algo.num_minibatches = 1
    cfg.algo.norm_adv = True
    if algo == "pg":
        cfg.model.value_head = False
    return cfg


def setup(algo="ppo", seed=0):
    cfg = small_cfg(algo)
    network = make_network(cfg.model)
    rng = np.random.default_rng(seed)
    features = rng.integers(-1, 2, size=(T, N, H, W)).astype(np.int8)
    params = jax.jit(network.init)(jax.random.PRNGKey(seed), jnp.zeros((1, H, W)))  # eager init compiles op by op
    valid = np.arange(T)[:, None] < np.array([6, 2, 0, 4])[None, :]  # cut rows; env 2 has nothing
    valid[1, 0] = False  # an auto-reset step inside a row
    batch = Batch(
        features=features,
        actions=rng.integers(0, 2, size=(T, N)).astype(np.int32),
        logprobs=np.log(rng.uniform(0.3, 0.7, size=(T, N))).astype(np.float32),
        values=rng.normal(size=(T, N)).astype(np.float32),
        rewards=np.zeros((T, N), np.float32),
        dones=np.zeros((T, N), bool),
        filled=valid.copy(),
        valid=valid,
        bootstrap_features=features[0],
    )
    targets = {
        "advantages": rng.normal(size=(T, N)).astype(np.float32),
        "returns": rng.normal(size=(T, N)).astype(np.float32),
        "valid": valid,
        "masked": np.zeros((T, N), bool),
    }
    # Padding holds garbage; it must not matter.
    targets["advantages"][~valid] = 50.0
    targets["returns"][~valid] = -80.0
    norm = masked_moments(jnp.asarray(targets["advantages"]), jnp.asarray(valid))
    return cfg, network, params, batch, targets, norm


def flat_samples(batch, targets, rows=None):
    s = {
        "features": batch.features,
        "actions": batch.actions,
        "logprobs": batch.logprobs,
        "values": batch.values,
        "advantages": targets["advantages"],
        "returns": targets["returns"],
        "valid": targets["valid"],
    }
    s = {k: np.asarray(v).reshape((T * N,) + np.shape(v)[2:]) for k, v in s.items()}
    if rows is not None:
        s = {k: v[rows] for k, v in s.items()}
    return s


def grad_sum(module, network, params, samples, norm, cfg):
    apply_fn = lambda p, x: network.apply(p, x)
    grad_fn = jax.jit(jax.grad(lambda p, s: module.loss_sums(apply_fn, p, s, norm, cfg), has_aux=True))
    grads, (count, _) = grad_fn(params, samples)
    return grads, float(count)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("algo", ["ppo", "pg"])
def test_padding_adds_nothing_and_ranks_sum_to_the_whole(algo):
    cfg, network, params, batch, targets, norm = setup(algo)
    module = ppo if algo == "ppo" else pg
    all_samples = flat_samples(batch, targets)
    valid_rows = np.nonzero(all_samples["valid"])[0]
    g_padded, c_padded = grad_sum(module, network, params, all_samples, norm, cfg)
    g_valid, c_valid = grad_sum(module, network, params, flat_samples(batch, targets, valid_rows), norm, cfg)
    assert c_padded == c_valid == 6 + 1 + 0 + 4 - 0  # rows 6, 2, 0, 4 long, one auto-reset step out
    assert_trees_close(g_padded, g_valid)

    # Two "ranks" of 12 samples each, holding different numbers of valid samples (rounds t=0-2 and t=3-5):
    # the sum of their gradient sums over the sum of their counts is the whole batch's mean gradient.
    g0, c0 = grad_sum(module, network, params, flat_samples(batch, targets, np.arange(12)), norm, cfg)
    g1, c1 = grad_sum(module, network, params, flat_samples(batch, targets, np.arange(12, T * N)), norm, cfg)
    assert (c0, c1) == (7.0, 4.0)
    mean_two_ranks = jax.tree.map(lambda a, b: (a + b) / (c0 + c1), g0, g1)
    mean_whole = jax.tree.map(lambda g: g / c_valid, g_valid)
    assert_trees_close(mean_two_ranks, mean_whole)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(mean_whole)) > 1e-4  # not trivially zero
    # ... which is not what averaging the two ranks' own means would give (they hold unequal counts).
    mean_of_means = jax.tree.map(lambda a, b: (a / c0 + b / c1) / 2, g0, g1)
    assert (
        max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(mean_of_means), jax.tree.leaves(mean_whole)))
        > 1e-5
    )


OPTIMIZER = optax.sgd(1.0, momentum=0.9)  # first step: update = -1 x gradient; its state (a trace) must move


@pytest.fixture(scope="module")
def ppo_setup():
    return setup("ppo")


@pytest.fixture(scope="module")
def optimize_one_rank(ppo_setup):
    cfg, network = ppo_setup[0], ppo_setup[1]
    return make_optimize(cfg, lambda p, x: network.apply(p, x), OPTIMIZER, lambda x: x)


def fresh_state(params):
    return TrainState(params=params, opt_state=OPTIMIZER.init(params), key=jax.random.PRNGKey(3))


def test_make_optimize_applies_the_mean_gradient_of_valid_samples(ppo_setup, optimize_one_rank):
    cfg, network, params, batch, targets, norm = ppo_setup
    state = fresh_state(params)
    new_state, metrics, counts = optimize_one_rank(state, jax.tree.map(jnp.asarray, batch), targets, norm, 1.0, 1.0)
    assert np.asarray(counts).tolist() == [11.0]
    valid_rows = np.nonzero(flat_samples(batch, targets)["valid"])[0]
    g, c = grad_sum(ppo, network, params, flat_samples(batch, targets, valid_rows), norm, cfg)
    want = jax.tree.map(lambda p, gr: p - gr / c, params, g)  # learning rate 1, empty momentum
    assert_trees_close(new_state.params, want, rtol=1e-5, atol=1e-6)
    # Metrics are means over the valid samples: the entropy of a near-uniform 2-action policy ~ ln 2.
    assert abs(float(metrics[2]) - np.log(2)) < 0.01
    assert not np.array_equal(np.asarray(new_state.key), np.asarray(state.key))  # the key moves on
    # lr_frac scales the step: half the learning-rate fraction, half the parameter change.
    half, _, _ = optimize_one_rank(state, jax.tree.map(jnp.asarray, batch), targets, norm, 0.5, 1.0)
    assert_trees_close(
        jax.tree.map(lambda n, p: 2 * (n - p), half.params, params),
        jax.tree.map(lambda n, p: n - p, new_state.params, params),
        rtol=1e-4,
        atol=1e-6,
    )


def test_make_optimize_two_identical_ranks_give_the_same_step(ppo_setup, optimize_one_rank):
    """An allreduce summing two ranks with the same data doubles sums and counts: the mean is unchanged."""
    cfg, network, params, batch, targets, norm = ppo_setup
    two = make_optimize(cfg, lambda p, x: network.apply(p, x), OPTIMIZER, lambda x: 2.0 * x)
    state = fresh_state(params)
    b = jax.tree.map(jnp.asarray, batch)
    s1, m1, c1 = optimize_one_rank(state, b, targets, norm, 1.0, 1.0)
    s2, m2, c2 = two(state, b, targets, norm, 1.0, 1.0)
    assert float(c2[0]) == 2 * float(c1[0])
    assert_trees_close(s1.params, s2.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(m1), np.asarray(m2), rtol=1e-6)


def test_make_optimize_without_valid_samples_leaves_the_state_alone(ppo_setup, optimize_one_rank):
    cfg, network, params, batch, targets, norm = ppo_setup
    none = np.zeros((T, N), bool)
    state = fresh_state(params)
    # One real step first, so that the momentum trace is nonzero and would move again.
    state, _, _ = optimize_one_rank(state, jax.tree.map(jnp.asarray, batch), targets, norm, 1.0, 1.0)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(state.opt_state)) > 0
    empty = jax.tree.map(jnp.asarray, batch.replace(valid=none, filled=none))
    new_state, _, counts = optimize_one_rank(state, empty, dict(targets, valid=none), jnp.zeros(3), 1.0, 1.0)
    assert float(counts[0]) == 0.0
    for a, b in zip(
        jax.tree.leaves((state.params, state.opt_state)),
        jax.tree.leaves((new_state.params, new_state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "scale, kl, expected",
    [
        (1.0, 0.020, 1 / 1.5),  # above 2 x 0.008: slower
        (1.0, 0.003, 1.5),  # below 0.004: faster
        (1.0, 0.010, 1.0),  # within: kept
        (0.1, 0.500, 0.1),  # held at the floor
        (9.0, 0.000, 10.0),  # held at the ceiling
        (1.0, float("nan"), 1.0),  # a skipped round says nothing
    ],
)
def test_adapt_lr_scale_by_hand(scale, kl, expected):
    from jaxpong.learn.learner import adapt_lr_scale

    assert adapt_lr_scale(scale, kl, 0.008) == pytest.approx(expected)
    assert adapt_lr_scale(scale, kl, 0.0) == scale  # the rule off


def test_ppo_ewma_moves_the_proximal_weights_by_their_decay(ppo_setup):
    """With the proximal policy equal to the behaviour one (a fresh state, logprobs of the current weights),
    the first step is plain PPO's; after it the proximal weights are decay x old + (1 - decay) x new."""
    cfg, network, params, batch, targets, norm = ppo_setup
    apply_fn = lambda p, x: network.apply(p, x)  # noqa: E731
    # The behaviour log-probabilities of the current weights: every ratio starts at 1 for both objectives.
    logits, _ = apply_fn(params, jnp.asarray(batch.features, jnp.float32).reshape(T * N, H, W))
    actions = jnp.asarray(batch.actions).reshape(T * N, 1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), actions, axis=-1).reshape(T, N)
    b = jax.tree.map(jnp.asarray, batch.replace(logprobs=np.asarray(logp)))
    ewma_cfg = small_cfg()
    ewma_cfg.algo.proximal, ewma_cfg.algo.ewma_age = "ewma", 4.0  # decay 0.75
    plain = make_optimize(cfg, apply_fn, OPTIMIZER, lambda x: x)(fresh_state(params), b, targets, norm, 1.0, 1.0)
    start = fresh_state(params).replace(proximal=params)
    ewma = make_optimize(ewma_cfg, apply_fn, OPTIMIZER, lambda x: x)(start, b, targets, norm, 1.0, 1.0)
    assert_trees_close(ewma[0].params, plain[0].params, rtol=1e-5, atol=1e-6)
    want = jax.tree.map(lambda old, new: 0.75 * old + 0.25 * new, params, plain[0].params)
    assert_trees_close(ewma[0].proximal, want, rtol=1e-5, atol=1e-6)
    assert plain[0].proximal is None


def test_a_moving_average_kept_but_not_clipped_to_leaves_plain_ppo(ppo_setup):
    """proximal auto below ewma_from_scale: the round config says behaviour, the state still carries the
    average (so a resume at a larger scale can use it). The parameters move exactly as plain PPO's, and the
    average by its decay (0.75 at ewma_age 4), as with ewma."""
    cfg, network, params, batch, targets, norm = ppo_setup
    apply_fn = lambda p, x: network.apply(p, x)  # noqa: E731
    b = jax.tree.map(jnp.asarray, batch)
    plain = make_optimize(cfg, apply_fn, OPTIMIZER, lambda x: x)(fresh_state(params), b, targets, norm, 1.0, 1.0)
    kept_cfg = small_cfg()
    kept_cfg.algo.ewma_age = 4.0
    assert kept_cfg.algo.proximal == "behaviour"
    start = fresh_state(params).replace(proximal=params)
    kept = make_optimize(kept_cfg, apply_fn, OPTIMIZER, lambda x: x)(start, b, targets, norm, 1.0, 1.0)
    assert_trees_close(kept[0].params, plain[0].params, rtol=1e-6, atol=1e-7)
    want = jax.tree.map(lambda old, new: 0.75 * old + 0.25 * new, params, plain[0].params)
    assert_trees_close(kept[0].proximal, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("proximal, kept", [("behaviour", False), ("ewma", True), ("auto", True)])
def test_a_fresh_state_keeps_the_moving_average_for_ewma_and_auto(ppo_setup, proximal, kept):
    """The average starts at the initial weights wherever it may be used (auto: at any rank count, so a
    resume at another count finds it); with the behaviour policy the state has none (older checkpoints' tree)."""
    from jaxpong.learn.learner import init_state

    cfg, network = small_cfg(), ppo_setup[1]
    cfg.algo.proximal = proximal
    state = init_state(cfg, network, OPTIMIZER, jax.random.PRNGKey(0))
    assert (state.proximal is not None) == kept
    if kept:
        assert_trees_close(state.proximal, state.params, rtol=0, atol=0)

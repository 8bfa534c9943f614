"""Masked gradient sums and counts: padding adds nothing, and ranks' sums / counts give the whole batch's mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpong.algorithms import pg, ppo
from jaxpong.algorithms.returns import masked_moments
from jaxpong.batch import Batch
from jaxpong.config import Config
from jaxpong.learner import TrainState, make_optimize
from jaxpong.networks import make_network

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
    params = network.init(jax.random.PRNGKey(seed), jnp.zeros((1, H, W)))
    valid = np.arange(T)[:, None] < np.array([6, 2, 0, 4])[None, :]  # cut rows; env 2 has nothing
    valid[1, 0] = False  # an auto-reset step inside a row
    valid &= True
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
        "features": batch.features, "actions": batch.actions, "logprobs": batch.logprobs, "values": batch.values,
        "advantages": targets["advantages"], "returns": targets["returns"], "valid": targets["valid"],
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

    # Two "ranks" holding different numbers of samples: rank 0 the first 10 flat samples, rank 1 the rest.
    g0, c0 = grad_sum(module, network, params, flat_samples(batch, targets, np.arange(10)), norm, cfg)
    g1, c1 = grad_sum(module, network, params, flat_samples(batch, targets, np.arange(10, T * N)), norm, cfg)
    assert c0 != c1 and c0 + c1 == c_padded
    mean_two_ranks = jax.tree.map(lambda a, b: (a + b) / (c0 + c1), g0, g1)
    mean_whole = jax.tree.map(lambda g: g / c_padded, g_padded)
    assert_trees_close(mean_two_ranks, mean_whole)

    # The mean gradient is the gradient of the mean loss over the valid samples alone.
    apply_fn = lambda p, x: network.apply(p, x)
    valid_only = flat_samples(batch, targets, valid_rows)
    g_mean = jax.jit(jax.grad(lambda p: module.loss_sums(apply_fn, p, valid_only, norm, cfg)[0] / c_valid))(params)
    assert_trees_close(mean_whole, g_mean)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_mean)) > 1e-4  # not trivially zero


def make_step(cfg, network, allreduce, learning_rate=1.0):
    optimizer = optax.sgd(learning_rate)
    optimize = make_optimize(cfg, lambda p, x: network.apply(p, x), optimizer, allreduce)
    return optimizer, optimize


def test_make_optimize_applies_the_mean_gradient_of_valid_samples():
    cfg, network, params, batch, targets, norm = setup("ppo")
    optimizer, optimize = make_step(cfg, network, lambda x: x)
    state = TrainState(params=params, opt_state=optimizer.init(params), key=jax.random.PRNGKey(3))
    new_state, metrics, counts = optimize(state, jax.tree.map(jnp.asarray, batch), targets, norm, 1.0, 1.0)
    assert np.asarray(counts).tolist() == [11.0]
    valid_rows = np.nonzero(flat_samples(batch, targets)["valid"])[0]
    g, c = grad_sum(ppo, network, params, flat_samples(batch, targets, valid_rows), norm, cfg)
    want = jax.tree.map(lambda p, gr: p - gr / c, params, g)  # sgd with learning rate 1
    assert_trees_close(new_state.params, want, rtol=1e-5, atol=1e-6)
    # Metrics are means over the valid samples: the entropy of a near-uniform 2-action policy ~ ln 2.
    assert abs(float(metrics[2]) - np.log(2)) < 0.01
    assert not np.array_equal(np.asarray(new_state.key), np.asarray(state.key))  # the key moves on


def test_make_optimize_two_identical_ranks_give_the_same_step():
    """An allreduce summing two ranks with the same data doubles sums and counts: the mean is unchanged."""
    cfg, network, params, batch, targets, norm = setup("ppo")
    optimizer, one = make_step(cfg, network, lambda x: x)
    _, two = make_step(cfg, network, lambda x: 2.0 * x)
    state = TrainState(params=params, opt_state=optimizer.init(params), key=jax.random.PRNGKey(3))
    b = jax.tree.map(jnp.asarray, batch)
    s1, m1, c1 = one(state, b, targets, norm, 1.0, 1.0)
    s2, m2, c2 = two(state, b, targets, norm, 1.0, 1.0)
    assert float(c2[0]) == 2 * float(c1[0])
    assert_trees_close(s1.params, s2.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(m1), np.asarray(m2), rtol=1e-6)


def test_make_optimize_without_valid_samples_leaves_the_state_alone():
    cfg, network, params, batch, targets, norm = setup("ppo")
    none = np.zeros((T, N), bool)
    batch = batch.replace(valid=none, filled=none)
    targets = dict(targets, valid=none)
    optimizer = optax.adam(0.1)
    optimize = make_optimize(cfg, lambda p, x: network.apply(p, x), optimizer, lambda x: x)
    state = TrainState(params=params, opt_state=optimizer.init(params), key=jax.random.PRNGKey(3))
    new_state, _, counts = optimize(state, jax.tree.map(jnp.asarray, batch), targets, jnp.zeros(3), 1.0, 1.0)
    assert float(counts[0]) == 0.0
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state)), jax.tree.leaves((new_state.params, new_state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

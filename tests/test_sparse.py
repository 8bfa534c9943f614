"""The update's sparse first layer: cell lists by hand, the same sums and gradients as the dense product,
and the same update as the dense path, step for step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpong.base.config import Config
from jaxpong.learn.learner import TrainState, make_optimize, sparse_round
from jaxpong.learn.networks import Heads, make_network
from jaxpong.play import sparse
from test_gradients import N, T, setup


def test_padded_length_rounds_up_on_a_coarse_ladder():
    assert sparse.padded_length(0, 8) == 8
    assert sparse.padded_length(8, 8) == 8
    assert sparse.padded_length(9, 8) == 16
    assert sparse.padded_length(7_600) == 8_192  # the default's minibatches: 2,048-steps up to 16,384
    assert sparse.padded_length(8_193) == 10_240
    assert sparse.padded_length(16_385) == 20_480  # above 16,384 the step is 32,768 / 8 = 4,096
    assert sparse.padded_length(100_000) == 114_688  # 131,072 / 8 = 16,384 per step


def test_minibatch_cells_by_hand():
    # Four samples of 2x3 cells, flattened to 6: sample 0 has cells (1: +1) and (5: -1), sample 1 none,
    # sample 2 (0: -1), sample 3 (2: +1), (3: +1), (4: -1).
    x = np.zeros((4, 2, 3), np.int8)
    x[0, 0, 1], x[0, 1, 2] = 1, -1
    x[2, 0, 0] = -1
    x[3, 0, 2], x[3, 1, 0], x[3, 1, 1] = 1, 1, -1
    cells = sparse.RoundCells(x)
    assert cells.count.tolist() == [2, 0, 1, 3]
    order = np.array([[3, 0], [1, 2]])  # minibatch 0 = samples 3 then 0; minibatch 1 = samples 1 then 2
    assert cells.length(order) == sparse.ROUND_TO
    s = cells.minibatches(order)
    assert (s.num_rows, s.width) == (2, 6)
    k = sparse.ROUND_TO
    assert s.rows.shape == s.cols.shape == s.vals.shape == (2, k)
    # Minibatch 0: position 0 is sample 3 (three cells), position 1 sample 0 (two cells), in column order.
    assert s.rows[0, :5].tolist() == [0, 0, 0, 1, 1]
    assert s.cols[0, :5].tolist() == [2, 3, 4, 1, 5]
    assert s.vals[0, :5].tolist() == [1, 1, -1, 1, -1]
    # Minibatch 1: sample 1 has nothing; sample 2's one cell sits at position 1.
    assert (s.rows[1, 0], s.cols[1, 0], s.vals[1, 0]) == (1, 0, -1)
    # Padding: value 0 on the last position, so rows stay sorted and nothing is added.
    assert (s.vals[0, 5:] == 0).all() and (s.rows[0, 5:] == 1).all() and (s.vals[1, 1:] == 0).all()
    assert (np.diff(s.rows, axis=1) >= 0).all()
    np.testing.assert_array_equal(sparse.to_dense(s), x.reshape(4, 6)[order])
    # A longer list on request (ranks agree on one length); a shorter one than needed is refused.
    assert cells.minibatches(order, 2 * sparse.ROUND_TO).rows.shape == (2, 2 * sparse.ROUND_TO)
    with pytest.raises(ValueError, match="cannot hold"):
        cells.minibatches(order, 4)
    # Samples left out by `keep` (no loss weight) count as all zeros.
    kept = sparse.RoundCells(x, keep=np.array([True, True, True, False]))
    assert kept.count.tolist() == [2, 0, 1, 0]
    dense = sparse.to_dense(kept.minibatches(order))
    np.testing.assert_array_equal(dense[0, 0], np.zeros(6, np.int8))  # sample 3
    np.testing.assert_array_equal(dense[0, 1], x[0].reshape(6))


def test_a_round_without_nonzero_cells_gives_all_padding():
    s = sparse.RoundCells(np.zeros((6, 10), np.int8)).minibatches(np.arange(6).reshape(2, 3))
    assert s.rows.shape == (2, sparse.ROUND_TO)
    assert (s.vals == 0).all() and (s.rows == 2).all()


def random_frames(rng, shape, density=0.02):
    """Ternary frames as sparse as the difference frames of play."""
    signs = rng.choice(np.array([-1, 1], np.int8), size=shape)
    return np.where(rng.random(shape) < density, signs, 0).astype(np.int8)


def test_sparse_matmul_and_its_kernel_gradient_match_the_dense_product():
    rng = np.random.default_rng(0)
    x = random_frames(rng, (48, 300))
    order = rng.permutation(48)[:40].reshape(2, 20)
    s = jax.tree.map(jnp.asarray, sparse.RoundCells(x).minibatches(order))
    kernel = jnp.asarray(rng.normal(size=(300, 16)).astype(np.float32))
    dense = jnp.asarray(x[order].astype(np.float32))  # [2, 20, 300]
    for m in range(2):
        mb = jax.tree.map(lambda a: a[m], s)
        got = jax.jit(sparse.matmul)(mb, kernel)
        np.testing.assert_allclose(np.asarray(got), np.asarray(dense[m] @ kernel), rtol=1e-5, atol=1e-5)
        loss_sparse = lambda k: jnp.sum(jnp.tanh(sparse.matmul(mb, k)) ** 2)
        loss_dense = lambda k: jnp.sum(jnp.tanh(dense[m] @ k) ** 2)
        np.testing.assert_allclose(
            np.asarray(jax.grad(loss_sparse)(kernel)), np.asarray(jax.grad(loss_dense)(kernel)), rtol=1e-4, atol=1e-5
        )


class DenseMLP(nn.Module):
    """The MLP as it was written before the sparse input: nn.Dense, auto-named Dense_0."""

    hidden_size: int
    heads: Heads
    use_bias: bool

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        h = nn.Dense(self.hidden_size, use_bias=self.use_bias, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x)
        return self.heads(nn.relu(h))


@pytest.mark.parametrize("use_bias", [True, False])
def test_mlp_keeps_its_parameter_layout_and_gives_the_dense_outputs_on_sparse_input(use_bias):
    cfg = Config()
    cfg.model.hidden_size = 32
    cfg.model.use_bias = use_bias
    network = make_network(cfg.model)
    frames = random_frames(np.random.default_rng(1), (6, 32, 42))
    params = network.init(jax.random.PRNGKey(5), jnp.zeros((1, 32, 42)))
    # Same names, shapes and initial values as an nn.Dense first layer: old checkpoints load unchanged.
    old = DenseMLP(32, network.heads, use_bias).init(jax.random.PRNGKey(5), jnp.zeros((1, 32, 42)))
    assert jax.tree.structure(old) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s = sparse.RoundCells(frames).minibatches(np.arange(6)[None])
    s = jax.tree.map(lambda a: jnp.asarray(a[0]), s).replace(vals=jnp.asarray(s.vals[0], jnp.float32))
    logits_s, value_s = network.apply(params, s)
    logits_d, value_d = network.apply(params, jnp.asarray(frames, jnp.float32))
    np.testing.assert_allclose(np.asarray(logits_s), np.asarray(logits_d), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(value_s), np.asarray(value_d), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo,epochs,minibatches", [("ppo", 1, 1), ("ppo", 2, 3), ("ppo", 2, 5), ("pg", 1, 1)])
def test_sparse_update_equals_the_dense_update(algo, epochs, minibatches):
    """The host lists each minibatch's cells in the order the update draws: same parameters, metrics, key.
    (2 x 5 on 24 samples: an uneven split, whose remainder sits out of each epoch.)"""
    cfg, network, params, batch, targets, norm = setup(algo)
    cfg.algo.update_epochs, cfg.algo.num_minibatches = epochs, minibatches
    batch = batch.replace(features=random_frames(np.random.default_rng(2), batch.features.shape, density=0.1))
    optimizer = optax.adam(1e-2)
    optimize = make_optimize(cfg, lambda p, x: network.apply(p, x), optimizer, lambda x: x)
    state = TrainState(params=params, opt_state=optimizer.init(params), key=jax.random.PRNGKey(7))
    dense_state, dense_metrics, dense_counts = optimize(
        state, jax.tree.map(jnp.asarray, batch), targets, norm, 1.0, 1.0
    )
    # As the trainer does it: cells of the valid samples only, in the order drawn from the state's key.
    cells, order = sparse_round(cfg, state.key, batch)
    assert order.shape == (epochs * minibatches, T * N // minibatches)
    assert cells.count.sum() < (batch.features != 0).sum()  # invalid samples' cells were left out
    cells = cells.minibatches(order)
    sparse_state, sparse_metrics, sparse_counts = optimize(
        state,
        jax.tree.map(jnp.asarray, batch.replace(features=None)),
        targets,
        norm,
        1.0,
        1.0,
        jax.tree.map(jnp.asarray, cells),
    )
    np.testing.assert_array_equal(np.asarray(sparse_counts), np.asarray(dense_counts))
    np.testing.assert_allclose(np.asarray(sparse_metrics), np.asarray(dense_metrics), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sparse_state.key), np.asarray(dense_state.key))
    moved = max(
        float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(dense_state.params), jax.tree.leaves(params))
    )
    assert moved > 1e-3  # the update did something ...
    for a, b in zip(jax.tree.leaves(sparse_state.params), jax.tree.leaves(dense_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # ... and the same thing


def test_reuse_length_keeps_a_compiled_length_that_holds_the_round():
    from jaxpong.play.sparse import reuse_length

    assert reuse_length(4096, set()) == 4096  # nothing compiled yet
    assert reuse_length(40960, {81920}) == 81920  # the first round's longer lists: no second compile
    assert reuse_length(20480, {81920}) == 20480  # over 2x the slots needed: a shorter length is worth a compile
    assert reuse_length(2048, {8192}) == 8192  # short lists: up to 4 x 2,048 slots of padding cost next to nothing
    assert reuse_length(2048, {12288}) == 2048
    assert reuse_length(51200, {40960, 61440, 81920}) == 61440  # the shortest that holds it
    assert reuse_length(90112, {81920}) == 90112  # none holds it

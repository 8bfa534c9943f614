"""Checkpoints: a real TrainState and the Counters come back exactly as saved; only the last K are kept."""

from __future__ import annotations

from dataclasses import asdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.learn.learner import init_state, make_optimizer
from jaxpong.learn.networks import make_network
from jaxpong.store.checkpoint import Checkpoints
from jaxpong.training.round import Counters


def trained_state(seed):
    """init_state of a small MLP, then two optimizer steps with random gradients, so that every optimizer
    leaf is nonzero. One jitted function for all seeds: op-by-op it costs many small compilations."""
    return jax.tree.map(np.asarray, _build_state(jax.random.PRNGKey(seed)))


_CFG = Config()
_CFG.model.hidden_size = 16  # adam (under clip_by_global_norm and apply_if_finite): a nested optimizer state


@jax.jit
def _build_state(seed_key):
    network, optimizer = make_network(_CFG.model), make_optimizer(_CFG)
    state = init_state(_CFG, network, optimizer, seed_key)
    params, opt_state = state.params, state.opt_state
    for i in range(2):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(seed_key, i), p.shape, p.dtype), params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return state.replace(params=params, opt_state=opt_state, key=jax.random.fold_in(state.key, 7))


def assert_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_train_state_and_counters_round_trip_exactly(tmp_path):
    saved = trained_state(seed=1)
    assert all(np.abs(x).sum() > 0 for x in jax.tree.leaves(saved.opt_state) if np.ndim(x))
    counters = Counters(
        update=12,
        step=3072,
        env_steps=3100,
        episodes=5,
        masked=17,
        skipped_updates=1,
        resume_count=2,
        elapsed_s=123.456789,
        recent_returns=[-21.0, -20.0, -19.5],
    )
    ckpt = Checkpoints(tmp_path / "checkpoints", keep=3)
    ckpt.save(3072, saved, {"counters": asdict(counters), "world_size": 2})
    assert ckpt.steps() == [3072]

    # Restore into a template that differs in every value (another seed), as a resumed Trainer does.
    template = trained_state(seed=2)
    restored, meta = Checkpoints(tmp_path / "checkpoints", read_only=True).restore(3072, template)
    assert_bitwise_equal(restored, saved)
    assert Counters(**meta["counters"]) == counters
    assert meta["world_size"] == 2
    # The key is a real PRNG key again: it draws the same numbers as the saved one.
    np.testing.assert_array_equal(
        jax.random.uniform(jnp.asarray(restored.key), (3,)), jax.random.uniform(saved.key, (3,))
    )


def test_only_the_last_checkpoints_are_kept(tmp_path):
    state = trained_state(seed=3)
    ckpt = Checkpoints(tmp_path / "c", keep=2)
    for step in (256, 512, 768):
        ckpt.save(step, state, {"counters": asdict(Counters(step=step))})
    assert ckpt.steps() == [512, 768]
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.isdigit()) == ["512", "768"]
    assert ckpt.read_meta(768)["counters"]["step"] == 768


def test_restoring_into_another_model_is_a_config_error(tmp_path):
    saved = trained_state(seed=4)
    ckpt = Checkpoints(tmp_path / "c", keep=1)
    ckpt.save(1, saved, {"counters": asdict(Counters())})
    # A template whose layers have other shapes (another hidden size), as another model's Trainer would give.
    other = saved.replace(
        params=jax.tree.map(lambda x: np.zeros((x.shape[0] + 1,) + x.shape[1:], x.dtype), saved.params)
    )
    with pytest.raises(ConfigError, match="checkpoint"):
        ckpt.restore(1, other)


def test_a_checkpoint_from_before_the_proximal_field_restores(tmp_path):
    """Checkpoints written before TrainState gained `proximal` hold (params, opt_state, key) only: they restore
    into today's state (proximal None), counters without lr_scale included; one with ewma weights keeps them."""
    from flax import struct

    @struct.dataclass
    class EarlierTrainState:  # TrainState as it was saved before the field
        params: dict
        opt_state: object
        key: jax.Array

    saved = trained_state(seed=1)
    earlier = EarlierTrainState(params=saved.params, opt_state=saved.opt_state, key=saved.key)
    old_counters = {k: v for k, v in asdict(Counters(update=3, step=99)).items() if k != "lr_scale"}
    ckpt = Checkpoints(tmp_path / "checkpoints", keep=3)
    ckpt.save(99, earlier, {"counters": old_counters})
    restored, meta = Checkpoints(tmp_path / "checkpoints", read_only=True).restore(99, trained_state(seed=2))
    assert restored.proximal is None
    assert_bitwise_equal(restored, saved)
    assert Counters(**meta["counters"]).lr_scale == 1.0
    # A state with proximal weights round-trips them.
    with_ewma = saved.replace(proximal=jax.tree.map(lambda x: x + 1.0, saved.params))
    ckpt.save(100, with_ewma, {"counters": old_counters})
    back, _ = Checkpoints(tmp_path / "checkpoints", read_only=True).restore(100, with_ewma)
    assert_bitwise_equal(back, with_ewma)

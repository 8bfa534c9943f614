"""The NumPy policy step (host_policy.py) against the jitted step, by hand, and inside the collector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpong.base import config as config_lib
from jaxpong.base.errors import ConfigError
from jaxpong.learn.learner import init_state, make_optimizer
from jaxpong.learn.networks import make_network
from jaxpong.play.envs import PURPOSE_TRAIN, EnvIO, env_seeds, frame_shape, make_env
from jaxpong.play.host_policy import AUTO_MAX_ROWS, HostMLP, HostPolicy, use_host_policy
from jaxpong.play.keys import action_noise
from jaxpong.play.rollout import Collector, make_packed_step, make_policy_step, packed_fields

SEED = "configs/seed_ppg.yaml"
# The 2016 MLP (karpathy80, no biases, Bernoulli head, no value head) and the default's kind
# (area32, biases, a softmax over the actions, a value head), with three actions to tell the heads apart.
CASES = {
    "2016": (SEED, {}),
    "area32-3-actions": (None, {"model": {"obs_mode": "area32", "actions": [0, 2, 3], "hidden_size": 32}}),
}


def _setup(case: str, overrides: dict | None = None):
    path, base = CASES[case]
    merged = {k: {**v, **(overrides or {}).get(k, {})} for k, v in base.items()}
    for k, v in (overrides or {}).items():
        merged.setdefault(k, v)
    cfg = config_lib.build(path, merged)
    net = make_network(cfg.model)
    params = init_state(cfg, net, make_optimizer(cfg), jax.random.PRNGKey(0)).params
    return cfg, net, params


def _sharpen(params, factor: float):
    """The heads' kernels scaled up, so that logits are far from 0 and actions follow them, not the noise."""
    heads = dict(params["params"]["heads"])
    heads["Dense_0"] = {**heads["Dense_0"], "kernel": heads["Dense_0"]["kernel"] * factor}
    return {"params": {**params["params"], "heads": heads}}


def _frames(cfg, steps: int, rows: int) -> np.ndarray:
    """[steps, rows, ...] frames of real play (random actions), sync envs."""
    env = make_env(cfg, seeds=env_seeds(5, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
    io, rng = EnvIO(env), np.random.default_rng(0)
    env.async_reset()
    out = [io.recv()[0].copy()]
    for _ in range(steps - 1):
        io.send(
            rng.choice(np.asarray(cfg.model.actions, np.int32), rows).astype(np.int32), np.arange(rows, dtype=np.int32)
        )
        out.append(io.recv()[0].copy())
    env.close()
    return np.stack(out)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sharpen", [1.0, 3000.0], ids=["init", "sharp"])
def test_host_step_equals_the_jitted_steps_on_the_same_frames_and_noise(case, sharpen):
    """Call after call: the host step and the collector's jitted step given the Gumbel noise that the plain
    step's key draws: same features and actions as both; log-probs and values to rounding."""
    rows = 3
    cfg, net, params = _setup(case, {"env": {"num_envs": rows}})
    params = _sharpen(params, sharpen)
    frames = _frames(cfg, 40, rows)
    apply_fn = lambda p, x: net.apply(p, x)  # noqa: E731
    step = make_policy_step(apply_fn, cfg.model.obs_mode)
    packed_step = make_packed_step(apply_fn, cfg.model.obs_mode)
    host = HostPolicy(cfg)
    key = jax.random.PRNGKey(11)
    host.start_round(params)
    largest = 0.0
    for t in range(len(frames)):
        noise = np.asarray(jax.random.gumbel(jax.random.split(key)[1], (rows, len(cfg.model.actions))))
        features, action, logp, value, key = jax.device_get(step(params, frames[t], key))
        h_features, h_action, h_logp, h_value = host.step(frames[t], noise)
        assert h_features.dtype == features.dtype and (h_features == features).all(), t
        assert h_action.dtype == np.int32 and (h_action == action).all(), t
        np.testing.assert_allclose(h_logp, logp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h_value, value, rtol=1e-5, atol=1e-6)
        packed = np.asarray(packed_step(params, frames[t], noise))
        assert (packed_fields(packed, features.shape[1:], features.dtype)["action"] == action).all(), t
        largest = max(largest, float(np.abs(host.mlp.forward(h_features)[0]).max()))
    if sharpen > 1:  # the test means something: logits far from 0, so the actions follow them
        assert largest > 3.0


def test_greedy_action_and_distribution_by_hand():
    """The 2016 head by hand: h = relu(sum of the kernel rows of the nonzero cells x their values), z = h . w,
    P(first action) = sigmoid(z), log-probs log sigmoid(+-z); the argmax action is the greedy one, and
    sampled actions follow sigmoid(z)."""
    cfg, _, _ = _setup("2016")
    mlp = HostMLP(cfg)
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(6400, 200)).astype(np.float32) / 80
    w = rng.normal(size=(200, 1)).astype(np.float32) / 14
    mlp.load({"params": {"Dense_0": {"kernel": kernel}, "heads": {"Dense_0": {"kernel": w}}}})
    features = np.zeros((2, 80, 80), np.int8)
    features[0, 10, 20], features[0, 30, 40], features[0, 79, 79] = 1, -1, 1
    features[1, 5, 5] = 1  # second row: one cell
    h0 = np.maximum(kernel[10 * 80 + 20] - kernel[30 * 80 + 40] + kernel[6399], 0)
    h1 = np.maximum(kernel[5 * 80 + 5], 0)
    z = np.array([h0 @ w[:, 0], h1 @ w[:, 0]])
    logits, value = mlp.forward(features)
    np.testing.assert_allclose(logits, np.stack([z, np.zeros(2)], 1), rtol=1e-5, atol=1e-6)
    assert (value == 0).all()
    # The step's log-probabilities: log sigmoid(z) for the first action, log sigmoid(-z) for the second.
    policy = HostPolicy(cfg)
    policy.mlp = mlp
    for k in range(4):
        action, logp, _ = policy.act(features, np.asarray(jax.random.gumbel(jax.random.PRNGKey(k), (2, 2))))
        expected = np.where(action == 0, -np.log1p(np.exp(-z)), -np.log1p(np.exp(z)))
        np.testing.assert_allclose(logp, expected, rtol=1e-5)
    # Sampling: argmax(logits + Gumbel noise) picks the first action with probability sigmoid(z).
    n = 20000
    noise = action_noise(jax.random.PRNGKey(3), np.arange(n), 1, 2)[0]  # one row of n games
    fixed = np.tile(np.array([[0.7, 0.0]], np.float32), (n, 1))
    picked_first = (np.argmax(fixed + noise, -1) == 0).mean()
    p = 1 / (1 + np.exp(-0.7))
    assert abs(picked_first - p) < 4 * np.sqrt(p * (1 - p) / n)
    # Greedy: the argmax of the logits is the action the jitted step picks with greedy=True.
    net = make_network(cfg.model)
    step = make_policy_step(lambda p, x: net.apply(p, x), cfg.model.obs_mode)
    params = {"params": {"Dense_0": {"kernel": jnp.asarray(kernel)}, "heads": {"Dense_0": {"kernel": jnp.asarray(w)}}}}
    frames = _frames(cfg, 30, 1)
    for t in range(5, 30, 5):
        _, greedy, _, _, _ = jax.device_get(step(params, frames[t], jax.random.PRNGKey(0), True))
        mlp_logits, _ = mlp.forward(mlp.preprocess(frames[t]))
        assert (np.argmax(mlp_logits, -1) == greedy).all()


def _twin_collectors(cfg_path: str | None, overrides: dict):
    """Two collectors on twin games (same env seeds), one acting on the host, one with the jitted step."""
    out = []
    for choice in ("on", "off"):
        cfg = config_lib.build(cfg_path, {**overrides, "model": {**overrides.get("model", {}), "host_policy": choice}})
        net = make_network(cfg.model)
        state = init_state(cfg, net, make_optimizer(cfg), jax.random.PRNGKey(0))
        env = make_env(cfg, seeds=env_seeds(1, 0, PURPOSE_TRAIN, cfg.env.num_envs))
        collector = Collector(env, cfg, lambda p, x, net=net: net.apply(p, x), num_steps=cfg.algo.num_steps)
        assert (collector.host is not None) == (choice == "on")
        out.append((collector, state, net, cfg))
    return out


def test_collector_host_path_matches_the_jitted_path_and_follows_parameter_updates():
    """The 2016 setup on twin games: each round the host path acts with the parameters it is given (the
    trainer passes the updated ones every round), so both collectors play the same games, store the
    same batch, before and after a real update of the parameters."""
    (host, state, net, cfg), (jitted, _, _, _) = _twin_collectors(SEED, {"algo": {"num_steps": 60}})
    params = state.params
    optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(params)
    root = jax.random.PRNGKey(4)
    seen_kernels = []
    for r in range(3):
        batch_h, info_h = host.collect(params, jax.random.fold_in(root, r), deadline_s=None)
        batch_j, info_j = jitted.collect(params, jax.random.fold_in(root, r), deadline_s=None)
        assert (batch_h.features == batch_j.features).all() and (batch_h.actions == batch_j.actions).all()
        assert (batch_h.rewards == batch_j.rewards).all() and (batch_h.valid == batch_j.valid).all()
        assert (batch_h.bootstrap_features == batch_j.bootstrap_features).all()
        np.testing.assert_allclose(batch_h.logprobs, batch_j.logprobs, rtol=1e-5, atol=1e-6)
        assert info_h.filled_steps == info_j.filled_steps == 60
        np.testing.assert_array_equal(host.host.mlp.kernel, np.asarray(params["params"]["Dense_0"]["kernel"]))
        seen_kernels.append(host.host.mlp.kernel.copy())
        # An update: an RMSProp step on the policy-gradient loss of this round's actions (a big learning
        # rate, so the next round's actions depend on it).

        def loss(p):
            logits, _ = net.apply(p, jnp.asarray(batch_h.features.reshape(-1, 80, 80), jnp.float32))
            logp = jax.nn.log_softmax(logits)[jnp.arange(60), batch_h.actions.reshape(-1)]
            return -(logp * jnp.linspace(-1, 1, 60)).sum()

        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        params = jax.tree.map(lambda p, u: p + 30 * u, params, updates)
    assert not np.array_equal(seen_kernels[0], seen_kernels[1])
    host.env.close()
    jitted.env.close()


def test_host_path_in_async_mode():
    """Async envs: the round's first call has num_envs rows, the others batch_size rows; the noise follows."""
    cfg = config_lib.build(
        SEED, {"env": {"num_envs": 4, "batch_size": 2}, "model": {"host_policy": "on"}, "algo": {"num_steps": 20}}
    )
    net = make_network(cfg.model)
    state = init_state(cfg, net, make_optimizer(cfg), jax.random.PRNGKey(0))
    env = make_env(cfg, seeds=env_seeds(1, 0, PURPOSE_TRAIN, 4))
    collector = Collector(env, cfg, lambda p, x: net.apply(p, x), num_steps=20)
    key = jax.random.PRNGKey(0)
    for r in range(2):
        batch, info = collector.collect(state.params, jax.random.fold_in(key, r), deadline_s=None)
        filled = np.asarray(batch.filled)
        assert filled.sum(0).max() == 20 and info.filled_steps == filled.sum()
        assert set(np.unique(batch.actions[filled])) <= {0, 1}
        p = np.exp(batch.logprobs[filled])
        assert ((p > 0) & (p < 1)).all()
    env.close()


def test_auto_rule_and_validation():
    seed = config_lib.build(SEED, {})
    assert use_host_policy(seed)  # one game: the host path
    default = config_lib.build("configs/default.yaml", {})
    assert not use_host_policy(default)  # 32 games in calls of 16 rows: the jitted step
    assert use_host_policy(config_lib.build("configs/default.yaml", {"model": {"host_policy": "on"}}))
    assert not use_host_policy(config_lib.build(SEED, {"model": {"host_policy": "off"}}))
    small = AUTO_MAX_ROWS
    assert use_host_policy(config_lib.build(None, {"env": {"num_envs": small}}))
    assert not use_host_policy(config_lib.build(None, {"env": {"num_envs": small + 1}}))
    # async: the first call of a round has num_envs rows, so num_envs decides too
    assert not use_host_policy(config_lib.build(None, {"env": {"num_envs": 2 * small, "batch_size": small}}))
    cnn = config_lib.build(None, {"model": {"network": "small_cnn", "obs_mode": "stack84"}, "env": {"num_envs": 1}})
    assert not use_host_policy(cnn)
    with pytest.raises(ConfigError, match="host_policy"):
        config_lib.build(None, {"model": {"network": "small_cnn", "obs_mode": "stack84", "host_policy": "on"}})
    assert frame_shape(seed.model) == (2, 210, 160)

"""PPO and 2016 PG losses on tiny batches checked by hand; invalid samples must contribute nothing."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpong.base.config import Config
from jaxpong.learn.algorithms import pg, ppo
from jaxpong.learn.algorithms.returns import masked_moments
from jaxpong.play.batch import Batch

LN2, LN3 = math.log(2.0), math.log(3.0)


def logits_apply(params, x):
    """A tiny 'network': features [S, 3] are (logit0, logit1, value), scaled/shifted by the params."""
    return x[:, :2] * params["w"], x[:, 2] + params["b"]


PARAMS = {"w": jnp.float32(1.0), "b": jnp.float32(0.0)}


def ppo_cfg(**algo):
    cfg = Config()
    cfg.algo.clip_coef = 0.2
    cfg.algo.vf_coef = 0.5
    cfg.algo.ent_coef = 0.01
    cfg.algo.norm_adv = False
    cfg.algo.clip_vloss = True
    for k, v in algo.items():
        setattr(cfg.algo, k, v)
    return cfg


def ppo_samples():
    """Four valid samples whose every term is easy by hand, then one invalid sample of large values.

    New policy: logits (0, 0) -> p = 1/2 for samples 0-3 (entropy ln 2); sample 2 has logits
    (ln 3, 0) -> p(action 0) = 3/4. Old log-probs are chosen to make the ratios exact.
      sample  ratio  adv  pg term = max(-A r, -A clip(r, 0.8, 1.2))   clipped?
        0      1.5   +2   max(-3.0, -2.4) = -2.4                        yes
        1      0.5   +1   max(-0.5, -0.8) = -0.5                        yes
        2      1.05  -1   max(1.05, 1.05) =  1.05                       no
        3      1.5   -1   max(1.5, 1.2)   =  1.5                        yes
      sample  value  old value  return  0.5*max(unclipped^2, clipped^2)
        0      1.0     0.5       2.0    clipped value 0.7: 0.5*max(1, 1.69) = 0.845
        1      0.0     0.1       0.0    clipped value 0.0: 0.5*max(0, 0)    = 0
        2      0.5     0.0       0.0    clipped value 0.2: 0.5*max(.25,.04) = 0.125
        3     -1.0     0.0       1.0    clipped value -.2: 0.5*max(4, 1.44) = 2.0
    """
    features = np.array(
        [
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],
            [LN3, 0.0, 0.5],
            [0.0, 0.0, -1.0],
            [40.0, -40.0, 300.0],  # invalid
        ],
        np.float32,
    )
    actions = np.array([1, 0, 0, 1, 1], np.int32)
    new_p = np.array([0.5, 0.5, 0.75, 0.5])
    ratios = np.array([1.5, 0.5, 1.05, 1.5])
    logprobs = np.concatenate([np.log(new_p / ratios), [-30.0]]).astype(np.float32)
    return {
        "features": features,
        "actions": actions,
        "logprobs": logprobs,
        "values": np.array([0.5, 0.1, 0.0, 0.0, -500.0], np.float32),
        "advantages": np.array([2.0, 1.0, -1.0, -1.0, 1000.0], np.float32),
        "returns": np.array([2.0, 0.0, 0.0, 1.0, 1000.0], np.float32),
        "valid": np.array([True, True, True, True, False]),
    }


ENT_HALF = LN2
ENT_QUARTER = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
PPO_EXPECTED = {
    "pg": -2.4 - 0.5 + 1.05 + 1.5,
    "v": 0.845 + 0.0 + 0.125 + 2.0,
    "entropy": 3 * ENT_HALF + ENT_QUARTER,
    # approx_kl per sample = (r - 1) - ln r
    "kl": 2 * (0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.05 - math.log(1.05)),
    "clipfrac": 3.0,
}


def subset(samples, rows):
    return {k: v[rows] for k, v in samples.items()}


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_ppo_loss_sums_by_hand(jitted):
    cfg = ppo_cfg()
    fn = lambda p, s, n: ppo.loss_sums(logits_apply, p, s, n, cfg)
    fn = jax.jit(fn) if jitted else fn
    loss, (count, metrics) = fn(PARAMS, ppo_samples(), jnp.zeros(3))
    e = PPO_EXPECTED
    assert float(count) == 4.0
    np.testing.assert_allclose(
        np.asarray(metrics), [e["pg"], e["v"], e["entropy"], e["kl"], e["clipfrac"]], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(float(loss), e["pg"] + 0.5 * e["v"] - 0.01 * e["entropy"], rtol=1e-5)


def test_ppo_unclipped_value_loss():
    cfg = ppo_cfg(clip_vloss=False)
    _, (_, metrics) = ppo.loss_sums(logits_apply, PARAMS, ppo_samples(), jnp.zeros(3), cfg)
    # 0.5 * (value - return)^2: 0.5*1 + 0 + 0.5*0.25 + 0.5*4
    np.testing.assert_allclose(float(metrics[1]), 0.5 + 0.125 + 2.0, rtol=1e-6)


def test_ppo_advantage_normalisation_uses_the_given_moments():
    """norm_adv: advantages are (A - mean) / std with mean and std from the (all-rank) moment sums."""
    samples = ppo_samples()
    norm = jnp.array([4.0, 8.0, 40.0])  # mean 2, var 40/4 - 4 = 6
    mean, std = 2.0, math.sqrt(6.0)
    loss_norm, (_, m_norm) = ppo.loss_sums(logits_apply, PARAMS, samples, norm, ppo_cfg(norm_adv=True))
    by_hand = dict(samples, advantages=((samples["advantages"] - mean) / std).astype(np.float32))
    loss_ref, (_, m_ref) = ppo.loss_sums(logits_apply, PARAMS, by_hand, jnp.zeros(3), ppo_cfg(norm_adv=False))
    np.testing.assert_allclose(float(loss_norm), float(loss_ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m_norm), np.asarray(m_ref), rtol=1e-5)


@pytest.mark.parametrize("algo", ["ppo", "pg"])
def test_invalid_samples_contribute_nothing(algo):
    samples = ppo_samples()
    cfg = ppo_cfg() if algo == "ppo" else Config()
    module = ppo if algo == "ppo" else pg
    norm = jnp.array([4.0, 1.0, 3.0])
    grad_fn = jax.jit(jax.value_and_grad(lambda p, s: module.loss_sums(logits_apply, p, s, norm, cfg), has_aux=True))
    (loss_all, (count_all, m_all)), g_all = grad_fn(PARAMS, samples)
    (loss_valid, (count_valid, m_valid)), g_valid = grad_fn(PARAMS, subset(samples, slice(0, 4)))
    assert float(count_all) == float(count_valid) == 4.0
    np.testing.assert_allclose(float(loss_all), float(loss_valid), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m_all), np.asarray(m_valid), rtol=1e-6)
    for k in PARAMS:
        np.testing.assert_allclose(float(g_all[k]), float(g_valid[k]), rtol=1e-6)
    # ... and the invalid sample would have changed everything had it been valid.
    (loss_flip, _), _ = grad_fn(PARAMS, dict(samples, valid=np.ones(5, bool)))
    assert abs(float(loss_flip) - float(loss_all)) > 1.0


# ---- the 2016 policy gradient -----------------------------------------------------------------


def pg_cfg(**algo):
    cfg = Config()
    cfg.algo.algo = "pg"
    cfg.model.value_head = False
    for k, v in algo.items():
        setattr(cfg.algo, k, v)
    return cfg


def pg_samples():
    # p(action) = 1/2, 3/4, 1/4 for the three valid samples; the fourth is invalid.
    return {
        "features": np.array([[0, 0, 0], [LN3, 0, 0], [LN3, 0, 0], [9, -9, 0]], np.float32),
        "actions": np.array([0, 0, 1, 1], np.int32),
        "returns": np.array([1.0, -0.5, 0.25, 50.0], np.float32),
        "valid": np.array([True, True, True, False]),
    }


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_pg_loss_sums_by_hand(jitted):
    samples = pg_samples()

    def loss_fn(cfg):
        fn = lambda p, s, n: pg.loss_sums(logits_apply, p, s, n, cfg)
        return jax.jit(fn) if jitted else fn

    logp = np.log([0.5, 0.75, 0.25])
    ent = [LN2, ENT_QUARTER, ENT_QUARTER]
    # Without standardising: loss = -sum(G * log pi(a|s)) over valid samples.
    loss, (count, metrics) = loss_fn(pg_cfg(pg_standardize=False))(PARAMS, samples, jnp.zeros(3))
    want = -(1.0 * logp[0] - 0.5 * logp[1] + 0.25 * logp[2])
    assert float(count) == 3.0
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics), [want, sum(ent), 1.0 - 0.5 + 0.25], rtol=1e-5)
    # Standardised with the given moments: returns 1, -0.5, 0.25 -> mean 0.25, var (0.5625+0.5625+0)/3.
    norm = masked_moments(jnp.asarray(samples["returns"]), jnp.asarray(samples["valid"]))
    mean, std = 0.25, math.sqrt(0.375)
    loss, _ = loss_fn(pg_cfg(pg_standardize=True))(PARAMS, samples, norm)
    adv = (np.array([1.0, -0.5, 0.25]) - mean) / std
    np.testing.assert_allclose(float(loss), -(adv * logp).sum(), rtol=1e-4)


def pg_batch():
    """Two envs over 6 steps (gamma 0.5):
    env 0: points at t=1 (+1) and t=3 (-1); t=4,5 come after the last point (unscored).
    env 1: cut after 4 filled steps; point at t=0 (-1), nothing scored at t=1..3; t=2 is envpool's
           auto-reset step after a game end at t=1 (filled, not valid).
    """
    T, N = 6, 2
    rewards = np.zeros((T, N), np.float32)
    rewards[1, 0], rewards[3, 0], rewards[0, 1] = 1.0, -1.0, -1.0
    rewards[5, 1] = 1.0  # beyond the cut: ignored
    dones = np.zeros((T, N), bool)
    dones[1, 1] = True
    filled = np.ones((T, N), bool)
    filled[4:, 1] = False
    valid = filled.copy()
    valid[2, 1] = False
    zeros = np.zeros((T, N), np.float32)
    return Batch(
        features=np.zeros((T, N, 3), np.float32),
        actions=np.zeros((T, N), np.int32),
        logprobs=zeros,
        values=zeros,
        rewards=rewards,
        dones=dones,
        filled=filled,
        valid=valid,
        bootstrap_features=np.zeros((N, 3), np.float32),
    )


def test_pg_prepare_mask_mode():
    targets, moments = pg.prepare(logits_apply, PARAMS, pg_batch(), pg_cfg(gamma=0.5, pg_unscored="mask"))
    returns = np.asarray(targets["returns"])
    np.testing.assert_array_equal(returns[:, 0], [0.5, 1.0, -0.5, -1.0, 0.0, 0.0])
    np.testing.assert_array_equal(returns[:, 1], [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    valid = np.asarray(targets["valid"])
    masked = np.asarray(targets["masked"])
    # Valid = scored steps among valid ones: env 0 t=0..3, env 1 t=0.
    assert valid[:, 0].tolist() == [True, True, True, True, False, False]
    assert valid[:, 1].tolist() == [True, False, False, False, False, False]
    # Masked = valid but unscored: env 0 t=4,5 and env 1 t=1,3 (t=2 was never valid, t>=4 not filled).
    assert masked[:, 0].tolist() == [False, False, False, False, True, True]
    assert masked[:, 1].tolist() == [False, True, False, True, False, False]
    assert int(masked.sum()) == 4
    np.testing.assert_allclose(np.asarray(moments), [5.0, 0.5 + 1.0 - 0.5 - 1.0 - 1.0, 0.25 + 1 + 0.25 + 1 + 1])


def test_pg_prepare_zero_mode():
    batch = pg_batch()
    targets, moments = pg.prepare(logits_apply, PARAMS, batch, pg_cfg(gamma=0.5, pg_unscored="zero"))
    np.testing.assert_array_equal(np.asarray(targets["valid"]), batch.valid)  # unscored steps keep weight ...
    assert int(np.asarray(targets["masked"]).sum()) == 0  # ... and nothing is counted as masked
    np.testing.assert_array_equal(np.asarray(targets["returns"])[4:, 0], [0.0, 0.0])  # with return 0
    # moments over all 9 valid steps (env 0: 6, env 1: t=0,1,3): returns as in mask mode, zeros elsewhere
    np.testing.assert_allclose(np.asarray(moments), [9.0, -1.0, 3.5])


@pytest.mark.parametrize(
    "point_episodes, advantages",
    [
        # gamma 0.5, lambda 1; rewards (0, +1, 0, -1), values (0.2, 0.4, 0.8, 0), bootstrap 0.
        # deltas: 0.5*0.4-0.2 = 0, 1+0.5*0.8-0.4 = 1.0, 0.5*0-0.8 = -0.8, -1 -> A = (0.175, 0.35, -1.3, -1)
        (False, [0.175, 0.35, -1.3, -1.0]),
        # Each point ends the trajectory: delta at t=1 is 1-0.4 = 0.6 and nothing flows back across it.
        (True, [0.3, 0.6, -1.3, -1.0]),
    ],
)
def test_ppo_prepare_point_episodes_by_hand(point_episodes, advantages):
    T = 4
    rewards = np.array([[0.0], [1.0], [0.0], [-1.0]], np.float32)
    values = np.array([[0.2], [0.4], [0.8], [0.0]], np.float32)
    batch = Batch(
        features=np.zeros((T, 1, 3), np.float32),
        actions=np.zeros((T, 1), np.int32),
        logprobs=np.zeros((T, 1), np.float32),
        values=values,
        rewards=rewards,
        dones=np.zeros((T, 1), bool),
        filled=np.ones((T, 1), bool),
        valid=np.ones((T, 1), bool),
        bootstrap_features=np.zeros((1, 3), np.float32),
    )
    targets, moments = ppo.prepare(
        logits_apply, PARAMS, batch, ppo_cfg(gamma=0.5, gae_lambda=1.0, point_episodes=point_episodes)
    )
    np.testing.assert_allclose(np.asarray(targets["advantages"])[:, 0], advantages, atol=1e-6)
    np.testing.assert_allclose(np.asarray(targets["returns"])[:, 0], np.add(advantages, values[:, 0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(moments)[:2], [4.0, sum(advantages)], atol=1e-5)


def test_mirrored_samples_flip_rows_and_swap_up_and_down():
    from jaxpong.learn.learner import mirrored

    features = np.arange(2 * 3 * 2, dtype=np.int8).reshape(2, 3, 2)  # 2 samples of 3 rows x 2 columns
    samples = {
        "features": features,
        "actions": np.array([0, 1], np.int32),
        "logprobs": np.array([-0.1, -0.2], np.float32),
        "advantages": np.array([1.5, -2.0], np.float32),
        "valid": np.array([True, False]),
    }
    out = jax.tree.map(np.asarray, mirrored(samples, [2, 3]))
    np.testing.assert_array_equal(out["features"][:2], features)
    np.testing.assert_array_equal(out["features"][2], [[4, 5], [2, 3], [0, 1]])  # rows reversed, columns kept
    np.testing.assert_array_equal(out["actions"], [0, 1, 1, 0])  # up <-> down
    # Everything else is the sample's own: advantage, validity and the taken action's old log-probability.
    np.testing.assert_array_equal(out["logprobs"], np.float32([-0.1, -0.2, -0.1, -0.2]))
    np.testing.assert_array_equal(out["advantages"], [1.5, -2.0, 1.5, -2.0])
    np.testing.assert_array_equal(out["valid"], [True, False, True, False])
    # With a no-op among the actions, it maps to itself: [0, 2, 3] -> indices 0, 2, 1.
    three = dict(
        samples,
        actions=np.array([0, 1, 2], np.int32),
        features=np.zeros((3, 1, 1), np.int8),
        logprobs=np.zeros(3, np.float32),
        advantages=np.zeros(3, np.float32),
        valid=np.ones(3, bool),
    )
    np.testing.assert_array_equal(np.asarray(mirrored(three, [0, 2, 3])["actions"]), [0, 1, 2, 0, 2, 1])


def test_learning_rate_fraction_by_hand():
    """Linear from 1 to the floor over anneal_steps (0 = total_steps), then held; 1 without annealing."""
    from jaxpong.base import config as config_lib
    from jaxpong.learn.learner import lr_fraction

    cfg = config_lib.build(None, {"run": {"total_steps": 1000}})
    assert [lr_fraction(cfg, s) for s in (0, 250, 1000, 5000)] == pytest.approx([1.0, 0.75, 0.0, 0.0])
    cfg = config_lib.build(None, {"run": {"total_steps": 1000}, "algo": {"anneal_steps": 400, "anneal_floor": 0.2}})
    assert [lr_fraction(cfg, s) for s in (0, 100, 400, 900)] == pytest.approx([1.0, 0.8, 0.2, 0.2])
    cfg = config_lib.build(None, {"algo": {"anneal_lr": False, "anneal_steps": 400}})
    assert lr_fraction(cfg, 10**6) == 1.0
    # Beyond int32: the benchmarks run with --total-steps 10**12, long cluster runs pass 2**31 steps.
    cfg = config_lib.build(None, {"run": {"total_steps": 10**12}})
    assert lr_fraction(cfg, 3 * 10**9) == pytest.approx(1.0 - 3e-3)


def test_a_stale_log_probability_in_a_masked_sample_cannot_poison_the_update():
    """A masked sample whose old log-probability is absurd (exp of its log-ratio overflows float32) leaves the
    loss, the metrics and the gradient exactly as if it were not there: no 0 x inf."""
    samples = ppo_samples()
    poisoned = dict(samples, logprobs=np.where(samples["valid"], samples["logprobs"], -500.0).astype(np.float32))
    norm = jnp.array([4.0, 1.0, 3.0])
    grad_fn = jax.jit(jax.value_and_grad(lambda p, s: ppo.loss_sums(logits_apply, p, s, norm, ppo_cfg()), has_aux=True))
    (loss, (count, metrics)), grads = grad_fn(PARAMS, poisoned)
    (loss_ref, (count_ref, metrics_ref)), grads_ref = grad_fn(PARAMS, subset(samples, slice(0, 4)))
    assert np.isfinite(float(loss)) and all(np.isfinite(float(g)) for g in grads.values())
    assert float(count) == float(count_ref) == 4.0
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics), np.asarray(metrics_ref), rtol=1e-6)
    for k in PARAMS:
        np.testing.assert_allclose(float(grads[k]), float(grads_ref[k]), rtol=1e-6)


def test_quarter_means_of_the_rounds_optimizer_steps_by_hand():
    """charts/approx_kl_early and _late: the metric sums of the first and last quarter of a round's steps,
    divided by those steps' valid counts (8 steps: steps 0-1 and 6-7)."""
    from jaxpong.learn.learner import _quarter_means, metric_names

    sums = np.zeros((8, 5), np.float32)
    sums[:, 3] = [1, 2, 0, 0, 0, 0, 6, 10]  # approx_kl sums per step
    sums[:, 4] = [0, 4, 9, 9, 9, 9, 3, 5]  # clipfrac sums per step
    counts = jnp.asarray([10, 30, 1, 1, 1, 1, 20, 20], jnp.float32)
    out = np.asarray(_quarter_means(jnp.asarray(sums), counts, [3, 4]))
    np.testing.assert_allclose(out, [3 / 40, 4 / 40, 16 / 40, 8 / 40], rtol=1e-6)
    two_steps = np.asarray(_quarter_means(jnp.asarray(sums[:2]), counts[:2], [3]))  # a quarter is 1 step
    np.testing.assert_allclose(two_steps, [1 / 10, 2 / 30], rtol=1e-6)
    assert metric_names("ppo")[5:] == (
        "charts/approx_kl_early",
        "charts/clipfrac_early",
        "charts/approx_kl_late",
        "charts/clipfrac_late",
    )
    assert metric_names("pg") == pg.METRICS


def test_ppo_ewma_clips_to_the_proximal_policy_and_weights_by_it_by_hand():
    """algo.proximal ewma: the ratio is taken to the proximal policy and clipped there, and each term is
    weighted by proximal / behaviour probability, capped at ratio_cap 2. New probabilities as above
    (0.5, 0.5, 0.75, 0.5); behaviour ones 1/3, 1, 0.714, 1/3; proximal ones 0.5, 0.25, 0.75, 1.0:
      sample  adv  ratio to prox  term max(-A r, -A clip(r))   weight prox/behaviour
        0     +2       1          -2                           1.5
        1     +1       2          max(-2, -1.2) = -1.2         0.25
        2     -1       1           1                           1.05
        3     -1       0.5        max(0.5, 0.8) = 0.8          3 -> capped at 2
    pg = -3 - 0.3 + 1.05 + 1.6 = -0.65; clipped (to the proximal policy): samples 1 and 3; the KL is still
    the one to the behaviour policy."""
    samples = ppo_samples()
    samples["prox_logprobs"] = np.log(np.array([0.5, 0.25, 0.75, 1.0, 1e-9])).astype(np.float32)
    cfg = ppo_cfg(proximal="ewma", ratio_cap=2.0)
    loss, (count, metrics) = jax.jit(lambda p, s: ppo.loss_sums(logits_apply, p, s, jnp.zeros(3), cfg))(PARAMS, samples)
    e = PPO_EXPECTED
    assert float(count) == 4.0
    np.testing.assert_allclose(np.asarray(metrics), [-0.65, e["v"], e["entropy"], e["kl"], 2.0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), -0.65 + 0.5 * e["v"] - 0.01 * e["entropy"], rtol=1e-5)
    # The weight carries no gradient: the policy gradient is the weighted one of the clipped surrogate.
    only_pg = ppo_cfg(proximal="ewma", ratio_cap=2.0, vf_coef=0.0, ent_coef=0.0)
    grad = jax.grad(lambda p: ppo.loss_sums(logits_apply, p, samples, jnp.zeros(3), only_pg)[0])(PARAMS)
    # d/dw of -A w_i r_i for the unclipped samples 0 and 2 (r = p_new / p_prox, p_new = softmax(w x)):
    # sample 0: logits (0, 0), action 1: d log p / dw = x_a - E[x] = 0; sample 2: logits (ln 3, 0), action 0:
    # d log p / dw = ln 3 - 0.75 ln 3 = 0.25 ln 3, so d(-A w r)/dw = 1 x 1.05 x 1 x 0.25 ln 3.
    np.testing.assert_allclose(float(grad["w"]), 1.05 * 0.25 * LN3, rtol=1e-5)

"""PPO (Schulman et al. 2017) with GAE, the clipped surrogate, a (clipped) value loss and an entropy bonus.

Every term is a SUM over valid samples; advantages are normalised with mean and std from moment sums
over the whole round (all ranks), so N ranks do the same maths as one rank with N times the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpong.learn.algorithms.returns import gae, masked_moments, moments_to_mean_std
from jaxpong.play.preprocess import to_float

METRICS = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac")
# Also logged for the first and the last quarter of a round's optimizer steps (charts/approx_kl_early,
# charts/approx_kl_late, ...): how far the update has moved from the policy that played by the time it ends.
PHASE_METRICS = ("losses/approx_kl", "losses/clipfrac")


def prepare(apply_fn, params, batch, cfg):
    _, bootstrap_values = apply_fn(params, to_float(batch.bootstrap_features))
    # With point_episodes a scored point ends the trajectory for credit assignment: the value
    # function then predicts only the current point's outcome, a much easier target.
    dones = batch.dones | (batch.rewards != 0) if cfg.algo.point_episodes else batch.dones
    advantages, returns = gae(
        batch.rewards, batch.values, dones, bootstrap_values, batch.filled, cfg.algo.gamma, cfg.algo.gae_lambda
    )
    targets = {
        "advantages": advantages,
        "returns": returns,
        "valid": batch.valid,
        "masked": jnp.zeros_like(batch.valid),
    }
    return targets, masked_moments(advantages, batch.valid)


def loss_sums(apply_fn, params, samples, norm, cfg):
    """samples: dict of flat [S, ...] arrays (features, actions, logprobs, values, advantages, returns, valid)."""
    a = cfg.algo
    adv = samples["advantages"]
    if a.norm_adv:
        mean, std = moments_to_mean_std(norm)
        adv = (adv - mean) / std
    w = samples["valid"].astype(jnp.float32)
    logits, value = apply_fn(params, to_float(samples["features"]))
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, samples["actions"][:, None], axis=-1)[:, 0]
    # Zero where a sample carries no weight: its ratio is then 1, so neither the loss nor its gradient
    # can meet 0 x inf there, whatever the sample holds.
    log_ratio = jnp.where(w > 0, logp - samples["logprobs"], 0.0)
    ratio = jnp.exp(log_ratio)
    clipped_ratio, weight = ratio, 1.0
    if "prox_logprobs" in samples:
        # PPO-EWMA (Hilton et al. 2022): clip the ratio to the proximal policy, and correct for the behaviour
        # policy with the importance weight proximal / behaviour, capped so one stale sample cannot dominate.
        prox = samples["prox_logprobs"]
        clipped_ratio = jnp.exp(jnp.where(w > 0, logp - prox, 0.0))
        to_prox = jnp.exp(jnp.where(w > 0, prox - samples["logprobs"], 0.0))
        weight = jax.lax.stop_gradient(jnp.minimum(to_prox, a.ratio_cap))
    pg_loss = weight * jnp.maximum(
        -adv * clipped_ratio, -adv * jnp.clip(clipped_ratio, 1 - a.clip_coef, 1 + a.clip_coef)
    )
    returns, old_values = samples["returns"], samples["values"]
    if a.clip_vloss:
        clipped = old_values + jnp.clip(value - old_values, -a.clip_coef, a.clip_coef)
        v_loss = 0.5 * jnp.maximum((value - returns) ** 2, (clipped - returns) ** 2)
    else:
        v_loss = 0.5 * (value - returns) ** 2
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    per_sample = pg_loss + a.vf_coef * v_loss - a.ent_coef * entropy
    loss_sum = (w * per_sample).sum()
    approx_kl = (ratio - 1.0) - log_ratio  # to the behaviour policy, whatever the clip is measured against
    clipfrac = (jnp.abs(clipped_ratio - 1.0) > a.clip_coef).astype(jnp.float32)
    metrics = jnp.stack(
        [(w * pg_loss).sum(), (w * v_loss).sum(), (w * entropy).sum(), (w * approx_kl).sum(), (w * clipfrac).sum()]
    )
    return loss_sum, (w.sum(), jax.lax.stop_gradient(metrics))

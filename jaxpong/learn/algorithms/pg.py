"""The 2016 parallel policy gradient (REINFORCE, after Karpathy's "Pong from pixels").

Returns restart at every point scored and are standardised over the round's valid samples; the
loss is -sum(valid * A * log pi(a|s)). Steps after the last point scored in a round have no reward
signal yet: with `pg_unscored: mask` they get no weight (and are counted as masked); with `zero`
they keep return 0, as in 2016.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpong.learn.algorithms.returns import masked_moments, moments_to_mean_std, point_returns
from jaxpong.play.preprocess import to_float

METRICS = ("losses/policy_loss", "losses/entropy", "losses/mean_return")


def prepare(apply_fn, params, batch, cfg):
    del apply_fn, params
    returns, scored = point_returns(batch.rewards, batch.dones, batch.filled, cfg.algo.gamma)
    valid = batch.valid
    masked = jnp.zeros_like(valid)
    if cfg.algo.pg_unscored == "mask":
        masked = valid & ~scored
        valid = valid & scored
    targets = {"returns": returns, "valid": valid, "masked": masked}
    return targets, masked_moments(returns, valid)


def loss_sums(apply_fn, params, samples, norm, cfg):
    """samples: dict of flat [S, ...] arrays (features, actions, returns, valid)."""
    mean, std = moments_to_mean_std(norm)
    returns = samples["returns"]
    adv = (returns - mean) / std if cfg.algo.pg_standardize else returns
    w = samples["valid"].astype(jnp.float32)
    logits, _ = apply_fn(params, to_float(samples["features"]))
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, samples["actions"][:, None], axis=-1)[:, 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    loss_sum = -(w * jax.lax.stop_gradient(adv) * logp).sum()
    metrics = jnp.stack([loss_sum, (w * entropy).sum(), (w * returns).sum()])
    return loss_sum, (w.sum(), metrics)

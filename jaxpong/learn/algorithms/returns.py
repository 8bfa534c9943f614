"""Small tested maths on time-major [T, N] arrays with masks. Pure jnp; each works jitted or not.

Masks: `filled[t, e]` is True for the steps env e actually collected this round (a prefix of its
row); `valid[t, e]` marks the steps that carry gradient weight (a subset of filled).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards, values, dones, bootstrap_values, filled, gamma: float, lam: float):
    """Generalised advantage estimation over each env's filled prefix.

        next_v[t]  = values[t+1] if step t+1 was filled else bootstrap_values   (the cut bootstraps)
        delta[t]   = r[t] + gamma * (1 - done[t]) * next_v[t] - values[t]
        A[t]       = delta[t] + gamma * lam * (1 - done[t]) * filled[t+1] * A[t+1]

    Returns (advantages, value targets = advantages + values); both are 0 where not filled.
    """
    filled = filled.astype(values.dtype)
    next_filled = jnp.concatenate([filled[1:], jnp.zeros_like(filled[:1])], axis=0)
    next_values = jnp.concatenate([values[1:], bootstrap_values[None]], axis=0)
    next_values = jnp.where(next_filled > 0, next_values, bootstrap_values[None])
    not_done = 1.0 - dones.astype(values.dtype)
    deltas = rewards + gamma * not_done * next_values - values

    def step(carry, inp):
        delta, nd, nf, f = inp
        adv = (delta + gamma * lam * nd * nf * carry) * f
        return adv, adv

    _, adv = jax.lax.scan(step, jnp.zeros_like(bootstrap_values), (deltas, not_done, next_filled, filled), reverse=True)
    return adv, (adv + values) * filled


def point_returns(rewards, dones, filled, gamma: float):
    """The 2016 returns: discounted reward-to-go that restarts at every point scored.

        G[t] = r[t]                 if r[t] != 0 (a point ends here)
        G[t] = gamma * G[t+1]       otherwise (0 after the last filled step or an episode end)

    Also returns `scored[t]`: whether a point is scored at or after t within the filled prefix
    before the episode ends; unscored steps have G = 0 and no learning signal.
    """
    filled_f = filled.astype(rewards.dtype)

    def step(carry, inp):
        g_next, s_next = carry
        r, d, f = inp
        cont = (1.0 - d.astype(rewards.dtype)) * f  # do not look past an episode end or the cut
        point = (r != 0) & (f > 0)
        g = jnp.where(point, r, gamma * g_next * cont) * f
        s = point | (s_next & (cont > 0))
        return (g, s), (g, s)

    zeros = jnp.zeros(rewards.shape[1:], rewards.dtype)
    init = (zeros, jnp.zeros(rewards.shape[1:], bool))
    # The scan runs backwards: the carry into step t comes from t+1, and at the cut it is zero.
    _, (g, scored) = jax.lax.scan(step, init, (rewards, dones, filled_f), reverse=True)
    return g, scored & (filled_f > 0)


def masked_moments(x, mask):
    """[count, sum, sum of squares] over masked entries: add these across ranks, then `moments_to_mean_std`."""
    m = mask.astype(jnp.float32)
    x = x.astype(jnp.float32)
    return jnp.stack([m.sum(), (x * m).sum(), (x * x * m).sum()])


def moments_to_mean_std(moments, eps: float = 1e-8):
    count, total, total_sq = moments[0], moments[1], moments[2]
    n = jnp.maximum(count, 1.0)
    mean = total / n
    var = jnp.maximum(total_sq / n - mean * mean, 0.0)
    return mean, jnp.sqrt(var) + eps

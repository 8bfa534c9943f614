"""The fixed-shape batch one round of play produces: what the rollout fills and the algorithms read."""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class Batch:
    """Time-major [T, N] arrays (T = num_steps, N = envs); shapes never change, masks say what is real.

    Step (t, e): env e was shown `features[t, e]`, chose `actions[t, e]` (an index into the
    configured action subset) with log-probability `logprobs[t, e]` and value estimate
    `values[t, e]`, then received `rewards[t, e]`; `dones[t, e]` says the game ended there.
    `filled` marks collected steps (a prefix of each env's row; the rest is padding), `valid` the
    filled steps that carry gradient weight (envpool's automatic-reset steps, whose action the
    emulator ignores, are filled but not valid). `bootstrap_features[e]` is what env e sees after
    its last filled step, for bootstrapping a trajectory the deadline cut.
    """

    features: jax.Array
    actions: jax.Array
    logprobs: jax.Array
    values: jax.Array
    rewards: jax.Array
    dones: jax.Array
    filled: jax.Array
    valid: jax.Array
    bootstrap_features: jax.Array

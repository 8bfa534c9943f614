"""The fixed-shape batch one round of play produces: what the rollout fills and the algorithms read."""

from __future__ import annotations

import jax
import numpy as np
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
    its last filled step, for bootstrapping a trajectory the deadline cut. `game_ids[e]` is env e's
    index among the games of all ranks (None: 0..N-1), so that the update can treat a game alike
    whichever rank played it.
    """

    # numpy arrays as the host collects them (rollout.Collector), jax arrays once passed into jit
    features: jax.Array | np.ndarray
    actions: jax.Array | np.ndarray
    logprobs: jax.Array | np.ndarray
    values: jax.Array | np.ndarray
    rewards: jax.Array | np.ndarray
    dones: jax.Array | np.ndarray
    filled: jax.Array | np.ndarray
    valid: jax.Array | np.ndarray
    bootstrap_features: jax.Array | np.ndarray
    game_ids: jax.Array | np.ndarray | None = None

"""The run's random streams, each from its own root, so that no two of them can ever share a key.

With JAX's partitionable threefry, `split(k)[i] == fold_in(k, i)`: a key is named by its path of child
indices from the run key `PRNGKey(seed)`. Streams that start at different children of that key
never meet, however far each is split:

  child 0  parameter initialisation
  child 1  the update's chain (TrainState.key: minibatch permutations, one split per round)
  child 2  action sampling in training: then resume count, round (update number), game, row
  child 3  greedy evaluation games (`eval`, evaluation during training)
  child 4  videos

Children 0 and 1 are what `split(PRNGKey(seed))` has always given, so parameters and updates are
unchanged for a given seed.

Action sampling belongs to the games, not to the ranks: the Gumbel noise of a game's action at row r
of round u comes from the key path (2, resume count, u, game, r), where games are numbered across all
ranks (rank k holds games k x num_envs onwards). Env seeds are numbered the same way
(envs.env_seeds). So one process with 32 games and 2 ranks with 16 each play the same games with the
same draws: with sync envs and no deadline they collect the same rounds (tests/test_mpi.py).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jax
    import numpy as np

STREAM_INIT, STREAM_UPDATE, STREAM_SAMPLE, STREAM_EVAL, STREAM_VIDEO = 0, 1, 2, 3, 4


def stream_root(seed: int, stream: int) -> jax.Array:
    """The root key of one of the run's streams (STREAM_*)."""
    import jax  # here, not at the top: the commands that import this module load JAX only when they run

    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def sampling_root(seed: int, resume_count: int) -> jax.Array:
    """The root of the action noise in the process that resumed the run `resume_count` times (a resumed
    process does not replay the draws of an earlier one)."""
    import jax

    return jax.random.fold_in(stream_root(seed, STREAM_SAMPLE), resume_count)


def round_key(root: jax.Array, update: int) -> jax.Array:
    """The key of the round played before update `update + 1` (every rank derives the same one)."""
    import jax

    return jax.random.fold_in(root, update)


@functools.cache
def _noise_fn():
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnames=("rows", "num_actions"))
    def noise(key, game_ids, rows: int, num_actions: int):
        def game(g):
            game_key = jax.random.fold_in(key, g)
            return jax.vmap(lambda r: jax.random.gumbel(jax.random.fold_in(game_key, r), (num_actions,)))(
                jnp.arange(rows)
            )

        return jax.vmap(game, out_axes=1)(game_ids)

    return noise


def action_noise(key: jax.Array, game_ids: np.ndarray, rows: int, num_actions: int) -> np.ndarray:
    """[rows, games, num_actions] float32 Gumbel noise of a round (`round_key`): entry [r, i] is what game
    game_ids[i] adds to its logits at its row r, from fold_in(fold_in(key, game), r) alone. Acting takes
    argmax(logits + noise), which is how jax.random.categorical draws."""
    import numpy as np

    return np.asarray(_noise_fn()(key, np.asarray(game_ids, np.int32), rows, num_actions))

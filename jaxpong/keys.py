"""The run's random streams, each from its own root, so that no two of them can ever share a key.

With JAX's partitionable threefry, `split(k)[i] == fold_in(k, i)`: a key is named by its path of child
indices from the run key `PRNGKey(seed)`. Streams that start at different children of that key
never meet, however far each is split:

  child 0  parameter initialisation
  child 1  the update's chain (TrainState.key: minibatch permutations, one split per round)
  child 2  action sampling in training, then rank, then resume count
  child 3  greedy evaluation games (`eval`, evaluation during training)
  child 4  videos

Children 0 and 1 are what `split(PRNGKey(seed))` has always given, so parameters and updates are
unchanged for a given seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jax

STREAM_INIT, STREAM_UPDATE, STREAM_SAMPLE, STREAM_EVAL, STREAM_VIDEO = 0, 1, 2, 3, 4


def stream_root(seed: int, stream: int) -> jax.Array:
    """The root key of one of the run's streams (STREAM_*)."""
    import jax  # here, not at the top: the commands that import this module load JAX only when they run

    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def sampling_key(seed: int, rank: int, resume_count: int) -> jax.Array:
    """Where a rank's action sampling starts in the process that resumed the run `resume_count` times:
    every rank draws its own actions, and a resumed process does not replay the draws of an earlier one."""
    import jax

    return jax.random.fold_in(jax.random.fold_in(stream_root(seed, STREAM_SAMPLE), rank), resume_count)

"""The jitted round update: algorithm losses -> gradient sums -> one fused collective -> identical optax step.

Nothing here knows how many ranks there are: `allreduce` sums an array over ranks (the identity on
one rank) and is called inside jit, once per optimizer step, on one flat buffer holding the
gradient sums, the valid count and the metric sums (and, while it measures the gradient noise scale,
two more scalars: jaxpong/noise_scale.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxpong import noise_scale
from jaxpong.algorithms import ALGORITHMS
from jaxpong.batch import Batch
from jaxpong.config import MIRROR_ACTION, Config
from jaxpong.envs import frame_shape
from jaxpong.preprocess import PREPROCESSORS, to_float
from jaxpong.sparse import RoundCells


@struct.dataclass
class TrainState:
    """Everything needed to continue training, on any number of ranks (counters live in `Counters`)."""

    params: dict
    opt_state: optax.OptState
    key: jax.Array


def init_state(cfg: Config, network, optimizer, seed_key) -> TrainState:
    """A fresh TrainState: the network's parameters initialised from `seed_key`, the optimizer's state."""
    stack, h, w = frame_shape(cfg.model)
    dummy = PREPROCESSORS[cfg.model.obs_mode](jnp.zeros((1, stack, h, w), jnp.uint8))
    # = keys.stream_root(seed, STREAM_INIT / STREAM_UPDATE) for seed_key = PRNGKey(seed) (tests/test_reliability.py)
    init_key, run_key = jax.random.split(seed_key)
    params = jax.jit(network.init)(init_key, to_float(dummy))  # jitted: eager init of a 5376x200 layer takes seconds
    return TrainState(params=params, opt_state=optimizer.init(params), key=run_key)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    a = cfg.algo
    if a.optimizer == "adam":
        base = optax.adam(a.learning_rate, eps=a.adam_eps)
    else:
        base = optax.rmsprop(a.learning_rate, decay=a.rmsprop_decay, eps=a.rmsprop_eps)
    chain = optax.chain(optax.clip_by_global_norm(a.max_grad_norm), base) if a.max_grad_norm > 0 else base
    # A non-finite gradient skips the step on every rank alike (all ranks see the same global gradient);
    # the trainer, not optax, decides when too many consecutive skips end the run.
    return optax.apply_if_finite(chain, max_consecutive_errors=2**30)


def lr_fraction(cfg: Config, step: int) -> float:
    """The multiplier of algo.learning_rate after `step` valid agent steps (all ranks): linear from 1 to
    algo.anneal_floor over algo.anneal_steps (0 = run.total_steps), then held there; 1 without anneal_lr.

    Computed on the host from the global step counter, so every rank (and a resumed run) agrees. Plain
    Python rather than optax.linear_schedule: step counts pass 2**31 on long runs (and the benchmarks
    set --total-steps 10**12), which jnp's int32 arithmetic cannot hold.
    """
    if not cfg.algo.anneal_lr:
        return 1.0
    horizon = cfg.algo.anneal_steps or cfg.run.total_steps
    done = min(step, horizon) / horizon
    return 1.0 - (1.0 - cfg.algo.anneal_floor) * done


def schedule(cfg: Config):
    """(num_epochs, num_minibatches) per round."""
    if cfg.algo.algo == "ppo":
        return cfg.algo.update_epochs, cfg.algo.num_minibatches
    return 1, 1


def make_prepare(cfg: Config, apply_fn: Callable):
    algorithm = ALGORITHMS[cfg.algo.algo]

    @jax.jit
    def prepare(params, batch: Batch):
        return algorithm.prepare(apply_fn, params, batch, cfg)

    return prepare


def mirrored(samples: dict, actions: list) -> dict:
    """The samples followed by their top-to-bottom mirror images, with up and down swapped.

    A mirrored sample keeps its advantage, return and old value, and its old log-probability is the
    one of the action actually taken: that is the probability with which the mirrored behaviour
    policy produced it, so the PPO ratio stays an honest importance weight (and is clipped where the
    policy is not yet symmetric).
    """
    swap = jnp.asarray([actions.index(MIRROR_ACTION[a]) for a in actions], jnp.int32)
    mirror = dict(samples, features=jnp.flip(samples["features"], axis=-2), actions=swap[samples["actions"]])
    return {k: jnp.concatenate([samples[k], mirror[k]]) for k in samples}


def minibatch_order(key: jax.Array, size: int, epochs: int, minibatches: int) -> tuple[jax.Array, jax.Array]:
    """(next key, [epochs * minibatches, size // minibatches] sample indices): a fresh permutation of the
    `size` samples each epoch, cut into minibatches (the remainder of an uneven split sits out)."""
    key, perm_key = jax.random.split(key)
    per_mb = size // minibatches
    if minibatches == 1 and epochs == 1:
        return key, jnp.arange(size)[None]
    order = jax.vmap(lambda k: jax.random.permutation(k, size))(jax.random.split(perm_key, epochs))
    return key, order[:, : per_mb * minibatches].reshape(epochs * minibatches, per_mb)


_host_minibatch_order = jax.jit(minibatch_order, static_argnums=(1, 2, 3))


def sparse_round(cfg: Config, key: jax.Array, features: np.ndarray, keep: np.ndarray) -> tuple[RoundCells, np.ndarray]:
    """The host side of the update's sparse first layer: the cells of a round's [S, ...] features (samples
    with `keep` only) and the minibatch order `optimize` will draw from `key` (its state's key), so
    that `cells.minibatches(order)` lists each minibatch's cells in the update's order."""
    _, order = _host_minibatch_order(key, features.shape[0], *schedule(cfg))
    return RoundCells(features, keep), np.asarray(order)


def make_optimize(
    cfg: Config,
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    allreduce: Callable[[jax.Array], jax.Array],
):
    """The jitted round update: optimize(state, batch, targets, norm, lr_frac, poison, sparse_features=None,
    noise=None) -> (state, metrics, counts), or (state, metrics, counts, noise) when `noise` is given.

    `sparse_features`, when given, is a `sparse.SparseBatch` [epochs * minibatches, ...] holding each
    minibatch's features in the order the update draws (`sparse_round`); `batch.features` is then not
    read (it may be None).

    `noise`, a `noise_scale.NoiseScaleState`, turns on the gradient noise scale (jaxpong/noise_scale.py):
    each optimizer step adds two scalars to its fused buffer (this rank's |gradient sum|^2 and its valid
    count squared), the scan keeps the epoch's running gradient sum, and the state comes back updated
    with this round's estimates (decay run.noise_scale_decay). Parameters, optimizer state, metrics and
    counts are the same with or without it.
    """

    algorithm = ALGORITHMS[cfg.algo.algo]
    epochs, minibatches = schedule(cfg)

    def loss_fn(params, samples, norm, poison):
        loss_sum, aux = algorithm.loss_sums(apply_fn, params, samples, norm, cfg)
        return loss_sum * poison, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def optimize(
        state: TrainState,
        batch: Batch,
        targets: dict,
        norm: jax.Array,
        lr_frac,
        poison,
        sparse_features=None,
        noise: noise_scale.NoiseScaleState | None = None,
    ):
        measure = noise is not None  # static: None is an empty pytree
        T, N = batch.actions.shape
        size = T * N

        def flat(x):
            return x.reshape((T * N,) + x.shape[2:])

        samples = {
            "actions": flat(batch.actions),
            "logprobs": flat(batch.logprobs),
            "values": flat(batch.values),
            **{k: flat(v) for k, v in targets.items() if k != "masked"},
        }
        if sparse_features is None:
            samples["features"] = flat(batch.features)
        if cfg.algo.mirror_augment:
            if sparse_features is not None:
                raise ValueError("mirror_augment flips dense frames; give the update dense features")
            samples, size = mirrored(samples, cfg.model.actions), 2 * size
        key, order = minibatch_order(state.key, size, epochs, minibatches)
        # Where each epoch starts: the running gradient sum of the across-minibatches estimate restarts there.
        starts = jnp.arange(epochs * minibatches) % minibatches == 0 if measure else None

        def step(carry, xs):
            params, opt_state, epoch_sum = carry
            idx, mb_sparse, start = xs
            mb = jax.tree.map(lambda x: x[idx], samples)
            if mb_sparse is not None:
                mb["features"] = mb_sparse
            (_, (count, metrics)), grads = grad_fn(params, mb, norm, poison)
            # This rank's |gradient sum|^2 and count^2: summed over ranks, the small batches' side of the noise scale.
            own = jnp.stack([noise_scale.squared_norm(grads), count * count]) if measure else None
            buffer, unravel = ravel_pytree((grads, count, metrics, own))
            grads, count, metrics, ranks_sq = unravel(allreduce(buffer))  # the one collective of this step
            measured = None
            if measure:
                epoch_sum = jax.tree.map(lambda e, g: jnp.where(start, g, e + g), epoch_sum, grads)
                # [|S|^2 of the global minibatch, sum over ranks of |s_k|^2, sum of n_k^2, |epoch's sum so far|^2]
                measured = jnp.stack(
                    [noise_scale.squared_norm(grads), ranks_sq[0], ranks_sq[1], noise_scale.squared_norm(epoch_sum)]
                )
            grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            # No valid sample on any rank: leave parameters and optimizer state as they are.
            has_data = count > 0
            updates = jax.tree.map(lambda u: jnp.where(has_data, u * lr_frac, 0.0), updates)
            new_opt_state = jax.tree.map(lambda n, o: jnp.where(has_data, n, o), new_opt_state, opt_state)
            return (optax.apply_updates(params, updates), new_opt_state, epoch_sum), (count, metrics, measured)

        epoch_sum = jax.tree.map(jnp.zeros_like, state.params) if measure else None
        (params, opt_state, _), (counts, metrics, measured) = jax.lax.scan(
            step, (state.params, state.opt_state, epoch_sum), (order, sparse_features, starts)
        )
        total = jnp.maximum(counts.sum(), 1.0)
        out = TrainState(params=params, opt_state=opt_state, key=key), metrics.sum(0) / total, counts
        if noise is None:
            return out
        return out + (round_noise(noise, measured, counts, epochs, minibatches, cfg.run.noise_scale_decay),)

    return optimize


def round_noise(
    noise: noise_scale.NoiseScaleState,
    measured: jax.Array,
    counts: jax.Array,
    epochs: int,
    minibatches: int,
    decay: float,
) -> noise_scale.NoiseScaleState:
    """The noise-scale state after a round whose optimizer steps measured `measured` [steps, 4] (see
    make_optimize's step) with global valid counts `counts` [steps]."""
    big_sq, ranks_sq, ranks_count_sq, epoch_sq = measured.T
    # Across ranks: every step, each rank's minibatch against the global minibatch.
    across_ranks = noise_scale.group_sums(big_sq, ranks_sq, counts, ranks_count_sq)

    # Across minibatches: every epoch, each step's global minibatch against their sum over the epoch.
    def per_epoch(x):
        return x.reshape(epochs, minibatches)

    across_minibatches = noise_scale.group_sums(
        per_epoch(epoch_sq)[:, -1],
        per_epoch(big_sq).sum(1),
        per_epoch(counts).sum(1),
        per_epoch(counts * counts).sum(1),
    )
    return noise_scale.update(noise, across_ranks, across_minibatches, counts.sum(), counts.size, decay)

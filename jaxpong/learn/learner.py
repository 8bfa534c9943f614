"""The jitted round update: algorithm losses -> gradient sums -> one fused collective -> identical optax step.

Nothing here knows how many ranks there are: `allreduce` sums an array over ranks (the identity on
one rank) and is called inside jit, once per optimizer step, on one flat buffer holding the
gradient sums, the valid count and the metric sums (and, while it measures the gradient noise scale,
two more scalars: jaxpong/learn/noise_scale.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxpong.base.config import MIRROR_ACTION, Config
from jaxpong.learn import noise_scale
from jaxpong.learn.algorithms import ALGORITHMS
from jaxpong.play.batch import Batch
from jaxpong.play.envs import frame_shape
from jaxpong.play.preprocess import PREPROCESSORS, to_float
from jaxpong.play.sparse import RoundCells


@struct.dataclass
class TrainState:
    """Everything needed to continue training, on any number of ranks (counters live in `Counters`)."""

    params: dict
    opt_state: optax.OptState
    key: jax.Array
    # algo.proximal ewma or auto: the moving average of the weights the clip is measured against (None otherwise,
    # so a state without it has the tree of every earlier checkpoint).
    proximal: dict | None = None


def init_state(cfg: Config, network, optimizer, seed_key) -> TrainState:
    """A fresh TrainState: the network's parameters initialised from `seed_key`, the optimizer's state."""
    stack, h, w = frame_shape(cfg.model)
    dummy = PREPROCESSORS[cfg.model.obs_mode](jnp.zeros((1, stack, h, w), jnp.uint8))
    # = keys.stream_root(seed, STREAM_INIT / STREAM_UPDATE) for seed_key = PRNGKey(seed) (tests/test_reliability.py)
    init_key, run_key = jax.random.split(seed_key)
    params = jax.jit(network.init)(init_key, to_float(dummy))  # jitted: eager init of a 5376x200 layer takes seconds
    proximal = params if cfg.algo.algo == "ppo" and cfg.algo.proximal in ("ewma", "auto") else None
    return TrainState(params=params, opt_state=optimizer.init(params), key=run_key, proximal=proximal)


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


LR_SCALE_RANGE = (0.1, 10.0)  # how far algo.target_kl may move the learning rate from algo.learning_rate


def adapt_lr_scale(scale: float, kl: float, target_kl: float) -> float:
    """The learning-rate multiplier for the next round under algo.target_kl: divided by 1.5 when this round's
    late KL to the behaviour policy was above 2 x target_kl, times 1.5 below target_kl / 2, else kept; held
    within LR_SCALE_RANGE. Unchanged when the rule is off (0) or the KL is not a number (a skipped round).
    Every rank computes it from the same allreduced KL, so the ranks agree."""
    if target_kl <= 0 or not math.isfinite(kl):
        return scale
    if kl > 2.0 * target_kl:
        scale /= 1.5
    elif kl < 0.5 * target_kl:
        scale *= 1.5
    return min(max(scale, LR_SCALE_RANGE[0]), LR_SCALE_RANGE[1])


def ewma_decay(cfg: Config) -> float:
    """Per optimizer step, the weight the proximal policy keeps of itself: an average of mean age ewma_age."""
    return 1.0 - 1.0 / cfg.algo.ewma_age


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


def order_group(num_rows: int, num_games: int, minibatches: int) -> int:
    """How many neighbouring games (columns) share one shuffle in `minibatch_order`: the fewest whose
    `num_rows` samples each split evenly into `minibatches` (1 when num_rows is a multiple of it). When
    the games a rank holds cannot be cut into such groups, all of them form one: the minibatches are still
    equal, but N ranks then no longer draw exactly what one process with all their games would."""
    group = minibatches // math.gcd(minibatches, num_rows)
    return group if num_games % group == 0 else num_games


def minibatch_order(
    key: jax.Array, num_rows: int, game_ids: jax.Array, epochs: int, minibatches: int, copies: int = 1
) -> tuple[jax.Array, jax.Array]:
    """(next key, [epochs * minibatches, per-minibatch] indices into a round's flat samples).

    The samples are `copies` x [num_rows, games] flattened (index c * rows * games + t * games + e;
    copies 2 with mirror_augment). Each epoch, every group of `order_group` neighbouring games shuffles
    its own samples, from a key named by the group's global game ids, and gives each minibatch an equal
    share of them (the remainder of an uneven split sits out). So a minibatch is made of the same
    games' samples whether one process holds all the games or ranks hold them in blocks: N ranks
    draw exactly the minibatches one process with all their games would (tests/mpi/check_training_path.py).
    Each minibatch also holds an equal share of every group's steps: a stratified draw.
    """
    key, perm_key = jax.random.split(key)
    games = game_ids.shape[0]
    if minibatches == 1 and epochs == 1:
        return key, jnp.arange(copies * num_rows * games)[None]
    group = order_group(copies * num_rows, games, minibatches)
    groups, column = games // group, copies * num_rows * group
    share = column // minibatches
    # members[k, p]: the flat index of group k's p-th sample, p = (c * num_rows + t) * group + j.
    row, within = np.divmod(np.arange(column), group)
    members = jnp.asarray(
        (row // num_rows) * num_rows * games + (row % num_rows) * games + np.arange(groups)[:, None] * group + within
    )
    names = game_ids[::group] // group  # the same for a group wherever its games are played

    def epoch(epoch_key):
        keys = jax.vmap(lambda name: jax.random.fold_in(epoch_key, name))(names)
        shuffled = jnp.take_along_axis(members, jax.vmap(lambda k: jax.random.permutation(k, column))(keys), axis=1)
        parts = shuffled[:, : share * minibatches].reshape(groups, minibatches, share)
        return parts.transpose(1, 0, 2).reshape(minibatches, groups * share)

    order = jax.vmap(epoch)(jax.random.split(perm_key, epochs))
    return key, order.reshape(epochs * minibatches, groups * share)


_host_minibatch_order = jax.jit(minibatch_order, static_argnums=(1, 3, 4, 5))


def game_ids_of(batch: Batch) -> jax.Array:
    """The global ids of a batch's games (its columns): 0..N-1 where the batch does not name them."""
    n = batch.actions.shape[1]
    return jnp.arange(n, dtype=jnp.int32) if batch.game_ids is None else jnp.asarray(batch.game_ids, jnp.int32)


def sparse_round(cfg: Config, key: jax.Array, batch: Batch) -> tuple[RoundCells, np.ndarray]:
    """The host side of the update's sparse first layer: the cells of a round's features (samples that
    carry weight only) and the minibatch order `optimize` will draw from `key` (its state's key), so
    that `cells.minibatches(order)` lists each minibatch's cells in the update's order."""
    T, N = batch.actions.shape
    _, order = _host_minibatch_order(key, T, game_ids_of(batch), *schedule(cfg), 1)
    features, valid = np.asarray(batch.features), np.asarray(batch.valid)
    return RoundCells(features.reshape(T * N, -1), valid.reshape(-1)), np.asarray(order)


def metric_names(algo: str) -> tuple[str, ...]:
    """Names of the values in the update's metrics vector: the algorithm's METRICS (means over the round's
    optimizer steps), then each of its PHASE_METRICS over the first and the last quarter of those steps."""
    algorithm = ALGORITHMS[algo]
    phases = getattr(algorithm, "PHASE_METRICS", ())
    short = [name.split("/")[-1] for name in phases]
    return (
        tuple(algorithm.METRICS) + tuple(f"charts/{n}_early" for n in short) + tuple(f"charts/{n}_late" for n in short)
    )


def _quarter_means(metrics: jax.Array, counts: jax.Array, columns: list[int]) -> jax.Array:
    """[steps, M] metric sums and [steps] valid counts -> the `columns` averaged over the first quarter of
    the steps, then over the last quarter (at least one step each)."""
    if not columns:
        return jnp.zeros((0,), metrics.dtype)
    quarter = max(1, metrics.shape[0] // 4)

    def mean(part, n):
        return part[:, columns].sum(0) / jnp.maximum(n.sum(), 1.0)

    return jnp.concatenate([mean(metrics[:quarter], counts[:quarter]), mean(metrics[-quarter:], counts[-quarter:])])


def make_optimize(
    cfg: Config,
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    allreduce: Callable[[jax.Array], jax.Array],
):
    """The jitted round update: optimize(state, batch, targets, norm, lr_frac, poison, sparse_features=None,
    noise=None) -> (state, metrics, counts), or (state, metrics, counts, noise) when `noise` is given.
    `metrics` holds the values `metric_names` names.

    `sparse_features`, when given, is a `sparse.SparseBatch` [epochs * minibatches, ...] holding each
    minibatch's features in the order the update draws (`sparse_round`); `batch.features` is then not
    read (it may be None).

    `noise`, a `noise_scale.NoiseScaleState`, turns on the gradient noise scale (jaxpong/learn/noise_scale.py):
    each optimizer step adds two scalars to its fused buffer (this rank's |gradient sum|^2 and its valid
    count squared), the scan keeps the epoch's running gradient sum, and the state comes back updated
    with this round's estimates (decay run.noise_scale_decay). Parameters, optimizer state, metrics and
    counts are the same with or without it.
    """

    algorithm = ALGORITHMS[cfg.algo.algo]
    epochs, minibatches = schedule(cfg)
    decay = ewma_decay(cfg)
    # Static: the clip's reference. A state may carry the moving average without using it (proximal auto
    # below ewma_from_scale, resolved by batch_rule.apply); it is kept current either way.
    clip_to_average = cfg.algo.algo == "ppo" and cfg.algo.proximal == "ewma"
    phase_columns = [algorithm.METRICS.index(name) for name in getattr(algorithm, "PHASE_METRICS", ())]

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
        copies = size // (T * N)
        key, order = minibatch_order(state.key, T, game_ids_of(batch), epochs, minibatches, copies)
        # Where each epoch starts: the running gradient sum of the across-minibatches estimate restarts there.
        starts = jnp.arange(epochs * minibatches) % minibatches == 0 if measure else None

        def step(carry, xs):
            params, opt_state, epoch_sum, proximal = carry
            idx, mb_sparse, start = xs
            mb = jax.tree.map(lambda x: x[idx], samples)
            if mb_sparse is not None:
                mb["features"] = mb_sparse
            if proximal is not None and clip_to_average:  # PPO-EWMA: the clip's reference is the weights' average
                prox_logits, _ = apply_fn(proximal, to_float(mb["features"]))
                prox_all = jax.nn.log_softmax(prox_logits)
                mb["prox_logprobs"] = jnp.take_along_axis(prox_all, mb["actions"][:, None], axis=-1)[:, 0]
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
            params = optax.apply_updates(params, updates)
            if proximal is not None:
                proximal = jax.tree.map(lambda p, q: decay * p + (1.0 - decay) * q, proximal, params)
            return (params, new_opt_state, epoch_sum, proximal), (count, metrics, measured)

        epoch_sum = jax.tree.map(jnp.zeros_like, state.params) if measure else None
        (params, opt_state, _, proximal), (counts, metrics, measured) = jax.lax.scan(
            step, (state.params, state.opt_state, epoch_sum, state.proximal), (order, sparse_features, starts)
        )
        total = jnp.maximum(counts.sum(), 1.0)
        means = jnp.concatenate([metrics.sum(0) / total, _quarter_means(metrics, counts, phase_columns)])
        out = TrainState(params=params, opt_state=opt_state, key=key, proximal=proximal), means, counts
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

"""The gradient noise scale B_simple = tr(Sigma) / |G|^2, measured live from gradient sums the update has.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training" (appendix A): G is the true gradient
(the mean over samples), Sigma the covariance of one sample's gradient. B_simple, in samples, stands for
the critical batch: up to about B_simple samples per optimizer step, a bigger batch buys nearly
proportionally fewer steps; well beyond it, extra samples per step (more ranks) buy little.

The estimators. The mean gradient over B independent samples has E|g_B|^2 = |G|^2 + tr(Sigma) / B. From
one big batch made of disjoint small ones, the paper's two unbiased estimates are

    |G|^2     ~ (B_big |g_big|^2 - B_small |g_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1 / B_small - 1 / B_big).

Here the small batches hold unequal numbers of samples: a deadline cuts ranks differently, minibatches
carry different numbers of valid samples. Let group k have n_k samples and gradient SUM s_k; the big
batch is their union, N = sum n_k samples with gradient sum S = sum s_k. Then E|s_k|^2 = n_k^2 |G|^2 +
n_k tr(Sigma) and E|S|^2 = N^2 |G|^2 + N tr(Sigma), so with A = sum |s_k|^2 and Q = sum n_k^2

    |G|^2     ~ (|S|^2 - A) / (N^2 - Q)                 (the cross terms s_j . s_k, j != k, only)
    tr(Sigma) ~ (N^2 A - Q |S|^2) / (N (N^2 - Q)),

both unbiased given the counts. These are the paper's formulas with B_big = N, B_small = Q / N (the
count-weighted mean group size) and |g_small|^2 = A / Q (each group's |s_k / n_k|^2 weighted by n_k^2);
with equal groups they are the paper's exactly. A group without samples drops out; when one group holds
every sample (N^2 = Q) there is no estimate. Weights are the valid mask, 0 or 1, so a group's sum of
squared weights is its count n_k.

Pooling. Many sets of groups (optimizer steps, epochs, rounds) are pooled as ratios of sums,
|G|^2 ~ sum(B_big |g_big|^2 - B_small |g_small|^2) / sum(B_big - B_small), and likewise for tr(Sigma):
each term's expectation is the quantity times its own denominator, so the ratio stays unbiased given the
counts, and sets that hold more information weigh more. Across rounds the four sums are exponentially
weighted (`update`), and B_simple is formed only at the end as one smoothed estimate over the other: a
ratio of two noisy estimates is biased (the paper smooths numerator and denominator separately).

Two sets of groups in the update (learner.make_optimize):
- across ranks, every optimizer step: a group is one rank's minibatch; each rank adds |s_k|^2 and n_k^2
  to the step's fused allreduce (no extra collective), the big batch is the global minibatch. All
  gradients are taken at the same parameters: the paper's estimate. Ranks play independent games, so the
  cross terms stay unbiased for |G|^2 even though the steps of one game are correlated; tr(Sigma) then
  measures the noise as it actually adds up in one rank's batch, which is what adding ranks averages away.
- across minibatches, every epoch: a group is one optimizer step's global minibatch, the big batch their
  union over the epoch (a running gradient sum in the update's scan). The only estimate with one rank.
  The minibatches partition the round without replacement, which changes nothing (the finite-population
  factor cancels in the formulas), but two biases remain: the parameters move between the steps of an
  epoch (gradients at different points agree less: |G|^2 reads low), and neighbouring steps of one game
  fall into different minibatches (correlated groups: |G|^2 reads high).
The logged value is the across-ranks one where any step had two ranks with samples, else the other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def squared_norm(tree) -> jax.Array:
    """|x|^2 of a pytree of arrays, all leaves together."""
    return jnp.sum(jnp.stack([jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)]))


def paper_estimates(small_sq, big_sq, b_small, b_big):
    """(|G|^2, tr(Sigma)) from the squared norms of a small-batch and a big-batch MEAN gradient (sizes
    b_small < b_big), McCandlish et al. 2018 appendix A:
        |G|^2     = (b_big |g_big|^2 - b_small |g_small|^2) / (b_big - b_small)
        tr(Sigma) = (|g_small|^2 - |g_big|^2) / (1 / b_small - 1 / b_big)."""
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


@struct.dataclass
class NoiseSums:
    """Pooled pieces of the two estimates: |G|^2 ~ signal / signal_weight, tr(Sigma) ~ noise / noise_weight."""

    signal: jax.Array  # sum of B_big |g_big|^2 - B_small |g_small|^2
    signal_weight: jax.Array  # sum of B_big - B_small
    noise: jax.Array  # sum of |g_small|^2 - |g_big|^2
    noise_weight: jax.Array  # sum of 1 / B_small - 1 / B_big

    @classmethod
    def zeros(cls) -> NoiseSums:
        return cls(*(jnp.zeros((), jnp.float32) for _ in range(4)))


def group_sums(big_sq, small_sq, count, count_sq) -> NoiseSums:
    """The estimators' pieces for sets of groups, pooled over the sets (arrays of any one shape, a set per
    element). Per set, from gradient SUMS: big_sq = |S|^2 of the big batch, small_sq = A = sum_k |s_k|^2,
    count = N = sum_k n_k, count_sq = Q = sum_k n_k^2. B_big = N, B_small = Q / N, |g_big|^2 = |S|^2 / N^2,
    |g_small|^2 = A / Q. A set with fewer than two groups holding samples (N^2 = Q) adds nothing."""
    big_sq, small_sq, count, count_sq = jnp.broadcast_arrays(
        *(jnp.asarray(x, jnp.float32) for x in (big_sq, small_sq, count, count_sq))
    )
    has = (count > 0) & (count * count > count_sq)
    n, q = jnp.where(has, count, 1.0), jnp.where(has, count_sq, 1.0)
    pieces = ((big_sq - small_sq) / n, n - q / n, small_sq / q - big_sq / (n * n), n / q - 1.0 / n)
    return NoiseSums(*(jnp.where(has, p, 0.0).sum() for p in pieces))


def estimates(sums: NoiseSums):
    """(|G|^2, tr(Sigma)) from pooled sums; nan where nothing was pooled."""

    def ratio(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)

    return ratio(sums.signal, sums.signal_weight), ratio(sums.noise, sums.noise_weight)


def simple_noise_scale(g2, trace):
    """B_simple = tr(Sigma) / |G|^2, in samples; nan unless both estimates are positive (with |G|^2 <= 0
    the gradient is not yet told apart from its noise)."""
    ok = (g2 > 0) & (trace > 0)
    return jnp.where(ok, trace / jnp.where(ok, g2, 1.0), jnp.nan)


@struct.dataclass
class NoiseScaleState:
    """Exponentially weighted sums over rounds (`update`); the update carries it from round to round."""

    across_ranks: NoiseSums
    across_minibatches: NoiseSums
    samples: jax.Array  # valid samples (all ranks) ...
    steps: jax.Array  # ... and optimizer steps, weighted alike: their ratio is the batch of one step

    @classmethod
    def zeros(cls) -> NoiseScaleState:
        zero = jnp.zeros((), jnp.float32)
        return cls(NoiseSums.zeros(), NoiseSums.zeros(), zero, zero)


def update(
    state: NoiseScaleState, across_ranks: NoiseSums, across_minibatches: NoiseSums, samples, steps, decay: float
) -> NoiseScaleState:
    """Decay the running sums by `decay` (per round) and add this round's. Ratios of sums weighted alike
    need no bias correction. A round with a non-finite piece (an update skipped for a non-finite
    gradient) leaves the state as it was."""
    fresh = NoiseScaleState(
        across_ranks, across_minibatches, jnp.asarray(samples, jnp.float32), jnp.asarray(steps, jnp.float32)
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(fresh)]))
    return jax.tree.map(lambda old, new: jnp.where(finite, decay * old + new, old), state, fresh)


def current(state: NoiseScaleState) -> dict:
    """The smoothed readings: grad_norm_sq (|G|^2), grad_noise_trace (tr(Sigma)), noise_scale (B_simple,
    samples), batch (valid samples per optimizer step, all ranks), across_ranks (which estimate: 1 across
    ranks, 0 across minibatches). nan where undefined."""
    use_ranks = state.across_ranks.signal_weight > 0
    sums = jax.tree.map(lambda a, b: jnp.where(use_ranks, a, b), state.across_ranks, state.across_minibatches)
    g2, trace = estimates(sums)
    batch = jnp.where(state.steps > 0, state.samples / jnp.where(state.steps > 0, state.steps, 1.0), jnp.nan)
    return {
        "grad_norm_sq": g2,
        "grad_noise_trace": trace,
        "noise_scale": simple_noise_scale(g2, trace),
        "batch": batch,
        "across_ranks": use_ranks.astype(jnp.float32),
    }


def log_metrics(state: NoiseScaleState) -> dict[str, float]:
    """The metrics-line entries (host floats). Undefined ones are nan, which the logger leaves out."""
    now = {k: float(np.asarray(v)) for k, v in current(state).items()}
    return {
        "charts/noise_scale": now["noise_scale"],
        "charts/grad_norm_sq": now["grad_norm_sq"],
        "charts/grad_noise_trace": now["grad_noise_trace"],
        "charts/optimizer_batch": now["batch"],
        "charts/noise_scale_across_ranks": now["across_ranks"],
    }

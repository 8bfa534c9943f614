"""Learning algorithms as pure functions over a masked batch. None of them knows how many ranks there are.

An algorithm provides
  prepare(apply_fn, params, batch, cfg) -> (targets, moments)
      per-sample targets (advantages, returns), the final `valid` weights, and the moment sums
      [count, sum, sum of squares] of the quantity to normalise (summed across ranks by the caller);
  loss_sums(apply_fn, params, samples, norm, cfg) -> (loss_sum, (count, metric_sums))
      the loss SUMMED over valid samples (so its gradient is a gradient sum), the valid count, and
      metric sums; the caller divides by the global count.
"""

from jaxpong.learn.algorithms import pg, ppo

ALGORITHMS = {"ppo": ppo, "pg": pg}

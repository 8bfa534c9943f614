"""Difference frames as lists of their nonzero cells, for the MLP's first layer in the update.

A difference frame is almost all zeros: on the default's `area32` input (32x42 = 1,344 cells),
measured during play, a sample has 15 nonzero cells on average (99th percentile 29, largest seen
39). The MLP's first layer multiplies it with a 1,344 x 200 kernel; as dense products on a CPU, the
forward pass and the kernel's gradient are nearly all of the update's work, though all but ~15 rows
of the kernel meet zeros. `SparseBatch` lists a minibatch's nonzero cells (sample, column, value);
`matmul` sums the kernel rows they select, and its gradient adds back into those rows only. Same sums
in another order: results agree with the dense products to float rounding (tested).

Why one flat list per minibatch, built on the host: XLA on a CPU has no fast way to find nonzeros
inside a jitted function (a fixed-size `nonzero` of 16 frames took longer than the dense product),
and padding each sample to the fullest sample's count (~48 slots for ~15 cells) gathered three
times the rows and was no faster than the dense products in wall-clock time. The host knows a
round's features anyway; it draws the update's minibatch order with the same key and function as
the jitted update (`learner.sparse_round`) and lists each minibatch's cells (~3.5 ms for a
default round). Samples without loss weight (unfilled buffer rows, envpool's reset steps) get no
cells: their output is not used. Lists are padded (value 0, on the last sample) to a length from a
coarse geometric ladder (`padded_length`), so a run compiles its update for a few lengths, not one
per round; ranks agree on one length per round (round.py), so they also compile together.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import struct

ROUND_TO = 2048  # the finest step of the list lengths (the default's ~7,600 cells -> 8,192)


@struct.dataclass
class SparseBatch:
    """`num_rows` samples of `width` cells: entry k adds `vals[..., k]` at (`rows[..., k]`, `cols[..., k]`).

    `rows` never decreases along the last axis (padding entries: value 0 on the last sample), which
    lets the sum run as a sorted segment sum. Leading axes, if any, index minibatches.
    """

    # numpy arrays as the host builds them (`minibatches`), jax arrays once passed into jit
    rows: jax.Array | np.ndarray  # [..., K] int32, sorted
    cols: jax.Array | np.ndarray  # [..., K] int32
    vals: jax.Array | np.ndarray  # [..., K] int8 as built; float32 once `preprocess.to_float` made it a network input
    num_rows: int = struct.field(pytree_node=False)
    width: int = struct.field(pytree_node=False)


def padded_length(entries: int, round_to: int = ROUND_TO) -> int:
    """The list length for a minibatch of `entries` cells: a multiple of `round_to` and, for larger
    lists, of an eighth of the power of two above `entries` (under 25 % padding, 4 lengths per doubling)."""
    step = max(round_to, 2 ** max(0, int(entries - 1).bit_length() - 3))
    return max(step, -(-entries // step) * step)


def reuse_length(needed: int, compiled, max_padding: float = 2.0, slack: int = 4 * ROUND_TO) -> int:
    """The list length to use for a round whose lists need `needed` slots, given the lengths the update
    is already compiled for: the shortest of those that holds `needed` with at most `max_padding` x its
    slots (or `slack` extra slots, for short lists, whose padding costs next to nothing), else `needed`
    itself (a new compile, seconds). Without this a run's second round compiled the update again: the
    first round's lists are longer (every env's first difference frame, against a blank one, is full
    of cells), the later ones shorter. Every rank sees the same history, so all choose alike."""
    most = max(max_padding * needed, needed + slack)
    fits = [length for length in compiled if needed <= length <= most]
    return min(fits) if fits else needed


class RoundCells:
    """The nonzero cells of a round's [S, ...] features, grouped by sample (host, numpy).

    `keep` ([S] bool, optional): samples whose cells are listed; the others count as all zeros
    (use it for samples that carry no loss weight, whose outputs are not used).
    """

    def __init__(self, features: np.ndarray, keep: np.ndarray | None = None):
        x = np.asarray(features)
        self.num_samples, self.width = x.shape[0], int(np.prod(x.shape[1:]))
        x = x.reshape(self.num_samples, self.width)
        # Only the kept samples are read: a 2016-setup round keeps ~1,500 of its 5,120 rows (3x faster).
        kept = None if keep is None else np.flatnonzero(np.asarray(keep, bool).reshape(-1))
        if kept is not None:
            x = x[kept]
        # flatnonzero of a bool array: ~10x faster than a 2-D nonzero of the int8 one (~1 ms a round).
        pos = np.flatnonzero(x != 0)  # sample-major, so each sample's cells are contiguous
        sample, self.col = np.divmod(pos, self.width)
        self.sample = sample if kept is None else kept[sample]
        self.val = x.reshape(-1)[pos]
        self.count = np.bincount(self.sample, minlength=self.num_samples)
        self.start = np.cumsum(self.count) - self.count

    def length(self, order: np.ndarray) -> int:
        """The padded list length the fullest minibatch of `order` needs."""
        return padded_length(int(self.count[np.asarray(order)].sum(1).max()))

    def minibatches(self, order: np.ndarray, length: int | None = None) -> SparseBatch:
        """[M, B] sample indices (a minibatch per row) -> SparseBatch [M, length] whose rows are positions
        0..B-1. `length` (at least `self.length(order)`; default that) lets ranks agree on one shape."""
        order = np.asarray(order)
        m, b = order.shape
        counts = self.count[order]  # [M, B]
        totals = counts.sum(1)
        k = self.length(order) if length is None else length
        if k < totals.max():
            raise ValueError(f"a list length of {k} cannot hold a minibatch of {int(totals.max())} cells")
        rows = np.full((m, k), b - 1, np.int32)
        cols = np.zeros((m, k), np.int32)
        vals = np.zeros((m, k), self.val.dtype)
        for i in range(m):
            c = counts[i]
            n = int(totals[i])
            # Entry j of this list: the (j - first entry of its sample)-th cell of that sample.
            position = np.repeat(np.arange(b, dtype=np.int32), c)
            offset = np.arange(n) - np.repeat(np.cumsum(c) - c, c)
            source = self.start[order[i]][position] + offset
            rows[i, :n] = position
            cols[i, :n] = self.col[source]
            vals[i, :n] = self.val[source]
        return SparseBatch(rows=rows, cols=cols, vals=vals, num_rows=b, width=self.width)


def to_dense(s: SparseBatch) -> np.ndarray:
    """The dense [..., num_rows, width] array a SparseBatch stands for (host; for tests and checks)."""
    rows, cols, vals = (np.asarray(a) for a in (s.rows, s.cols, s.vals))
    lead = rows.shape[:-1]
    rows, cols, vals = (a.reshape(-1, a.shape[-1]) for a in (rows, cols, vals))
    out = np.zeros((rows.shape[0], s.num_rows, s.width), vals.dtype)
    np.add.at(out, (np.arange(rows.shape[0])[:, None], rows, cols), vals)
    return out.reshape(lead + (s.num_rows, s.width))


def matmul(s: SparseBatch, kernel: jax.Array) -> jax.Array:
    """[num_rows, D] (sparse) @ [D, H] -> [num_rows, H]: each sample's selected kernel rows, weighted and summed.

    Its gradient with respect to the kernel is a scatter-add of the same rows. On the default's
    shapes (512 samples, ~8,000 cells, 200 units) value and gradient took 1.9 ms of wall-clock time
    against 6.9 ms for the dense products (2-core CPU, jitted, alone on the machine).
    """
    selected = kernel[s.cols] * s.vals.astype(kernel.dtype)[:, None]
    return jax.ops.segment_sum(selected, s.rows, num_segments=s.num_rows, indices_are_sorted=True)

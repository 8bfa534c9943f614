"""The per-round exchange between ranks: fixed-size numeric records, no pickle, O(1) bytes per rank.

Each round, after collecting and preparing and before the update, every rank makes the same two
collectives (after the arrival check that names a rank that never comes):

  AGREED   one Allreduce of a fixed-size float64 record, with one operation that sums some fields and
           takes the maximum of others. Everything all ranks must decide alike comes from it: the
           global return moments (normalisation), sample and game counts, the fill-time histogram the
           auto deadline is read from, the stop flags, the sparse list length, the checksum range,
           the slowest rank's last round (hang limits) and rank 0's evaluation time.
  LOGGED   one Gather, to rank 0 only, of a fixed-width float64 row per rank: its previous round's
           timing record (ranks.jsonl) and the games it finished (games.jsonl, the last-20 mean).
           Only rank 0 holds N rows; every other rank sends one and receives nothing.

A rank finishing more games in one round than its row has room for keeps the rest for the next round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SUM, MAX = "sum", "max"

# The auto deadline is the lower median over ranks of their fill times. Exchanged as a histogram (so
# that the record does not grow with the rank count): log-spaced bins 1.2 % wide from 1 ms to 1000 s,
# read at a bin's geometric centre, so within 0.6 % of the exact lower median.
FILL_MIN_S, FILL_DECADES, FILL_BINS_PER_DECADE = 1e-3, 6, 192
FILL_BINS = FILL_DECADES * FILL_BINS_PER_DECADE


def fill_bin(seconds: float) -> int | None:
    """The histogram bin of a fill time (None for a time that says nothing: 0, negative, inf, nan)."""
    if not (math.isfinite(seconds) and seconds > 0):
        return None
    position = math.log10(seconds / FILL_MIN_S) * FILL_BINS_PER_DECADE
    return int(min(max(math.floor(position), 0), FILL_BINS - 1))


def lower_median_of_counts(counts: np.ndarray) -> float | None:
    """The lower median of the fill times a histogram counts, as its bin's geometric centre (None if empty)."""
    total = int(round(float(np.sum(counts))))
    if total == 0:
        return None
    k = (total - 1) // 2  # 0-based index of the lower median among the sorted times
    index = int(np.searchsorted(np.cumsum(np.round(counts)), k + 1))
    return FILL_MIN_S * 10 ** ((index + 0.5) / FILL_BINS_PER_DECADE)


@dataclass(frozen=True)
class Layout:
    """Named fields of a flat float64 record: (name, width, operation), sums before maxima."""

    fields: tuple

    def __post_init__(self):
        ops = [op for _, _, op in self.fields]
        assert ops == sorted(ops, key=lambda o: o != SUM), "sum fields come first"

    @property
    def width(self) -> int:
        return sum(w for _, w, _ in self.fields)

    @property
    def sum_width(self) -> int:
        return sum(w for _, w, op in self.fields if op == SUM)

    def slices(self) -> dict:
        out, start = {}, 0
        for name, width, _ in self.fields:
            out[name] = slice(start, start + width)
            start += width
        return out

    def pack(self, values: dict) -> np.ndarray:
        """A record from {name: value}; a field left out is 0 (the identity of both operations here, as
        every max field is >= 0 or given explicitly)."""
        buf = np.zeros(self.width, np.float64)
        slices = self.slices()
        for name, value in values.items():
            buf[slices[name]] = value
        return buf

    def unpack(self, buf: np.ndarray) -> dict:
        """{name: float for width-1 fields, array otherwise}."""
        return {
            name: (float(buf[s][0]) if s.stop - s.start == 1 else buf[s].copy()) for name, s in self.slices().items()
        }

    def combine(self, into: np.ndarray, other: np.ndarray) -> None:
        """The reduction, in place (`into` op= `other`), on [..., width] arrays: what the Allreduce computes."""
        n = self.sum_width
        into[..., :n] += other[..., :n]
        np.maximum(into[..., n:], other[..., n:], out=into[..., n:])


def agreed_layout(num_moments: int) -> Layout:
    """The AGREED record of a run whose algorithm reports `num_moments` return moments."""
    return Layout(
        (
            ("moments", num_moments, SUM),  # the algorithm's sums over valid samples (count first)
            ("filled", 1, SUM),  # agent steps played this round
            ("masked", 1, SUM),  # samples masked out of the loss
            ("games", 1, SUM),  # full games finished this round
            ("window_reward", 1, SUM),  # the 2016 criterion, per game stepped, summed over ranks
            ("rank0_process_s", 1, SUM),  # rank 0's seconds on the --time-limit-s clock (others send 0)
            ("fill_counts", FILL_BINS, SUM),  # histogram of the ranks' fill-time estimates
            ("signal", 1, MAX),  # a termination signal's number, 0 for none
            ("io_failure", 1, MAX),  # 1: rank 0 could not write a file of the run
            ("stop_request", 1, MAX),  # 1: rank 0 saw the target return reached (from games it alone holds)
            ("sparse_length", 1, MAX),  # the longest nonzero-cell list of any rank
            ("checksum_max", 1, MAX),  # parameter checksum range (-inf when not checked this round)
            ("checksum_neg_min", 1, MAX),
            ("slowest_round_s", 1, MAX),  # the slowest rank's previous round, collection + compute
            ("rank0_eval_s", 1, MAX),  # how long rank 0's last evaluation took
        )
    )


# The previous round's timing record, as ranks.jsonl holds it (deadline_s and eval_s: nan for none).
RECORD_FIELDS = (
    "update",
    "rank",
    "start_s",
    "collect_s",
    "compute_s",
    "wait_s",
    "valid_samples",
    "masked_samples",
    "cut_by_deadline",
    "deadline_s",
    "eval_s",
)
_INT_FIELDS = {"update", "rank", "valid_samples", "masked_samples"}


def games_per_row(num_envs: int, buffer_steps: int) -> int:
    """Game slots in a rank's row: more than a round can finish (a Pong game takes at least ~700 agent
    steps), and any excess waits for the next round."""
    return max(4, num_envs * max(1, math.ceil(buffer_steps / 700)))


def log_layout(game_slots: int) -> Layout:
    return Layout((*((name, 1, SUM) for name in RECORD_FIELDS), ("game_count", 1, SUM), ("games", 2 * game_slots, SUM)))


def record_row(layout: Layout, record: dict | None, games: list) -> np.ndarray:
    """A rank's LOGGED row: its previous round's record (None before its first) and up to the row's
    room of games [(return, length)]."""
    values: dict[str, Any] = {name: np.nan for name in RECORD_FIELDS}
    if record is not None:
        for name in RECORD_FIELDS:
            value = record.get(name)
            values[name] = np.nan if value is None else float(value)
    slots = (layout.slices()["games"].stop - layout.slices()["games"].start) // 2
    assert len(games) <= slots, "take at most games_per_row games a round"
    values["game_count"] = len(games)
    flat = np.zeros(2 * slots)
    flat[: 2 * len(games)] = np.asarray(games, np.float64).ravel() if games else []
    values["games"] = flat
    return layout.pack(values)


def read_rows(layout: Layout, rows: np.ndarray) -> tuple[list[dict], list[list[tuple[float, int]]]]:
    """Rank 0: the gathered [ranks, width] rows -> (records as ranks.jsonl writes them, games per rank)."""
    records, games = [], []
    for row in rows:
        fields = layout.unpack(row)
        if not math.isnan(fields["update"]):
            record: dict[str, Any] = {}
            for name in RECORD_FIELDS:
                value = fields[name]
                if name in _INT_FIELDS:
                    record[name] = int(value)
                elif name == "cut_by_deadline":
                    record[name] = bool(value)
                elif math.isnan(value):
                    if name == "deadline_s":
                        record[name] = None  # eval_s is left out when rank 0 did not evaluate
                else:
                    record[name] = value
            records.append(record)
        count = int(fields["game_count"])
        pairs = fields["games"][: 2 * count].reshape(count, 2)
        games.append([(float(ret), int(n)) for ret, n in pairs])
    return records, games

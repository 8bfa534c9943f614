"""Late senders, seen: `python -m jaxpong report RUN_DIR` reads ranks.jsonl (and metrics.jsonl), draws
RUN_DIR/imbalance.png, writes the per-rank timeline as RUN_DIR/trace.json (Chrome trace events, for
Perfetto), prints a table per rank and a plain-language finding.

What one round of `train` is, on each rank (one line of ranks.jsonl per rank per round):

    start_s     when the round began, in seconds since the common start barrier
    collect_s   playing games until the deadline or a full buffer
    wait_s      the per-round gather: waiting for the last rank to arrive (the late-sender cost)
    compute_s   preparing returns (before the gather) plus the update (gradients, one allreduce per
                optimizer step); where a record also has prepare_s, that is the preparation's part
    eval_s      rank 0 only, rounds with an evaluation or video: between this round and the next

The finding names the persistent late senders (ranks last to arrive far more often than chance, that
wait less than the others) and the slow collectors (ranks that play fewer samples per second than 2/3
of the median rank: without a deadline they are the late senders; under one they are cut and arrive on
time with fewer samples, so only their speed shows them).

The picture depends on the rank count (`--picture auto`):
- up to TIMELINE_MAX_RANKS ranks, the profiler view that showed, in 2016, that a few late games held
  every rank up: one row per rank against wall-clock time, each round's collection, wait and update in
  their own colours (a late rank makes sloped wedges of wait on all the others), above per-rank bars of
  the wait and masked fractions and each rank's collection speed against the median rank's;
- above that, where one row per rank cannot stay legible, two rank x round heatmaps (the wait fraction
  and the masked fraction of every rank in every round) beside each rank's share of rounds it arrived
  last, its wait fraction and its collection speed, the late senders and slow collectors named. Where
  there are more ranks or rounds than pixels, neighbouring ranks and rounds share a cell, and the
  figure says how.

Where the run measured the gradient noise scale (charts/noise_scale), one more line says how many ranks
its critical batch makes useful under the run's batch rules (batch_rule.useful_ranks).

The first round includes compilation and is left out of every number and picture (not of the trace).
ranks.jsonl is read in chunks of lines into one numpy matrix per field (ranks x rounds): a 1,536-rank
run of 300 rounds (92 MB of ranks.jsonl) takes about 10 s of CPU and 210 MB of memory at the peak,
matplotlib included, and gives a 130 MB trace.

Nothing here imports jax or MPI: a report can be made anywhere the run directory can be read.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.learn import batch_rule

COLOURS = {
    "collect": "#59a14f",
    "prepare": "#edc948",
    "wait": "#e15759",
    "update": "#4e79a7",
    "eval": "#b07aa1",
    "masked": "#f28e2b",
}
IMAGE_NAME = "imbalance.png"
TEXT_NAME = "imbalance.txt"
TRACE_NAME = "trace.json"
TIMELINE_MAX_RANKS = 32  # --picture auto: the per-rank timeline up to this many ranks, heatmaps above
TRACE_MAX_EVENTS = 2_000_000  # the trace's default size limit (about 200 MB): the last rounds that fit
TABLE_MAX_RANKS = 32  # the printed table (and the JSON's "ranks") lists every rank up to this many
TABLE_TOP = 10  # above it: the ranks most often last (imbalance.txt always holds every rank)
NAMED_MAX = 5  # late senders named in the finding; the rest are counted
REQUIRED = ("update", "rank", "start_s", "collect_s", "compute_s", "wait_s")
OPTIONAL = ("eval_s", "prepare_s", "valid_samples", "masked_samples", "cut_by_deadline")


# -- reading a run --------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return rows


def check_run_dir(run_dir) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"run directory {str(path)!r} does not exist; give the folder a train run wrote")
    return path


def _ranks_path(run_dir) -> Path:
    path = check_run_dir(run_dir) / "ranks.jsonl"
    if not path.is_file():
        raise ConfigError(
            f"{str(path)!r} not found; ranks.jsonl is written by `jaxpong train` (rank 0) in its run directory"
        )
    return path


def _complete(record) -> bool:
    return isinstance(record, dict) and all(isinstance(record.get(k), (int, float)) for k in REQUIRED)


def _no_rounds(path) -> ConfigError:
    return ConfigError(f"{str(path)!r} holds no complete round record; the run ended before its first update")


def read_ranks(run_dir) -> list[dict]:
    """Every record of ranks.jsonl (one per rank per round), checked for the fields the report needs.
    (The report itself streams the file into matrices: read_rounds.)"""
    path = _ranks_path(run_dir)
    records = [r for r in _read_jsonl(path) if _complete(r)]
    if not records:
        raise _no_rounds(path)
    return records


def read_metrics(run_dir) -> list[dict]:
    """metrics.jsonl's lines, or [] where the run has none."""
    path = Path(run_dir) / "metrics.jsonl"
    return _read_jsonl(path) if path.is_file() else []


def steady_records(records: list[dict]) -> list[dict]:
    """The rounds after the first (which includes compilation); all rounds if there is only one."""
    first = min(r["update"] for r in records)
    later = [r for r in records if r["update"] > first]
    return later or records


@dataclass
class Rounds:
    """ranks.jsonl as matrices: row = rank (0..the highest), column = round (the lowest update..the
    highest); `present` marks the cells a record filled. Timings are NaN, counts 0 where absent;
    eval_s is 0 and prepare_s NaN in a record without them. A (rank, update) written twice (a resumed
    run that repeats rounds) keeps its last record."""

    ranks: np.ndarray
    updates: np.ndarray
    present: np.ndarray
    start_s: np.ndarray
    collect_s: np.ndarray
    compute_s: np.ndarray
    wait_s: np.ndarray
    eval_s: np.ndarray
    prepare_s: np.ndarray
    valid: np.ndarray
    masked: np.ndarray
    cut: np.ndarray
    hosts: dict = field(default_factory=dict)  # rank -> the host it ran on (records from before: none)

    @property
    def has_prepare(self) -> bool:
        return bool(np.isfinite(self.prepare_s[self.present]).any())

    def rank_rows(self) -> np.ndarray:
        """The ranks that wrote at least one record."""
        return self.ranks[self.present.any(axis=1)]

    def steady_columns(self) -> np.ndarray:
        """Column indices of the rounds after the first (which compiles); all rounds if there is one."""
        cols = np.flatnonzero(self.present.any(axis=0))
        return cols[1:] if len(cols) > 1 else cols

    @classmethod
    def from_records(cls, records) -> Rounds:
        columns = _Columns()
        columns.extend(list(records))
        return columns.build()


def _floats(values: list) -> np.ndarray:
    """JSON values as float64, NaN where one is missing (None) or not a number."""
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([float(v) if isinstance(v, (int, float)) else math.nan for v in values], dtype=np.float64)


class _Columns:
    """ranks.jsonl's numbers, a chunk of records at a time, as float64 columns (8 bytes a value)."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {k: [] for k in (*REQUIRED, *OPTIONAL)}
        self.hosts: dict[int, str] = {}

    def extend(self, records: list) -> None:
        records = [r for r in records if type(r) is dict]
        for r in records:
            if isinstance(r.get("host"), str) and isinstance(r.get("rank"), int):
                self.hosts[r["rank"]] = r["host"]
        columns = {k: _floats([r.get(k) for r in records]) for k in self.chunks}
        keep = np.ones(len(records), bool)
        for key in REQUIRED:  # a record without every needed number is not a round
            keep &= np.isfinite(columns[key])
        keep &= np.where(keep, columns["rank"], -1) >= 0
        for key, column in columns.items():
            self.chunks[key].append(column[keep])

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks["rank"])

    def build(self) -> Rounds:
        if not len(self):
            empty = np.zeros((0, 0))
            # the eight float fields spelled out: mypy cannot count `*[empty] * 8` between positional arguments
            return Rounds(
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                empty.astype(bool),
                empty,
                empty,
                empty,
                empty,
                empty,
                empty,
                empty,
                empty,
                empty.astype(bool),
            )
        values = {k: np.concatenate(c) for k, c in self.chunks.items()}
        rank, update = values["rank"].astype(np.int64), values["update"].astype(np.int64)
        first = int(update.min())
        shape = (int(rank.max()) + 1, int(update.max()) - first + 1)
        row, col = rank, update - first

        def matrix(key, fill=math.nan):
            out = np.full(shape, math.nan)
            out[row, col] = values[key]  # a (rank, update) written twice keeps its last record
            return out if math.isnan(fill) else np.where(np.isnan(out), fill, out)

        present = np.zeros(shape, bool)
        present[row, col] = True
        return Rounds(
            ranks=np.arange(shape[0]),
            updates=np.arange(first, first + shape[1]),
            present=present,
            start_s=matrix("start_s"),
            collect_s=matrix("collect_s"),
            compute_s=matrix("compute_s"),
            wait_s=matrix("wait_s"),
            eval_s=np.where(present, matrix("eval_s", 0.0), math.nan),
            prepare_s=matrix("prepare_s"),
            valid=matrix("valid_samples", 0.0),
            masked=matrix("masked_samples", 0.0),
            cut=matrix("cut_by_deadline", 0.0) > 0,
            hosts=dict(self.hosts),
        )


READ_CHUNK = 20_000  # lines parsed at once


def _record_chunks(path: Path):
    """ranks.jsonl's records, READ_CHUNK lines at a time; a line cut short by a crash is skipped."""
    with open(path) as f:
        while lines := list(islice(f, READ_CHUNK)):
            lines = [line for line in lines if line.strip()]
            try:
                yield json.loads("[" + ",".join(lines) + "]")
            except json.JSONDecodeError:
                records = []
                for line in lines:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
                yield records


def read_rounds(run_dir) -> Rounds:
    """ranks.jsonl streamed into matrices (memory: a few numbers per record, never the records)."""
    path = _ranks_path(run_dir)
    columns = _Columns()
    for records in _record_chunks(path):
        columns.extend(records)
    if not len(columns):
        raise _no_rounds(path)
    return columns.build()


def _as_rounds(records) -> Rounds:
    return records if isinstance(records, Rounds) else Rounds.from_records(records)


# -- the numbers ----------------------------------------------------------------------------------
@dataclass
class RankStats:
    rank: int
    rounds: int
    collect_s: float  # means per round
    compute_s: float
    wait_s: float
    wait_fraction: float  # sum(wait) / sum(collect + compute + wait)
    valid_samples: int  # totals over the rounds
    masked_samples: int
    masked_fraction: float
    last_arrivals: int  # rounds in which this rank was the last to reach the gather
    cut_rounds: int  # rounds the deadline cut this rank's collection
    host: str = ""  # where it ran ("" where the records do not say)

    @property
    def collect_speed(self) -> float:
        """Samples (valid and masked) per second of collection."""
        busy = self.collect_s * self.rounds
        return (self.valid_samples + self.masked_samples) / busy if busy > 0 else 0.0


def last_arrivals(rounds: Rounds, cols: np.ndarray) -> np.ndarray:
    """Per rank, the rounds (of columns `cols`) in which it reached the gather last.

    The last rank to reach the gather waits only for the collective itself, so in each round the rank
    with the smallest wait_s is the last arrival (the lowest rank on a tie). A round counts only where
    at least two ranks recorded it (or where the run has one rank)."""
    present = rounds.present[:, cols]
    wait = np.where(present, rounds.wait_s[:, cols], np.inf)
    alone = int(rounds.present.any(axis=1).sum()) == 1
    counted = present.sum(axis=0) >= (1 if alone else 2)
    if not counted.any():
        return np.zeros(len(rounds.ranks), np.int64)
    return np.bincount(np.argmin(wait[:, counted], axis=0), minlength=len(rounds.ranks))


def rank_stats(records) -> list[RankStats]:
    """Per-rank numbers over the rounds after the first (records: a Rounds, or ranks.jsonl's dicts)."""
    rounds = _as_rounds(records)
    cols = rounds.steady_columns()
    present = rounds.present[:, cols]

    def total(m):
        return np.where(present, m[:, cols], 0.0).sum(axis=1)

    n = present.sum(axis=1)
    collect, compute, wait = total(rounds.collect_s), total(rounds.compute_s), total(rounds.wait_s)
    valid, masked = total(rounds.valid), total(rounds.masked)
    cut = (rounds.cut[:, cols] & present).sum(axis=1)
    last = last_arrivals(rounds, cols)
    out = []
    for i in np.flatnonzero(n):
        busy = collect[i] + compute[i] + wait[i]
        v, m = int(valid[i]), int(masked[i])
        out.append(
            RankStats(
                rank=int(rounds.ranks[i]),
                rounds=int(n[i]),
                collect_s=float(collect[i] / n[i]),
                compute_s=float(compute[i] / n[i]),
                wait_s=float(wait[i] / n[i]),
                wait_fraction=float(wait[i] / busy) if busy > 0 else 0.0,
                valid_samples=v,
                masked_samples=m,
                masked_fraction=m / (v + m) if v + m else 0.0,
                last_arrivals=int(last[i]),
                cut_rounds=int(cut[i]),
                host=rounds.hosts.get(int(rounds.ranks[i]), ""),
            )
        )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1g}%" if 0 < x < 0.01 else f"{100 * x:.0f}%"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def late_senders(stats: list[RankStats]) -> list[RankStats]:
    """The persistent late senders, most often last first.

    A rank is one when it arrived last in more rounds than chance allows and it waits clearly less
    than the others: last in at least 3 rounds and in at least min(half the rounds, the even share
    plus 3 standard deviations of a binomial count); and its wait fraction either 5 points or more
    below the median of the ranks that are not candidates, or at most half of that median where the
    median is 1% or more (runs whose rounds are mostly update, such as many ranks oversubscribed on
    few cores). At 2 ranks that is "last in half the rounds or more"; at 1,536 ranks and 300 rounds,
    last in 3 rounds or more (chance gives 0.2 on average)."""
    if len(stats) < 2:
        return []
    rounds = max(s.rounds for s in stats)
    p = 1.0 / len(stats)
    need = max(3.0, min(0.5 * rounds, rounds * p + 3.0 * math.sqrt(rounds * p * (1.0 - p))))
    candidates = [s for s in stats if s.last_arrivals >= need]
    others = [s.wait_fraction for s in stats if s.last_arrivals < need]
    if not candidates or not others:
        return []
    typical = float(np.median(others))
    late = [
        s
        for s in candidates
        if typical - s.wait_fraction >= 0.05 or (typical >= 0.01 and s.wait_fraction <= 0.5 * typical)
    ]
    return sorted(late, key=lambda s: (-s.last_arrivals, s.wait_fraction, s.rank))


SLOW_COLLECTOR = 2 / 3  # a rank collecting below this share of the median rank's samples per second


def slow_collectors(stats: list[RankStats]) -> list[RankStats]:
    """Ranks that play their games slowly: fewer than SLOW_COLLECTOR of the median rank's samples per
    second of collection, slowest first. Without a deadline they are the late senders; under one, the
    deadline cuts them and they arrive on time with fewer samples, so only this names them."""
    speeds = [s.collect_speed for s in stats if s.collect_speed > 0]
    if len(stats) < 2 or len(speeds) < 2:
        return []
    typical = float(np.median(speeds))
    return sorted(
        (s for s in stats if 0 < s.collect_speed < SLOW_COLLECTOR * typical), key=lambda s: (s.collect_speed, s.rank)
    )


def _slow_text(slow: list[RankStats], stats: list[RankStats]) -> str:
    """The sentence on slow collectors that are not late senders: the deadline holds them."""
    slow_ranks = {s.rank for s in slow}
    others = [s for s in stats if s.rank not in slow_ranks]
    if not others:
        return ""
    one = len(slow) == 1
    named = slow[:NAMED_MAX]
    more = f" and {len(slow) - len(named)} more (in {TEXT_NAME})" if len(slow) > len(named) else ""
    speed = float(np.mean([s.collect_speed for s in slow])) / float(np.median([s.collect_speed for s in others]))
    text = (
        f" {'Rank' if one else 'Ranks'} {_and([str(s.rank) for s in named])}{more} "
        f"{'plays' if one else 'play'} slowly: {speed:.2f}x the others' samples per second of collection"
    )
    cut = sum(s.cut_rounds for s in slow) / max(sum(s.rounds for s in slow), 1)
    others_valid = float(np.mean([s.valid_samples / max(s.rounds, 1) for s in others]))
    if cut >= 0.5 and others_valid > 0:
        valid = float(np.mean([s.valid_samples / max(s.rounds, 1) for s in slow]))
        text += (
            f"; the deadline cut {'its' if one else 'their'} collection in {_pct(cut)} of rounds, so "
            f"{'it' if one else 'they'} arrived on time with {_pct(valid / others_valid)} of the others' samples"
        )
    return text + "."


def finding(stats: list[RankStats]) -> str:
    """A short plain-language reading of the per-rank numbers: who is late, and what it costs the others."""
    if not stats:
        return "no rounds to report."
    rounds = max(s.rounds for s in stats)
    valid = sum(s.valid_samples for s in stats)
    masked = sum(s.masked_samples for s in stats)
    masked_txt = (
        f" {_pct(masked / (valid + masked))} of the samples were masked (played, but no gradient weight)."
        if masked
        else ""
    )
    if len(stats) == 1:
        s = stats[0]
        busy = s.collect_s + s.compute_s + s.wait_s
        return (
            f"one rank: nobody to wait for; per round it spent {_pct(s.collect_s / busy)} of its time collecting "
            f"and {_pct(s.compute_s / busy)} in the update.{masked_txt}"
        )
    late = late_senders(stats)
    late_ranks = {s.rank for s in late}
    slow = [s for s in slow_collectors(stats) if s.rank not in late_ranks]
    slow_txt = _slow_text(slow, stats) if slow else ""
    if not late:
        top = max(stats, key=lambda s: (s.last_arrivals, -s.wait_fraction))
        mean_wait = float(np.mean([s.wait_fraction for s in stats]))
        return (
            f"no persistent late sender: the last arrival moves between ranks (most often rank {top.rank}, in "
            f"{_pct(top.last_arrivals / max(rounds, 1))} of {rounds} rounds); the ranks lost on average "
            f"{_pct(mean_wait)} of their time waiting.{update_text(stats)}{slow_txt}{masked_txt}"
        )
    others = [s for s in stats if s.rank not in late_ranks]
    one = len(late) == 1
    named = late[:NAMED_MAX]
    shares = [_pct(s.last_arrivals / max(rounds, 1)) for s in named]
    if one:
        text = f"rank {named[0].rank} is the late sender: it arrived last in {shares[0]} of {rounds} rounds"
    else:
        together = sum(s.last_arrivals for s in late) / max(rounds, 1)
        more = f" and {len(late) - len(named)} more (in {TEXT_NAME})" if len(late) > len(named) else ""
        text = (
            f"ranks {_and([str(s.rank) for s in named])}{more} are the persistent late senders: together they "
            f"arrived last in {_pct(together)} of {rounds} rounds "
            f"({', '.join(f'rank {s.rank} in {share}' for s, share in zip(named, shares))})"
        )
    late_collect = float(np.mean([s.collect_s for s in late]))
    others_collect = float(np.mean([s.collect_s for s in others]))
    ratio = late_collect / others_collect if others_collect > 0 else math.inf
    if ratio >= 1.2:
        text += (
            f", {'its' if one else 'their'} collection took {ratio:.1f}x as long as the others' "
            f"({late_collect:.3g} s against {others_collect:.3g} s per round)"
        )
    others_wait = float(np.mean([s.wait_fraction for s in others]))
    others_wait_s = float(np.mean([s.wait_s for s in others]))
    late_wait = float(np.mean([s.wait_fraction for s in late]))
    who = "the other rank lost" if len(others) == 1 else f"the other {len(others)} ranks lost on average"
    whom = f"rank {named[0].rank} itself" if one else "the late senders"
    text += (
        f"; {who} {_pct(others_wait)} of {'its' if len(others) == 1 else 'their'} time waiting for "
        f"{'it' if one else 'them'} ({others_wait_s:.3g} s per round), against {_pct(late_wait)} for {whom}."
    )
    late_rounds = sum(s.rounds for s in late)
    if sum(s.cut_rounds for s in late) >= 0.5 * late_rounds:
        others_valid = float(np.mean([s.valid_samples for s in others]))
        if others_valid > 0:
            text += (
                f" The deadline cut {'its' if one else 'their'} collection in "
                f"{_pct(sum(s.cut_rounds for s in late) / late_rounds)} of rounds, so "
                f"{'it' if one else 'they'} joined with "
                f"{_pct(float(np.mean([s.valid_samples for s in late])) / others_valid)} of the others' samples."
            )
    elif ratio < 1.2 and one and named[0].rank == 0:
        text += (
            " Its collection is not slower: rank 0's own host work between rounds"
            " (logging, checkpoints, evaluations) delays it."
        )
    return text + host_text(late, stats) + update_text(stats) + slow_txt + masked_txt


UPDATE_SHARE_NOTED = 0.3  # across hosts, an update that takes more of a round than this is named


def update_text(stats: list[RankStats]) -> str:
    """Across hosts: how much of a round the update took, with its allreduces. A slow link between hosts
    slows every rank's allreduces alike, so it shows here, not as a late sender, and deadline masking
    (which cuts collection) cannot shorten it."""
    if len({s.host for s in stats if s.host}) < 2:
        return ""
    busy = [s.collect_s + s.compute_s + s.wait_s for s in stats]
    share = float(np.mean([s.compute_s / b for s, b in zip(stats, busy) if b > 0])) if any(busy) else 0.0
    if share < UPDATE_SHARE_NOTED:
        return ""
    update_s = float(np.mean([s.compute_s for s in stats]))
    return (
        f" The update, with its allreduces across hosts, took {_pct(share)} of each round ({update_s:.3g} s) on"
        " every rank alike: a slow link between hosts shows here, and the deadline cannot shorten it (it cuts"
        " collection only)."
    )


SLOW_LINK_RATIO = 4.0  # a host whose link from rank 0's host is this many times slower than another's is named
LINK_SHARE_NOTED = 0.05  # the link's estimated share of a round below which it is said not to matter


def read_links(run_dir) -> dict | None:
    """The last line of RUN_DIR/links.jsonl (the latest process's measured links), None without one."""
    path = Path(run_dir) / "links.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("links"):
            last = record
    return last


def link_text(record: dict | None, stats: list[RankStats]) -> str:
    """Across hosts: the links rank 0 measured at start (links.jsonl), the host whose link is much the
    slowest, and what the update's allreduces cost at that rate against the round. A slow link slows every
    rank's allreduces alike, so it never shows as a late rank: this is where it is named."""
    if not record or not record.get("links") or not stats:
        return ""
    links = sorted(record["links"], key=lambda k: k["mb_s"])
    hosts = record.get("hosts") or []
    home = hosts[0] if hosts else "rank 0's host"

    def ranks_of(host: str) -> str:
        mine = [str(r) for r, h in enumerate(hosts) if h == host]
        return f"rank{'s' if len(mine) > 1 else ''} {_and(mine)}" if mine else "its ranks"

    rates = ", ".join(f"{k['host']} {k['mb_s']:,.0f} MB/s" for k in links)
    text = f" Links from rank 0's host {home}, measured at start (links.jsonl): {rates}."
    slowest = links[0]
    if len(links) > 1 and links[1]["mb_s"] >= SLOW_LINK_RATIO * slowest["mb_s"]:
        text += (
            f" Host {slowest['host']}'s link is the slow one ({links[1]['mb_s'] / max(slowest['mb_s'], 1e-9):.0f}x "
            f"slower than the next): {ranks_of(slowest['host'])} there slow every rank's allreduces alike."
        )
    elif len(links) > 1 and all(k["mb_s"] < SLOW_LINK_RATIO * slowest["mb_s"] for k in links):
        text += f" All of them alike: if they are slow, it is {home}'s own link or the network between."
    per_round = record.get("allreduce_bytes", 0) * record.get("allreduces_per_round", 0)
    if per_round > 0:
        seconds = per_round / (slowest["mb_s"] * 1e6)
        round_s = float(np.mean([s.collect_s + s.compute_s + s.wait_s for s in stats]))
        update_s = float(np.mean([s.compute_s for s in stats]))
        share = seconds / round_s if round_s > 0 else 0.0
        text += (
            f" The update's {record['allreduces_per_round']} allreduces carry about {per_round / 1e6:.3g} MB a round "
            f"over a link: about {seconds:.2g} s at {slowest['mb_s']:,.0f} MB/s"
        )
        if share >= LINK_SHARE_NOTED:
            text += (
                f", {_pct(share)} of the mean round ({round_s:.3g} s; the update took {update_s:.3g} s): fewer, "
                "larger optimizer steps or a faster link would shorten it."
            )
        else:
            text += f", {_pct(share)} of the mean round: the links do not limit this run."
    return text


def host_text(late: list[RankStats], stats: list[RankStats]) -> str:
    """Where the late senders ran, when the ranks ran on more than one host: a late host shows as a host."""
    hosts = {s.rank: s.host for s in stats if s.host}
    if len(set(hosts.values())) < 2 or not late:
        return ""
    late_ranks = {s.rank for s in late}
    parts = []
    for host in sorted({hosts[s.rank] for s in late if s.rank in hosts}):
        on_host = sorted(r for r, h in hosts.items() if h == host)
        mine = [r for r in on_host if r in late_ranks]
        whole = " (all of its ranks)" if len(mine) == len(on_host) else f" ({len(mine)} of its {len(on_host)} ranks)"
        parts.append(f"host {host}: rank{'s' if len(mine) > 1 else ''} {_and([str(r) for r in mine])}{whole}")
    return f" By host: {'; '.join(parts)}."


def useful_ranks_line(noise_scale: float, samples_per_step: float, ranks: int, cfg: Config) -> str | None:
    """The one plain line on how many ranks the critical batch makes useful, from the run's
    charts/noise_scale (B_simple, which approximates the critical batch), charts/optimizer_batch (valid
    samples per optimizer step, all ranks), rank count and user config (whose rules say how the optimizer
    batch follows the rank count); None when the noise scale was not measured."""
    if not (noise_scale > 0 and samples_per_step > 0):
        return None
    useful = batch_rule.useful_ranks(cfg, ranks, samples_per_step, noise_scale)
    head = (
        f"critical batch about {noise_scale:,.0f} samples per optimizer step (gradient noise scale); "
        f"this run's steps averaged {samples_per_step:,.0f}"
    )
    if useful < 1:
        return f"{head}, already past it: more ranks would add samples that buy little (this run: {ranks})."
    most = "at least " if useful == batch_rule.MOST_RANKS else "about "
    return (
        f"{head}: up to {most}{useful:,} rank{'s' if useful > 1 else ''} keep{'' if useful > 1 else 's'} "
        f"{'their' if useful > 1 else 'its'} optimizer steps within it under this config's batch rules "
        f"(this run: {ranks})."
    )


def noise_scale_line(metrics: list[dict], run_dir: Path) -> str | None:
    """useful_ranks_line from the last metrics line that measured the noise scale, under the rules of the
    config the run was started with (its config.yaml); None if none did, or the config cannot be read."""
    for line in reversed(metrics):
        if "charts/noise_scale" in line and "charts/optimizer_batch" in line:
            try:
                cfg = Config.from_run(run_dir)
            except ConfigError:  # the per-rank report stands without this one line
                return None
            return useful_ranks_line(
                line["charts/noise_scale"],
                line["charts/optimizer_batch"],
                int(line.get("comm/world_size", 1)),
                cfg,
            )
    return None


def table(stats: list[RankStats], limit: int | None = None) -> str:
    """The per-rank table; with `limit`, only the `limit` ranks most often last (when there are more)."""
    head = (
        f"{'rank':>4}  {'rounds':>6}  {'collect s':>9}  {'compute s':>9}  {'wait s':>8}  {'wait %':>6}  "
        f"{'valid':>9}  {'masked':>8}  {'masked %':>8}  {'last':>5}  {'last %':>6}  {'cut':>5}"
    )
    with_hosts = any(s.host for s in stats)
    if with_hosts:
        head += f"  {'host':<12}"
    shown = stats
    if limit is not None and len(stats) > limit:
        shown = sorted(stats, key=lambda s: (-s.last_arrivals, s.wait_fraction, s.rank))[:limit]
    lines = [head, "-" * len(head)]
    for s in shown:
        lines.append(
            f"{s.rank:>4}  {s.rounds:>6}  {s.collect_s:>9.4f}  {s.compute_s:>9.4f}  {s.wait_s:>8.4f}  "
            f"{100 * s.wait_fraction:>6.1f}  {s.valid_samples:>9,}  {s.masked_samples:>8,}  "
            f"{100 * s.masked_fraction:>8.1f}  {s.last_arrivals:>5}  "
            f"{100 * s.last_arrivals / max(s.rounds, 1):>6.1f}  {s.cut_rounds:>5}"
            + (f"  {s.host:<12}" if with_hosts else "")
        )
    if shown is not stats:
        waits = np.array([s.wait_fraction for s in stats])
        lines.append(
            f"({len(shown)} of {len(stats)} ranks: those most often last; every rank is in {TEXT_NAME}. "
            f"Wait % over all ranks: min {100 * waits.min():.1f}, median {100 * np.median(waits):.1f}, "
            f"max {100 * waits.max():.1f})"
        )
    return "\n".join(lines)


def _stat_json(s: RankStats) -> dict:
    return {
        "rank": s.rank,
        "wait_fraction": round(s.wait_fraction, 4),
        "masked_fraction": round(s.masked_fraction, 4),
        "last_arrivals": s.last_arrivals,
        "rounds": s.rounds,
        "collect_s": round(s.collect_s, 6),
        "compute_s": round(s.compute_s, 6),
        "wait_s": round(s.wait_s, 6),
        "valid_samples": s.valid_samples,
        "masked_samples": s.masked_samples,
        **({"host": s.host} if s.host else {}),
    }


def summary(stats: list[RankStats], text: str) -> dict:
    """The machine-readable result (the last line `report` prints). "ranks" lists every rank up to
    TABLE_MAX_RANKS, above that the TABLE_TOP most often last (RUN_DIR/imbalance.txt lists them all)."""
    listed = (
        stats
        if len(stats) <= TABLE_MAX_RANKS
        else sorted(stats, key=lambda s: (-s.last_arrivals, s.wait_fraction, s.rank))[:TABLE_TOP]
    )
    return {
        "num_ranks": len(stats),
        "ranks": [_stat_json(s) for s in listed],
        "late_senders": [s.rank for s in late_senders(stats)],
        "slow_collectors": [s.rank for s in slow_collectors(stats)],
        "finding": text,
    }


# -- the pictures ---------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _phases(rounds: Rounds) -> list[str]:
    return ["collect", "prepare", "wait", "update"] if rounds.has_prepare else ["collect", "wait", "update"]


def _phase_seconds(rounds: Rounds, phase: str) -> np.ndarray:
    """Each phase's duration per (rank, round), in the order a round runs them."""
    prepare = np.nan_to_num(rounds.prepare_s) if rounds.has_prepare else np.zeros_like(rounds.compute_s)
    return {
        "collect": rounds.collect_s,
        "prepare": prepare,
        "wait": rounds.wait_s,
        "update": np.maximum(rounds.compute_s - prepare, 0.0),
        "eval": rounds.eval_s,
    }[phase]


PHASE_LABELS = {
    "collect": "collect (play games)",
    "prepare": "prepare (returns, before the gather)",
    "wait": "wait for the last rank (gather)",
    "update": "update (gradients + allreduce)",
    "eval": "evaluation (rank 0, between rounds)",
}


def plot_timeline(rounds: Rounds, stats: list[RankStats], path: Path, last_rounds: int = 20, title: str = "") -> Path:
    """One row per rank against wall-clock time, the last `last_rounds` rounds (0 = all), above per-rank
    wait and masked fractions: clear up to a few tens of ranks."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    cols = np.flatnonzero(rounds.present.any(axis=0))
    later = cols[1:] if len(cols) > 1 else cols  # the first round (compilation) would dwarf the others
    shown = later[-last_rounds:] if last_rounds > 0 else later
    ranks = [int(r) for r in rounds.rank_rows()]
    height = max(4.5, 2.2 + 0.35 * len(ranks))
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(11, height + 3.2), gridspec_kw={"height_ratios": [height, 3.0]})
    phases = _phases(rounds) + ["eval"]
    seconds = {p: _phase_seconds(rounds, p) for p in phases}
    for rank in ranks:
        here = shown[rounds.present[rank, shown]]
        t = rounds.start_s[rank, here].copy()
        for part in phases:
            d = np.nan_to_num(seconds[part][rank, here])
            ax.broken_barh(
                list(zip(t.tolist(), d.tolist())), (rank - 0.38, 0.76), facecolors=COLOURS[part], linewidth=0
            )
            t = t + d
    ax.set_yticks(ranks)
    ax.set_yticklabels([f"rank {r}" for r in ranks])
    ax.set_ylim(max(ranks) + 0.7, min(ranks) - 0.7)
    ax.set_xlabel("wall-clock time since the start barrier (s)")
    updates = rounds.updates
    lo, hi = updates[shown[0]], updates[shown[-1]]
    note = f" (round {updates[cols[0]]} includes compilation and is not shown)" if len(cols) > 1 else ""
    ax.set_title(title or f"rounds {lo}-{hi} of {updates[cols[-1]]}{note}: where each rank's time goes", fontsize=10)
    handles = [Patch(color=COLOURS[p], label=PHASE_LABELS[p]) for p in _phases(rounds)]
    if np.nan_to_num(rounds.eval_s[:, shown]).any():
        handles.append(Patch(color=COLOURS["eval"], label=PHASE_LABELS["eval"]))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.7 / height),
        ncol=len(handles),
        frameon=False,
        fontsize=9,
    )
    x = np.arange(len(stats))
    wait = [s.wait_fraction for s in stats]
    masked = [s.masked_fraction for s in stats]
    bx.bar(x - 0.2, wait, 0.4, color=COLOURS["wait"], label="wait fraction")
    bx.bar(x + 0.2, masked, 0.4, color=COLOURS["masked"], label="masked fraction of samples")
    for i, s in enumerate(stats):
        bx.annotate(
            f"last {100 * s.last_arrivals / max(s.rounds, 1):.0f}%",
            (i - 0.2, wait[i]),
            ha="center",
            va="bottom",
            fontsize=8 if len(stats) <= 16 else 6,
            xytext=(0, 2),
            textcoords="offset points",
            rotation=0 if len(stats) <= 16 else 90,
        )
    bx.set_xticks(x)
    bx.set_xticklabels([f"rank {s.rank}" if len(stats) <= 8 else str(s.rank) for s in stats])
    if len(stats) > 8:
        bx.set_xlabel("rank")
    bx.set_ylim(0, max(0.1, max(wait + masked) * 1.3))
    bx.set_ylabel("fraction (rounds after the first)")
    # collection speed against the median rank's: a slow rank that a deadline cuts waits no less than the
    # others and is never last, but plays fewer samples per second
    speeds = np.array([s.collect_speed for s in stats])
    typical = float(np.median(speeds)) if len(speeds) else 0.0
    handles, labels = bx.get_legend_handles_labels()
    if typical > 0:
        cx = bx.twinx()
        ratio = speeds / typical
        cx.plot(
            x,
            ratio,
            "o",
            color=COLOURS["collect"],
            markersize=5,
            label="collection speed / the median rank's (right axis)",
        )
        for position in np.flatnonzero(ratio < SLOW_COLLECTOR):
            cx.annotate(
                f"{ratio[position]:.2f}x",
                (x[position], ratio[position]),
                xytext=(0, -14),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=COLOURS["collect"],
            )
        cx.set_ylim(0, max(1.5, float(ratio.max()) * 1.3))  # room for the legend above the points
        cx.set_ylabel("collection speed / median", color=COLOURS["collect"])
        more_handles, more_labels = cx.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    bx.legend(handles, labels, loc="upper left", fontsize=9, frameon=False, ncol=3)
    bx.set_title(
        "per rank: share of time waiting, share of samples masked ('last': rounds it arrived last), "
        "speed of collection",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bin(matrix: np.ndarray, rows: int, cols: int, reduce_rows) -> np.ndarray:
    """Shrink a (ranks x rounds) matrix: the mean over `cols` neighbouring rounds, then `reduce_rows`
    (np.nanmin or np.nanmax) over `rows` neighbouring ranks; NaN (no record) is left out."""
    r, c = matrix.shape
    padded = np.full((-(-r // rows) * rows, -(-c // cols) * cols), np.nan)
    padded[:r, :c] = matrix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        by_round = np.nanmean(padded.reshape(padded.shape[0], -1, cols), axis=2)
        return reduce_rows(by_round.reshape(-1, rows, by_round.shape[1]), axis=1)


# The heatmap figure's geometry (inches at DPI): the heatmaps' height in pixels bounds the rank rows
# drawn, their width the round columns, so that no pixel row has to drop a rank.
HEATMAP_SIZE = (15.0, 9.5)
HEATMAP_DPI = 100
_HEAT_BOTTOM, _HEAT_HEIGHT = 0.1, 0.68
_HEAT_LEFTS, _HEAT_WIDTH = (0.055, 0.375), 0.27
_PROFILE_LEFT, _PROFILE_WIDTH = 0.73, 0.25


def heatmap_cells(ranks: int, rounds: int) -> tuple[int, int]:
    """(ranks per heatmap row, rounds per column): 1 where every rank and round gets its own pixels."""
    rows_px = int(HEATMAP_SIZE[1] * HEATMAP_DPI * _HEAT_HEIGHT)
    cols_px = int(HEATMAP_SIZE[0] * HEATMAP_DPI * _HEAT_WIDTH)
    return max(1, -(-ranks // rows_px)), max(1, -(-rounds // cols_px))


def plot_heatmap(rounds: Rounds, stats: list[RankStats], path: Path, text: str = "") -> Path:
    """Rank x round heatmaps of the wait and masked fractions, beside each rank's share of rounds in
    which it arrived last, the persistent late senders named: legible at hundreds and thousands of ranks."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    steady = rounds.steady_columns()
    cols = np.arange(steady[0], steady[-1] + 1)  # every round in between: one missing everywhere shows grey
    present = rounds.present[:, cols]
    busy = rounds.collect_s[:, cols] + rounds.compute_s[:, cols] + rounds.wait_s[:, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        wait = np.where(present, np.where(busy > 0, rounds.wait_s[:, cols] / busy, 0.0), np.nan)
        samples = rounds.valid[:, cols] + rounds.masked[:, cols]
        masked = np.where(present, np.where(samples > 0, rounds.masked[:, cols] / samples, 0.0), np.nan)
    n_ranks, n_rounds = wait.shape
    per_row, per_col = heatmap_cells(n_ranks, n_rounds)
    wait_cells = _bin(wait, per_row, per_col, np.nanmin)
    masked_cells = _bin(masked, per_row, per_col, np.nanmax)
    first_update, last_update = int(rounds.updates[cols[0]]), int(rounds.updates[cols[-1]])
    # cell edges in rank and update units, so that the axes read in ranks and rounds whatever the binning
    extent = (
        first_update - 0.5,
        first_update - 0.5 + wait_cells.shape[1] * per_col,
        wait_cells.shape[0] * per_row - 0.5,
        -0.5,
    )

    fig = plt.figure(figsize=HEATMAP_SIZE)
    cmap_wait = plt.get_cmap("Reds").with_extremes(bad="#bbbbbb")
    cmap_masked = plt.get_cmap("Oranges").with_extremes(bad="#bbbbbb")
    wait_top = max(0.05, float(np.nanmax(wait_cells)) if np.isfinite(wait_cells).any() else 0.05)
    masked_top = max(0.05, float(np.nanmax(masked_cells)) if np.isfinite(masked_cells).any() else 0.05)
    rows_txt = "one row per rank" if per_row == 1 else f"one row per {per_row} neighbouring ranks"
    cols_txt = "one column per round" if per_col == 1 else f"one column per {per_col} rounds (their mean)"
    panels = [
        (
            wait_cells,
            cmap_wait,
            wait_top,
            "wait fraction per rank and round",
            "share of the round spent waiting at the gather",
            "their lowest: the latest arrival",
        ),
        (
            masked_cells,
            cmap_masked,
            masked_top,
            "masked fraction per rank and round",
            "share of the round's samples masked",
            "their highest",
        ),
    ]
    axes: list = []  # the heat maps' matplotlib Axes, left to right
    for (cells, cmap, top, title, bar_label, pick), left in zip(panels, _HEAT_LEFTS):
        ax = fig.add_axes((left, _HEAT_BOTTOM, _HEAT_WIDTH, _HEAT_HEIGHT), sharey=axes[0] if axes else None)
        image = ax.imshow(cells, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0.0, vmax=top, extent=extent)
        ax.set_xlim(first_update - 0.5, last_update + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"round (update {first_update}-{last_update})")
        how = f"{rows_txt}{'' if per_row == 1 else f' ({pick})'};\n{cols_txt}"
        ax.text(0.0, -0.075, how, transform=ax.transAxes, fontsize=8, va="top", color="#444444")
        cax = fig.add_axes((left, _HEAT_BOTTOM + _HEAT_HEIGHT + 0.045, _HEAT_WIDTH, 0.014))
        bar = fig.colorbar(image, cax=cax, orientation="horizontal")
        cax.set_title(f"{title}\n", fontsize=10)
        bar.set_label(bar_label, fontsize=8)
        cax.xaxis.set_label_position("top")
        cax.tick_params(labelsize=7)
        axes.append(ax)
    axes[0].set_ylabel("rank")
    if not np.nan_to_num(masked).any():
        axes[1].text(
            0.5,
            0.5,
            "no sample was masked in this run\n(PPO, or pg without --pg-unscored mask)",
            transform=axes[1].transAxes,
            ha="center",
            va="center",
            fontsize=10,
            color="#444444",
        )

    # per rank: the share of rounds it arrived last (the most of its row's ranks), its wait fraction over
    # all rounds and its collection speed against the median rank's (the least of its row's ranks); the
    # persistent late senders and the slow collectors named
    share, waits, speed = np.zeros(n_ranks), np.full(n_ranks, np.nan), np.full(n_ranks, np.nan)
    typical_speed = float(np.median([s.collect_speed for s in stats])) if stats else 0.0
    for s in stats:
        share[s.rank] = s.last_arrivals / max(s.rounds, 1)
        waits[s.rank] = s.wait_fraction
        speed[s.rank] = s.collect_speed / typical_speed if typical_speed > 0 else np.nan
    share_rows = _bin(share[:, None], per_row, 1, np.nanmax)[:, 0]
    wait_rows = _bin(waits[:, None], per_row, 1, np.nanmin)[:, 0]
    speed_rows = _bin(speed[:, None], per_row, 1, np.nanmin)[:, 0]
    px = fig.add_axes((_PROFILE_LEFT, _HEAT_BOTTOM, _PROFILE_WIDTH, _HEAT_HEIGHT), sharey=axes[0])
    centres = np.arange(len(share_rows)) * per_row + (per_row - 1) / 2
    rows_px = HEATMAP_SIZE[1] * HEATMAP_DPI * _HEAT_HEIGHT
    px.barh(
        centres,
        share_rows,
        height=max(per_row, 3 * n_ranks / rows_px),
        color=COLOURS["update"],
        linewidth=0,
        label="arrived last (share of rounds)",
    )
    px.plot(wait_rows, centres, color=COLOURS["wait"], linewidth=0.9, label="wait fraction (all rounds)")
    if np.isfinite(speed_rows).any():
        px.plot(
            speed_rows, centres, color=COLOURS["collect"], linewidth=0.9, label="collection speed / the median rank's"
        )
    late = late_senders(stats)
    late_ranks = {s.rank for s in late}
    slow = [s for s in slow_collectors(stats) if s.rank not in late_ranks]
    notes = [
        (
            f"rank {s.rank}: last in {_pct(s.last_arrivals / max(s.rounds, 1))} of rounds, waits "
            f"{_pct(s.wait_fraction)}",
            s.last_arrivals / max(s.rounds, 1),
            s.rank,
        )
        for s in late[:NAMED_MAX]
    ]
    notes += [
        (f"rank {s.rank}: collects at {s.collect_speed / typical_speed:.2f}x", s.collect_speed / typical_speed, s.rank)
        for s in slow[:NAMED_MAX]
    ]
    for i, (label, x, y) in enumerate(notes):
        px.annotate(
            label,
            (x, y),
            xytext=(-8 if x > 0.6 else 8, -14 - 11 * (i % 3)),
            textcoords="offset points",
            ha="right" if x > 0.6 else "left",
            fontsize=8,
            color="#222222",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
            arrowprops={"arrowstyle": "-", "color": "#666666", "lw": 0.6},
        )
    more = len(late) - min(len(late), NAMED_MAX) + len(slow) - min(len(slow), NAMED_MAX)
    if more:
        px.text(0.98, 0.02, f"+ {more} more named in {TEXT_NAME}", transform=px.transAxes, ha="right", fontsize=8)
    px.set_xlim(0, max(1.25, float(np.nanmax(speed_rows)) * 1.05 if np.isfinite(speed_rows).any() else 1.25))
    px.set_xlabel("fraction (speed: ratio)")
    px.set_title("who arrives last, who waits least, who plays slowly", fontsize=10, pad=46)
    px.tick_params(labelleft=False)
    px.grid(axis="x", alpha=0.3)
    px.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=1, fontsize=8, frameon=False, borderaxespad=0.2)
    named = (
        "named: last far more often than chance and waiting\nless than the others; or collecting below "
        f"{SLOW_COLLECTOR:.2f}x the median"
        + ("" if per_row == 1 else f";\none bar per {per_row} ranks (the most last), lines: their lowest")
    )
    px.text(0.0, -0.075, named, transform=px.transAxes, fontsize=8, va="top", color="#444444")
    axes[0].set_ylim(n_ranks - 0.5, -0.5)

    compiled = int(rounds.updates[np.flatnonzero(rounds.present.any(axis=0))[0]])
    head = (
        f"{n_ranks} ranks, rounds {first_update}-{last_update}"
        f"{f' (round {compiled} compiles and is left out)' if compiled < first_update else ''}; grey: no record"
    )
    fig.text(0.01, 0.985, head, fontsize=11, weight="bold", va="top")
    fig.text(0.01, 0.955, "\n".join(textwrap.wrap(text, 210)[:3]), fontsize=9, va="top")
    fig.savefig(path, dpi=HEATMAP_DPI)
    plt.close(fig)
    return path


# -- the trace ------------------------------------------------------------------------------------
def write_trace(rounds: Rounds, path: Path, last_rounds: int = 0, name: str = "") -> dict:
    """The per-rank timeline as Chrome trace events (the JSON object format; Perfetto, chrome://tracing).

    One process (pid 1, named by a "process_name" metadata event); one thread (track) per rank, named
    "rank N" by "thread_name" and ordered by "thread_sort_index", with tid = rank + 1 (some viewers
    fold tid 0 into tid 1). Each round of each rank gives
    complete events ("ph": "X"), back to back from its start_s: collect, prepare (where records have
    prepare_s), wait, update (compute_s less prepare_s), and eval on rank 0 where eval_s > 0.
    ts and dur are whole microseconds (the records' resolution) since the start barrier; each event's
    args hold its round ("update").
    All rounds are written, the first (which compiles) included, or the last `last_rounds`.
    Written in pieces: memory stays that of the matrices."""
    cols = np.flatnonzero(rounds.present.any(axis=0))
    if last_rounds > 0:
        cols = cols[-last_rounds:]
    phases = _phases(rounds)
    seconds = {p: _phase_seconds(rounds, p) for p in [*phases, "eval"]}
    head = {
        "displayTimeUnit": "ms",
        "otherData": {
            "source": "jaxpong report",
            "run": name,
            "time": "microseconds since the start barrier",
            "phases": " -> ".join(phases) + " (eval: rank 0 between rounds)",
        },
    }
    events = 0
    with open(path, "w") as out:
        out.write('{"traceEvents": [\n')
        meta = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": f"jaxpong {name}".strip()}}]
        for rank in rounds.rank_rows():
            meta.append(
                {"name": "thread_name", "ph": "M", "pid": 1, "tid": int(rank) + 1, "args": {"name": f"rank {rank}"}}
            )
            meta.append(
                {
                    "name": "thread_sort_index",
                    "ph": "M",
                    "pid": 1,
                    "tid": int(rank) + 1,
                    "args": {"sort_index": int(rank)},
                }
            )
        out.write(",\n".join(json.dumps(m) for m in meta))
        for rank in rounds.rank_rows():
            here = cols[rounds.present[rank, cols]]
            if not len(here):
                continue
            t = rounds.start_s[rank, here] * 1e6
            updates = rounds.updates[here].tolist()
            parts = []  # per phase: (ts, dur) of each round, phases back to back from the round's start
            for phase in [*phases, "eval"]:
                d = np.nan_to_num(seconds[phase][rank, here]) * 1e6
                parts.append((phase, t.tolist(), d.tolist()))
                t = t + d
            lines = [
                f'{{"name":"{phase}","ph":"X","pid":1,"tid":{rank + 1},"ts":{ts[i]:.0f},"dur":{dur[i]:.0f},'
                f'"args":{{"update":{u}}}}}'
                for i, u in enumerate(updates)
                for phase, ts, dur in parts
                if phase != "eval" or dur[i] > 0
            ]
            events += len(lines)
            out.write(",\n" + ",\n".join(lines))
        out.write("\n],\n" + json.dumps(head)[1:] + "\n")
    return {
        "path": str(path),
        "events": events,
        "ranks": int(len(rounds.rank_rows())),
        "rounds": int(len(cols)),
        "phases": phases,
    }


# -- the command ----------------------------------------------------------------------------------
PICTURES = ("auto", "timeline", "heatmap")


def trace_rounds_that_fit(ranks: int, rounds: int) -> int:
    """The rounds the trace keeps by default: all of them, or the last that fit TRACE_MAX_EVENTS."""
    return min(rounds, max(1, TRACE_MAX_EVENTS // max(1, 3 * ranks)))


def make_report(
    run_dir, last_rounds: int = 20, out=None, picture: str = "auto", trace_rounds: int | None = None
) -> dict:
    """Read a run, write RUN_DIR/imbalance.png, imbalance.txt and trace.json; return the summary (with
    the table text). trace_rounds: the last N rounds in the trace, 0 = all, None = as many as fit
    TRACE_MAX_EVENTS."""
    if picture not in PICTURES:
        raise ConfigError(f"--picture {picture!r}: choose one of {', '.join(PICTURES)}")
    path = check_run_dir(run_dir)
    rounds = read_rounds(path)
    stats = rank_stats(rounds)
    text = finding(stats) + link_text(read_links(path), stats)
    if picture == "auto":
        picture = "timeline" if len(stats) <= TIMELINE_MAX_RANKS else "heatmap"
    image_path = Path(out) if out else path / IMAGE_NAME
    if picture == "timeline":
        image = plot_timeline(rounds, stats, image_path, last_rounds=last_rounds)
    else:
        image = plot_heatmap(rounds, stats, image_path, text=text)
    all_rounds = int(rounds.present.any(axis=0).sum())
    if trace_rounds is None:
        trace_rounds = trace_rounds_that_fit(len(stats), all_rounds)
    trace = write_trace(rounds, path / TRACE_NAME, last_rounds=trace_rounds, name=path.resolve().name)
    named = [
        "persistent late senders (most often last first): "
        f"{', '.join(str(s.rank) for s in late_senders(stats)) or 'none'}",
        f"slow collectors (slowest first): {', '.join(str(s.rank) for s in slow_collectors(stats)) or 'none'}",
    ]
    (path / TEXT_NAME).write_text(f"{table(stats)}\n\n" + "\n".join(named) + f"\n\nfinding: {text}\n")
    result = summary(stats, text)
    result["image"] = str(image)
    result["picture"] = picture
    result["trace"] = trace["path"]
    result["trace_events"] = trace["events"]
    result["trace_rounds"] = trace["rounds"]
    result["rounds"] = all_rounds
    result["batch"] = noise_scale_line(read_metrics(path), path)
    return {"summary": result, "table": table(stats, limit=TABLE_TOP if len(stats) > TABLE_MAX_RANKS else None)}


def run_cli(args) -> int:
    if args.rounds < 0:
        raise ConfigError(f"--rounds: {args.rounds} must be >= 0 (0 = all rounds)")
    trace_rounds = getattr(args, "trace_rounds", None)
    if trace_rounds is not None and trace_rounds < 0:
        raise ConfigError(f"--trace-rounds: {trace_rounds} must be >= 0 (0 = all rounds)")
    if args.out and not Path(args.out).parent.is_dir():
        raise ConfigError(f"--out {args.out!r}: its folder does not exist")
    report = make_report(
        args.run_dir,
        last_rounds=args.rounds,
        out=args.out,
        picture=getattr(args, "picture", "auto"),
        trace_rounds=trace_rounds,
    )
    result = report["summary"]
    print(report["table"])
    print()
    print(f"finding: {result['finding']}")
    print(f"picture: {result['image']}")
    if result["batch"]:
        print(f"batch:   {result['batch']}")
    which = (
        "every round"
        if result["trace_rounds"] == result["rounds"]
        else f"the last {result['trace_rounds']} of {result['rounds']} rounds"
    )
    print(
        f"trace:   {result['trace']} ({which}, {result['trace_events']:,} events, one track per rank; open it in "
        f"https://ui.perfetto.dev or chrome://tracing)"
    )
    print(json.dumps(result))
    return 0


def write_after_training(run_dir) -> str:
    """Called by train at the end of a multi-rank run (rank 0): the picture and the finding, nothing printed."""
    return make_report(run_dir)["summary"]["finding"]

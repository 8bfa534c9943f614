"""Reading a run for the late-sender report, and each rank's numbers: ranks.jsonl (streamed in chunks into
one numpy matrix per field, ranks x rounds), metrics.jsonl and links.jsonl; the phases of a round; each rank's
wait and masked fractions, collection speed and last arrivals."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from jaxpong.base.errors import ConfigError

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


def read_links(run_dir) -> dict | None:
    """The last line of RUN_DIR/links.jsonl: the latest process's measured links, None without a file or
    when that process ran on one host (its line then has no links)."""
    path = Path(run_dir) / "links.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            last = record
    return last if last and last.get("links") else None


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

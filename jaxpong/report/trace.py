"""The late-sender report's trace: each rank's collect, wait and update per round as Chrome trace events
(one track per rank), for Perfetto or chrome://tracing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxpong.report.stats import Rounds, _phase_seconds, _phases

TRACE_NAME = "trace.json"
TRACE_MAX_EVENTS = 2_000_000  # the trace's default size limit (about 200 MB): the last rounds that fit


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


def trace_rounds_that_fit(ranks: int, rounds: int) -> int:
    """The rounds the trace keeps by default: all of them, or the last that fit TRACE_MAX_EVENTS."""
    return min(rounds, max(1, TRACE_MAX_EVENTS // max(1, 3 * ranks)))

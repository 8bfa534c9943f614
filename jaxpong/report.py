"""Late senders, seen: `python -m jaxpong report RUN_DIR` reads ranks.jsonl (and metrics.jsonl) and
draws RUN_DIR/imbalance.png, prints a table per rank and a plain-language finding.

The picture is the profiler view that showed, in 2016, that a few late games held every rank up:
ranks on one axis, wall-clock time on the other, each round's collection, wait and update in their
own colours. A rank that arrives late at the per-round gather makes sloped wedges of wait on all the
others. What one round of `train` is, on each rank (ranks.jsonl):

    start_s     when the round began, in seconds since the common start barrier
    collect_s   playing games until the deadline or a full buffer
    wait_s      the per-round gather: waiting for the last rank to arrive (the late-sender cost)
    compute_s   the update (preparing returns, gradients, one allreduce per optimizer step)

The preparation of returns (a small part of compute_s) actually runs just before the gather; the
picture draws all of compute_s after the wait. Rank 0's greedy evaluations (`eval_s`, with
--eval-every) are drawn after its update; other blank space between rounds is host work outside the
round (logging and checkpoints on rank 0). The first round includes compilation and is left out of
every number (not of the picture).

Nothing here imports jax or MPI: a report can be made anywhere the run directory can be read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxpong.config import ConfigError

COLOURS = {"collect": "#59a14f", "wait": "#e15759", "compute": "#4e79a7", "eval": "#b07aa1", "masked": "#f28e2b"}
IMAGE_NAME = "imbalance.png"
TEXT_NAME = "imbalance.txt"


# -- reading a run --------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
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


def read_ranks(run_dir) -> list[dict]:
    """Every record of ranks.jsonl (one per rank per round), checked for the fields the report needs."""
    path = check_run_dir(run_dir) / "ranks.jsonl"
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} not found; ranks.jsonl is written by `jaxpong train` (rank 0) in its run directory")
    records = _read_jsonl(path)
    need = ("update", "rank", "start_s", "collect_s", "compute_s", "wait_s")
    records = [r for r in records if all(isinstance(r.get(k), (int, float)) for k in need)]
    if not records:
        raise ConfigError(f"{str(path)!r} holds no complete round record; the run ended before its first update")
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


def rank_stats(records: list[dict]) -> list[RankStats]:
    """Per-rank numbers over the rounds after the first.

    The last rank to reach the gather waits only for the collective itself, so in each round the
    rank with the smallest wait_s is the last arrival.
    """
    steady = steady_records(records)
    by_update: dict[int, list[dict]] = {}
    for r in steady:
        by_update.setdefault(r["update"], []).append(r)
    last = {}
    for rows in by_update.values():
        if len(rows) > 1 or len({r["rank"] for r in records}) == 1:
            late = min(rows, key=lambda r: (r["wait_s"], r["rank"]))["rank"]
            last[late] = last.get(late, 0) + 1
    out = []
    for rank in sorted({r["rank"] for r in records}):
        mine = [r for r in steady if r["rank"] == rank]
        if not mine:
            continue
        collect = np.array([r["collect_s"] for r in mine])
        compute = np.array([r["compute_s"] for r in mine])
        wait = np.array([r["wait_s"] for r in mine])
        valid = int(sum(r.get("valid_samples", 0) for r in mine))
        masked = int(sum(r.get("masked_samples", 0) for r in mine))
        busy = collect.sum() + compute.sum() + wait.sum()
        out.append(RankStats(
            rank=rank, rounds=len(mine), collect_s=float(collect.mean()), compute_s=float(compute.mean()),
            wait_s=float(wait.mean()), wait_fraction=float(wait.sum() / busy) if busy > 0 else 0.0,
            valid_samples=valid, masked_samples=masked,
            masked_fraction=masked / (valid + masked) if valid + masked else 0.0,
            last_arrivals=last.get(rank, 0), cut_rounds=sum(bool(r.get("cut_by_deadline")) for r in mine),
        ))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def finding(stats: list[RankStats]) -> str:
    """A short plain-language reading of the per-rank numbers: who is late, and what it costs the others."""
    if not stats:
        return "no rounds to report."
    rounds = max(s.rounds for s in stats)
    valid = sum(s.valid_samples for s in stats)
    masked = sum(s.masked_samples for s in stats)
    masked_txt = (f" {_pct(masked / (valid + masked))} of the samples were masked (played, but no gradient weight)."
                  if masked else "")
    if len(stats) == 1:
        s = stats[0]
        busy = s.collect_s + s.compute_s + s.wait_s
        return (f"one rank: nobody to wait for; per round it spent {_pct(s.collect_s / busy)} of its time collecting "
                f"and {_pct(s.compute_s / busy)} in the update.{masked_txt}")
    late = max(stats, key=lambda s: (s.last_arrivals, -s.wait_fraction))
    others = [s for s in stats if s is not late]
    others_wait = float(np.mean([s.wait_fraction for s in others]))
    others_wait_s = float(np.mean([s.wait_s for s in others]))
    share = late.last_arrivals / max(rounds, 1)
    mean_wait = float(np.mean([s.wait_fraction for s in stats]))
    if share >= 0.5 and others_wait - late.wait_fraction >= 0.05:
        others_collect = float(np.mean([s.collect_s for s in others]))
        text = f"rank {late.rank} is the late sender: it arrived last in {_pct(share)} of {rounds} rounds"
        ratio = late.collect_s / others_collect if others_collect > 0 else math.inf
        if ratio >= 1.2:
            text += (f", its collection took {ratio:.1f}x as long as the others' "
                     f"({late.collect_s:.3g} s against {others_collect:.3g} s per round)")
        who = "the other rank lost" if len(others) == 1 else f"the other {len(others)} ranks lost on average"
        text += (f"; {who} {_pct(others_wait)} of {'its' if len(others) == 1 else 'their'} time waiting for it "
                 f"({others_wait_s:.3g} s per round), against {_pct(late.wait_fraction)} for rank {late.rank} itself.")
        if late.cut_rounds >= 0.5 * late.rounds:
            others_valid = float(np.mean([s.valid_samples for s in others]))
            if others_valid > 0:
                text += (f" The deadline cut its collection in {_pct(late.cut_rounds / late.rounds)} of rounds, so it "
                         f"joined with {_pct(late.valid_samples / others_valid)} of the others' samples.")
        elif ratio < 1.2 and late.rank == 0:
            text += " Its collection is not slower: rank 0's own host work between rounds (logging, checkpoints, evaluations) delays it."
    else:
        text = (f"no persistent late sender: the last arrival moves between ranks (most often rank {late.rank}, in "
                f"{_pct(share)} of {rounds} rounds); the ranks lost on average {_pct(mean_wait)} of their time waiting.")
    return text + masked_txt


def table(stats: list[RankStats]) -> str:
    head = (f"{'rank':>4}  {'rounds':>6}  {'collect s':>9}  {'compute s':>9}  {'wait s':>8}  {'wait %':>6}  "
            f"{'valid':>9}  {'masked':>8}  {'masked %':>8}  {'last':>5}  {'last %':>6}  {'cut':>5}")
    lines = [head, "-" * len(head)]
    for s in stats:
        lines.append(f"{s.rank:>4}  {s.rounds:>6}  {s.collect_s:>9.4f}  {s.compute_s:>9.4f}  {s.wait_s:>8.4f}  "
                     f"{100 * s.wait_fraction:>6.1f}  {s.valid_samples:>9,}  {s.masked_samples:>8,}  "
                     f"{100 * s.masked_fraction:>8.1f}  {s.last_arrivals:>5}  "
                     f"{100 * s.last_arrivals / max(s.rounds, 1):>6.1f}  {s.cut_rounds:>5}")
    return "\n".join(lines)


def summary(stats: list[RankStats], text: str) -> dict:
    """The machine-readable result (the last line `report` prints)."""
    return {
        "ranks": [{"rank": s.rank, "wait_fraction": round(s.wait_fraction, 4), "masked_fraction": round(s.masked_fraction, 4),
                   "last_arrivals": s.last_arrivals, "rounds": s.rounds, "collect_s": round(s.collect_s, 6),
                   "compute_s": round(s.compute_s, 6), "wait_s": round(s.wait_s, 6),
                   "valid_samples": s.valid_samples, "masked_samples": s.masked_samples} for s in stats],
        "finding": text,
    }


# -- the picture ----------------------------------------------------------------------------------
def plot(records: list[dict], stats: list[RankStats], path: Path, last_rounds: int = 20, title: str = "") -> Path:
    """Timeline of the last `last_rounds` rounds (0 = all) above per-rank wait and masked fractions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    updates = sorted({r["update"] for r in records})
    later = updates[1:] or updates  # the first round (compilation) would dwarf the others
    shown = set(later[-last_rounds:]) if last_rounds > 0 else set(later)
    rows = [r for r in records if r["update"] in shown]
    ranks = sorted({r["rank"] for r in records})
    height = max(4.5, 2.2 + 0.35 * len(ranks))
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(11, height + 3.2), gridspec_kw={"height_ratios": [height, 3.0]})
    for rank in ranks:
        mine = [r for r in rows if r["rank"] == rank]
        spans = {"collect": [], "wait": [], "compute": [], "eval": []}
        for r in mine:
            t = r["start_s"]
            for part in ("collect", "wait", "compute", "eval"):
                spans[part].append((t, float(r.get(f"{part}_s") or 0.0)))
                t += spans[part][-1][1]
        for part, segs in spans.items():
            ax.broken_barh(segs, (rank - 0.38, 0.76), facecolors=COLOURS[part], linewidth=0)
    ax.set_yticks(ranks)
    ax.set_yticklabels([f"rank {r}" for r in ranks])
    ax.set_ylim(max(ranks) + 0.7, min(ranks) - 0.7)
    ax.set_xlabel("wall-clock time since the start barrier (s)")
    lo, hi = min(shown), max(shown)
    note = f" (round {updates[0]} includes compilation and is not shown)" if len(updates) > 1 else ""
    ax.set_title(title or f"rounds {lo}-{hi} of {updates[-1]}{note}: where each rank's time goes", fontsize=10)
    handles = [Patch(color=COLOURS["collect"], label="collect (play games)"),
               Patch(color=COLOURS["wait"], label="wait for the last rank (gather)"),
               Patch(color=COLOURS["compute"], label="update (gradients + allreduce)")]
    if any(r.get("eval_s") for r in rows):
        handles.append(Patch(color=COLOURS["eval"], label="evaluation (rank 0, between rounds)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(handles), frameon=False,
              fontsize=9)
    x = np.arange(len(stats))
    wait = [s.wait_fraction for s in stats]
    masked = [s.masked_fraction for s in stats]
    bx.bar(x - 0.2, wait, 0.4, color=COLOURS["wait"], label="wait fraction")
    bx.bar(x + 0.2, masked, 0.4, color=COLOURS["masked"], label="masked fraction of samples")
    for i, s in enumerate(stats):
        bx.annotate(f"last {100 * s.last_arrivals / max(s.rounds, 1):.0f}%", (i - 0.2, wait[i]),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    bx.set_xticks(x)
    bx.set_xticklabels([f"rank {s.rank}" for s in stats])
    bx.set_ylim(0, max(0.1, max(wait + masked) * 1.25))
    bx.set_ylabel("fraction (rounds after the first)")
    bx.legend(loc="upper right", fontsize=9, frameon=False)
    bx.set_title("per rank: share of time waiting, share of samples masked; 'last' = rounds it arrived last", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the command ----------------------------------------------------------------------------------
def make_report(run_dir, last_rounds: int = 20, out=None) -> dict:
    """Read a run, write RUN_DIR/imbalance.png and imbalance.txt; return the summary (with the table text)."""
    path = check_run_dir(run_dir)
    records = read_ranks(path)
    stats = rank_stats(records)
    text = finding(stats)
    image = plot(records, stats, Path(out) if out else path / IMAGE_NAME, last_rounds=last_rounds)
    table_text = table(stats)
    (path / TEXT_NAME).write_text(f"{table_text}\n\nfinding: {text}\n")
    result = summary(stats, text)
    result["image"] = str(image)
    return {"summary": result, "table": table_text}


def run_cli(args) -> int:
    if args.rounds < 0:
        raise ConfigError(f"--rounds: {args.rounds} must be >= 0 (0 = all rounds)")
    if args.out and not Path(args.out).parent.is_dir():
        raise ConfigError(f"--out {args.out!r}: its folder does not exist")
    report = make_report(args.run_dir, last_rounds=args.rounds, out=args.out)
    result = report["summary"]
    print(report["table"])
    print()
    print(f"finding: {result['finding']}")
    print(f"picture: {result['image']}")
    print(json.dumps(result))
    return 0


def write_after_training(run_dir) -> str:
    """Called by train at the end of a multi-rank run (rank 0): the picture and the finding, nothing printed."""
    return make_report(run_dir)["summary"]["finding"]

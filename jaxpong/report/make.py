"""The late-sender report made: read a run, count, find, draw and trace, into RUN_DIR/imbalance.png,
imbalance.txt and trace.json; `jaxpong report` prints it, and `train` writes it at the end of a multi-rank run."""

from __future__ import annotations

import json
from pathlib import Path

from jaxpong.base.errors import ConfigError
from jaxpong.report.finding import (
    TABLE_MAX_RANKS,
    TABLE_TOP,
    TEXT_NAME,
    finding,
    late_senders,
    link_text,
    links_carry_cost,
    noise_scale_line,
    slow_collectors,
    summary,
    table,
)
from jaxpong.report.pictures import IMAGE_NAME, TIMELINE_MAX_RANKS, plot_heatmap, plot_timeline
from jaxpong.report.stats import check_run_dir, rank_stats, read_links, read_metrics, read_rounds
from jaxpong.report.trace import TRACE_NAME, trace_rounds_that_fit, write_trace

PICTURES = ("auto", "timeline", "heatmap")


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
    links = read_links(path)
    text = finding(stats, update_share=not links_carry_cost(links)) + link_text(links, stats)
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

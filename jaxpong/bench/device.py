"""`python -m jaxpong.bench.device` (the last step of tools/device_bench.sh, `make bench-device`): the predicted
seconds to a last-20 mean of +18 beside the measured ones, for each rank count.

Predicted: the JSON line that ends `jaxpong simulate --predict STUDY --from RUN --ranks N` (start-up, simulated
valid steps/s, agent steps to +18 from the batch study, and their sum in seconds). Measured: the seed folders
of `jaxpong bench --learn` at that count, read as every learning benchmark reads them (`run_outcome`). A seed
that never got to +18 counts as infinitely slow, so a median is missing when fewer than half got there, as in
`bench --learn`. Writes OUT/summary.md and OUT/summary.json; the last line of standard output is the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxpong.bench.learning import lower_median, read_jsonl, run_outcome

MILESTONE = "18"


def read_prediction(path: Path) -> dict | None:
    """The JSON object on the last line of a `simulate --predict` log (None where that step failed)."""
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def predicted(prediction: dict | None, ranks: int) -> dict | None:
    """What `simulate --predict` said for `ranks` ranks: start-up, valid steps/s, agent steps and seconds to +18."""
    if prediction is None:
        return None
    row = next((r for r in prediction.get("rows", []) if r["ranks"] == ranks), None)
    if row is None:
        return None
    return {
        "startup_s": prediction["startup_s"],
        "steps_per_s": row["samples_per_s"],
        "steps": row[f"steps_{MILESTONE}"],
        "seconds": row[f"seconds_{MILESTONE}"],
    }


def measured(run_dir: Path) -> dict:
    """One trained seed: start-up (its first update's seconds since process start), steps/s, and the agent
    steps and seconds at which its last-20 mean first reached +18 (None if it never did)."""
    outcome = run_outcome(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    reached = outcome["milestones"][MILESTONE]
    return {
        "run_dir": str(run_dir),
        "startup_s": metrics[0]["process_s"] if metrics else None,
        "steps_per_s": round(outcome["sps"], 1) or None,  # None: fewer than 2 updates logged
        "steps": reached["step"] if reached else None,
        "seconds": reached["time_s"] if reached else None,
        "trained_steps": outcome["steps"],
        "trained_s": metrics[-1]["process_s"] if metrics else None,  # its last update, since process start
        "last20": outcome["final_return"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _seconds(pred: dict | None) -> float | None:
    return pred["seconds"] if pred else None


def compare(counts: list[tuple[int, dict | None, list[dict]]]) -> dict:
    """Per rank count (ranks, predicted, measured seeds): both sides with the seeds' medians, measured over
    predicted seconds, and each count's speed-up to +18 over the first count, predicted and measured."""
    rows: list[dict] = []
    for ranks, pred, seeds in counts:
        median = {key: lower_median([s[key] for s in seeds]) for key in ("steps", "seconds")}
        rows.append(
            {
                "ranks": ranks,
                "predicted": pred,
                "measured": seeds,
                "median": median,
                "measured_over_predicted": _ratio(median["seconds"], _seconds(pred)),
            }
        )
    for row in rows:
        row["speedup_over_first"] = {
            "predicted": _ratio(_seconds(rows[0]["predicted"]), _seconds(row["predicted"])),
            "measured": _ratio(rows[0]["median"]["seconds"], row["median"]["seconds"]),
        }
    return {"milestone": MILESTONE, "counts": rows}


def table(summary: dict) -> str:
    """Markdown: one predicted line, one line per seed and the median, per rank count; then the speed-ups."""

    def num(v, fmt="{:,.0f}"):
        return "-" if v is None else fmt.format(v)

    def line(ranks, run, startup, sps, steps, seconds) -> str:
        return f"| {ranks} | {run} | {num(startup, '{:.1f}')} | {num(sps)} | {num(steps)} | {seconds} |"

    lines = [
        f"| ranks | run | start-up (s) | steps/s | agent steps to +{MILESTONE} | seconds to +{MILESTONE} |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["counts"]:
        n, p, m = row["ranks"], row["predicted"] or {}, row["median"]
        lines.append(
            line(
                n,
                "predicted",
                p.get("startup_s"),
                p.get("steps_per_s"),
                p.get("steps"),
                num(p.get("seconds"), "{:.1f}"),
            )
        )
        for s in row["measured"]:
            seconds = num(s["seconds"], "{:.1f}")
            if s["seconds"] is None:
                seconds += f" (not reached: last-20 {num(s['last20'], '{:+.1f}')} at {num(s['trained_s'])} s)"
            lines.append(line(n, Path(s["run_dir"]).name, s["startup_s"], s["steps_per_s"], s["steps"], seconds))
        seconds = num(m["seconds"], "{:.1f}")
        if row["measured_over_predicted"] is not None:
            seconds += f" ({row['measured_over_predicted']:.2f}x the prediction)"
        lines.append(line(n, f"median of {len(row['measured'])}", None, None, m["steps"], seconds))
    first = summary["counts"][0]["ranks"] if summary["counts"] else None
    for row in summary["counts"][1:]:
        up = row["speedup_over_first"]
        lines.append(
            f"\n{row['ranks']} ranks over {first} to +{MILESTONE}: predicted {num(up['predicted'], '{:.2f}x')}, "
            f"measured {num(up['measured'], '{:.2f}x')} (medians)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpong.bench.device", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--count",
        nargs="+",
        action="append",
        required=True,
        metavar="ARG",
        help="N PREDICTION_LOG RUN_DIR...: a rank count, the log of its `simulate --predict` and its seed folders "
        "(repeat per count; the first is the baseline of the speed-ups)",
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="where summary.md and summary.json go")
    args = parser.parse_args(argv)
    counts = []
    for ranks, log, *run_dirs in (
        c if len(c) >= 2 else parser.error(f"--count {' '.join(c)}: give N, a log and the run dirs") for c in args.count
    ):
        counts.append(
            (int(ranks), predicted(read_prediction(Path(log)), int(ranks)), [measured(Path(d)) for d in run_dirs])
        )
    summary = compare(counts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(summary)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(text)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

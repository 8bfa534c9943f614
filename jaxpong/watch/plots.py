"""Learning curves from runs' metrics.jsonl: full-game return against agent steps and against
wall-clock minutes, and training speed (agent steps/s), for one or several runs on one PNG.

Returns plotted: each update's mean over the games that ended in it (faint dots), the mean of the
last 20 games (line), and greedy evaluations when the run made them (`--eval-every`; squares).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from jaxpong.base.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of a run's metrics.jsonl (a line cut by a crash is skipped)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ConfigError(f"{str(run_dir)!r} is not a directory; give run directories written by `jaxpong train`")
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} has no metrics.jsonl; give run directories written by `jaxpong train`")
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(path)!r} cannot be read ({type(err).__name__})") from None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Run names (folder names); the parent is added where two runs share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [f"{Path(d).resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def _series(rows: list[dict], key: str):
    xs_step, xs_min, ys = [], [], []
    for row in rows:
        if key in row and row[key] is not None:
            xs_step.append(row["step"])
            xs_min.append(row.get("time_s", 0.0) / 60.0)
            ys.append(row[key])
    return xs_step, xs_min, ys


def plot_runs(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Draw the runs' curves into `out` (PNG, or another format matplotlib writes, by extension)."""
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"--out {str(out)!r}: use an image file name ending in {', '.join(IMAGE_SUFFIXES)}")
    run_dirs = [Path(d) for d in run_dirs]
    data = [read_metrics(d) for d in run_dirs]
    if not any(data):
        raise ConfigError("the run directories have no metrics lines yet; train for at least one update")

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (ax_step, ax_time, ax_sps) = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    any_return = False
    for i, (label, rows) in enumerate(zip(run_labels(run_dirs), data)):
        colour = f"C{i % 10}"
        for ax, x_index in ((ax_step, 0), (ax_time, 1)):
            per_update = _series(rows, "charts/episodic_return")
            recent = _series(rows, "charts/return_last20")
            evals = _series(rows, "eval/mean_return")
            if per_update[2]:
                ax.scatter(
                    per_update[x_index],
                    per_update[2],
                    s=10,
                    alpha=0.45,
                    color=colour,
                    linewidths=0,
                    label=f"{label}: games ended in an update (mean)",
                )
            if recent[2]:
                ax.plot(recent[x_index], recent[2], color=colour, label=f"{label}: last 20 games")
            if evals[2]:
                ax.plot(
                    evals[x_index],
                    evals[2],
                    color=colour,
                    marker="s",
                    markersize=4,
                    linestyle="--",
                    label=f"{label}: greedy eval",
                )
            any_return |= bool(per_update[2] or evals[2])
        steps, _, sps = _series(rows, "charts/SPS")
        if sps:
            ax_sps.plot(steps, sps, color=colour, label=label)
    for ax, xlabel in ((ax_step, "agent steps"), (ax_time, "wall-clock minutes")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("full-game return (-21 .. 21)")
        ax.set_ylim(-22, 22)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.grid(alpha=0.3)
        if not any_return:
            ax.text(
                0.5, 0.5, "no full game finished yet", transform=ax.transAxes, ha="center", va="center", color="grey"
            )
    ax_step.set_title("return against agent steps")
    ax_time.set_title("return against wall-clock time")
    ax_sps.set_title("training speed")
    ax_sps.set_xlabel("agent steps")
    ax_sps.set_ylabel("agent steps / s")
    ax_sps.grid(alpha=0.3)
    for ax in (ax_step, ax_time, ax_sps):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "jaxpong: " + ", ".join(run_labels(run_dirs)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r} cannot be written ({err.strerror}); choose a writable place") from None
    finally:
        plt.close(fig)
    return out


SNAPSHOT_KEYS = ("step", "charts/return_last20", "charts/window_reward_ema", "charts/episodes", "charts/SPS")


def run_algo(run_dir: str | Path) -> str | None:
    """The run's algorithm from its config.yaml (None where it cannot be read)."""
    import yaml

    try:
        return (yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("algo", {}).get("algo")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def snapshots(run_dirs: list[str | Path], seconds: list[float]) -> list[dict]:
    """Each run's state at wall-clock seconds since its process started: the last metrics line written
    by then (None where the run had not logged yet or had already stopped before that time).
    `ended_s`: when the run's last line was written; `after_end`: the time asked is past it, so the row
    is the run's final state, not its state at that time."""
    out = []
    for label, d in zip(run_labels([Path(d) for d in run_dirs]), run_dirs):
        rows = [r for r in read_metrics(d) if "process_s" in r]
        ends = rows[-1]["process_s"] if rows else 0.0
        algo = run_algo(d)
        for t in seconds:
            before = [r for r in rows if r["process_s"] <= t]
            # A run logs every round (seconds apart); well after its last line it had stopped.
            row = before[-1] if before and t <= ends + 60.0 else None
            out.append(
                {
                    "run": label,
                    "algo": algo,
                    "at_s": t,
                    "ended_s": round(ends, 3),
                    "after_end": bool(rows) and t > ends,
                    **{k: (row.get(k) if row else None) for k in SNAPSHOT_KEYS},
                }
            )
    return out

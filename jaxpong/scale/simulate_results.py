"""`jaxpong simulate`: the model (jaxpong/scale/simulate.py) run over modes and rank counts, from the shipped
distributions or a run's own, shown as a table, a picture (simulate.png) and JSON.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np

from jaxpong.base.errors import ConfigError
from jaxpong.scale.simulate import (
    MODES,
    Measured,
    Outcome,
    load_collectives,
    load_measured,
    measured_from_run,
    parse_modes,
    parse_ranks,
    scale_spread,
    simulate,
)


def _write(path: Path, text: str, flag: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise ConfigError(f"{flag} {str(path)!r} cannot be written ({err.strerror})") from None


def results_table(outcomes: list[Outcome]) -> str:
    head = f"{'mode':<9} {'ranks':>6} {'efficiency':>10} {'masked %':>8} {'wait %':>7} {'samples/s':>12} {'round s':>8}"
    lines = [head, "-" * len(head)]
    for o in outcomes:
        lines.append(
            f"{o.mode:<9} {o.ranks:>6} {o.efficiency:>10.3f} {100 * o.masked_fraction:>8.2f} "
            f"{100 * o.wait_fraction:>7.1f} {o.samples_per_s:>12,.0f} {o.round_s:>8.3f}"
        )
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path, title: str, masking: str = "unscored") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colours = {"game": "#e15759", "steps": "#f28e2b", "window": "#4e79a7", "deadline": "#59a14f"}
    labels = {
        "game": "game: sync per full game (2016 original)",
        "steps": "steps: sync per num_steps",
        "window": "window: fixed seconds, no masking (2016 fix)",
        "deadline": "deadline: auto deadline" + (" + masking" if masking == "unscored" else " (nothing to mask)"),
    }
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for mode in MODES:
        mine = [o for o in outcomes if o.mode == mode]
        if not mine:
            continue
        x = [o.ranks for o in mine]
        ax.plot(x, [o.efficiency for o in mine], "o-", color=colours[mode], label=labels[mode], ms=4)
        bx.plot(x, [100 * o.masked_fraction for o in mine], "o-", color=colours[mode], ms=4)
    for a in (ax, bx):
        a.set_xscale("log")
        a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        a.set_xlabel("ranks")
        a.grid(True, which="both", alpha=0.3)
    bx.set_ylim(bottom=0)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("parallel efficiency")
    ax.set_title("efficiency: useful rank-seconds / (ranks x wall)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    bx.set_ylabel("masked samples (%)")
    bx.set_title("samples played but given no gradient weight", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(measured: Measured) -> str:
    s, c = measured.setup, measured.collectives
    typical = [x for r in measured.typical_ranks for x in measured.step_time_s[r]]
    where = measured.source.get("name") or f"run {Path(measured.source.get('run_dir', 'custom')).name}"
    return (
        f"inputs: {where}; "
        f"{s.num_envs} env(s) x {s.num_steps} steps per rank, step {1e3 * float(np.median(typical)):.3g} ms "
        f"(median), update {1e3 * float(np.median(measured.compute_s)):.3g} ms + {s.optimizer_steps} allreduce(s) of "
        f"{s.message_bytes / 1e6:.3g} MB, game {float(np.median(measured.game_length_steps)):.0f} steps (median of "
        f"{len(measured.game_length_steps)}), masking {s.masking}, window {s.window_s:g} s, "
        f"margin {s.deadline_margin:g}; "
        f"alpha {1e6 * c.latency_s:.3g} us, beta {c.bandwidth_bytes_per_s / 1e9:.3g} GB/s"
    )


def run(
    ranks: str,
    modes: str,
    *,
    from_dir=None,
    rounds: int = 300,
    seed: int = 0,
    window_s: float | None = None,
    slow_rank: int = -1,
    slow_factor: float = 1.0,
    masking: str | None = None,
    timing_spread: float = 1.0,
    latency_us: float | None = None,
    bandwidth_gbs: float | None = None,
    measured_file=None,
    collectives_file=None,
    save_measured=None,
    saved_by: str = "",
    note: str | None = None,
    out=None,
) -> int:
    """`jaxpong simulate`: `ranks` and `modes` as the flags write them; the inputs from `measured_file` (default
    the shipped distributions), or `from_dir`'s run; `save_measured` writes them, with `saved_by` (the command)
    and `note`. Prints the inputs, the table and one JSON line; writes simulate.png/.txt/.json into `out`
    (default: the `from_dir` run, else runs/simulate)."""
    measured = load_measured(measured_file) if measured_file else load_measured()
    if from_dir:
        measured = measured_from_run(from_dir, measured)
    if collectives_file:
        measured.collectives = load_collectives(collectives_file)
        measured.source["collectives"] = f"--collectives {collectives_file}"
    c = measured.collectives
    if latency_us is not None:
        c.latency_s = latency_us * 1e-6
    if bandwidth_gbs is not None:
        c.bandwidth_bytes_per_s = bandwidth_gbs * 1e9
    if window_s:
        measured.setup.window_s = window_s
    if masking:
        measured.setup.masking = masking
    if timing_spread != 1.0:
        measured = scale_spread(measured, timing_spread)
    if save_measured:
        doc = measured.to_dict()
        doc["source"]["saved_by"] = saved_by
        if note:
            doc["source"]["measured_with"] = note
        _write(Path(save_measured), json.dumps(doc, indent=1) + "\n", "--save-measured")
        print(f"distributions written to {save_measured}", file=sys.stderr)
    rank_counts, mode_names = parse_ranks(ranks), parse_modes(modes)
    if slow_factor < 1.0:
        raise ConfigError("--slow-factor must be >= 1")
    outcomes = [
        simulate(measured, mode, n, rounds=rounds, seed=seed, slow_rank=slow_rank, slow_factor=slow_factor)
        for mode in mode_names
        for n in rank_counts
    ]
    out = Path(out) if out else (Path(from_dir) if from_dir else Path("runs") / "simulate")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r} cannot be created ({err.strerror})") from None
    text = describe(measured)
    table_text = results_table(outcomes)
    print(text)
    print(table_text)
    image = plot(outcomes, out / "simulate.png", textwrap.fill(text, 170), masking=measured.setup.masking)
    result = {"results": [o.to_json() for o in outcomes]}
    (out / "simulate.txt").write_text(f"{text}\n\n{table_text}\n")
    (out / "simulate.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"table: {out / 'simulate.txt'}  plot: {image}")
    print(json.dumps(result))
    return 0

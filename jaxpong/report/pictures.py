"""The late-sender report's picture: up to TIMELINE_MAX_RANKS ranks the per-rank timeline (one row per rank
against wall-clock time, above per-rank bars), above that the rank x round heatmaps beside each rank's share
of last arrivals (neighbouring ranks or rounds share a cell where there are more than pixels)."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np

from jaxpong.report.finding import NAMED_MAX, SLOW_COLLECTOR, TEXT_NAME, _pct, late_senders, slow_collectors
from jaxpong.report.stats import RankStats, Rounds, _phase_seconds, _phases

COLOURS = {
    "collect": "#59a14f",
    "prepare": "#edc948",
    "wait": "#e15759",
    "update": "#4e79a7",
    "eval": "#b07aa1",
    "masked": "#f28e2b",
}
IMAGE_NAME = "imbalance.png"
TIMELINE_MAX_RANKS = 32  # --picture auto: the per-rank timeline up to this many ranks, heatmaps above


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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

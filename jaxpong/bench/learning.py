"""`jaxpong bench --learn`: how fast a config learns, in wall-clock seconds since the process started.

Each seed trains from scratch in a fresh process (imports and compilation count, as they do for a
user), for a wall-clock budget. From that run's games.jsonl (every full game, in order) we find the
first moment the mean of the last 20 full games reaches each milestone. Then the final policy plays
10 greedy full games on fresh envs, so a trailing training mean cannot flatter a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config, to_dict
from jaxpong.base.errors import ConfigError

MILESTONES = (-15, -10, 0, 10, 18, 20)
WINDOW = 20
GREEDY_GAMES = 10


def _first_reached(games: list[dict], window: int) -> dict[str, int | None]:
    """{"-15": index of the game after which the mean of the last `window` games first reached it, or None}."""
    out: dict[str, int | None] = {str(m): None for m in MILESTONES}
    returns: list[float] = []
    for i, g in enumerate(games):
        returns.append(g["return"])
        if len(returns) < window:
            continue
        mean = float(np.mean(returns[-window:]))
        for m in MILESTONES:
            if out[str(m)] is None and mean >= m:
                out[str(m)] = i
    return out


def elapsed_s(games: list[dict]) -> list[float]:
    """Each game's end in seconds since its run's first command started: `process_s` counts from its own
    process's start, so where a resumed process starts again, the earlier processes' times (each up to its
    last game; a process that finished no game adds nothing) are added. A new process shows as process_s
    going back, or as a jump in process_s - time_s (time_s, the run's clock, goes on across a resume)."""
    out: list[float] = []
    offset, last, lag = 0.0, 0.0, None
    for g in games:
        this_lag = g["process_s"] - g["time_s"] if "time_s" in g else None
        moved = lag is not None and this_lag is not None and abs(this_lag - lag) > 1.0
        if out and (g["process_s"] < last or moved):  # a new process: its clock started again
            offset += last
        last, lag = g["process_s"], this_lag
        out.append(offset + last)
    return out


def milestones_from_games(games: list[dict], window: int = WINDOW) -> dict:
    """{"-15": {"time_s", "step"} or None, ...}: first time the mean of the last `window` games >= m, in
    seconds since the run's first command (elapsed_s) and in agent steps."""
    seconds = elapsed_s(games)
    return {
        m: None if i is None else {"time_s": round(seconds[i], 1), "step": int(games[i]["step"])}
        for m, i in _first_reached(games, window).items()
    }


def played_milestones(games: list[dict], num_games: int, window: int = WINDOW) -> dict:
    """{"-15": agent step or None, ...}: each milestone dated by when the games that reached it were played,
    not by when the last of them ended. A game of `length` steps on one of `num_games` games stepped side by
    side spans length x num_games agent steps of the run, so the `window` games whose mean first reached a
    milestone were played around that moment less their median length x num_games / 2. With many games a
    game's end comes long after the policy that won it: at the default's +18, games of about 2,300 steps end
    37k agent steps after their middle with 32 games, 294k with 256."""

    def middle(i: int) -> int:
        lag = float(np.median([g["length"] for g in games[i - window + 1 : i + 1]])) * num_games / 2
        return max(0, int(games[i]["step"] - lag))

    return {m: None if i is None else middle(i) for m, i in _first_reached(games, window).items()}


def lower_median(values: list[float | None]) -> float | None:
    """The lower median of the seeds' values (an observed seed, never an average), a miss (None) counting as
    infinitely slow: None when fewer than half of them got there, or there are none."""
    if not values:
        return None
    ordered = sorted(math.inf if v is None else v for v in values)
    mid = ordered[(len(ordered) - 1) // 2]
    return None if math.isinf(mid) else mid


def median_milestones(per_seed: list[dict]) -> dict:
    """Median over seeds; a seed that never reached a milestone counts as infinitely slow, so the
    median is null when fewer than half of the seeds reached it."""
    out = {}
    for m in MILESTONES:
        times = sorted((s[str(m)]["time_s"], s[str(m)]["step"]) if s[str(m)] else (np.inf, np.inf) for s in per_seed)
        mid = times[(len(times) - 1) // 2]  # the lower median: an observed seed, never an average
        out[str(m)] = None if not np.isfinite(mid[0]) else {"time_s": mid[0], "step": int(mid[1])}
    return out


def trailing_means(games: list[dict], window: int = WINDOW) -> list[tuple[int, float]]:
    """(agent step, mean of the last `window` full games) after each game from the `window`-th on."""
    returns = [g["return"] for g in games]
    return [
        (int(games[i]["step"]), float(np.mean(returns[i - window + 1 : i + 1]))) for i in range(window - 1, len(games))
    ]


def best_mean(games: list[dict], window: int = WINDOW) -> float | None:
    """The best mean of `window` consecutive full games (None before the first `window`)."""
    means = [m for _, m in trailing_means(games, window)]
    return max(means) if means else None


def mean_at_step(games: list[dict], step: int, window: int = WINDOW) -> float | None:
    """The mean of the last `window` full games finished by agent step `step` (None with fewer): runs compared
    at equal agent steps, whatever their speed."""
    before = [g for g in games if g["step"] <= step]
    return float(np.mean([g["return"] for g in before[-window:]])) if len(before) >= window else None


def rank_sum_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Mann-Whitney rank-sum p-value of two samples (exact for small samples without ties); a
    miss is passed as inf and ranks as the slowest. None when a side is empty."""
    from scipy.stats import mannwhitneyu

    if not a or not b:
        return None
    big = 1e30  # scipy ranks inf, but its exact method wants finite values
    a2, b2 = ([min(x, big) for x in v] for v in (a, b))
    return float(mannwhitneyu(a2, b2, alternative="two-sided").pvalue)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def run_outcome(run_dir: Path) -> dict:
    """What one finished training run reached, from its games.jsonl and metrics.jsonl: milestones (steps and
    seconds), agent steps and seconds at the end, steps/s, full games, last-20 and best last-20 means, and
    the games themselves ("played"). The one reader of a run's learning for every benchmark and study."""
    games = read_jsonl(run_dir / "games.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    sps = (
        (metrics[-1]["step"] - metrics[0]["step"]) / max(metrics[-1]["time_s"] - metrics[0]["time_s"], 1e-9)
        if len(metrics) > 1
        else 0.0
    )
    return {
        "milestones": milestones_from_games(games),
        "steps": metrics[-1]["step"] if metrics else 0,
        "time_s": metrics[-1]["time_s"] if metrics else 0.0,
        "sps": sps,
        "games": len(games),
        "final_return": float(np.mean([g["return"] for g in games[-WINDOW:]])) if games else None,
        "best_return": best_mean(games),
        "played": games,
    }


def _plot(per_seed_runs: list[tuple[int, list[dict]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for seed, games in per_seed_runs:
        if len(games) < 1:
            continue
        rets = np.array([g["return"] for g in games], float)
        t = np.array(elapsed_s(games), float)
        trailing = np.array([rets[max(0, i - WINDOW + 1) : i + 1].mean() for i in range(len(rets))])
        ax.plot(t, trailing, label=f"seed {seed}")
    for m in MILESTONES:
        ax.axhline(m, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("wall-clock seconds since the run's first command (a resumed run's processes added)")
    ax.set_ylabel(f"mean return, last {WINDOW} full games")
    ax.set_ylim(-21.5, 21.5)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def train_argv(config_file, run_dir, *extra: str) -> list[str]:
    """`python -m jaxpong train` from `config_file` into `run_dir` (overwritten), as a user would start it,
    with `extra` flags after: the command line every benchmark's training run shares."""
    return [
        sys.executable,
        "-m",
        "jaxpong",
        "train",
        "--config",
        str(config_file),
        "--run-dir",
        str(run_dir),
        "--overwrite",
        *extra,
    ]


def _train_seed(
    cfg_file: Path,
    seed_dir: Path,
    seed: int,
    time_limit_s: float,
    extra_args: list[str],
    greedy_games: int = GREEDY_GAMES,
    resume: bool = False,
) -> tuple[dict, list]:
    """Train one seed from scratch in a fresh process (with `resume`: continue the run in `seed_dir` from its
    last checkpoint), then play `greedy_games` greedy games with the result (none for 0): (the seed's row,
    its games)."""
    common = ["--time-limit-s", str(time_limit_s), "--progress", "log", "--checkpoint-every", "1000000000"]
    if resume:
        cmd = [sys.executable, "-m", "jaxpong", "train", "--resume", str(seed_dir), *common, *extra_args]
    else:
        cmd = train_argv(cfg_file, seed_dir, "--seed", str(seed), *common, *extra_args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}: training failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    outcome = run_outcome(seed_dir)
    games, reached, sps = outcome["played"], outcome["milestones"], outcome["sps"]
    final, best = outcome["final_return"], outcome["best_return"]
    greedy = None
    if greedy_games > 0:
        ev = subprocess.run(
            [sys.executable, "-m", "jaxpong", "eval", str(seed_dir), "--episodes", str(greedy_games), "--greedy"],
            capture_output=True,
            text=True,
        )
        greedy = json.loads(ev.stdout.strip().splitlines()[-1]) if ev.returncode == 0 else None
    row: dict = {
        "seed": seed,
        "milestones": reached,
        "sps": round(sps, 1),
        "final_return": final,
        "best_return": best,
        "games": len(games),
        "steps": outcome["steps"],
        "greedy_mean": greedy["mean_return"] if greedy else None,
        "greedy_returns": greedy["returns"] if greedy else None,
        # A greedy policy can rally with the built-in opponent until envpool truncates the game:
        # such games have no score, so the mean is over the finished ones; say how many there were.
        "greedy_truncated": greedy["truncated"] if greedy else None,
        "run_dir": str(seed_dir),
    }
    print(
        "  "
        + "  ".join(f"{m:+d}: " + (f"{r['time_s']:.0f}s" if (r := reached[str(m)]) else "-") for m in MILESTONES)
        + f"  | {sps:,.0f} steps/s | last-20 {final if final is None else round(final, 2)} | greedy "
        f"{row['greedy_mean']}"
        + (f" ({row['greedy_truncated']} of {greedy_games} truncated)" if row["greedy_truncated"] else ""),
        flush=True,
    )
    return row, games


def _base_dir(cfg: Config, run_dir: str | None, kind: str) -> tuple[Path, Path]:
    """(the benchmark's folder, the config file every run reads), written there."""
    import time

    import yaml

    if cfg.run.time_limit_s <= 0:
        raise ConfigError("bench --learn needs --time-limit-s SECONDS > 0 (the wall-clock budget of each seed)")
    base = Path(run_dir) if run_dir else Path("runs") / f"{kind}__{cfg.algo.algo}__{int(time.time())}"
    base.mkdir(parents=True, exist_ok=True)
    cfg_file = base / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    return base, cfg_file


def learning_benchmark(
    cfg: Config,
    *,
    time_limit_s: float,
    seeds: int,
    run_dir: str | None,
    extra_args: list[str] | None = None,
    greedy_games: int = GREEDY_GAMES,
) -> int:
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, time_limit_s=time_limit_s))
    base, cfg_file = _base_dir(cfg, run_dir, "bench_learn")
    per_seed, curves = [], []
    for k in range(seeds):
        seed = cfg.run.seed + k
        seed_dir = base / f"seed_{seed}"
        print(f"seed {seed}: training for {time_limit_s:g} s -> {seed_dir}", flush=True)
        row, games = _train_seed(cfg_file, seed_dir, seed, time_limit_s, extra_args or [], greedy_games)
        per_seed.append(row)
        curves.append((seed, games))
    med = median_milestones([r["milestones"] for r in per_seed])
    png = base / "learning_curve.png"
    _plot(
        curves,
        png,
        f"{cfg.algo.algo}, {cfg.model.network} on {cfg.model.obs_mode}, {cfg.env.num_envs} envs; "
        f"{seeds} seed(s), {time_limit_s:g} s each",
    )
    finals = [r["final_return"] for r in per_seed if r["final_return"] is not None]
    greedy = [r["greedy_mean"] for r in per_seed if r["greedy_mean"] is not None]
    print(
        "median milestones (seconds since process start): "
        + ", ".join(f"{m}: {v['time_s']}s" if v else f"{m}: -" for m, v in med.items())
    )
    print(f"learning curve: {png}")
    print(
        json.dumps(
            {
                "milestones": med,
                "per_seed": per_seed,
                "sps": round(float(np.median([r["sps"] for r in per_seed])), 1),
                "final_return": float(np.median(finals)) if finals else None,
                "greedy_mean": float(np.median(greedy)) if greedy else None,
                "time_limit_s": time_limit_s,
                "run_dir": str(base),
            }
        )
    )
    return 0


def _ratio(reached: dict | None, baseline: dict | None) -> float:
    """Time to a milestone over the baseline's, a run that never got there counting as infinitely slow."""
    if reached and baseline:
        return reached["time_s"] / baseline["time_s"]
    return 0.0 if reached else np.inf


# Agent steps at which runs are compared on their last-20 mean (each only where every run got there).
COMPARE_AT_STEPS = (300_000, 500_000, 800_000, 1_000_000)


def compare_in_steps(first: list[dict], other: list[dict], curves_first: list, curves_other: list) -> dict:
    """The other count against the first in agent steps, seed rows and their games side by side: per
    milestone the medians and the rank-sum p of the steps to it (a miss counts as never), and the last-20
    mean at each of COMPARE_AT_STEPS that every run reached, with its rank-sum p."""
    out: dict = {"steps_to": {}, "mean_at": {}}
    for m in ("0", "18", "20"):
        a, b = ([r["milestones"][m]["step"] if r["milestones"][m] else np.inf for r in rows] for rows in (first, other))
        out["steps_to"][m] = {"first": a, "other": b, "p": rank_sum_p(a, b)}
    reached = min(r["steps"] for r in first + other) if first and other else 0
    for step in COMPARE_AT_STEPS:
        if step > reached:
            continue
        means = [[mean_at_step(games, step) for _, games in curves] for curves in (curves_first, curves_other)]
        a, b = ([x for x in side if x is not None] for side in means)
        if len(a) == len(curves_first) and len(b) == len(curves_other):
            out["mean_at"][str(step)] = {"first": a, "other": b, "p": rank_sum_p(a, b)}
    return out


def _extends(seed_dir: Path, row: dict, cfg: Config) -> bool:
    """Whether a seed trained earlier for a smaller --total-steps is to be resumed to this one: its budget
    was lower, it stopped short of it, and it has not already reached this run's --target-return."""
    import yaml

    saved = yaml.safe_load((seed_dir / "config.yaml").read_text()) if (seed_dir / "config.yaml").exists() else {}
    budget_before = int((saved.get("run") or {}).get("total_steps", cfg.run.total_steps))
    won = row.get("best_return") is not None and row["best_return"] >= cfg.run.target_return  # nan: never
    extends = budget_before < cfg.run.total_steps and row["steps"] < cfg.run.total_steps and not won
    if extends:
        # The resume trains with this benchmark's schedule (resume_flags): it must be the one the seed had, or
        # the resumed seed would be another run (a rate annealed over its own budget changes with the budget).
        algo = saved.get("algo") or {}
        before = (int(algo.get("anneal_steps", 0)) or budget_before) if algo.get("anneal_lr", True) else None
        after = (cfg.algo.anneal_steps or cfg.run.total_steps) if cfg.algo.anneal_lr else None
        if before != after:
            had = "was not annealed" if before is None else f"annealed over {before:,} agent steps"
            would = "would not anneal" if after is None else f"would anneal over {after:,}"
            keep = "--anneal-lr false" if before is None else f"--anneal-steps {before}"
            raise ConfigError(
                f"{seed_dir}: its learning rate {had}; resumed to --total-steps {cfg.run.total_steps:,} with "
                f"these flags it {would}; give {keep} to keep its schedule, or another --run-dir"
            )
    return extends


def resume_flags(cfg: Config) -> list[str]:
    """What an extended seed's resume is given: the new budget and target, and this benchmark's learning-rate
    schedule (which _extends checked is the seed's own), not the seed's saved one."""
    return [
        "--total-steps",
        str(cfg.run.total_steps),
        "--target-return",
        str(cfg.run.target_return),
        "--anneal-lr",
        "true" if cfg.algo.anneal_lr else "false",
        "--anneal-steps",
        str(cfg.algo.anneal_steps or cfg.run.total_steps),
    ]


def compare_ranks(
    cfg: Config, counts: list[int], *, seeds: int, run_dir: str | None, greedy_games: int = GREEDY_GAMES
) -> int:
    """`jaxpong bench --learn --ranks 1,2`: the same config trained at each rank count, seed by seed and
    interleaved (seed 1 at every count, then seed 2, ...), so that drifts in the machine's speed fall on
    every count alike. Reports each count's median milestones in seconds and agent steps, per seed the
    ratio of each count's time to each milestone over the first count's with their median, and in agent
    steps (which the ranks' speed does not touch) the steps to 0, +18 and +20 and the last-20 mean at equal
    steps, each with a rank-sum p against the first count. Resumable: a seed already in DIR/results.json
    (same flags) is not trained again. Extendable: rerun with a larger --total-steps (and a --target-return),
    each seed that stopped at the smaller budget is resumed from its last checkpoint to the new one; its
    row says where ("resumed_at_step"), and its seconds add the time of each of its processes (elapsed_s;
    the pause between them is not counted)."""
    base, cfg_file = _base_dir(cfg, run_dir, "bench_learn_ranks")
    rows: dict[int, list[dict]] = {n: [] for n in counts}
    curves: dict[int, list] = {n: [] for n in counts}
    done = {}
    results = base / "results.json"
    if results.exists():
        saved = json.loads(results.read_text())
        done = {(int(n), r["seed"]): r for n, per in saved.get("per_count", {}).items() for r in per}
    for k in range(seeds):
        seed = cfg.run.seed + k
        for n in counts:
            seed_dir = base / f"ranks_{n}" / f"seed_{seed}"
            if (n, seed) in done and (seed_dir / "games.jsonl").exists() and _extends(seed_dir, done[(n, seed)], cfg):
                budget = cfg.run.total_steps
                print(f"seed {seed}, {n} rank(s): resuming to {budget:,} steps ({seed_dir})", flush=True)
                flags = resume_flags(cfg)
                row, games = _train_seed(
                    cfg_file,
                    seed_dir,
                    seed,
                    cfg.run.time_limit_s,
                    flags + (["--ranks", str(n)] if n > 1 else []),
                    greedy_games,
                    resume=True,
                )
                row["resumed_at_step"] = done[(n, seed)]["steps"]
            elif (n, seed) in done and (seed_dir / "games.jsonl").exists():
                print(f"seed {seed}, {n} rank(s): already trained ({seed_dir})", flush=True)
                games = read_jsonl(seed_dir / "games.jsonl")
                # Dated again from its games, so a row written by an earlier version reads as a new one would.
                row = dict(done[(n, seed)], milestones=milestones_from_games(games))
            else:
                print(f"seed {seed}, {n} rank(s): training for {cfg.run.time_limit_s:g} s -> {seed_dir}", flush=True)
                row, games = _train_seed(
                    cfg_file, seed_dir, seed, cfg.run.time_limit_s, ["--ranks", str(n)] if n > 1 else [], greedy_games
                )
            rows[n].append(row)
            curves[n].append((seed, games))
            results.write_text(json.dumps({"counts": counts, "per_count": rows}, indent=1))
    first = counts[0]
    summary: dict = {"counts": counts, "time_limit_s": cfg.run.time_limit_s, "run_dir": str(base), "per_count": {}}
    for n in counts:
        med = median_milestones([r["milestones"] for r in rows[n]])
        ratios = {}
        for m in ("0", "18", "20"):
            # A run that never got there took infinitely long: its ratio is inf (this count missed it),
            # 0 (only the first count missed it), or unknown (both missed it, counted as inf).
            per_seed = [_ratio(a["milestones"][m], b["milestones"][m]) for a, b in zip(rows[n], rows[first])]
            known = sorted(per_seed)
            mid = known[(len(known) - 1) // 2]
            ratios[m] = {
                "per_seed": [round(x, 3) if np.isfinite(x) else None for x in per_seed],
                "median": round(float(mid), 3) if np.isfinite(mid) else None,
            }
        summary["per_count"][str(n)] = {
            "milestones": med,
            "sps": round(float(np.median([r["sps"] for r in rows[n]])), 1),
            "time_ratio_to_first": ratios,
            "best_return": [r.get("best_return") for r in rows[n]],
            "per_seed": rows[n],
        }
        if n != first:
            summary["per_count"][str(n)]["in_steps_against_first"] = compare_in_steps(
                rows[first], rows[n], curves[first], curves[n]
            )
        _plot(curves[n], base / f"learning_curve_ranks_{n}.png", f"{n} rank(s): {seeds} seed(s)")
        print(
            f"{n} rank(s): median "
            + ", ".join(
                f"{m}: {v['time_s']}s at {v['step']:,} steps" if v else f"{m}: -"
                for m, v in med.items()
                if m in ("0", "18", "20")
            )
            + f" | {summary['per_count'][str(n)]['sps']:,.0f} steps/s"
            + (
                ""
                if n == first
                else " | time over "
                + f"{first} rank(s), median of the seeds' ratios: "
                + ", ".join(f"{m}: {r['median']}" for m, r in ratios.items())
            ),
            flush=True,
        )
        if n != first:
            print(_steps_line(first, n, summary["per_count"][str(n)]["in_steps_against_first"]), flush=True)
    (base / "summary.json").write_text(json.dumps(summary, indent=1))
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "per_count"}
            | {
                "per_count": {
                    n: {k: v for k, v in c.items() if k != "per_seed"} for n, c in summary["per_count"].items()
                }
            }
        )
    )
    return 0


def _steps_line(first: int, n: int, cmp: dict) -> str:
    """One line: the counts compared in agent steps, lower medians (an observed seed) and rank-sum p."""

    def median(values):
        return sorted(values)[(len(values) - 1) // 2]

    def steps(v):
        return f"{v / 1e3:,.0f}k" if np.isfinite(v) else "never"

    parts = [
        f"{int(m):+d} at {steps(median(d['first']))} / {steps(median(d['other']))} steps (p {d['p']:.2f})"
        for m, d in cmp["steps_to"].items()
    ]
    parts += [
        f"last-20 at {int(at) / 1e3:,.0f}k steps {median(d['first']):+.2f} / {median(d['other']):+.2f} (p {d['p']:.2f})"
        for at, d in cmp["mean_at"].items()
    ]
    return f"in agent steps, {first} / {n} rank(s), medians: " + "; ".join(parts)

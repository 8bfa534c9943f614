"""`jaxpong simulate --predict`: the wall-clock to a mean of 0, +18 and +20 against rank count.

    time(N) = start-up + steps_to_milestone(global batch at N ranks) / valid steps per second(N)

- steps_to_milestone comes from the batch study (`python -m jaxpong.batchstudy`: agent steps to each
  milestone with 1x, 2x, 4x ... the default's games, one process standing in for N ranks). Between
  measured scales it is interpolated in log-log; beyond the largest, the samples needed grow with the
  optimizer's batch B as E(B) = E_min (1 + B / B_crit) (McCandlish et al. 2018, "An Empirical Model of
  Large-Batch Training"), with B_crit the gradient noise scale a run measured (charts/noise_scale) and
  E_min fitted to the largest measured scale.
- steps per second comes from the simulator (jaxpong/scale/simulate.py, deadline mode) on distributions
  measured in a real run of the same config (`--from RUN_DIR`), with the batch rule's round at each rank
  count (jaxpong/learn/batch_rule.py): its optimizer steps, so its collectives are counted, and its round
  length, with the update's compute in proportion, so a shorter round's extra exchanges are counted too.
- start-up is the measured time from process start to the first update (a run's first metrics line).

Each predicted time says which of the three limits it most: samples (the critical batch), collectives
or late senders (both in the simulated efficiency).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.learn import batch_rule

MILESTONES = ("0", "18", "20")
SEED_2016: dict = {"ranks": 1536, "milestone": "0", "seconds": 3.9 * 60}  # ARCHER, 2016: a mean above 0 in 3.9 min


@dataclasses.dataclass
class StepsModel:
    """Agent steps to each milestone against the global game scale (x the config's games)."""

    scales: list[int]
    steps: dict  # milestone -> [steps at each scale] (None where fewer than half the seeds got there)
    minibatch: list[int]  # samples per optimizer step at each measured scale
    b_crit: float  # the gradient noise scale: samples per optimizer step beyond which samples are wasted

    def at(self, milestone: str, scale: float, batch: float) -> float | None:
        pts = [(s, v) for s, v in zip(self.scales, self.steps[milestone]) if v]
        if not pts:
            return None
        xs, ys = zip(*pts)
        if scale <= xs[-1]:
            return float(np.exp(np.interp(np.log(scale), np.log(xs), np.log(ys))))
        # Beyond the study: E(B) = E_min (1 + B / B_crit), E_min from the largest measured scale.
        b_last = self.minibatch[self.scales.index(xs[-1])]
        e_min = ys[-1] / (1.0 + b_last / self.b_crit)
        return e_min * (1.0 + batch / self.b_crit)


def milestone_steps(model: StepsModel, scale: float, batch: float) -> dict[str, float | None]:
    """Agent steps to each milestone at `scale` x the config's games and `batch` samples per optimizer step.
    A higher milestone measured at fewer scales (runs that stopped at +18) can extrapolate below a lower
    one; it is never reached sooner, so it is floored at the one before."""
    out: dict[str, float | None] = {}
    earlier = 0.0
    for m in MILESTONES:
        steps = model.at(m, scale, batch)
        out[m] = None if steps is None else max(steps, earlier)
        earlier = out[m] or earlier
    return out


def steps_model(results: list[dict], rule: str, b_crit: float, cfg: Config) -> StepsModel:
    from jaxpong.scale.batchstudy import study_config, summarise

    rows = [r for r in summarise(results) if r["rule"] == rule]
    if not rows:
        raise ConfigError(f"the batch study has no runs with rule {rule!r}; run python -m jaxpong.batchstudy first")
    scales = [r["scale"] for r in rows]
    minibatch = []
    for s in scales:
        algo = study_config(rule, s, cfg).algo
        minibatch.append(algo.num_steps * cfg.env.num_envs * s // algo.num_minibatches)
    return StepsModel(scales, {m: [r[f"steps_{m}"] for r in rows] for m in MILESTONES}, minibatch, b_crit)


def predict(
    cfg: Config, measured, model: StepsModel, ranks: list[int], startup_s: float, rounds: int = 200, seed: int = 0
) -> list[dict]:
    from jaxpong.scale import simulate

    rows: list[dict] = []
    for n in ranks:
        # share_games first (N ranks split the games until each has min_rank_games), then the minibatch rule.
        # A rank's speed is the --from run's, so that run should have a rank's games and cores at scale.
        scaled, _ = batch_rule.apply(cfg, n)
        games = scaled.env.num_envs * n
        out = simulate.simulate(rule_setup(measured, scaled), "deadline", n, rounds=rounds, seed=seed)
        batch = scaled.algo.num_steps * games / scaled.algo.num_minibatches
        row: dict = {
            "ranks": n,
            "games": games,
            "samples_per_s": out.samples_per_s,
            "efficiency": out.efficiency,
            "wait_fraction": out.wait_fraction,
            "optimizer_batch": batch,
        }
        for m, steps in milestone_steps(model, games / cfg.env.num_envs, batch).items():
            row[f"steps_{m}"] = steps
            row[f"seconds_{m}"] = None if steps is None else startup_s + steps / out.samples_per_s
        first = rows[0] if rows else row
        sample_factor = (row["steps_18"] / first["steps_18"]) if row["steps_18"] and first["steps_18"] else 1.0
        row["limit"] = limit(out.efficiency, out.wait_fraction, sample_factor)
        rows.append(row)
    return rows


def rule_setup(measured, scaled: Config):
    """The measured distributions with the round that the batch rule gives a rank (`scaled`): its optimizer
    steps (one allreduce each), its round length, and the update's compute in proportion to the samples a
    rank learns from per round. A shorter round (the steps rule) is fewer samples, less time per round
    and more rounds, so more exchanges, per agent step."""
    rows = scaled.algo.num_steps / measured.setup.num_steps
    setup = dataclasses.replace(
        measured.setup,
        num_steps=scaled.algo.num_steps,
        optimizer_steps=scaled.algo.update_epochs * scaled.algo.num_minibatches,
    )
    return dataclasses.replace(measured, setup=setup, compute_s=[c * rows for c in measured.compute_s])


def limit(efficiency: float, wait_fraction: float, sample_factor: float) -> str:
    """What holds a rank count back most against one rank: samples (`sample_factor`, the agent steps it
    needs over one rank's: a batch past the critical batch), late senders (time waiting for the last
    rank) or collectives (the rest of the lost efficiency)."""
    time_factor = 1.0 / max(efficiency, 1e-9)
    if max(sample_factor, time_factor) < 1.05:
        return "-"
    if sample_factor >= time_factor:
        return "critical batch"
    return "late senders" if wait_fraction >= (1.0 - efficiency) / 2 else "collectives"


def table(rows: list[dict]) -> str:
    def t(v):
        return "-" if v is None else (f"{v:.0f} s" if v < 600 else f"{v / 60:.1f} min")

    def k(v):
        return "-" if v is None else f"{v / 1e6:.2f}M"

    lines = [
        "| ranks | valid steps/s | efficiency | optimizer batch | steps to +18 | to 0 | to +18 | to +20 | limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ranks']:,} | {r['samples_per_s']:,.0f} | {r['efficiency']:.3f} | {r['optimizer_batch']:,.0f} | "
            f"{k(r['steps_18'])} | {t(r['seconds_0'])} | {t(r['seconds_18'])} | {t(r['seconds_20'])} | "
            f"{r['limit']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for m, style in zip(MILESTONES, (":", "-", "--")):
        pts = [(r["ranks"], r[f"seconds_{m}"]) for r in rows if r[f"seconds_{m}"]]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, style, marker="o", ms=3, label=f"predicted: mean {'above 0' if m == '0' else '+' + m}")
    ax.scatter(
        [SEED_2016["ranks"]],
        [SEED_2016["seconds"]],
        marker="*",
        s=160,
        color="crimson",
        zorder=5,
        label="2016: mean above 0, 1,536 ARCHER cores",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("ranks")
    ax.set_ylabel("wall-clock seconds from process start")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def noise_scale_of(run_dir: Path) -> float:
    """The median of a run's logged gradient noise scale over its second half (it grows as training goes)."""
    values = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        v = json.loads(line).get("charts/noise_scale") if line.strip() else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            values.append(v)
    if not values:
        raise ConfigError(f"{run_dir}/metrics.jsonl holds no charts/noise_scale; give --b-crit or a newer run")
    return float(np.median(values[len(values) // 2 :]))


def startup_of(run_dir: Path) -> float:
    first = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    return float(first["process_s"])


def run(
    study_dir: str,
    from_dir: str,
    ranks: str,
    *,
    rule: str = "minibatch",
    b_crit: float | None = None,
    startup_s: float | None = None,
    rounds: int = 200,
    seed: int = 0,
    collectives_file: str | None = None,
    out: str | None = None,
) -> int:
    """`jaxpong simulate --predict STUDY_DIR --from RUN_DIR`: the table, PNG and JSON of predicted times."""
    from jaxpong.bench.learning import read_jsonl
    from jaxpong.scale import simulate

    study = Path(study_dir) / "results.jsonl"
    if not study.is_file():
        raise ConfigError(
            f"--predict {study_dir!r}: no results.jsonl there; run python -m jaxpong.batchstudy --out DIR"
        )
    run_dir = Path(from_dir)
    cfg = Config.from_run(run_dir)
    # The study's runs pass the rule's minibatch counts explicitly (--batch-rule none): predict with the rule itself.
    from jaxpong.scale.batchstudy import parse_arm

    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, batch_rule=parse_arm(rule)[0]))
    measured = simulate.measured_from_run(run_dir)
    if collectives_file:
        measured = dataclasses.replace(measured, collectives=simulate.load_collectives(collectives_file))
    b_crit = b_crit or noise_scale_of(run_dir)
    startup_s = startup_s if startup_s is not None else startup_of(run_dir)
    model = steps_model(read_jsonl(study), rule, b_crit, cfg)
    rows = predict(cfg, measured, model, simulate.parse_ranks(ranks), startup_s, rounds=rounds, seed=seed)
    folder = Path(out) if out else Path(study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (folder / "prediction.md").write_text(text + "\n")
    plot(
        rows,
        folder / "prediction.png",
        f"predicted wall-clock to each milestone: {cfg.algo.algo}, {cfg.env.num_envs} games"
        f"{' shared by the ranks' if cfg.env.share_games else ' a rank'}, batch rule {rule}; "
        f"B_crit {b_crit:,.0f}, start-up {startup_s:.0f} s",
    )
    print(text)
    print(f"table: {folder / 'prediction.md'}  plot: {folder / 'prediction.png'}")
    print(json.dumps({"b_crit": b_crit, "startup_s": startup_s, "rule": rule, "rows": rows}))
    return 0

"""`python -m jaxpong.batchstudy` (`make bench-batch`): agent steps to each milestone as the global batch grows.

N ranks do exactly what one process does with N times the games (tests/test_mpi.py proves it for the
gradients), so the learning side of scaling is measured here in one process: the default config with
1x, 2x, 4x ... its games, under each batch rule. Agent steps to a milestone do not depend on how fast
the machine is, so these runs may share a machine; their seconds are reported but not compared.

The study is resumable: every finished run appends one line to OUT/results.jsonl, and a rerun skips
the (rule, scale, seed) triples already there. A run stops at its target return (+20 unless --target-return says
otherwise); a milestone above a run's target was not measured by that run and is left out of that
milestone's median, where a milestone the run missed counts as infinitely slow. --jobs N trains N runs at
once: agent steps do not depend on the machine's speed. The learning rate anneals over the config's own
horizon (its total_steps, 10M for the default), not over --total-steps, which only caps a study run; a
folder's runs must share that horizon. On 2 cores it bought little: a 2x and a 4x run
together stepped about 2,100 steps/s, a 1x run alone about 2,000 and a 16x run alone about 2,600.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jaxpong.base.config import build
from jaxpong.base.errors import ConfigError
from jaxpong.bench.learning import MILESTONES, lower_median, played_milestones, read_jsonl, run_outcome, train_argv
from jaxpong.learn import batch_rule

STUDY_MILESTONES = ("0", "18", "20")


# What an arm's name may add to its batch rule, after a "+": the update's other candidate rules.
MODIFIERS = {
    "ewma": ["--proximal", "ewma"],  # clip against a moving average of recent weights (PPO-EWMA)
    "kl": ["--target-kl", "0.008"],  # the learning rate follows the KL; 0.008: the default's late KL at 1x
}
RULES = ("minibatch", "steps", "sqrt_lr", "none")


def parse_arm(arm: str) -> tuple[str, list[str]]:
    """An arm's name, e.g. `steps+ewma`: (its algo.batch_rule, the flags its modifiers add)."""
    rule, *mods = arm.split("+")
    if rule not in RULES or any(m not in MODIFIERS for m in mods):
        raise ConfigError(
            f"--rules: {arm!r} is not an arm; name a batch rule ({', '.join(RULES)}), optionally followed by "
            f"+{' or +'.join(MODIFIERS)} (e.g. minibatch+ewma)"
        )
    return rule, [flag for m in mods for flag in MODIFIERS[m]]


def split_label(label: str) -> tuple[str, int]:
    """A study row's rule label: `ARM` (one process standing in for ranks) or `ARM@R` (R real ranks)."""
    arm, _, ranks = label.partition("@")
    return arm, int(ranks) if ranks else 1


def real_ranks(arm: str, ranks: int, cfg) -> tuple[int, list[str]]:
    """(the scale, the train flags) of `ranks` real ranks (`train --ranks R`, oversubscribed where the host has
    fewer cores) sharing the config's games under `arm`: env.share_games gives each rank its share (down to
    min_rank_games), and the batch rule follows the global games as in any multi-rank run."""
    rule, mods = parse_arm(arm)
    ranked = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, batch_rule=rule))
    real, _ = batch_rule.apply(ranked, ranks)  # what each of the ranks trains with: its games, the rule's update
    games = real.env.num_envs * ranks
    if games % cfg.env.num_envs:
        raise ConfigError(
            f"--ranks {ranks}: {games} games in all is not a whole multiple of the config's {cfg.env.num_envs}, "
            "so no emulated scale matches it; choose a rank count whose shares add up to one"
        )
    scale = games // cfg.env.num_envs
    # The stand-in holds ranks of the config's games; the rule's caps follow a rank's games, so past the share
    # floor the real ranks may get another update than their stand-in: then they are not its check.
    real_algo, stand_in = real.algo, study_config(arm, scale, cfg).algo
    if (real_algo.num_steps, real_algo.num_minibatches) != (stand_in.num_steps, stand_in.num_minibatches):
        raise ConfigError(
            f"--ranks {ranks}: ranks of {real.env.num_envs} games get {real_algo.num_minibatches} minibatches "
            f"of {real_algo.num_steps}-step rounds under {rule}, where the study's {scale}x stand-in (ranks of "
            f"{cfg.env.num_envs}) gets {stand_in.num_minibatches} of {stand_in.num_steps}: not the same update; "
            "choose fewer ranks"
        )
    return scale, ["--ranks", str(ranks), "--oversubscribe", "--batch-rule", rule, *mods]


def study_config(arm: str, scale: int, cfg):
    """The config one process trains with, standing in for `scale` ranks of the config's games each under
    `arm`: what the rule (jaxpong/learn/batch_rule.py) gives k real ranks, with one rank's games for its caps."""
    rule, _ = parse_arm(arm)
    games = cfg.env.num_envs * scale
    ranked = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, batch_rule=rule))
    scaled, _ = batch_rule.scaled_update(ranked, games, cfg.env.num_envs)
    return scaled


def study_minibatches(arm: str, scale: int, cfg) -> int:
    """Minibatches per epoch of one process standing in for `scale` ranks of the config's games each."""
    return study_config(arm, scale, cfg).algo.num_minibatches


def run_args(arm: str, scale: int, cfg) -> list[str]:
    """Flags that make one process stand in for `scale` ranks of the config's games each, under `arm`: the
    rule's round length, minibatch count and learning rate passed explicitly, then the arm's modifiers."""
    a = study_config(arm, scale, cfg).algo
    return [
        "--num-envs",
        str(cfg.env.num_envs * scale),
        "--num-steps",
        str(a.num_steps),
        "--num-minibatches",
        str(a.num_minibatches),
        "--learning-rate",
        f"{a.learning_rate:.9g}",
        "--batch-rule",
        "none",
        *parse_arm(arm)[1],
    ]


def measured(run: dict, milestone: str) -> bool:
    """Whether `run` could have reached `milestone`: it trained on past it unless it stopped at a lower
    target (rows written before targets were recorded all ran to +20)."""
    return float(milestone) <= run.get("target", 20)


def summarise(results: list[dict]) -> list[dict]:
    """One row per (rule, scale): the median over the seeds that measured a milestone of the agent steps
    to it. A seed that never got there counts as infinitely slow, so the median is None when fewer than
    half did."""
    rows = []
    for rule, scale in sorted({(r["rule"], r["scale"]) for r in results}):
        runs = [r for r in results if r["rule"] == rule and r["scale"] == scale]
        row = {"rule": rule, "scale": scale, "seeds": len(runs)}
        for m in STUDY_MILESTONES:
            steps = [(r["milestones"].get(m) or {}).get("step") for r in runs if measured(r, m)]
            mid = lower_median(steps)  # an observed seed, a miss the slowest
            row[f"steps_{m}"] = None if mid is None else int(mid)
            row[f"reached_{m}"] = sum(s is not None for s in steps)
            row[f"measured_{m}"] = len(steps)
        # Rounds to +18 and +18 by the games' middle (lower medians, a miss the slowest), the late drift's median.
        for key, name in (("rounds", "rounds_18"), ("played", "played_18")):
            mid = lower_median([(r.get(key) or {}).get("18") for r in runs if measured(r, "18") and key in r])
            row[name] = None if mid is None else int(mid)
        for name in (d.split("/")[-1] for d in DRIFT):
            values = [r[name] for r in runs if r.get(name) is not None]
            row[name] = float(np.median(values)) if values else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def fmt(v):
        return "-" if v is None else f"{v / 1e3:,.0f}k"

    ref = {r["rule"]: r for r in rows if r["scale"] == 1}
    lines = [
        "| rule | games (x default) | seeds | steps to 0 | steps to +18 (reached/ran to it) "
        "| steps to +20 (reached/ran to it) | +18 against 1x | rounds to +18 | +18 by the games' middle "
        "| late KL | late clip fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    for r in rows:
        arm, ranks = split_label(r["rule"])
        base = ref.get(arm) or ref.get("minibatch") or {}
        ratio = f"{r['steps_18'] / base['steps_18']:.2f}x" if r["steps_18"] and base.get("steps_18") else "-"
        name = f"{arm}, {ranks} real ranks" if ranks > 1 else arm
        lines.append(
            f"| {name} | {r['scale']}x | {r['seeds']} | {fmt(r['steps_0'])} | {fmt(r['steps_18'])} "
            f"({r['reached_18']}/{r['measured_18']}) | {fmt(r['steps_20'])} "
            f"({r['reached_20']}/{r['measured_20']}) | {ratio} | {r.get('rounds_18') or '-'} "
            f"| {fmt(r.get('played_18'))} | {num(r.get('approx_kl_late'), 4)} | {num(r.get('clipfrac_late'), 3)} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarise(results)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rule in sorted({r["rule"] for r in rows}):
        mine = [r for r in rows if r["rule"] == rule]
        for m, style in zip(STUDY_MILESTONES, (":", "-", "--")):
            pts = [(r["scale"], r[f"steps_{m}"]) for r in mine if r[f"steps_{m}"]]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, np.array(y) / 1e6, style, marker="o", label=f"{rule}: to {m if m == '0' else '+' + m}")
        for r in results:
            if r["rule"] == rule and r["milestones"].get("18"):
                ax.scatter(r["scale"], r["milestones"]["18"]["step"] / 1e6, s=8, color="grey", alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch (x the default's 32 games x 64 steps)")
    ax.set_ylabel("agent steps (millions), median over seeds")
    ax.set_title("Agent steps to each milestone as the global batch grows (grey: +18, each seed)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


DRIFT = ("charts/approx_kl_late", "charts/clipfrac_late")  # how far a round's last optimizer steps have moved


def rounds_to(metrics: list[dict], step: int) -> int | None:
    """The round (update) by whose end the run had `step` agent steps; None if it never had."""
    return next((int(m["update"]) for m in metrics if m["step"] >= step), None)


def drift(metrics: list[dict], until_step: float) -> dict:
    """The median over the rounds up to agent step `until_step` of each DRIFT metric (None where a run did not
    log it): the policy's distance from the one that played, late in each round."""
    out: dict[str, float | None] = {}
    for name in DRIFT:
        values = [m[name] for m in metrics if m["step"] <= until_step and m.get(name) is not None]
        out[name.split("/")[-1]] = round(float(np.median(values)), 5) if values else None
    return out


def anneal_horizon(cfg, extra_args: list[str], max_steps: int) -> tuple[list[str], int]:
    """(the flags that set the learning rate's horizon, that horizon in agent steps): the config's own horizon
    (its anneal_steps, else its total_steps) unless the study's extra flags give --anneal-steps. --total-steps
    only caps a study run: left to it, the rate would anneal to zero at the cap, so a scale that needs more
    agent steps would learn them at a lower rate than one that needs fewer, and studies with caps of 2.5M and
    3M would train at different rates at the same step."""
    flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    flags.add_argument("--anneal-steps")
    try:
        given = flags.parse_known_args(extra_args)[0].anneal_steps
    except argparse.ArgumentError as err:
        raise ConfigError(str(err)) from None
    if given is not None:
        try:
            return [], int(given) or max_steps  # 0: over --total-steps, as train reads it
        except ValueError:
            raise ConfigError(f"--anneal-steps: {given!r} is not a whole number of agent steps") from None
    steps = cfg.algo.anneal_steps or cfg.run.total_steps
    return ["--anneal-steps", str(steps)], steps


def _row(
    rule: str, scale: int, seed: int, games: int, run_dir: Path, max_steps: int, target: float, anneal_steps: int
) -> dict:
    """The results line of one finished run, read from its games.jsonl and metrics.jsonl: the milestones, the
    rounds to each, and the late drift (DRIFT) up to +18 (or the end, where +18 was not reached)."""
    outcome = run_outcome(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    reached = outcome["milestones"]
    plus18 = reached.get("18")
    return {
        "rule": rule,
        "scale": scale,
        "seed": seed,
        "games": games,
        "milestones": {m: outcome["milestones"][m] for m in map(str, MILESTONES)},
        "steps": outcome["steps"],
        "time_s": outcome["time_s"],
        "max_steps": max_steps,
        "target": target,
        "rounds": {m: rounds_to(metrics, reached[m]["step"]) if reached.get(m) else None for m in STUDY_MILESTONES},
        # The same milestones dated by when the games were played, not when they ended (a game's end lags
        # the policy that played it by half its length x the games, which grows with the scale).
        "played": _played(outcome["played"], games),
        "anneal_steps": anneal_steps,  # the learning rate's horizon
        **drift(metrics, plus18["step"] if plus18 else np.inf),
    }


def _played(games: list[dict], num_games: int) -> dict:
    """The study's milestones dated by the games' middles (bench.learning.played_milestones)."""
    played = played_milestones(games, num_games)
    return {m: played[m] for m in STUDY_MILESTONES}


def run_name(label: str, scale: int, seed: int) -> str:
    """A run's folder in the study's OUT: e.g. minibatch_x8_seed1, minibatch@4_x2_seed1 (4 real ranks)."""
    return f"{label}_x{scale}_seed{seed}"


def _date_by_play(results_file: Path, out: Path) -> None:
    """Rows written before the study dated milestones by the games' middles gain them from their run folders."""
    rows = read_jsonl(results_file)

    def games_file(r: dict) -> Path:
        return out / run_name(r["rule"], r["scale"], r["seed"]) / "games.jsonl"

    stale = [r for r in rows if "played" not in r and "games" in r and games_file(r).is_file()]
    for r in stale:
        r["played"] = _played(read_jsonl(games_file(r)), r["games"])
    if stale:
        tmp = results_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(results_file)  # atomic: the study's record is never half written


def batch_study(
    config_file: str,
    *,
    scales: list[int],
    seeds: list[int],
    rules: list[str],
    max_steps: int,
    out_dir: str,
    target: float = 20,
    jobs: int = 1,
    extra_args: list[str] | None = None,
    ranks: int = 1,
) -> int:
    """Train what OUT/results.jsonl lacks, then write its table and plot. ranks > 1: each arm both as that many
    real ranks (rows labelled ARM@R) and as the one process standing in for them, at the scale their shared
    games give (`scales` is not used)."""
    cfg = build(config_file, {})
    base_games = cfg.env.num_envs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    horizon, anneal_steps = anneal_horizon(cfg, extra_args or [], max_steps)
    # A study's rows are compared with each other: they must share the learning rate's schedule.
    horizons = {r.get("anneal_steps", r.get("max_steps")) for r in read_jsonl(results_file)}
    mixed = sorted(h for h in horizons - {anneal_steps} if h is not None)
    if mixed:
        raise ConfigError(
            f"{results_file} holds runs whose learning rate annealed over {', '.join(f'{m:,}' for m in mixed)} "
            f"agent steps; this study anneals over {anneal_steps:,}: give another --out"
        )
    _date_by_play(results_file, out)
    done = {(r["rule"], r["scale"], r["seed"]) for r in read_jsonl(results_file)}
    launch: dict[str, list[str]] = {}  # a real-rank label's train flags
    if ranks > 1:
        real = {arm: real_ranks(arm, ranks, cfg) for arm in rules}
        launch = {f"{arm}@{ranks}": flags for arm, (_, flags) in real.items()}
        scales = sorted({scale for scale, _ in real.values()})
        rules = [label for arm in rules for label in (arm, f"{arm}@{ranks}")]  # each beside its emulation
    # Seeds outermost: a study stopped early still has every scale at its first seeds.
    plan = [(rule, scale, seed) for seed in seeds for scale in scales for rule in rules]
    todo = [p for p in plan if p not in done]
    running: list[tuple[tuple[str, int, int], Path, subprocess.Popen]] = []
    failed = False
    while (todo and not failed) or running:
        while todo and not failed and len(running) < jobs:
            rule, scale, seed = todo.pop(0)
            run_dir = out / run_name(rule, scale, seed)
            cmd = train_argv(
                config_file,
                run_dir,
                "--seed",
                str(seed),
                "--total-steps",
                str(max_steps),
                "--target-return",
                f"{target:g}",
                "--progress",
                "off",
                "--checkpoint-every",
                "1000000000",
                *(launch[rule] if rule in launch else run_args(rule, scale, cfg)),
                *horizon,
                *(extra_args or []),
            )
            print(f"{rule} x{scale} seed {seed}: {' '.join(cmd[3:])}", flush=True)
            # Output goes to a file, not a pipe nobody reads while the run is going.
            with (out / f"{run_dir.name}.log").open("w") as log:  # the child keeps its own copy of the file
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running.append(((rule, scale, seed), run_dir, proc))
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            running.remove(item)
            (rule, scale, seed), run_dir, proc = item
            if proc.returncode != 0:
                tail = (out / f"{run_dir.name}.log").read_text()[-600:]
                print(f"{rule} x{scale} seed {seed} failed ({proc.returncode}): {tail.strip()}", flush=True)
                failed = True
                continue
            row = _row(rule, scale, seed, base_games * scale, run_dir, max_steps, target, anneal_steps)
            with results_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            reached = row["milestones"]
            print(
                f"{rule} x{scale} seed {seed} done:  "
                + "  ".join(
                    f"{m}: " + (f"{r['step'] / 1e3:.0f}k" if (r := reached[m]) else "-") for m in STUDY_MILESTONES
                ),
                flush=True,
            )
    if failed:
        return 1
    results = read_jsonl(results_file)
    text = table(summarise(results))
    (out / "table.md").write_text(text + "\n")
    plot(results, out / "steps_to_milestones.png")
    print(text)
    print(f"table: {out / 'table.md'}  plot: {out / 'steps_to_milestones.png'}")
    return 0


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a comma-separated list of whole numbers (e.g. 1,2,4)") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag}: {text!r}: every value must be at least 1")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxpong.batchstudy",
        description="Agent steps to a mean of 0, +18 and +20 over the last 20 games, with k x the config's "
        "games in one process (the global batch of k x its ranks), under each batch rule. Resumable: runs "
        "already in OUT/results.jsonl are skipped. Flags it does not know go to every `jaxpong train`.",
    )
    p.add_argument("--config", default="configs/default.yaml", help="the config every run starts from")
    p.add_argument("--scales", default="1,2,4,8,16", help="k: the multiples of the config's games")
    p.add_argument("--seeds", default="1,2,3", help="the seeds each scale trains")
    p.add_argument(
        "--rules",
        default="minibatch",
        help="arms to compare, comma-separated: a batch rule (minibatch, steps, sqrt_lr, none), optionally with "
        "+ewma (PPO-EWMA proximal policy) and/or +kl (learning rate adapted to the KL), e.g. minibatch,steps+ewma",
    )
    p.add_argument(
        "--total-steps", dest="max_steps", type=int, default=3_000_000, help="agent steps after which a run stops"
    )
    p.add_argument("--out", default="runs/batch_study", help="folder of the runs, results.jsonl and table.md")
    p.add_argument(
        "--target-return", dest="target", type=float, default=20, help="stop each run at this last-20 mean return"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="train each arm both as this many real ranks sharing the config's games (train --ranks R, "
        "oversubscribed on a smaller host; rows labelled ARM@R) and as one process standing in for them; the "
        "scale follows from their games, --scales is not used",
    )
    a, extra = p.parse_known_args(argv)
    try:
        scales, seeds = _ints("--scales", a.scales), _ints("--seeds", a.seeds)
        rules = a.rules.split(",")
        for arm in rules:
            parse_arm(arm)
        if a.jobs < 1 or a.max_steps < 1 or a.ranks < 1:
            raise ConfigError("--jobs, --ranks and --total-steps must be at least 1")
        return batch_study(
            a.config,
            scales=scales,
            seeds=seeds,
            rules=rules,
            max_steps=a.max_steps,
            out_dir=a.out,
            target=a.target,
            jobs=a.jobs,
            extra_args=extra,
            ranks=a.ranks,
        )
    except ConfigError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

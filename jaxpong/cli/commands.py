"""What `bench`, `eval`, `video`, `plot` and `export` do once their arguments are checked: typed values
in, what the user reads (stderr lines, a table, stdout's last line one JSON object) and an exit status out.

The command line (jaxpong/cli/) parses and checks the flags; these functions are the commands'
bodies, callable from Python with the same values.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxpong.base.config import Config
from jaxpong.ranks.jaxsetup import setup_jax

# -- bench: throughput, learning speed, deadline against sync -----------------------------------------


def bench(
    cfg: Config,
    *,
    seconds: float,
    run_dir=None,
    repeats: int = 3,
    learn: bool = False,
    seeds: int = 1,
    ranks: int = 1,
    per_core: bool = False,
    greedy_games: int = 10,
) -> int:
    """`jaxpong bench`: one of the benchmarks, as the flags chose (jaxpong/bench/)."""
    from jaxpong.bench import scaling
    from jaxpong.bench import throughput as bench_lib

    if learn:
        from jaxpong.bench.learning import learning_benchmark

        return learning_benchmark(
            cfg,
            time_limit_s=cfg.run.time_limit_s,
            seeds=seeds,
            run_dir=run_dir,
            extra_args=["--ranks", str(ranks)] if ranks > 1 else None,
            greedy_games=greedy_games,
        )
    if per_core:
        return scaling.per_core(cfg, ranks, seconds=seconds, run_dir=run_dir, repeats=repeats)
    if ranks > 1:
        return scaling.ranks_benchmark(cfg, ranks, seconds=seconds, run_dir=run_dir)
    setup_jax(cfg.run.xla_threads)
    return bench_lib.throughput(cfg, seconds=seconds, run_dir=run_dir, repeats=repeats)


# -- eval, video, export: a trained policy ------------------------------------------------------------


def load_policy(source, checkpoint="latest"):
    """A saved policy (a run directory's checkpoint, or a file written by `export`), announced on stderr."""
    from jaxpong.base.console import log_line
    from jaxpong.watch import policy as policy_lib

    policy = policy_lib.load(source, checkpoint)
    log_line(f"loaded {policy.describe()}")
    return policy


def evaluate(
    source,
    checkpoint="latest",
    *,
    episodes: int = 10,
    greedy: bool = False,
    seed: int | None = None,
    num_envs: int | None = None,
) -> int:
    """`jaxpong eval`: play full games with a saved policy; print each score, the summary and one JSON line."""
    setup_jax()
    from jaxpong.watch.evaluate import format_report

    policy = load_policy(source, checkpoint)
    # The games and the report of the Python API's Policy.play.
    result = policy.play_games(episodes, seed=seed, greedy=greedy, num_envs=num_envs)
    for line in format_report(result):
        print(line)
    print(json.dumps(policy.report(result)), flush=True)
    return 0


def video(
    source,
    checkpoint="latest",
    *,
    out=None,
    max_steps: int | None = None,
    greedy: bool = False,
    seed: int | None = None,
    fps: int = 15,
) -> int:
    """`jaxpong video`: record a game played by a saved policy (default RUN_DIR/videos/step_<STEP>.mp4, or
    FILE.mp4 beside an exported policy FILE)."""
    from jaxpong.watch.video import output_format

    if out is not None:
        output_format(out, fps)  # a wrong extension fails before anything is loaded
    setup_jax()
    from jaxpong.base.console import log_line
    from jaxpong.watch.video import record

    policy = load_policy(source, checkpoint)
    if out is None:
        source = Path(source)
        out = (source / "videos" / f"step_{policy.step}.mp4") if source.is_dir() else source.with_suffix(".mp4")
    seed = policy.cfg.run.seed if seed is None else seed
    info = record(policy.cfg, policy.params, out, seed=seed, greedy=greedy, max_steps=max_steps, fps=fps)
    log_line(
        f"wrote {info['out']}: {info['frames']} frames ({info['agent_steps']} agent steps, "
        f"{info['frames'] / info['fps']:.1f} s at {info['fps']:g} fps); score agent {info['agent_score']} - "
        f"{info['opponent_score']} opponent"
    )
    print(json.dumps({**info, "source": policy.source, "checkpoint_step": policy.step}), flush=True)
    return 0


def export(source, out, checkpoint="latest") -> int:
    """`jaxpong export`: write a saved policy as one self-describing file."""
    setup_jax()
    from jaxpong.base.console import log_line
    from jaxpong.watch.export import export_policy

    policy = load_policy(source, checkpoint)
    description = export_policy(policy, out)
    size = Path(out).stat().st_size
    log_line(
        f"wrote {out} ({size / 1e6:.1f} MB, {description['parameters']:,} parameters); use it as "
        f"`jaxpong eval {out}` or `jaxpong video {out}`"
    )
    print(json.dumps({"out": str(out), "bytes": size, **description}), flush=True)
    return 0


# -- plot: learning curves ----------------------------------------------------------------------------


def plot(runs: list, out=None, *, title: str | None = None, at: list[float] | None = None) -> int:
    """`jaxpong plot`: learning curves of `runs` on one image (default RUN_DIR/learning_curve.png for one run,
    learning_curves.png here for several); with `at`, each run's state at those seconds as a table and JSON."""
    from jaxpong.base.console import log_line
    from jaxpong.watch.plots import plot_runs

    out = out or (Path(runs[0]) / "learning_curve.png" if len(runs) == 1 else Path("learning_curves.png"))
    written = plot_runs(runs, out, title=title)
    log_line(f"wrote {written}")
    if at is None:
        print(str(written))
        return 0
    from jaxpong.watch.plots import snapshots

    rows = snapshots(runs, at)
    _print_snapshots(rows)
    print(json.dumps({"image": str(written), "snapshots": rows}))
    return 0


def _print_snapshots(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="runs at wall-clock seconds since process start")
    # The 2016 running reward is what pg runs reported; for ppo it means nothing, so it shows only for pg.
    pg = any(r["algo"] == "pg" for r in rows)
    headers = (
        ["run", "at s", "agent steps", "last 20 games"] + (["2016 running reward/window"] if pg else []) + ["games"]
    )
    for h in headers:
        table.add_column(h, justify="right")

    def fmt(x, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        at = f"{r['at_s']:g}" + (f" (ended at {r['ended_s']:.0f})" if r["after_end"] else "")
        cells = [r["run"], at, fmt(r["step"], ","), fmt(r["charts/return_last20"], "+.2f")]
        if pg:
            cells.append(fmt(r["charts/window_reward_ema"], "+.2f") if r["algo"] == "pg" else "-")
        table.add_row(*cells, fmt(r["charts/episodes"], ","))
    Console().print(table)
    late = sorted({(r["run"], r["ended_s"]) for r in rows if r["after_end"] and r["step"] is not None})
    for run, ended in late:
        print(f"note: {run} ended at {ended:.0f} s; rows after that show its final state")

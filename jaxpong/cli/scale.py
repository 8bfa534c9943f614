"""`jaxpong report` and `jaxpong simulate`: late senders in a run, and what a setup would cost at scale;
their arguments and checks (the report is jaxpong/report/, the model jaxpong/scale/)."""

from __future__ import annotations

import sys

from jaxpong.base.errors import ConfigError
from jaxpong.cli.parsing import HelpFormatter


def add_scale_commands(sub) -> None:
    fmt = HelpFormatter
    p = sub.add_parser(
        "report",
        help="late senders: a picture of a run's rounds per rank, a Perfetto trace, a table, a finding",
        description="Read RUN_DIR/ranks.jsonl and write RUN_DIR/imbalance.png, RUN_DIR/trace.json "
        "(each rank's collect, wait and update per round as Chrome trace events, one track per rank: "
        "open it in https://ui.perfetto.dev) and RUN_DIR/imbalance.txt (the table of every rank); "
        "print the table (above 32 ranks, the 10 ranks most often last) and a plain-language finding "
        "that names the persistent late senders and the slow collectors; the last line of standard "
        "output is one JSON object. "
        "The picture, up to 32 ranks: one row per rank against wall-clock time, above per-rank wait "
        "and masked fractions; above 32 ranks: rank x round heatmaps of the wait and masked fractions "
        "beside each rank's share of rounds it arrived last (neighbouring ranks or rounds share a "
        "cell where there are more than pixels, as the figure says). `train` writes this report "
        "itself at the end of a multi-rank run.",
        formatter_class=fmt,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `jaxpong train`")
    p.add_argument(
        "--rounds",
        metavar="N",
        type=int,
        default=20,
        help="rounds drawn in the timeline picture: the last N (0 = all); the numbers always use every "
        "round after the first",
    )
    p.add_argument(
        "--picture",
        choices=("auto", "timeline", "heatmap"),
        default="auto",
        help="auto: the per-rank timeline up to 32 ranks, the rank x round heatmaps above",
    )
    p.add_argument(
        "--trace-rounds",
        metavar="N",
        type=int,
        default=None,
        help="rounds written to RUN_DIR/trace.json: the last N, 0 = all (the first round included). "
        "Default: every round up to 2,000,000 events (3 per rank and round, about 100 bytes each: "
        "434 rounds at 1,536 ranks), else the last rounds that fit",
    )
    p.add_argument("--out", metavar="FILE", default=None, help="image file (default RUN_DIR/imbalance.png)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "simulate",
        help="scale: Monte Carlo of update rounds on many ranks in each sync mode",
        description="A Monte Carlo model of update rounds across many ranks, driven by measured "
        "distributions (shipped defaults, or --from RUN_DIR): parallel efficiency, masked fraction "
        "and samples/s per mode and rank count, as a table and a PNG; the last line of standard "
        "output is one JSON object. The model is described in jaxpong/scale/simulate.py.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--ranks",
        default="1,2,4,...,1024,1536,10000",
        help="rank counts; '...' continues the ratio of the two values before it",
    )
    p.add_argument(
        "--modes",
        default="game,steps,window,deadline",
        help="game (sync per full game), steps (--deadline-s 0), window (fixed seconds, no masking), "
        "deadline (--deadline-s auto, with masking)",
    )
    p.add_argument(
        "--from",
        dest="from_dir",
        metavar="RUN_DIR",
        default=None,
        help="drive the model with this run's own distributions (step times, gaps, update time, "
        "game lengths, setup) instead of the shipped defaults",
    )
    p.add_argument("--rounds", metavar="N", type=int, default=300, help="simulated rounds per mode and rank count")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (validation: also the runs' seed)")
    p.add_argument(
        "--window-s",
        metavar="SECONDS",
        type=float,
        default=None,
        help="window mode's seconds (default: the setup's; --validate: 0.15)",
    )
    p.add_argument(
        "--slow-rank",
        metavar="R",
        type=int,
        default=-1,
        help="multiply this simulated rank's step times by --slow-factor (-1 = none)",
    )
    p.add_argument(
        "--slow-factor",
        metavar="F",
        type=float,
        default=1.0,
        help="how many times slower --slow-rank steps (--validate: the runs' factor, default 2)",
    )
    p.add_argument(
        "--masking",
        choices=["unscored", "none"],
        default=None,
        help="override the setup's masking: unscored = pg --pg-unscored mask (steps after an env's last "
        "point in a round get no weight), none = ppo or pg --pg-unscored zero",
    )
    p.add_argument(
        "--timing-spread",
        metavar="F",
        type=float,
        default=1.0,
        help="scale how far the measured timings (step, update, gap) lie from their medians: 1 = as "
        "measured, 0 = constant; a what-if for a quieter (or noisier) machine than the measured one",
    )
    p.add_argument(
        "--latency-us", metavar="US", type=float, default=None, help="override the collectives' latency alpha"
    )
    p.add_argument(
        "--bandwidth-gbs",
        metavar="GB_S",
        type=float,
        default=None,
        help="override the collectives' bandwidth beta (GB/s)",
    )
    p.add_argument(
        "--measured",
        metavar="FILE",
        default=None,
        help="a distributions JSON file (default: the shipped jaxpong/data/simulate_defaults.json)",
    )
    p.add_argument("--collectives", metavar="FILE", default=None, help="collective costs measured by --calibrate")
    p.add_argument(
        "--save-measured",
        metavar="FILE",
        default=None,
        help="write the distributions used (e.g. those of --from RUN_DIR) as a JSON file",
    )
    p.add_argument("--note", default=None, help="with --save-measured: how the distributions were measured")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="folder for simulate.png/.txt/.json (default: the --from run, else runs/simulate); "
        "--validate: where its runs go (default: a temporary folder)",
    )
    p.add_argument(
        "--calibrate",
        metavar="FILE",
        default=None,
        help="under mpirun -n 2: time allreduce and the host gather, fit the alpha-beta model, write FILE",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="launch real train runs (1, 2 and 4 ranks; with and without a slow rank; deadline 0, auto, "
        "seconds) and compare their wait fractions with the model's predictions",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="--validate: seconds of training per run (start-up adds about 20 s; oversubscribed runs "
        "get twice the time)",
    )
    p.add_argument(
        "--predict",
        metavar="STUDY_DIR",
        default=None,
        help="with --from RUN_DIR (a run of the studied config): predicted wall-clock to a mean of 0, +18 and +20 "
        "per rank count, from the batch study in STUDY_DIR (python -m jaxpong.batchstudy) and the simulated steps/s",
    )
    p.add_argument(
        "--b-crit",
        type=float,
        default=None,
        help="--predict: the critical batch in samples (default: the --from run's charts/noise_scale)",
    )
    p.add_argument(
        "--startup-s",
        type=float,
        default=None,
        help="--predict: seconds from process start to the first update (default: the --from run's)",
    )
    p.add_argument("--num-envs", metavar="N", type=int, default=4, help="--validate: envs per rank in the runs")
    p.add_argument("--config", metavar="FILE", default=None, help="--validate: a YAML config under the runs' flags")
    p.set_defaults(func=cmd_simulate)


def cmd_report(args) -> int:
    from jaxpong.report import make as report

    return report.run_cli(args)


def cmd_simulate(args) -> int:
    if args.rounds < 1:
        raise ConfigError(f"--rounds: {args.rounds} must be >= 1")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds: {args.seconds} must be positive")
    if args.calibrate:
        from jaxpong.scale.simulate_calibrate import calibrate

        return calibrate(args.calibrate)
    if args.predict:
        from jaxpong.scale import predict

        if not args.from_dir:
            raise ConfigError(
                "--predict needs --from RUN_DIR: a run of the studied config (its timings and noise scale)"
            )
        return predict.run(
            args.predict,
            args.from_dir,
            args.ranks,
            b_crit=args.b_crit,
            startup_s=args.startup_s,
            rounds=min(args.rounds, 200),
            seed=args.seed,
            collectives_file=args.collectives,
            out=args.out,
        )
    if args.validate:
        from jaxpong.scale import simulate_validate

        return simulate_validate.run(
            seconds=args.seconds,
            out_dir=args.out,
            rounds=max(args.rounds, 1000),
            window_s=args.window_s or 0.15,
            slow_factor=args.slow_factor if args.slow_factor > 1 else 2.0,
            num_envs=args.num_envs,
            config=args.config,
            seed=args.seed,
        )
    from jaxpong.scale import simulate_results

    return simulate_results.run(
        args.ranks,
        args.modes,
        from_dir=args.from_dir,
        rounds=args.rounds,
        seed=args.seed,
        window_s=args.window_s,
        slow_rank=args.slow_rank,
        slow_factor=args.slow_factor,
        masking=args.masking,
        timing_spread=args.timing_spread,
        latency_us=args.latency_us,
        bandwidth_gbs=args.bandwidth_gbs,
        measured_file=args.measured,
        collectives_file=args.collectives,
        save_measured=args.save_measured,
        saved_by=_command_line(without="--note"),
        note=args.note,
        out=args.out,
    )


def _command_line(without: str) -> str:
    """This process's command as `python -m jaxpong ...`, leaving out the option `without` and its value."""
    argv = sys.argv[1:]
    if without in argv:
        i = argv.index(without)
        argv = argv[:i] + argv[i + 2 :]
    return "python -m jaxpong " + " ".join(argv)

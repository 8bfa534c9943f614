"""`jaxpong bench`: its arguments and their checks; the benchmarks are in jaxpong/bench/."""

from __future__ import annotations

import os

from jaxpong.base import config as config_lib
from jaxpong.base.errors import ConfigError
from jaxpong.cli.parsing import config_parser, overrides
from jaxpong.ranks import placement


def add_bench(sub) -> None:
    p = config_parser(sub, "bench", "throughput: raw envpool steps/s against the trainer's steps/s")
    p.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="seconds of timed running for each measurement (throughput: the trainer's, per repeat; it is "
        "stopped every 2 s for a 1-s slice of raw envpool, which comes on top)",
    )
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where the trainer runs are written (throughput: DIR/repeat_K; "
        "--learn: DIR/seed_N; --ranks: DIR/sync and DIR/deadline; default: a temporary folder)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        metavar="R",
        help="throughput only: R fresh trainer processes, each interleaved with raw envpool; reports the "
        "repeat with the median ratio",
    )
    p.add_argument(
        "--learn",
        action="store_true",
        help="learning speed: train from scratch for --time-limit-s per seed, report milestones and a greedy check",
    )
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="with --learn: seeds run one after another")
    p.add_argument(
        "--greedy-games",
        type=int,
        default=10,
        metavar="G",
        help="with --learn: greedy games each trained policy plays at the end (0: none)",
    )
    p.add_argument(
        "--ranks",
        default=None,
        metavar="N|auto",
        help="throughput: weak scaling of N ranks (each bound to cores / N) against one rank on its share, "
        "and their speed-up over one rank on all the cores, with raw envpool as the ceiling; --learn: each "
        "seed trains on N ranks, or with a list (e.g. 1,2) at each count in turn, seed by seed, with the "
        "times to each milestone compared to the first count's",
    )
    p.add_argument(
        "--per-core",
        action="store_true",
        help="one core per rank (--ranks N, default 1): the trainer's ranks bound to cores 0..N-1 (one "
        "envpool and one XLA thread each) against raw envpool with the config's games on each of "
        "those cores, interleaved as the throughput bench; with configs/seed_ppg.yaml, the 2016 "
        "setup of one game per core (make bench-2016-speed)",
    )
    p.add_argument(
        "--startup",
        action="store_true",
        help="start-up: seconds from launch to the first update for each of --ranks (a list, e.g. 1,4,16; "
        "oversubscribed past the cores), cold and warm compilation cache, with one rank per host compiling "
        "first and with every rank compiling",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from jaxpong.cli import commands

    cfg = config_lib.build(args.config, overrides(args))
    if args.greedy_games < 0:
        raise ConfigError(f"--greedy-games: {args.greedy_games} must be 0 or more")
    if args.startup:
        from jaxpong.bench import scaling

        counts = [
            placement.plan_ranks(r, len(os.sched_getaffinity(0)), oversubscribe=True).ranks
            for r in (args.ranks or "1").split(",")
        ]
        return scaling.startup(cfg, counts, run_dir=args.run_dir)
    if args.learn and args.ranks and "," in args.ranks:
        if args.seeds < 1:
            raise ConfigError(f"--seeds: {args.seeds} must be at least 1")
        counts = list(
            dict.fromkeys(  # in the order given, each once
                placement.plan_ranks(r, len(os.sched_getaffinity(0)), oversubscribe=False).ranks
                for r in args.ranks.split(",")
            )
        )
        from jaxpong.bench.learning import compare_ranks

        return compare_ranks(cfg, counts, seeds=args.seeds, run_dir=args.run_dir, greedy_games=args.greedy_games)
    ranks = (
        placement.plan_ranks(args.ranks, len(os.sched_getaffinity(0)), oversubscribe=args.per_core).ranks
        if args.ranks is not None
        else 1
    )
    if args.seconds <= 0:
        raise ConfigError(f"--seconds: {args.seconds} must be positive")
    if args.repeats < 1:
        raise ConfigError(f"--repeats: {args.repeats} must be at least 1")
    if args.learn and args.seeds < 1:
        raise ConfigError(f"--seeds: {args.seeds} must be at least 1")
    return commands.bench(
        cfg,
        seconds=args.seconds,
        run_dir=args.run_dir,
        repeats=args.repeats,
        learn=args.learn,
        seeds=args.seeds,
        ranks=ranks,
        per_core=args.per_core,
        greedy_games=args.greedy_games,
    )

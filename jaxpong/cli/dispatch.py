"""The command line: `python -m jaxpong COMMAND ...` (also the `jaxpong` console script): parsing the
arguments, checking them, and handing typed values to the command's body (jaxpong/launch.py for
`train`, jaxpong/commands.py for bench, eval, video, plot and export, jaxpong/report.py and the
jaxpong/simulate_*.py modules for report and simulate).

Bad input of any kind ends with one line on stderr and exit status 2, never a traceback. Heavy
imports (jax, envpool, MPI) happen inside the commands, after the arguments are checked.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys

import jaxpong
from jaxpong.base import config as config_lib
from jaxpong.base.errors import ConfigError
from jaxpong.ranks import placement
from jaxpong.store.rundir import WriteFailed
from jaxpong.train.stop import EXIT_IO_ERROR, EXIT_PREEMPTED, EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    commands: dict[str, _Parser]  # the top-level parser's: command name -> subparser (set in build_parser)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a typo such as --num-env must not silently mean --num-envs
        super().__init__(*args, **kwargs)

    def error(self, message):
        # argparse's "invalid choice" (a misspelt command or choice value): add the nearest choice.
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = [c.strip(" '") for c in bad.group(2).split(",")]
            message += _did_you_mean(bad.group(1), choices)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def unknown_options(self, extra: list[str]):
        """Options this command does not have: name them, with the nearest option for the first."""
        options = [o for a in self._actions for o in a.option_strings if a.help != argparse.SUPPRESS]
        first = next((x for x in extra if x.startswith("-")), None)
        hint = _did_you_mean(first.split("=", 1)[0], options) if first else ""
        if not hint and first:
            hint = f"; see {self.prog} --help"
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" once: not where the help already says its default, nor for an unset value."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


def _config_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults < this file < flags)")
    group = p.add_argument_group("config fields (each also settable in the YAML file under its section)")
    config_lib.add_config_flags(group)
    return p


def build_parser() -> _Parser:
    parser = _Parser(prog="jaxpong", description="Learn Atari Pong from pixels with JAX, envpool and MPI.")
    parser.add_argument("--version", action="version", version=f"jaxpong {jaxpong.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.commands = sub.choices  # name -> subparser, to report unknown options in the command's own words

    p = _config_parser(sub, "train", "train a policy (under mpirun/srun: one model trained by all ranks)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<env>__<algo>__<seed>__<unix time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --run-dir")
    p.add_argument(
        "--resume-fallback",
        action="store_true",
        help="with --resume: if the latest checkpoint is unusable, resume from the newest good one",
    )
    _add_launch_flags(p)
    p.set_defaults(func=cmd_train)

    p = _config_parser(sub, "bench", "throughput: raw envpool steps/s against the trainer's steps/s")
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
        help="with --learn --ranks A,B: greedy games each trained policy plays at the end (0: none)",
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
    _add_watch_commands(sub)
    _add_scale_commands(sub)
    return parser


def _add_launch_flags(p) -> None:
    p.add_argument(
        "--ranks",
        default=None,
        metavar="N|auto",
        help="start N ranks on this host with mpirun, each bound to its share of the cores (auto: one per "
        f"{placement.AUTO_CORES_PER_RANK} cores); under mpirun or srun already, N must match their count",
    )
    p.add_argument(
        "--mpirun",
        metavar="PATH",
        default=None,
        help="the MPI launcher --ranks uses (default: the mpich wheel's, else mpirun on PATH)",
    )
    p.add_argument(
        "--oversubscribe",
        action="store_true",
        help="with --ranks: allow more ranks than cores (they share cores: slower, for tests)",
    )


def launch_ranks(args, command: str, cfg=None) -> None:
    """`--ranks N` outside a launcher: replace this process with mpirun starting N ranks of the same command
    (returns when there is nothing to launch). Ctrl-C and SIGTERM then reach mpirun, which passes them on."""
    if args.ranks is None:
        return
    cores = len(os.sched_getaffinity(0))
    if placement.under_launcher():
        size = placement.launcher_size()
        if args.ranks != "auto" and size is not None and str(size) != str(args.ranks):
            raise ConfigError(
                f"--ranks {args.ranks}, but the launcher started {size} rank(s); leave --ranks out "
                "under mpirun or srun, or give their count"
            )
        return
    plan = placement.plan_ranks(args.ranks, cores, args.oversubscribe)
    if plan.ranks == 1 and not args.mpirun:
        return  # one rank needs no launcher
    if cfg is not None:  # a config the ranks cannot share fails here, once, not on N ranks
        from jaxpong.learn import batch_rule

        batch_rule.apply(cfg, plan.ranks)
    mpirun = placement.find_mpirun(args.mpirun)
    argv = placement.strip_launch_flags(args.argv)
    cmd = placement.mpirun_command(mpirun, placement.mpi_flavour(mpirun), plan, argv, args.oversubscribe)
    print(
        f"jaxpong {command}: {cores} cores: starting {plan.ranks} ranks x {plan.cores_per_rank} core(s): "
        + " ".join(cmd),
        file=sys.stderr,
        flush=True,
    )
    from jaxpong.base.clock import PROCESS_START

    os.environ["JAXPONG_LAUNCH_START"] = repr(PROCESS_START)  # the ranks' clocks start with this command
    os.execv(cmd[0], cmd)


def _overrides(args) -> dict:
    return config_lib.flags_to_overrides(args)


def cmd_train(args) -> int:
    from jaxpong import api
    from jaxpong.base.clock import PROCESS_START
    from jaxpong.train import launch

    cfg = launch.train_config(args.config, _overrides(args), run_dir=args.run_dir, resume=args.resume)
    launch_ranks(args, "train", cfg)  # after the config is checked: a bad flag fails here, once, not on N ranks
    result = api.train(  # the Python API's jaxpong.train
        cfg,
        run_dir=args.resume or args.run_dir,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        resume_fallback=args.resume_fallback,
        clock_start=PROCESS_START,  # on the command line the time limit counts start-up and compiles too
    )
    return result.exit_status


def cmd_bench(args) -> int:
    from jaxpong.cli import commands

    cfg = config_lib.build(args.config, _overrides(args))
    if args.startup:
        from jaxpong.bench import throughput as bench_lib

        counts = [
            placement.plan_ranks(r, len(os.sched_getaffinity(0)), oversubscribe=True).ranks
            for r in (args.ranks or "1").split(",")
        ]
        return bench_lib.startup(cfg, counts, run_dir=args.run_dir)
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

        if args.greedy_games < 0:
            raise ConfigError(f"--greedy-games: {args.greedy_games} must be 0 or more")
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
    )


# -- eval, video, plot, export: watching, measuring and sharing a trained policy ------------------------

_SOURCE_HELP = "a run directory written by `jaxpong train`, or a policy file written by `jaxpong export`"
_CHECKPOINT_HELP = (
    "which checkpoint of a run directory: an agent step (see RUN_DIR/checkpoints/), latest, or best "
    "(the best greedy evaluation during training, kept with --eval-every N)"
)
_SEED_HELP = (
    "seed of the games (default: the run's seed); eval and video games never repeat training games, "
    "as the env seeds fold in what they are for"
)


def _add_watch_commands(sub) -> None:
    fmt = _HelpFormatter
    p = sub.add_parser(
        "eval",
        help="play full games (first to 21) with a saved policy and report their scores",
        description="Play full games (first to 21) with a saved policy on fresh envpool envs and print "
        "each game's score, then mean, standard deviation, min and max; the last line of standard "
        "output is one JSON object.",
        formatter_class=fmt,
    )
    p.add_argument("source", metavar="RUN_DIR", help=_SOURCE_HELP)
    p.add_argument("--checkpoint", metavar="STEP", default="latest", help=_CHECKPOINT_HELP)
    p.add_argument("--episodes", metavar="N", type=int, default=10, help="full games to play")
    p.add_argument("--greedy", action="store_true", help="take the most probable action instead of sampling")
    p.add_argument("--seed", type=int, default=None, help=_SEED_HELP)
    p.add_argument(
        "--num-envs",
        metavar="N",
        type=int,
        default=None,
        help="games played at once (default min(episodes, 8)); which games are played depends on it",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "video",
        help="record a game played by a saved policy (MP4, or GIF)",
        description="Record a game played by a saved policy: one colour frame (210x160, the "
        "Atari's own resolution, score at the top) per agent step, plus the opening screen.",
        formatter_class=fmt,
    )
    p.add_argument("source", metavar="RUN_DIR", help=_SOURCE_HELP)
    p.add_argument("--checkpoint", metavar="STEP", default="latest", help=_CHECKPOINT_HELP)
    p.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="video file, .mp4 or .gif (default RUN_DIR/videos/step_<STEP>.mp4, or FILE.mp4 beside an "
        "exported policy FILE)",
    )
    p.add_argument(
        "--max-steps",
        metavar="N",
        type=int,
        default=None,
        help="stop after N agent steps (default: the end of the game)",
    )
    p.add_argument("--greedy", action="store_true", help="take the most probable action instead of sampling")
    p.add_argument("--seed", type=int, default=None, help=_SEED_HELP)
    p.add_argument(
        "--fps",
        type=int,
        default=15,
        help="frames per second (15 = the console's real speed; a GIF "
        "keeps frame times in 1/100 s, so it alternates 70 and 60 ms frames for 15 fps; at most 50)",
    )
    p.set_defaults(func=cmd_video)

    p = sub.add_parser(
        "plot",
        help="learning curves of one or several runs on one image",
        description="Learning curves (full-game return against agent steps and against wall-clock "
        "minutes; steps/s) of one or several runs on one image, labelled by run name.",
        formatter_class=fmt,
    )
    p.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories written by `jaxpong train`")
    p.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="image file (default RUN_DIR/learning_curve.png for one run, learning_curves.png here for several)",
    )
    p.add_argument("--title", default=None, help="figure title (default: the run names)")
    p.add_argument(
        "--at",
        metavar="SECONDS",
        default=None,
        help="also print each run's state at these wall-clock seconds since its process started "
        "(comma-separated, e.g. 300,900): steps, mean of the last 20 full games, and for pg runs the "
        "2016 running reward per window; past a run's end, its final state, marked so; the last stdout "
        "line is JSON",
    )
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "export",
        help="write a policy as one self-describing file for eval and video",
        description="Write a policy as one file: its parameters plus the model, preprocessing and "
        "game config (msgpack, no pickle). `eval` and `video` accept it in place of a run directory.",
        formatter_class=fmt,
    )
    p.add_argument("source", metavar="RUN_DIR", help=_SOURCE_HELP)
    p.add_argument("--checkpoint", metavar="STEP", default="latest", help=_CHECKPOINT_HELP)
    p.add_argument(
        "--out", metavar="FILE", required=True, help="the file to write (required; any name, e.g. pong.msgpack)"
    )
    p.set_defaults(func=cmd_export)


def _positive(name: str, value, allow_none: bool = True) -> None:
    from jaxpong.watch.policy import check_count  # the Python API's check, in the same words

    if value is None and allow_none:
        return
    check_count(name.lstrip("-").replace("-", "_"), value)


def _check_seed(seed) -> None:
    from jaxpong.watch.policy import check_seed

    if seed is not None:
        check_seed(seed)


def cmd_eval(args) -> int:
    from jaxpong.cli import commands

    _positive("--episodes", args.episodes, allow_none=False)
    _positive("--num-envs", args.num_envs)
    _check_seed(args.seed)
    return commands.evaluate(
        args.source, args.checkpoint, episodes=args.episodes, greedy=args.greedy, seed=args.seed, num_envs=args.num_envs
    )


def cmd_video(args) -> int:
    from jaxpong.cli import commands

    _positive("--max-steps", args.max_steps)
    _positive("--fps", args.fps, allow_none=False)
    _check_seed(args.seed)
    return commands.video(
        args.source,
        args.checkpoint,
        out=args.out,
        max_steps=args.max_steps,
        greedy=args.greedy,
        seed=args.seed,
        fps=args.fps,
    )


def cmd_plot(args) -> int:
    from jaxpong.cli import commands

    at = None
    if args.at:
        try:
            at = [float(x) for x in args.at.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--at {args.at!r}: give seconds separated by commas, e.g. --at 300,900") from None
    return commands.plot(args.runs, args.out, title=args.title, at=at)


def cmd_export(args) -> int:
    from jaxpong.cli import commands

    return commands.export(args.source, args.out, args.checkpoint)


# -- report, simulate: late senders in a run, and what a setup would cost at scale ---------------------


def _add_scale_commands(sub) -> None:
    fmt = _HelpFormatter
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
        "output is one JSON object. The model is described in jaxpong/simulate.py.",
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
    from jaxpong.report import stats as report

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


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --ranks starts again on every rank
    if extra:
        command = getattr(args, "command", None)
        (parser.commands[command] if command else parser).unknown_options(extra)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code = int(args.func(args) or 0)
        if code == EXIT_PREEMPTED and os.environ.get("JAXPONG_UNDER_MAKE"):
            # Under `make train` a graceful stop is not a failure: make would print "Error 75".
            print(
                f"jaxpong {args.command}: stopped cleanly (status 0 under make train; {EXIT_PREEMPTED} otherwise)",
                file=sys.stderr,
                flush=True,
            )
            return 0
        return code
    except ConfigError as err:
        print(f"jaxpong {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except WriteFailed as err:  # before training starts (later ones end the run through the trainer)
        print(f"jaxpong {args.command}: error: {err}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        print(f"jaxpong {args.command}: interrupted", file=sys.stderr)
        return 130

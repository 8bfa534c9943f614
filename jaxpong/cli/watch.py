"""`jaxpong eval`, `video`, `plot` and `export`: watching, measuring and sharing a trained policy; their
arguments and checks (the bodies are in jaxpong/cli/commands.py)."""

from __future__ import annotations

from jaxpong.base.errors import ConfigError
from jaxpong.cli.parsing import HelpFormatter

_SOURCE_HELP = "a run directory written by `jaxpong train`, or a policy file written by `jaxpong export`"
_CHECKPOINT_HELP = (
    "which checkpoint of a run directory: an agent step (see RUN_DIR/checkpoints/), latest, or best "
    "(the best greedy evaluation during training, kept with --eval-every N)"
)
_SEED_HELP = (
    "seed of the games (default: the run's seed); eval and video games never repeat training games, "
    "as the env seeds fold in what they are for"
)


def add_watch_commands(sub) -> None:
    fmt = HelpFormatter
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

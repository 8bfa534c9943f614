"""The command line: `python -m jaxpong COMMAND ...` (also the `jaxpong` console script): the parser of
every command, and the dispatch to the command's function, whose errors become one line and an exit status.

Each command's arguments and checks live beside it (jaxpong/cli/train.py, bench.py, watch.py for eval,
video, plot and export, scale.py for report and simulate); they hand typed values to the command's body
(jaxpong/api.py for `train`, jaxpong/cli/commands.py for bench, eval, video, plot and export,
jaxpong/report/ and jaxpong/scale/ for report and simulate).

Bad input of any kind ends with one line on stderr and exit status 2, never a traceback. Heavy
imports (jax, envpool, MPI) happen inside the commands, after the arguments are checked.
"""

from __future__ import annotations

import os
import sys

import jaxpong
from jaxpong.base.errors import ConfigError
from jaxpong.cli.bench import add_bench
from jaxpong.cli.parsing import Parser
from jaxpong.cli.scale import add_scale_commands
from jaxpong.cli.train import add_train
from jaxpong.cli.watch import add_watch_commands
from jaxpong.store.rundir import WriteFailed
from jaxpong.training.stop import EXIT_IO_ERROR, EXIT_PREEMPTED, EXIT_USAGE


def build_parser() -> Parser:
    parser = Parser(prog="jaxpong", description="Learn Atari Pong from pixels with JAX, envpool and MPI.")
    parser.add_argument("--version", action="version", version=f"jaxpong {jaxpong.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parser.commands = sub.choices  # name -> subparser, to report unknown options in the command's own words

    add_train(sub)
    add_bench(sub)
    add_watch_commands(sub)
    add_scale_commands(sub)
    return parser


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

"""`jaxpong train`: its arguments (the config's fields as flags, the run directory, resume, --ranks) and
their checks; the run itself is the Python API's `jaxpong.train` (jaxpong/api.py, jaxpong/training/launch.py)."""

from __future__ import annotations

import os
import sys

from jaxpong.base.errors import ConfigError
from jaxpong.cli.parsing import config_parser, overrides
from jaxpong.ranks import placement


def add_train(sub) -> None:
    p = config_parser(sub, "train", "train a policy (under mpirun/srun: one model trained by all ranks)")
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


def cmd_train(args) -> int:
    from jaxpong import api
    from jaxpong.base.clock import PROCESS_START
    from jaxpong.training import launch

    cfg = launch.train_config(args.config, overrides(args), run_dir=args.run_dir, resume=args.resume)
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

"""The command line: `python -m jaxpong COMMAND ...` (also the `jaxpong` console script).

Bad input of any kind ends with one line on stderr and exit status 2, never a traceback. Heavy
imports (jax, envpool, MPI) happen inside the commands, after the arguments are checked.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jaxpong import config as config_lib
from jaxpong.config import ConfigError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def setup_jax(xla_threads: int = 0) -> None:
    """Process-wide JAX settings; call before jax is first imported."""
    if xla_threads:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + f" --xla_cpu_multi_thread_eigen={'true' if xla_threads > 1 else 'false'}"
                                   f" intra_op_parallelism_threads={xla_threads}").strip()
    import jax

    cache = os.environ.get("JAXPONG_COMPILE_CACHE", str(Path.home() / ".cache" / "jaxpong" / "xla"))
    if cache and cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _config_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults < this file < flags)")
    group = p.add_argument_group("config fields (each also settable in the YAML file under its section)")
    config_lib.add_config_flags(group)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxpong", description="Learn Atari Pong from pixels with JAX, envpool and MPI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _config_parser(sub, "train", "train a policy (under mpirun/srun: one model trained by all ranks)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<env>__<algo>__<seed>__<unix time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --run-dir")
    p.set_defaults(func=cmd_train)

    p = _config_parser(sub, "bench", "throughput: raw envpool steps/s against the trainer's steps/s")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of timed running for each measurement")
    p.add_argument("--run-dir", metavar="DIR", help="where the trainer measurement writes its run (default: a temporary folder)")
    p.add_argument("--ranks", type=int, default=1, metavar="N",
                   help="launch N ranks with mpirun and compare sync (--deadline-s 0) with auto deadline masking")
    p.set_defaults(func=cmd_bench)
    return parser


def _overrides(args) -> dict:
    return config_lib.flags_to_overrides(args)


def cmd_train(args) -> int:
    from jaxpong import rundir

    if args.resume and args.run_dir and Path(args.run_dir) != Path(args.resume):
        raise ConfigError("--run-dir and --resume name different folders; --resume RUN_DIR continues RUN_DIR in place")
    base = rundir.read_config(Path(args.resume)) if args.resume else None
    cfg = config_lib.build(args.config, _overrides(args), base=base)
    setup_jax(cfg.run.xla_threads)
    from jaxpong.comm import make_comm

    comm = make_comm()
    return run_training(cfg, comm, run_dir=args.resume or args.run_dir, resume=bool(args.resume),
                        overwrite=args.overwrite)


def run_training(cfg, comm, run_dir, resume: bool, overwrite: bool = False) -> int:
    """Shared by `train` and the benchmarks: check the run directory on rank 0, then train on every rank."""
    from jaxpong import rundir
    from jaxpong.logger import log_line

    decision = None
    if comm.rank == 0:
        try:
            path = Path(run_dir) if run_dir else rundir.default_run_dir(cfg)
            resume_step = None
            if resume:
                resume_step = latest_checkpoint_step(path)
                rundir.check_writable(path)
            else:
                rundir.prepare_new(path, overwrite)
            decision = {"run_dir": str(path), "resume_step": resume_step}
        except ConfigError as err:
            decision = {"error": str(err)}
    decision = comm.bcast(decision)
    if "error" in decision:
        raise ConfigError(decision["error"])
    path = Path(decision["run_dir"])

    from jaxpong.train import Trainer

    trainer = Trainer(cfg, comm, path, resume_step=decision["resume_step"])
    if comm.rank == 0:
        rundir.write_config(path, cfg, comm.size, {"resume_count": trainer.counters.resume_count})
        log_line(f"run directory {path}  |  {comm.size} rank(s), MPI: {comm.library}  |  algo {cfg.algo.algo}, "
                 f"{cfg.model.network} on {cfg.model.obs_mode}, {cfg.env.num_envs} envs "
                 f"({'async' if cfg.is_async else 'sync'}), preset {cfg.preset_name}")
        if resume:
            log_line(f"resumed from checkpoint at step {decision['resume_step']:,} (update {trainer.counters.update})")
    # After a resume --time-limit-s counts only this process; --total-steps counts the whole run.
    return trainer.run()


def latest_checkpoint_step(run_dir: Path) -> int:
    from jaxpong.checkpoint import Checkpoints

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {str(run_dir)!r} is not a jaxpong run directory (no config.yaml)")
    ckpt_dir = run_dir / "checkpoints"
    steps = Checkpoints(ckpt_dir, read_only=True).steps() if ckpt_dir.is_dir() else []
    if not steps:
        raise ConfigError(f"--resume {str(run_dir)!r} has no checkpoint to resume from (no {ckpt_dir}/<step>/)")
    return steps[-1]


def cmd_bench(args) -> int:
    from jaxpong import bench

    cfg = config_lib.build(args.config, _overrides(args))
    if args.ranks < 1:
        raise ConfigError(f"--ranks: {args.ranks} must be at least 1")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds: {args.seconds} must be positive")
    if args.ranks > 1:
        return bench.ranks_benchmark(cfg, args.ranks, seconds=args.seconds, run_dir=args.run_dir)
    setup_jax(cfg.run.xla_threads)
    return bench.throughput(cfg, seconds=args.seconds, run_dir=args.run_dir)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"jaxpong {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"jaxpong {args.command}: interrupted", file=sys.stderr)
        return 130

"""Where ranks run: how many on this host, which cores each one sizes its threads for, which JAX
platform, and the `mpirun` command line that `--ranks N` starts.

Everything here is decided before JAX is imported (XLA reads its thread flags and platform once), from
the launcher's environment and `os.sched_getaffinity`, so it holds the same under `jaxpong train
--ranks N`, the user's own `mpirun`, or `srun`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jaxpong.base.errors import ConfigError

# Cores per rank of --ranks auto. One rank is one Python thread feeding envpool and XLA: on 16 cores it
# drove under half of what envpool's raw stepping reaches there, so a host needs several; two cores
# per rank gives each rank's envpool half of its games to step on one core while its policy acts on the
# other half. Measured so far only on 2 cores (`bench --ranks 2`: weak-scaling efficiency 1.015 with one
# core per rank, but 2 ranks there learned more slowly than 1 before the batch rule); not yet on 16.
AUTO_CORES_PER_RANK = 2

# Set by launchers for every rank they start: world size first, then the variables that only say
# "under a launcher" (PMIx and Slurm's srun steps carry no portable size variable we trust alone).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE")


def under_launcher(environ: Mapping[str, str] = os.environ) -> bool:
    """True in a process that mpirun, mpiexec or srun started (even a job of one rank)."""
    if any(v in environ for v in _RANK_VARS):
        return True
    return "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ


def launcher_size(environ: Mapping[str, str] = os.environ) -> int | None:
    for var in _SIZE_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return None


def launched_size(environ: Mapping[str, str] = os.environ) -> int:
    """How many ranks a launcher started, without touching MPI (1 outside one, e.g. in an sbatch script)."""
    return (launcher_size(environ) or 1) if under_launcher(environ) else 1


def local_ranks(environ: Mapping[str, str] = os.environ) -> int | None:
    """Ranks on this host, where the launcher says (Slurm gives a per-node list: its first entry)."""
    for var in _LOCAL_SIZE_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    return int(per_node) if per_node.isdigit() else None


def rank_cores(affinity: int, host_cores: int, ranks_here: int) -> int:
    """How many cores this rank sizes its threads for.

    Bound by the launcher (it sees fewer cores than the host has): exactly those. Unbound, every rank sees
    the whole host; with several ranks there, each takes an equal share so that together they start one
    thread per core, not one per core each (the OS still moves them around; binding is better, and the
    start line says so)."""
    if affinity < host_cores or ranks_here <= 1:
        return max(1, affinity)
    return max(1, host_cores // ranks_here)


def this_rank_cores() -> int:
    """rank_cores for this process, from its affinity and the launcher's count of ranks on this host."""
    affinity = len(os.sched_getaffinity(0))
    return rank_cores(affinity, os.cpu_count() or affinity, local_ranks() or 1)


@dataclass(frozen=True)
class Plan:
    ranks: int
    cores_per_rank: int
    host_cores: int


def plan_ranks(requested: str, host_cores: int, oversubscribe: bool = False) -> Plan:
    """The job `--ranks REQUESTED` starts on a host with `host_cores` usable cores."""
    if requested == "auto":
        ranks = max(1, host_cores // AUTO_CORES_PER_RANK)
    else:
        try:
            ranks = int(requested)
        except ValueError:
            raise ConfigError(f"--ranks {requested!r}: give a whole number of ranks (e.g. --ranks 4) or auto") from None
        if ranks < 1:
            raise ConfigError(
                f"--ranks {ranks}: a job needs at least 1 rank (or --ranks auto: one per {AUTO_CORES_PER_RANK} cores)"
            )
        if ranks > host_cores and not oversubscribe:
            raise ConfigError(
                f"--ranks {ranks} is more than the {host_cores} cores this host offers; use at most "
                f"{host_cores}, or add --oversubscribe to share cores (slower, for tests)"
            )
    return Plan(ranks, max(1, host_cores // ranks), host_cores)


def find_mpirun(given: str | None = None) -> str:
    """The launcher: --mpirun PATH, else the one installed next to this Python (the mpich wheel), else PATH's."""
    if given:
        path = shutil.which(given)
        if not path:
            raise ConfigError(f"--mpirun {given!r}: no such executable; give the path of your MPI's mpirun or mpiexec")
        return path
    here = Path(sys.executable).parent
    for name in ("mpirun", "mpiexec"):
        if (here / name).exists():
            return str(here / name)
    for name in ("mpirun", "mpiexec"):
        if path := shutil.which(name):
            return path
    raise ConfigError(
        "--ranks: no mpirun found (next to this Python or on PATH); install the mpich extra "
        "(pip install 'jaxpong[mpich]'), or give your MPI's launcher with --mpirun PATH"
    )


def mpi_flavour(mpirun: str) -> str:
    """hydra (MPICH, Intel MPI), openmpi, or unknown: the two spell core binding differently."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=20)
        text = (out.stdout + out.stderr).lower()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "hydra" in text or "mpich" in text or "intel(r) mpi" in text:
        return "hydra"
    if "open mpi" in text or "open-mpi" in text or "openrte" in text:
        return "openmpi"
    return "unknown"


def mpirun_command(
    mpirun: str, flavour: str, plan: Plan, argv: list[str], oversubscribe: bool = False, python: str = sys.executable
) -> list[str]:
    """`mpirun` starting plan.ranks copies of `python -m jaxpong ARGV`, each bound to its own cores."""
    cmd = [mpirun, "-n", str(plan.ranks)]
    if flavour == "hydra":
        cmd += ["-bind-to", f"core:{plan.cores_per_rank}"]
    elif flavour == "openmpi":
        cmd += ["--map-by", f"slot:PE={plan.cores_per_rank}", "--bind-to", "core"]
        if oversubscribe:
            cmd += ["--oversubscribe"]
    return cmd + [python, "-m", "jaxpong", *argv]


def strip_launch_flags(argv: list[str]) -> list[str]:
    """ARGV without --ranks/--mpirun (and their values): the ranks themselves are already launched."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--ranks", "--mpirun"):
            skip = True
            continue
        if arg.startswith(("--ranks=", "--mpirun=")):
            continue
        out.append(arg)
    return out


def gpu_visible() -> bool:
    """A CUDA device and JAX's CUDA plugin are both here (checked without importing JAX)."""
    plugin = any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    return plugin and Path("/dev/nvidia0").exists()


def jax_platform(requested: str, network: str, gpu: bool) -> tuple[str, str]:
    """(platform, why) for run.jax_platform.

    auto: the CPU for the MLP networks, whose per-step work is small and sits next to envpool's (on an
    H200 host one rank's bench gave 12,124 steps/s with JAX on its CPU cores against 7,248 on the GPU);
    the GPU, where there is one, for the CNNs, whose convolutions are what a GPU is for."""
    if requested == "cpu":
        return "cpu", "run.jax_platform cpu"
    if requested == "gpu":
        if not gpu:
            raise ConfigError(
                "run.jax_platform gpu: no CUDA device with JAX's CUDA plugin here; install "
                "jax[cuda12] on a GPU host, or use --jax-platform cpu"
            )
        return "cuda", "run.jax_platform gpu"
    if gpu and network != "mlp":
        return "cuda", f"auto: a GPU is here and the {network} network is convolutional"
    if gpu:
        return "cpu", "auto: the MLP steps faster on the CPU cores (12,124 against 7,248 steps/s on an H200 host)"
    return "cpu", "auto: no GPU here"


def describe(world: int, hosts: int, host_cores: int, cores: int, num_envs: int, bound: bool) -> str:
    """The start line's plan, e.g. `16 cores: 8 ranks x 2 cores, 32 games each, 256 games in all`."""
    where = f"{host_cores} cores" if hosts == 1 else f"{hosts} hosts x {host_cores} cores"
    line = (
        f"{where}: {world} rank{'s' if world != 1 else ''} x {cores} core{'s' if cores != 1 else ''}, "
        f"{num_envs} games each, {num_envs * world} games in all"
    )
    if world > hosts and not bound:
        line += " (ranks not bound to cores: threads sized to an equal share; bind with mpirun -bind-to core:K)"
    return line

"""Rank placement (jaxpong/ranks/placement.py): launcher detection, thread sizing from a given affinity, the
rank plan and its errors, and the mpirun command line (run for real with the mpich wheel's mpirun)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jaxpong.base.errors import ConfigError
from jaxpong.ranks import placement


def test_launcher_environments():
    assert not placement.under_launcher({})
    assert placement.under_launcher({"PMI_RANK": "0", "PMI_SIZE": "4"})  # mpich's hydra
    assert placement.under_launcher({"OMPI_COMM_WORLD_RANK": "3"})  # Open MPI
    assert placement.under_launcher({"SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "8"})  # srun
    assert not placement.under_launcher({"SLURM_PROCID": "0", "SLURM_JOB_ID": "9"})  # an sbatch script, no srun
    assert placement.launcher_size({"PMI_SIZE": "4"}) == 4
    assert placement.launcher_size({"OMPI_COMM_WORLD_SIZE": "16"}) == 16
    assert placement.local_ranks({"MPI_LOCALNRANKS": "8"}) == 8
    assert placement.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "8(x2)"}) == 8
    assert placement.local_ranks({}) is None
    assert placement.launched_size({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "2"}) == 4
    assert placement.launched_size({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "9", "SLURM_PROCID": "0"}) == 1  # sbatch
    assert placement.launched_size({}) == 1


@pytest.mark.parametrize(
    "affinity, host, here, cores",
    [
        (2, 16, 8, 2),  # bound to 2 of 16 cores: exactly those
        (1, 2, 2, 1),  # mpirun -bind-to core on 2 cores
        (16, 16, 1, 16),  # one rank alone on the host: all of it
        (16, 16, 8, 2),  # unbound, 8 ranks: an equal share each, not 16 threads each
        (16, 16, 32, 1),  # oversubscribed and unbound: one each
    ],
)
def test_threads_follow_the_cores_a_rank_is_bound_to(affinity, host, here, cores):
    assert placement.rank_cores(affinity, host, here) == cores


def test_rank_plans():
    assert placement.plan_ranks("auto", 16) == placement.Plan(8, 2, 16)
    assert placement.plan_ranks("auto", 2) == placement.Plan(1, 2, 2)
    assert placement.plan_ranks("auto", 1) == placement.Plan(1, 1, 1)
    assert placement.plan_ranks("4", 16) == placement.Plan(4, 4, 16)
    assert placement.plan_ranks("16", 2, oversubscribe=True) == placement.Plan(16, 1, 2)


@pytest.mark.parametrize(
    "requested, message",
    [
        ("0", "--ranks 0: a job needs at least 1 rank"),
        ("3", "--ranks 3 is more than the 2 cores this host offers; use at most 2, or add --oversubscribe"),
        ("many", "--ranks 'many': give a whole number of ranks"),
    ],
)
def test_bad_rank_counts_say_what_to_do(requested, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        placement.plan_ranks(requested, 2)


def test_mpirun_command_lines():
    plan = placement.Plan(8, 2, 16)
    argv = ["train", "--config", "c.yaml"]
    assert placement.mpirun_command("/x/mpirun", "hydra", plan, argv, python="py") == [
        "/x/mpirun",
        "-n",
        "8",
        "-bind-to",
        "core:2",
        "py",
        "-m",
        "jaxpong",
        "train",
        "--config",
        "c.yaml",
    ]
    assert placement.mpirun_command("mpirun", "openmpi", plan, argv, oversubscribe=True, python="py")[:8] == [
        "mpirun",
        "-n",
        "8",
        "--map-by",
        "slot:PE=2",
        "--bind-to",
        "core",
        "--oversubscribe",
    ]
    assert placement.strip_launch_flags(["train", "--ranks", "8", "--mpirun=/m", "--seed", "2", "--ranks=4"]) == [
        "train",
        "--seed",
        "2",
    ]


def test_missing_mpirun_is_one_line():
    with pytest.raises(ConfigError, match="--mpirun '/no/such/mpirun': no such executable"):
        placement.find_mpirun("/no/such/mpirun")


def test_the_bundled_mpirun_binds_each_rank_to_its_own_cores(tmp_path):
    """The real mpich wheel: 2 ranks x 1 core on this 2-core machine see one core each, and size to it."""
    mpirun = placement.find_mpirun()
    assert placement.mpi_flavour(mpirun) == "hydra"
    cmd = placement.mpirun_command(mpirun, "hydra", placement.Plan(2, 1, 2), [], python=sys.executable)
    # Each rank writes its own file: two ranks printing at once can interleave on hydra's stdout.
    probe = (
        "import os, pathlib; from jaxpong.ranks import placement as p; "
        f"pathlib.Path({str(tmp_path)!r}, os.environ['PMI_RANK']).write_text("
        "f'{len(os.sched_getaffinity(0))} {p.local_ranks()} {p.launcher_size()} {p.under_launcher()}')"
    )
    cmd = cmd[: cmd.index("-m")] + ["-c", probe]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {f.name: f.read_text() for f in tmp_path.iterdir()}
    assert lines == {"0": "1 2 2 True", "1": "1 2 2 True"}


def test_platform_rule():
    assert placement.jax_platform("auto", "mlp", gpu=False)[0] == "cpu"
    assert placement.jax_platform("auto", "mlp", gpu=True)[0] == "cpu"
    assert placement.jax_platform("auto", "nature_cnn", gpu=True)[0] == "cuda"
    assert placement.jax_platform("cpu", "nature_cnn", gpu=True)[0] == "cpu"
    with pytest.raises(ConfigError, match="run.jax_platform gpu: no CUDA device"):
        placement.jax_platform("gpu", "mlp", gpu=False)


def test_the_plan_line():
    assert (
        placement.describe(8, 1, 16, 2, 32, bound=True)
        == "16 cores: 8 ranks x 2 cores, 32 games each, 256 games in all"
    )
    assert (
        placement.describe(1, 1, 2, 2, 32, bound=False) == "2 cores: 1 rank x 2 cores, 32 games each, 32 games in all"
    )
    assert placement.describe(32, 2, 16, 1, 8, bound=False).endswith("bind with mpirun -bind-to core:K)")


def test_train_ranks_2_starts_the_job_itself(tmp_path):
    """`train --ranks 2` with no launcher: mpirun starts 2 ranks bound to a core each, they share the 8
    games (4 each), the plan line says so, and both ranks train (every round of ranks.jsonl has rank 0
    and rank 1, with at most 40 steps x 4 games of samples, where 8 games would give 256)."""
    import json

    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxpong",
            "train",
            "--config",
            "configs/smoke.yaml",
            "--ranks",
            "2",
            "--run-dir",
            str(run),
            "--total-steps",
            "1024",
            "--num-envs",
            "8",
            "--min-rank-games",
            "4",
            "--progress",
            "off",
            "--checkpoint-every",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import os

    cores = len(os.sched_getaffinity(0))
    share = cores // 2
    assert f"starting 2 ranks x {share} core(s): " in proc.stderr and f" -bind-to core:{share} " in proc.stderr
    plural = "core" if share == 1 else "cores"
    assert f"{os.cpu_count()} cores: 2 ranks x {share} {plural}, 4 games each, 8 games in all" in proc.stderr
    assert "share_games: 2 ranks share 8 games, 4 each (8 in all)" in proc.stderr
    rows = [json.loads(line) for line in (run / "ranks.jsonl").read_text().splitlines() if line.strip()]
    by_update: dict = {}
    for r in rows:
        by_update.setdefault(r["update"], set()).add(r["rank"])
    assert by_update and all(ranks == {0, 1} for ranks in by_update.values())
    samples = [r["valid_samples"] + r["masked_samples"] for r in rows]
    assert 0 < max(samples) <= 40 * 4, samples  # 4 games x (32 steps + the deadline buffer's 25 % headroom)

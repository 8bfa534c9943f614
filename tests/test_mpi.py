"""Real MPI: two ranks launched with the environment's mpirun (the mpich wheel), as users launch them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = Path(sys.executable).parent / "mpirun"


def _mpirun(args, timeout=600, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.setdefault("JAXPONG_COMPILE_CACHE", str(Path("/tmp") / "jaxpong-test-cache"))
    return subprocess.run(
        [str(MPIRUN), "-n", "2", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_collectives_maths_across_two_ranks():
    """Masked weighted means (a rank with zero valid samples included), global moments, and
    2 ranks x N envs == 1 rank x 2N envs for both algorithms."""
    proc = _mpirun([sys.executable, str(ROOT / "tests" / "mpi" / "check_collectives.py")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (
        "masked_mean_by_hand",
        "global_moments",
        "pg_two_ranks_equal_one_rank_with_twice_the_data",
        "ppo_two_ranks_equal_one_rank_with_twice_the_data",
    ):
        assert f"OK {name}" in proc.stdout


@pytest.mark.parametrize("path", ["sparse", pytest.param("dense", marks=pytest.mark.slow)])  # sparse: the default
def test_two_ranks_update_like_one_process_on_the_training_path(path):
    """One real round of 32 games (a deadline round: padded rows) learnt by 1 process and by 2 ranks holding
    16 games each, through the trainer's own Round steps (sparse lists, noise-scale sums, the exchange): the
    same agreed facts, parameters, optimizer state and metrics."""
    args = [sys.executable, str(ROOT / "tests" / "mpi" / "check_training_path.py")]
    proc = _mpirun(args + (["--dense"] if path == "dense" else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for name in ("agreed_facts_equal", "parameters_and_optimizer_state_equal", "metrics_equal"):
        assert f"OK {name}" in proc.stdout


def _same_games_run(run_dir: Path, ranks: int) -> tuple[list[dict], list[dict]]:
    """The smoke config (8 sync games, no deadline) on `ranks` ranks sharing its games: (metrics, games)."""
    args = [sys.executable, "-m", "jaxpong", "train", "--config", "configs/smoke.yaml", "--run-dir", str(run_dir)]
    args += ["--min-rank-games", "4", "--deadline-s", "0", "--num-threads", "1", "--tensorboard", "false"]
    args += ["--seed", "5", "--total-steps", "12288"]  # 48 rounds of 256 steps, 1,536 a game: games finish
    if ranks == 1:
        env = dict(os.environ, JAXPONG_COMPILE_CACHE=str(Path("/tmp") / "jaxpong-test-cache"))
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    else:
        proc = _mpirun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if ranks > 1:
        assert "share_games: 2 ranks share 8 games, 4 each" in proc.stderr
    read = lambda name: [json.loads(l) for l in (run_dir / name).read_text().splitlines()]  # noqa: E731
    return read("metrics.jsonl"), read("games.jsonl")


def test_two_ranks_play_and_learn_like_one_process_with_the_same_games(tmp_path):
    """End to end: games are seeded and their actions drawn by game number, not by rank, so 2 ranks with 4
    games each and 1 process with all 8 (sync envs, no deadline) play the same rounds and make the same
    updates: the same samples and rewards every round, the same finished games, and the same losses to
    float rounding (the allreduce sums in another order)."""
    one, one_games = _same_games_run(tmp_path / "one", 1)
    two, two_games = _same_games_run(tmp_path / "two", 2)
    assert len(one) == len(two) >= 48  # a reset step after a finished game is not a valid sample
    for a, b in zip(one, two):
        for key in ("update", "step", "charts/env_steps", "charts/episodes", "charts/window_reward"):
            assert a[key] == b[key], (a["update"], key, a[key], b[key])
        for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["update"], key)
    assert len(one_games) >= 2  # the test means something: games finished, on both ranks
    assert {g["rank"] for g in two_games} == {0, 1}

    def games(rows):
        return sorted((g["update"], g["step"], g["return"], g["length"]) for g in rows)

    assert games(one_games) == games(two_games)


@pytest.fixture(scope="module")
def slow_rank_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mpi") / "run"
    proc = _mpirun(
        [
            sys.executable,
            "-m",
            "jaxpong",
            "train",
            "--config",
            "configs/smoke.yaml",
            "--run-dir",
            str(run_dir),
            "--num-envs",
            "4",
            "--num-threads",
            "1",
            "--total-steps",
            "3072",
            "--slow-rank",
            "1",
            "--slow-factor",
            "3",
            "--deadline-s",
            "auto",
            "--replication-check-every",
            "1",
            "--checkpoint-every",
            "1000",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_two_rank_run_writes_one_set_of_outputs(slow_rank_run):
    run_dir, proc = slow_rank_run
    assert "2 rank(s)" in proc.stderr and "MPICH" in proc.stderr  # rank 0 names the world size and the MPI library
    assert proc.stderr.count("run directory") == 1  # only rank 0 speaks
    assert "parameters identical on all 2 ranks" in proc.stderr
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [l["update"] for l in lines]
    assert updates == sorted(set(updates))  # one writer: no update logged twice
    assert all(l["comm/world_size"] == 2 for l in lines)
    for key in (
        "comm/wait_fraction_max",
        "comm/wait_fraction_mean",
        "comm/masked_fraction",
        "comm/allreduce_ms",
        "comm/deadline_s",
    ):
        assert key in lines[-1]
    assert lines[-1]["step"] >= 3072
    assert len(list((run_dir / "checkpoints").iterdir())) >= 1
    ranks = [json.loads(l) for l in (run_dir / "ranks.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in ranks} == {0, 1}
    per_update = {}
    for r in ranks:
        per_update.setdefault(r["update"], []).append(r["rank"])
    assert all(sorted(v) == [0, 1] for v in per_update.values())  # every round, both ranks, once
    for r in ranks:
        for key in ("update", "rank", "start_s", "collect_s", "compute_s", "wait_s", "valid_samples", "masked_samples"):
            assert key in r
    # The global step is the sum of both ranks' valid samples.
    assert sum(r["valid_samples"] for r in ranks) == lines[-1]["step"]


def test_slow_rank_is_cut_by_the_deadline(slow_rank_run):
    run_dir, _ = slow_rank_run
    ranks = [json.loads(l) for l in (run_dir / "ranks.jsonl").read_text().splitlines()]
    later = [r for r in ranks if r["update"] > 1]  # round 1 has no deadline yet (it compiles)
    assert later, "expected more than one round"
    valid = {k: sum(r["valid_samples"] for r in later if r["rank"] == k) for k in (0, 1)}
    assert valid[1] < 0.8 * valid[0], valid
    assert any(r["cut_by_deadline"] for r in later if r["rank"] == 1)
    assert all(r["deadline_s"] for r in later)

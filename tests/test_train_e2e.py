"""End to end: `python -m jaxpong train` as a user runs it, and every file it writes.

The runs are shared (see conftest.py): `smoke_run` is configs/smoke.yaml as shipped (33 updates of
8 envs x 32 steps; the first game finishes in update 26); `long_run` resumes a copy of it from update
32 to 12,000 steps. A few tiny runs here check determinism and the wall-clock limit.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE_CONFIG, nan_equal, read_jsonl
from jaxpong.base import config as config_lib
from jaxpong.store.checkpoint import Checkpoints

PPO_LOSSES = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac")
RANK_FIELDS = ("update", "rank", "start_s", "collect_s", "compute_s", "wait_s", "valid_samples", "masked_samples")
SMOKE_ROUND = 8 * 32  # envs x steps per round in configs/smoke.yaml
SMOKE = config_lib.build(str(SMOKE_CONFIG), {})
SMOKE_TOTAL = SMOKE.run.total_steps  # 8,192


def read_tb_scalars(run_dir: Path) -> dict:
    """{tag: {step: value}} from every TensorBoard event file of a run (TFRecord framing, parsed by hand)."""
    from tensorboardX.proto import event_pb2

    out: dict = {}
    files = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    for path in files:
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def saved_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


# ---- the smoke run: configs/smoke.yaml as shipped ---------------------------------------------------


def test_smoke_config_yaml_is_the_resolved_config_plus_a_record(smoke_run):
    doc = saved_config(smoke_run)
    record = doc.pop("_record")
    assert nan_equal(doc, config_lib.to_dict(config_lib.build(str(SMOKE_CONFIG), {})))
    assert doc["env"]["num_envs"] == 8 and doc["algo"]["gamma"] == 0.99  # from the YAML; a default
    assert record["preset"] == "envpool-Pong-v5-defaults"
    assert record["world_size"] == 1 and record["resume_count"] == 0
    for package in ("jax", "jaxlib", "flax", "optax", "envpool", "numpy"):
        assert record["versions"][package], package
    assert "git_commit" in record


def test_smoke_metrics_jsonl(smoke_run):
    lines = read_jsonl(smoke_run / "metrics.jsonl")
    records = read_jsonl(smoke_run / "ranks.jsonl")
    updates = [l["update"] for l in lines]
    assert updates == list(range(1, len(lines) + 1))
    # Every agent step is played; the step counter adds each round's valid samples (a game's reset step is
    # played but not learnt from), and the run stops at the first update that reaches total_steps.
    assert [l["charts/env_steps"] for l in lines] == [SMOKE_ROUND * u for u in updates]
    assert [l["step"] for l in lines] == [sum(r["valid_samples"] for r in records[:u]) for u in updates]
    assert lines[-1]["step"] >= SMOKE_TOTAL > lines[-2]["step"]
    # configs/smoke.yaml finishes games, so its return curves are not empty.
    assert lines[-1]["charts/episodes"] >= 1
    first_game = next(l["update"] for l in lines if l["charts/episodes"])
    assert 20 <= first_game < len(lines)  # a random player loses its first game after ~800 steps per env
    times = [l["time_s"] for l in lines]
    assert times == sorted(times) and times[0] > 0
    for line in lines:
        assert line["charts/SPS"] > 0
        if line["update"] < first_game:
            assert line["charts/episodes"] == 0
            assert "charts/episodic_return" not in line  # absent (not NaN, not 0) when no game finished
        for name in PPO_LOSSES:
            assert math.isfinite(line[name]), name
        assert 0 <= line["losses/clipfrac"] <= 1 and line["losses/approx_kl"] > -1e-6
        assert line["losses/value_loss"] >= 0
        # A freshly initialised policy (logits near 0) over two actions: entropy close to ln 2.
        assert abs(line["losses/entropy"] - math.log(2)) < 0.02
    # The learning rate anneals linearly to 0 over total_steps (past it, it stays at 0).
    lr = SMOKE.algo.learning_rate
    for line in lines:
        expected = lr * max(0.0, 1 - line["step"] / SMOKE_TOTAL)
        assert line["charts/learning_rate"] == pytest.approx(expected, abs=1e-12)


def test_smoke_ranks_jsonl(smoke_run):
    records = read_jsonl(smoke_run / "ranks.jsonl")
    assert [r["update"] for r in records] == [l["update"] for l in read_jsonl(smoke_run / "metrics.jsonl")]
    starts = []
    for r in records:
        for name in RANK_FIELDS:
            assert name in r, name
        assert r["rank"] == 0
        # At most one reset step per env and round is left out; ppo masks nothing.
        assert SMOKE_ROUND - 8 <= r["valid_samples"] <= SMOKE_ROUND and r["masked_samples"] == 0
        assert r["collect_s"] > 0 and r["compute_s"] > 0 and r["wait_s"] >= 0
        starts.append(r["start_s"])
    assert starts == sorted(starts)
    # A round cannot start before the previous one's collection and update are done.
    for prev, cur in zip(records, records[1:]):
        assert cur["start_s"] >= prev["start_s"] + prev["collect_s"] + prev["compute_s"] - 1e-3


def test_smoke_tensorboard_matches_metrics(smoke_run):
    scalars = read_tb_scalars(smoke_run)
    lines = read_jsonl(smoke_run / "metrics.jsonl")
    for name in ("charts/SPS", "charts/episodes", *PPO_LOSSES):
        assert name in scalars, name
        assert sorted(scalars[name]) == [l["step"] for l in lines]
    for line in lines:
        for name in PPO_LOSSES:
            assert scalars[name][line["step"]] == pytest.approx(line[name], rel=1e-5, abs=1e-7)
    returns = {l["step"]: l["charts/episodic_return"] for l in lines if "charts/episodic_return" in l}
    assert returns and scalars["charts/episodic_return"] == pytest.approx(returns)


def test_smoke_checkpoints(smoke_run):
    # checkpoint_every 4 updates and at the end; keep_checkpoints 2.
    lines = read_jsonl(smoke_run / "metrics.jsonl")
    last_periodic = max(u for u in range(1, len(lines)) if u % 4 == 0)
    assert checkpoint_steps(smoke_run) == [lines[last_periodic - 1]["step"], lines[-1]["step"]]
    meta = Checkpoints(smoke_run / "checkpoints", read_only=True).read_meta(lines[-1]["step"])
    assert meta["counters"]["update"] == len(lines) and meta["counters"]["step"] == lines[-1]["step"]
    assert meta["world_size"] == 1


def test_smoke_stop_reason_is_logged(smoke_run):
    err = (smoke_run / "stderr.txt").read_text()
    assert "Traceback" not in err
    assert f"stopped: reached --total-steps {SMOKE_TOTAL:,}" in err


# ---- the long run: the smoke run resumed to 12,000 steps -----------------------------------------


def test_resume_continues_the_counters(long_run, smoke_run):
    """Resumed from the checkpoint before the last (update 32): the first process's later lines are
    dropped and those updates are played again, so each update number appears exactly once."""
    lines = read_jsonl(long_run / "metrics.jsonl")
    updates = [l["update"] for l in lines]
    assert updates == list(range(1, len(lines) + 1))  # each update once, none lost, none repeated
    first = read_jsonl(smoke_run / "metrics.jsonl")
    kept = checkpoint_steps(smoke_run)[0]  # conftest removed the final checkpoint of the copy
    resumed_at = next(l["update"] for l in first if l["step"] == kept)
    assert lines[:resumed_at] == first[:resumed_at]  # the first process's lines kept as they were
    steps = [l["step"] for l in lines]
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert steps[-1] >= 12000 > steps[-2]
    assert [l["charts/env_steps"] for l in lines] == [SMOKE_ROUND * u for u in updates]
    resumed_step = f"{first[resumed_at - 1]['step']:,}"
    assert re.search(
        rf"resumed from .*step {resumed_step} \(update {resumed_at}\b", (long_run / "stderr.txt").read_text()
    )
    assert [r["update"] for r in read_jsonl(long_run / "ranks.jsonl")] == updates

    doc = saved_config(long_run)
    assert doc["_record"]["resume_count"] == 1
    assert doc["run"]["total_steps"] == 12000  # the flag, over the run's saved config
    assert doc["env"]["num_envs"] == 8 and doc["algo"]["num_steps"] == 32  # kept from the saved config

    steps_saved = checkpoint_steps(long_run)
    assert len(steps_saved) <= 2 and steps_saved[-1] == steps[-1]
    meta = Checkpoints(long_run / "checkpoints", read_only=True).read_meta(steps_saved[-1])
    assert meta["counters"]["resume_count"] == 1
    assert meta["counters"]["update"] == updates[-1] and meta["counters"]["step"] == steps[-1]
    assert meta["counters"]["episodes"] == lines[-1]["charts/episodes"]


def test_long_run_steps_count_the_valid_samples(long_run):
    lines = read_jsonl(long_run / "metrics.jsonl")
    records = read_jsonl(long_run / "ranks.jsonl")
    assert [r["update"] for r in records] == [l["update"] for l in lines]
    previous = 0
    for line, record in zip(lines, records):
        assert line["step"] - previous == record["valid_samples"]
        previous = line["step"]
    # After a game ends, envpool's reset step is played but not learnt from: some rounds are below 256.
    assert any(r["valid_samples"] < SMOKE_ROUND for r in records)
    assert all(r["valid_samples"] >= SMOKE_ROUND - 8 for r in records)  # at most one reset step per env and round


def test_long_run_episodic_return(long_run):
    lines = read_jsonl(long_run / "metrics.jsonl")
    episodes = [l["charts/episodes"] for l in lines]
    assert episodes == sorted(episodes) and episodes[-1] >= 4
    previous = 0
    seen = 0
    for line, count in zip(lines, episodes):
        if count > previous:
            ret = line["charts/episodic_return"]
            assert not math.isnan(ret) and -21 <= ret <= 21
            assert (ret * (count - previous)) == pytest.approx(round(ret * (count - previous)))  # whole points
            assert line["charts/episodic_length"] > 500  # 21 points of dozens of steps each (about 750-1200 here)
            seen += 1
        else:
            assert "charts/episodic_return" not in line
        previous = count
    assert seen >= 1
    scalars = read_tb_scalars(long_run)
    assert len(scalars["charts/episodic_return"]) == seen
    assert all(math.isfinite(v) for v in scalars["charts/episodic_return"].values())


# ---- small runs: determinism and the wall-clock limit --------------------------------------------

TINY = (
    "--num-envs",
    4,
    "--num-steps",
    16,
    "--update-epochs",
    1,
    "--num-minibatches",
    2,
    "--tensorboard",
    "false",
    "--checkpoint-every",
    1000,
    "--progress",
    "off",
)


def tiny_run(jaxpong_cli, run_dir, *flags, timeout=180):
    code, out, err = jaxpong_cli(
        "train", "--config", SMOKE_CONFIG, "--run-dir", run_dir, *TINY, *flags, timeout=timeout
    )
    assert code == 0, err[-3000:]
    return read_jsonl(run_dir / "metrics.jsonl"), err


@pytest.fixture(scope="module")
def seeded_runs(jaxpong_cli, tmp_path_factory):
    """Three tiny runs (3 updates, no deadline, one process, sync): seed 1 twice, seed 2 once."""
    base = tmp_path_factory.mktemp("det")
    flags = ("--deadline-s", 0, "--total-steps", 192)
    a = tiny_run(jaxpong_cli, base / "a", *flags, "--seed", 1)[0]
    b = tiny_run(jaxpong_cli, base / "b", *flags, "--seed", 1)[0]
    c = tiny_run(jaxpong_cli, base / "c", *flags, "--seed", 2)[0]
    return base, a, b, c


DETERMINISTIC = ("update", "step", "charts/env_steps", "charts/episodes", *PPO_LOSSES)


def test_same_seed_gives_identical_metrics(seeded_runs):
    _, a, b, _ = seeded_runs
    assert len(a) == len(b) == 3
    for la, lb in zip(a, b):
        assert {k: la[k] for k in DETERMINISTIC} == {k: lb[k] for k in DETERMINISTIC}


def test_another_seed_gives_other_metrics(seeded_runs):
    _, a, _, c = seeded_runs
    assert [l["step"] for l in a] == [l["step"] for l in c] == [64, 128, 192]
    for la, lc in zip(a, c):
        for name in ("losses/policy_loss", "losses/value_loss"):
            assert la[name] != lc[name], name


def test_flags_override_the_yaml_in_the_written_config(seeded_runs):
    base = seeded_runs[0]
    doc = saved_config(base / "a")
    assert doc["env"]["num_envs"] == 4 and doc["algo"]["num_steps"] == 16  # flags over smoke.yaml's 8 and 32
    assert doc["run"]["keep_checkpoints"] == 2 and doc["run"]["log_every"] == 1  # smoke.yaml over the defaults
    assert doc["algo"]["gamma"] == 0.99 and doc["algo"]["clip_coef"] == 0.1  # defaults
    assert doc["dist"]["deadline_s"] == "0" and doc["run"]["seed"] == 1 and doc["run"]["tensorboard"] is False
    assert saved_config(base / "c")["run"]["seed"] == 2
    assert not (base / "a" / "tb").exists()  # --tensorboard false


def test_time_limit_stops_the_run(jaxpong_cli, tmp_path):
    lines, err = tiny_run(jaxpong_cli, tmp_path / "run", "--time-limit-s", 1, "--total-steps", 10_000_000)
    assert "stopped: reached --time-limit-s 1" in err
    assert 1 <= len(lines) and lines[-1]["step"] < 10_000_000
    # The state at the stop is checkpointed, so the run can be resumed.
    assert checkpoint_steps(tmp_path / "run") == [lines[-1]["step"]]


@pytest.mark.slow
def test_throughput_bench_end_to_end(jaxpong_cli, tmp_path):
    """`jaxpong bench` as `make bench` runs it (one short repeat): a real trainer subprocess with
    --total-steps 10**12 (its learning-rate schedule must cope with such counts), stopped with SIGSTOP
    for slices of raw envpool, and a last JSON line whose ratio is the trainer's steps/s over the raw
    steps/s of the same repeat. The trainer's timed seconds leave out the stopped ones."""
    import json

    code, out, err = jaxpong_cli(
        "bench", "--config", SMOKE_CONFIG, "--seconds", 3, "--repeats", 1, "--run-dir", tmp_path / "bench", timeout=300
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["median_repeat"] == 1 and len(result["per_repeat"]) == 1
    assert result["env_sps"] > 0 and result["trainer_sps"] > 0 and result["trainer_updates"] > 2
    assert result["ratio"] == pytest.approx(result["trainer_sps"] / result["env_sps"], abs=1e-3)
    assert result["raw_slices"] >= 1
    lines = read_jsonl(tmp_path / "bench" / "repeat_1" / "metrics.jsonl")
    # The trainer ran at least --seconds between its warm-up line and its last line, stopped slices aside.
    wall = lines[-1]["wall_time"] - lines[1]["wall_time"]
    assert 3.0 <= result["trainer_seconds"] <= wall - 0.9 * result["raw_slices"] * 1.0
    assert lines[-1]["charts/learning_rate"] > 0.999 * SMOKE.algo.learning_rate

"""Benchmarks: throughput (raw envpool vs the trainer, same settings, one run) and ranks (deadline vs sync).

Speed lives here, not in tests. Each prints a readable table and, as the last line of stdout, one
JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxpong.config import Config, to_dict

WARMUP_UPDATES = 2  # rounds excluded from trainer speed: the first compiles, the second may still settle


def raw_env_sps(cfg: Config, seconds: float) -> float:
    """Agent steps/s of envpool alone with uniformly random actions, in the configured mode."""
    from jaxpong.envs import PURPOSE_TRAIN, env_seeds, make_env

    env = make_env(cfg, seeds=env_seeds(cfg.run.seed, 0, 0, PURPOSE_TRAIN, cfg.env.num_envs))
    rng = np.random.default_rng(0)
    n, b = cfg.env.num_envs, cfg.env_batch_size
    env.async_reset()
    steps, start = 0, None
    while True:
        _, _, _, _, info = env.recv()
        ids = np.asarray(info["env_id"], np.int32)
        if start is None:
            start = time.perf_counter()  # time from the first batch on: reset is not stepping
        elif time.perf_counter() - start >= seconds:
            break
        steps += len(ids)
        env.send(rng.integers(0, 6, size=len(ids)).astype(np.int32), ids)
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def trainer_sps(run_dir: Path) -> dict:
    """Steps/s from a run's metrics.jsonl, after the warm-up rounds."""
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    if len(lines) <= WARMUP_UPDATES:
        raise RuntimeError(f"the trainer ran only {len(lines)} updates; give it more --seconds")
    a, b = lines[WARMUP_UPDATES - 1], lines[-1]
    dt = b["time_s"] - a["time_s"]
    return {"sps": (b["step"] - a["step"]) / dt, "env_sps": (b["charts/env_steps"] - a["charts/env_steps"]) / dt,
            "updates": len(lines), "seconds": dt}


def _train_subprocess(cfg_dict: dict, run_dir: Path, extra: list[str], ranks: int = 1, timeout: float = 900) -> None:
    """Run `jaxpong train` in fresh processes (under mpirun for several ranks), as a user would."""
    import yaml

    cfg_file = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg_dict))
    cmd = [sys.executable, "-m", "jaxpong", "train", "--config", str(cfg_file), "--run-dir", str(run_dir),
           "--overwrite", "--progress", "off", *extra]
    if ranks > 1:
        # Pin each rank to its own cores, as on a cluster node: a rank that waits then leaves its cores
        # idle instead of lending them to the others (hydra's -bind-to; mpich's own launcher).
        cmd = [str(Path(sys.executable).parent / "mpirun"), "-bind-to", "core", "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"training run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")


def _table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*[f"{x:,.1f}" if isinstance(x, float) else str(x) for x in r])
    Console(stderr=False).print(table)


def throughput(cfg: Config, seconds: float, run_dir: str | None = None, repeats: int = 3) -> int:
    """`jaxpong bench`: raw envpool steps/s and trainer steps/s on the same settings.

    Each repeat measures raw envpool, then the trainer, then raw envpool again, and takes the
    trainer's ratio to the median of its two raw measurements; the repeat with the median ratio is
    the one reported. Shared machines drift by +-10 % within a minute, so one ratio is not enough to judge.
    """
    rows, ratios, results = [], [], []
    cfg_dict = to_dict(cfg)
    cfg_dict["run"].update(total_steps=10**12, checkpoint_every=10**9, tensorboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats):
            env_sps = raw_env_sps(cfg, seconds)
            path = Path(run_dir) / f"repeat_{k + 1}" if run_dir else Path(tmp) / f"bench_run_{k + 1}"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Compilation and warm-up rounds come on top of the timed seconds.
            _train_subprocess(cfg_dict, path, ["--time-limit-s", str(seconds + 15)])
            trainer = trainer_sps(path)
            env_sps_after = raw_env_sps(cfg, min(seconds, 5.0))
            env_ref = float(np.median([env_sps, env_sps_after]))
            ratio = trainer["sps"] / env_ref
            ratios.append(ratio)
            results.append({"env_sps": round(env_ref, 1), "trainer_sps": round(trainer["sps"], 1), "ratio": round(ratio, 4),
                            "trainer_updates": trainer["updates"]})
            rows.append([str(k + 1), env_sps, env_sps_after, trainer["sps"], f"{ratio:.3f}"])
    # The repeat with the median ratio (the lower middle one for an even count) speaks for the run:
    # its raw and trainer steps/s are the ones that ratio was measured from.
    mid = sorted(range(repeats), key=lambda k: ratios[k])[(repeats - 1) // 2]
    if repeats > 1:
        rows.append([f"median: repeat {mid + 1}", *rows[mid][1:]])
    _table(f"jaxpong bench: {cfg.algo.algo}, {cfg.model.network} on {cfg.model.obs_mode}, "
           f"{cfg.env.num_envs} envs ({'async' if cfg.is_async else 'sync'}), {os.cpu_count()} cores",
           ["repeat", "raw envpool before (random actions)", "raw after", "trainer (valid steps, incl. updates)",
            "ratio trainer / raw"], rows)
    print(json.dumps({**results[mid], "median_repeat": mid + 1, "per_repeat": results, "algo": cfg.algo.algo,
                      "num_envs": cfg.env.num_envs, "async": cfg.is_async, "seconds": seconds}))
    return 0


def rank_stats(run_dir: Path, skip_updates: int = WARMUP_UPDATES) -> dict:
    """Valid steps/s of the whole job and each rank's wait fraction, from ranks.jsonl, after warm-up."""
    recs = [json.loads(l) for l in (run_dir / "ranks.jsonl").read_text().splitlines() if l.strip()]
    recs = [r for r in recs if r["update"] > skip_updates]
    if not recs:
        raise RuntimeError(f"{run_dir}: no rounds after warm-up; give it more --seconds")
    ranks = sorted({r["rank"] for r in recs})
    wait = []
    for k in ranks:
        mine = [r for r in recs if r["rank"] == k]
        w = sum(r["wait_s"] for r in mine)
        busy = sum(r["collect_s"] + r["compute_s"] for r in mine)
        wait.append(w / max(w + busy, 1e-12))
    start = min(r["start_s"] for r in recs)
    end = max(r["start_s"] + r["collect_s"] + r["compute_s"] + r["wait_s"] for r in recs)
    valid = sum(r["valid_samples"] for r in recs)
    masked = sum(r["masked_samples"] for r in recs)
    per_rank_valid = [sum(r["valid_samples"] for r in recs if r["rank"] == k) for k in ranks]
    return {"sps": valid / max(end - start, 1e-9), "wait_fraction": [round(w, 4) for w in wait],
            "valid_per_rank": per_rank_valid, "masked_fraction": masked / max(valid + masked, 1),
            "rounds": len(recs) // len(ranks)}


def ranks_benchmark(cfg: Config, ranks: int, seconds: float, run_dir: str | None = None) -> int:
    """`jaxpong bench --ranks N [--slow-rank R --slow-factor F]`: sync (--deadline-s 0) against auto deadline masking."""
    base = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="jaxpong-bench-ranks-"))
    base.mkdir(parents=True, exist_ok=True)
    cfg_dict = to_dict(cfg)
    cfg_dict["run"].update(total_steps=10**12, checkpoint_every=10**9, tensorboard=False)
    share = max(1, (os.cpu_count() or 1) // ranks)
    if not cfg.env.num_threads:
        # Each rank gets its share of the cores, for envpool and for XLA: oversubscription would blur the picture.
        cfg_dict["env"]["num_threads"] = share
    if not cfg.run.xla_threads:
        cfg_dict["run"]["xla_threads"] = share
    results = {}
    for mode, deadline in (("sync", "0"), ("deadline", "auto")):
        path = base / mode
        _train_subprocess(cfg_dict, path, ["--deadline-s", deadline, "--time-limit-s", str(seconds + 15)], ranks=ranks)
        results[mode] = rank_stats(path)
    speedup = results["deadline"]["sps"] / max(results["sync"]["sps"], 1e-9)
    rows = []
    for mode in ("sync", "deadline"):
        r = results[mode]
        rows.append([mode, r["sps"], " ".join(f"{w:.3f}" for w in r["wait_fraction"]),
                     " ".join(map(str, r["valid_per_rank"])), f"{r['masked_fraction']:.3f}", r["rounds"]])
    slow = f", rank {cfg.dist.slow_rank} slowed {cfg.dist.slow_factor:g}x" if cfg.dist.slow_rank >= 0 else ""
    _table(f"jaxpong bench --ranks {ranks}{slow}: {cfg.algo.algo}, {cfg.env.num_envs} envs/rank, runs in {base}",
           ["mode", "valid steps/s", "wait fraction per rank", "valid samples per rank", "masked", "rounds"], rows)
    print(f"speedup of deadline masking over sync: {speedup:.2f}x")
    out = {m: {"sps": round(results[m]["sps"], 1), "wait_fraction": results[m]["wait_fraction"],
               "valid_per_rank": results[m]["valid_per_rank"]} for m in results}
    out["speedup"] = round(speedup, 3)
    print(json.dumps(out))
    return 0

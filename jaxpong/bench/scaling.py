"""Benchmarks of the ranks: `bench --per-core` (the trainer with one core per rank against raw envpool on the
same cores), `bench --ranks N` (weak scaling and speed-up on this host, and deadline against sync with a slow
rank) and `bench --startup` (seconds from launch to the first update at several rank counts, cold and warm
compilation cache). Each prints a readable table and, as the last line of stdout, one JSON object."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.bench.throughput import (
    WARMUP_UPDATES,
    RawEnv,
    _bench_config,
    _metrics,
    _repeats,
    _table,
    _train_command,
    _train_subprocess,
    interleaved_repeat,
    trainer_sps,
)

# --per-core: the 2016 setup's shape. The trainer's 2-s windows are wall-clock, so a stop cuts one of them
# short (one extra update per stop); longer trainer slices keep that to one round in several. Its update
# compiles once per new sparse list length (sparse.py) in the first rounds: a longer warm-up leaves them out.
PER_CORE_TRAINER_SLICE_S = 6.0
PER_CORE_RAW_SLICE_S = 2.0
PER_CORE_WARMUP_UPDATES = 6


def _raw_worker(cfg: Config, core: int, conn) -> None:
    """A process pinned to `core` (envpool's threads inherit it) stepping raw envpool in slices on request."""
    os.sched_setaffinity(0, {core})
    raw = RawEnv(cfg)
    conn.send("ready")
    while (seconds := conn.recv()) is not None:
        conn.send(raw.run(seconds))
    raw.close()


class PinnedRawEnvs:
    """Raw envpool on each of `cores`, one process per core (the config's games, one thread), run together."""

    def __init__(self, cfg: Config, cores: list[int]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for core in cores:
            mine, theirs = context.Pipe()
            proc = context.Process(target=_raw_worker, args=(cfg, core, theirs), daemon=True)
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("a raw envpool worker did not start")

    def run(self, seconds: float) -> tuple[int, float, float]:
        """(agent steps of all cores, seconds, CPU seconds of all cores): the slice's summed steps and its
        mean length, so that steps / seconds is the cores' summed speed."""
        for conn in self.conns:
            conn.send(seconds)
        steps, elapsed, cpu = zip(*[conn.recv() for conn in self.conns])
        return sum(steps), float(np.mean(elapsed)), sum(cpu)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)


def per_core(cfg: Config, ranks: int, seconds: float, run_dir: str | None = None, repeats: int = 3) -> int:
    """`jaxpong bench --per-core [--ranks N]`: the trainer with one core per rank against raw envpool on the same cores.

    N ranks, each bound to its own core (one rank: pinned to the first core; more: `mpirun -bind-to core`),
    each with one envpool thread and one XLA thread; raw envpool runs the config's games with one thread
    in one process per core, on the same cores, in slices while the trainer is stopped (as `bench`).
    For configs/seed_ppg.yaml this is the 2016 setup: one game per core.
    """
    cores = sorted(os.sched_getaffinity(0))[:ranks]
    if len(cores) < ranks:
        raise ConfigError(f"--per-core --ranks {ranks}: only {len(cores)} cores are available to this process")
    cfg_dict = _bench_config(cfg)
    cfg_dict["env"]["num_threads"] = 1
    cfg_dict["env"]["share_games"] = False  # each rank steps the config's games, as raw envpool does per core
    cfg_dict["run"]["xla_threads"] = 1
    raw_cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_threads=1))
    raw = PinnedRawEnvs(raw_cfg, cores)
    try:
        return _repeats(
            f"jaxpong bench --per-core: {ranks} rank(s) on cores {','.join(map(str, cores))}, {cfg.env.num_envs} "
            f"game(s) per rank, {cfg.algo.algo}, {cfg.model.network} on {cfg.model.obs_mode}"
            f"{', host policy step' if _uses_host_policy(cfg) else ''}",
            f"raw envpool, {cfg.env.num_envs} game(s) per core",
            repeats,
            run_dir,
            lambda path: interleaved_repeat(
                cfg_dict,
                raw,
                seconds,
                path,
                ranks=ranks,
                pin_cores=cores,  # so `--ranks N` binds one core each
                trainer_slice_s=PER_CORE_TRAINER_SLICE_S,
                raw_slice_s=PER_CORE_RAW_SLICE_S,
                warmup=PER_CORE_WARMUP_UPDATES,
            ),
            {
                "mode": "per_core",
                "ranks": ranks,
                "cores": cores,
                "algo": cfg.algo.algo,
                "num_envs_per_rank": cfg.env.num_envs,
                "host_policy": _uses_host_policy(cfg),
                "seconds": seconds,
            },
        )
    finally:
        raw.close()


def _uses_host_policy(cfg: Config) -> bool:
    from jaxpong.play.host_policy import use_host_policy

    return use_host_policy(cfg)


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
    return {
        "sps": valid / max(end - start, 1e-9),
        "wait_fraction": [round(w, 4) for w in wait],
        "valid_per_rank": per_rank_valid,
        "masked_fraction": masked / max(valid + masked, 1),
        "rounds": len(recs) // len(ranks),
    }


def _raw_ceiling(cfg: Config, games: int, seconds: float) -> float:
    """Raw envpool's steps/s with `games` games on every core this process may use: what the trainer's
    ranks together could reach at best."""
    raw_cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_envs=games, num_threads=0))
    raw = RawEnv(raw_cfg)
    try:
        raw.run(min(1.0, seconds))  # warm-up slice
        steps, took, _ = raw.run(seconds)
        return steps / took
    finally:
        raw.close()


def ranks_benchmark(cfg: Config, ranks: int, seconds: float, run_dir: str | None = None) -> int:
    """`jaxpong bench --ranks N`: what N ranks buy on this host, from three trainer runs and raw envpool.
    - weak scaling: one rank bound to its share of the cores (cores / N) with a rank's games (env.share_games
      splits num_envs among the ranks), against N ranks (`train --ranks N`, each bound to its share) with the
      config's deadline: efficiency = N ranks' valid steps/s over N times the one rank's;
    - speed-up on the host: the N ranks against one rank with num_envs games on all the cores, which is
      what `train` without --ranks runs (with shared games, the same global batch, so the same learning);
    - the ceiling: raw envpool with the N ranks' games on all the cores.
    With a slow rank (--slow-rank R --slow-factor F) the N ranks also run sync (--deadline-s 0), to show what
    deadline masking saves."""
    from jaxpong.learn import batch_rule
    from jaxpong.ranks import placement

    cores = len(os.sched_getaffinity(0))
    plan = placement.plan_ranks(str(ranks), cores, oversubscribe=False)
    base = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="jaxpong-bench-ranks-"))
    base.mkdir(parents=True, exist_ok=True)
    cfg_dict = _bench_config(cfg)
    rank_cfg, _ = batch_rule.share(cfg, ranks)
    games_each = rank_cfg.env.num_envs
    games = games_each * ranks
    run_for = ["--time-limit-s", str(seconds + 15)]
    share = sorted(os.sched_getaffinity(0))[: plan.cores_per_rank]
    one = base / "one_rank"
    _train_subprocess(
        cfg_dict, one, [*run_for, "--num-envs", str(games_each)], prefix=["taskset", "-c", ",".join(map(str, share))]
    )
    results = {"one_rank": {**trainer_sps(one), "ranks": 1}}
    if plan.cores_per_rank < cores:
        host = base / "one_rank_all_cores"
        _train_subprocess(cfg_dict, host, run_for)
        results["all_cores"] = {**trainer_sps(host), "ranks": 1}
    modes: list[tuple[str, list[str]]] = [("deadline", [])] + (
        [("sync", ["--deadline-s", "0"])] if cfg.dist.slow_rank >= 0 else []
    )
    for mode, extra in modes:
        path = base / f"{ranks}_ranks_{mode}"
        _train_subprocess(cfg_dict, path, [*run_for, *extra, "--ranks", str(ranks)])
        results[mode] = {**rank_stats(path), "ranks": ranks}
    ceiling = _raw_ceiling(cfg, games, seconds=min(seconds, 10.0))
    one_sps = results["one_rank"]["sps"]
    host_sps = results["all_cores"]["sps"] if "all_cores" in results else one_sps
    rows = [
        [
            f"1 rank on {plan.cores_per_rank} core(s), {games_each} games",
            one_sps,
            "1.000",
            "-",
            f"{one_sps / ceiling:.3f}",
        ]
    ]
    if "all_cores" in results:
        rows.append(
            [f"1 rank on {cores} cores, {cfg.env.num_envs} games", host_sps, "-", "1.000", f"{host_sps / ceiling:.3f}"]
        )
    out: dict = {
        "ranks": ranks,
        "cores": cores,
        "cores_per_rank": plan.cores_per_rank,
        "games_per_rank": games_each,
        "games": games,
        "one_rank_sps": round(one_sps, 1),
        "one_rank_all_cores_sps": round(host_sps, 1),
        "raw_envpool_sps": round(ceiling, 1),
    }
    for mode, _ in modes:
        r = results[mode]
        eff = r["sps"] / (ranks * one_sps)
        rows.append(
            [
                f"{ranks} ranks x {games_each} games, {mode}",
                r["sps"],
                f"{eff:.3f}",
                f"{r['sps'] / host_sps:.2f}x",
                f"{r['sps'] / ceiling:.3f}",
                " ".join(f"{w:.3f}" for w in r["wait_fraction"]),
                " ".join(map(str, r["valid_per_rank"])),
            ]
        )
        out[mode] = {
            "sps": round(r["sps"], 1),
            "efficiency": round(eff, 3),
            "speedup_over_one_rank": round(r["sps"] / host_sps, 3),
            "of_raw": round(r["sps"] / ceiling, 3),
            "wait_fraction": r["wait_fraction"],
            "valid_per_rank": r["valid_per_rank"],
        }
    rows.append([f"raw envpool, {games} games, {cores} cores", ceiling, "-", "-", "1.000"])
    rows = [row + ["-", "-"] * (len(row) == 5) for row in rows]
    slow = f", rank {cfg.dist.slow_rank} slowed {cfg.dist.slow_factor:g}x" if cfg.dist.slow_rank >= 0 else ""
    _table(
        f"jaxpong bench --ranks {ranks}{slow}: {cfg.algo.algo}, {cfg.env.num_envs} games"
        + (f" shared ({games_each} a rank)" if games_each != cfg.env.num_envs else " a rank")
        + f", {cores} cores, runs in {base}",
        [
            "run",
            "valid steps/s",
            "weak-scaling efficiency",
            "speed-up over 1 rank on all cores",
            "of raw envpool",
            "wait fraction per rank",
            "valid samples per rank",
        ],
        rows,
    )
    print(
        f"weak-scaling efficiency at {ranks} ranks: {out['deadline']['efficiency']:.3f} (valid steps/s of "
        f"{ranks} ranks over {ranks} x one rank on its {plan.cores_per_rank} core(s) with {games_each} games)"
    )
    print(
        f"{ranks} ranks step {out['deadline']['speedup_over_one_rank']:.2f}x the valid steps/s of one rank on all "
        f"{cores} cores"
        + (
            " with the same global batch"
            if games == cfg.env.num_envs
            else f" ({games} games in all against {cfg.env.num_envs})"
        )
    )
    if "sync" in out:
        out["speedup"] = round(out["deadline"]["sps"] / max(out["sync"]["sps"], 1e-9), 3)
        print(f"speedup of deadline masking over sync: {out['speedup']:.2f}x")
    print(json.dumps(out))
    return 0


def startup(cfg: Config, rank_counts: list[int], run_dir: str | None = None, repeats: int = 1) -> int:
    """`jaxpong bench --startup --ranks 1,4,16`: seconds from launch to the first update at each rank count
    (oversubscribed where there are more ranks than cores), with an empty compilation cache (cold) and
    then with the one that run filled (warm), with and without one rank per host compiling first (the
    others load its programs from the cache). The first update is a run's first metrics line; its
    process_s counts from the process's start, so imports, MPI start-up and compiles are all in it."""
    base = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="jaxpong-bench-startup-"))
    base.mkdir(parents=True, exist_ok=True)
    cfg_dict = _bench_config(cfg)
    cfg_dict["run"].update(total_steps=1, tensorboard=False)  # one round, then stop
    rows, out = [], []
    for ranks in rank_counts:
        for shared in (True, False):
            cache = base / f"cache_{ranks}_{'shared' if shared else 'each'}"
            for state in ("cold", "warm"):
                if state == "cold" and cache.exists():
                    import shutil

                    shutil.rmtree(cache)
                path = base / f"{ranks}_ranks_{'shared' if shared else 'each'}_{state}"
                env = dict(os.environ, JAXPONG_COMPILE_CACHE=str(cache), JAXPONG_SHARED_COMPILE="1" if shared else "0")
                cmd = _train_command(cfg_dict, path, ["--oversubscribe"] if ranks > 1 else [], ranks)
                start = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"{ranks} ranks: training failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
                    )
                first = _metrics(path)[0]
                row = {
                    "ranks": ranks,
                    "compile": "one per host, others load" if shared else "every rank",
                    "cache": state,
                    "first_update_s": round(first["process_s"], 1),
                    "launch_to_end_s": round(time.time() - start, 1),
                }
                out.append(row)
                rows.append([str(ranks), row["compile"], state, row["first_update_s"], row["launch_to_end_s"]])
    _table(
        f"jaxpong bench --startup: {cfg.algo.algo}, {cfg.model.network} on {cfg.model.obs_mode}, "
        f"{cfg.env.num_envs} games a rank, {len(os.sched_getaffinity(0))} cores, runs in {base}",
        ["ranks", "compiles", "cache", "process start to first update (s)", "launch to exit (s)"],
        rows,
    )
    print(json.dumps({"startup": out}))
    return 0

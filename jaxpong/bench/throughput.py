"""Benchmarks: throughput (raw envpool vs the trainer, same settings, one run), and what the speed benchmarks
share: the trainer run and timed as a user runs it, raw envpool in slices, the table. The rank benchmarks
(--per-core, --ranks N, --startup) are jaxpong/bench/scaling.py.

Speed lives here, not in tests. Each prints a readable table and, as the last line of stdout, one
JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config, to_dict

WARMUP_UPDATES = 2  # rounds excluded from trainer speed: the first compiles, the second may still settle


class RawEnv:
    """envpool alone, in the configured mode, stepped with uniformly random actions in timed slices."""

    def __init__(self, cfg: Config):
        from jaxpong.play.envs import PURPOSE_TRAIN, EnvIO, env_seeds, make_env

        self.env = make_env(cfg, seeds=env_seeds(cfg.run.seed, 0, PURPOSE_TRAIN, cfg.env.num_envs))
        self.io = EnvIO(self.env)  # the trainer's way of calling envpool, so the ratio compares like with like
        self.rng = np.random.default_rng(0)
        self.env.async_reset()
        self.ready = self._drain(cfg.env.num_envs)  # env ids holding an observation not acted on yet

    def _drain(self, count: int) -> list:
        ids: list[int] = []
        while len(ids) < count:
            ids.extend(self.io.recv()[4].tolist())
        return ids

    def _send(self, ids) -> None:
        ids = np.asarray(ids, np.int32)
        self.io.send(self.rng.integers(0, 6, size=len(ids)).astype(np.int32), ids)

    def run(self, seconds: float) -> tuple[int, float, float]:
        """(agent steps, seconds, CPU seconds of this process) of one slice: every env is acted on until
        `seconds` pass, then the steps in flight are finished and counted, so no env work spills into
        whatever runs next."""
        start, cpu = time.perf_counter(), time.process_time()
        self._send(self.ready)
        in_flight, steps = len(self.ready), 0
        while True:
            ids = self.io.recv()[4]
            in_flight -= len(ids)
            steps += len(ids)
            if time.perf_counter() - start >= seconds:
                break
            self._send(ids)
            in_flight += len(ids)
        received = ids.tolist() + self._drain(in_flight)
        steps += in_flight
        self.ready = received
        return steps, time.perf_counter() - start, time.process_time() - cpu

    def close(self) -> None:
        self.env.close()


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # the trainer may be stopped halfway through writing a line
            break
    return lines


def trainer_sps(run_dir: Path, paused: Sequence[tuple[float, float]] = (), warmup: int = WARMUP_UPDATES) -> dict:
    """Steps/s from a run's metrics.jsonl after the `warmup` rounds, not counting the `paused` (start, end)
    wall-clock intervals (time.time()) during which the trainer was stopped."""
    lines = _metrics(run_dir)
    if len(lines) <= warmup:
        raise RuntimeError(f"the trainer ran only {len(lines)} updates; give it more --seconds")
    a, b = lines[warmup - 1], lines[-1]
    stopped = sum(max(0.0, min(end, b["wall_time"]) - max(begin, a["wall_time"])) for begin, end in paused)
    dt = b["time_s"] - a["time_s"] - stopped
    return {
        "sps": (b["step"] - a["step"]) / dt,
        "env_sps": (b["charts/env_steps"] - a["charts/env_steps"]) / dt,
        "updates": len(lines),
        "seconds": dt,
    }


def _train_command(cfg_dict: dict, run_dir: Path, extra: list[str], ranks: int = 1) -> list[str]:
    """`jaxpong train` in a fresh process, as a user would run it; several ranks through `train --ranks N`
    (mpirun, each rank bound to its share of the cores: a rank that waits leaves its cores idle instead
    of lending them to the others, as on a cluster node)."""
    import yaml

    cfg_file = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg_dict))
    from jaxpong.bench.learning import train_argv

    cmd = train_argv(cfg_file, run_dir, "--progress", "off", *extra)
    return cmd + ["--ranks", str(ranks)] if ranks > 1 else cmd


def _train_subprocess(
    cfg_dict: dict,
    run_dir: Path,
    extra: list[str],
    ranks: int = 1,
    timeout: float = 900,
    prefix: list[str] | None = None,
) -> None:
    cmd = [*(prefix or []), *_train_command(cfg_dict, run_dir, extra, ranks)]
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


TRAINER_SLICE_S = 2.0  # the trainer runs this long between raw slices ...
RAW_SLICE_S = 1.0  # ... and is stopped (SIGSTOP) while raw envpool runs this long


def interleaved_repeat(
    cfg_dict: dict,
    raw,
    seconds: float,
    run_dir: Path,
    start_timeout_s: float = 600,
    *,
    ranks: int = 1,
    pin_cores: list[int] | None = None,
    trainer_slice_s: float = TRAINER_SLICE_S,
    raw_slice_s: float = RAW_SLICE_S,
    warmup: int = WARMUP_UPDATES,
) -> dict:
    """One repeat: a real `jaxpong train` (under mpirun for several ranks; pinned to `pin_cores` if given),
    stopped every `trainer_slice_s` for a `raw_slice_s` slice of raw envpool (`raw.run`) on the same cores,
    until the trainer has run `seconds` after its warm-up rounds.

    Why interleave: on a shared machine raw envpool speed drifts by 10-20 % over tens of seconds (measured
    here: 2-s slices of one minute ranged 2,500-3,800 steps/s), so a raw measurement before and after a
    20-s training run can disagree with the speed the trainer saw. Slices a few seconds apart see the same
    machine. A stopped trainer loses nothing but its caches, so if anything this favours raw envpool.
    Every process of the trainer is stopped: mpirun, its proxy and each rank.
    """
    from jaxpong.training.stop import EXIT_PREEMPTED

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # A reused --run-dir still holds the previous run's metrics until the trainer replaces the folder;
    # reading those would start the clock during this trainer's start-up.
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    cmd = _train_command(cfg_dict, run_dir, ["--time-limit-s", str(10 * seconds + start_timeout_s)], ranks)
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    pin = (lambda: os.sched_setaffinity(0, set(pin_cores))) if pin_cores else None
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pin)
    pids = [proc.pid]  # the trainer's processes: with mpirun, its proxy and ranks (found after the warm-up)

    def signal_trainer(sig):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    paused: list[tuple[float, float]] = []  # (start, end) wall-clock intervals the trainer was stopped
    raw_steps, raw_s, raw_cpu = 0, 0.0, 0.0
    metrics_path = run_dir / "metrics.jsonl"
    # metrics lines written -> the trainer's CPU seconds within 50 ms after the last of them was
    cpu_at: dict[int, float] = {}

    def lines_written() -> int:
        return metrics_path.read_bytes().count(b"\n") if metrics_path.is_file() else 0

    def run_trainer(seconds_: float, pids: list[int]) -> None:
        """Let the trainer run `seconds_`, noting its CPU time whenever it writes a metrics line."""
        until = time.perf_counter() + seconds_
        seen = max(cpu_at, default=lines_written())  # only lines seen appearing are timed
        while (left := until - time.perf_counter()) > 0:
            time.sleep(min(0.05, left))
            if (lines := lines_written()) > seen:
                cpu_at[lines], seen = _cpu_s(pids), lines

    try:
        deadline = time.time() + start_timeout_s
        while len(_metrics(run_dir)) < warmup:  # start-up, compilation and warm-up are not timed
            if proc.poll() is not None:
                raise RuntimeError(f"the trainer exited ({proc.returncode}) before its warm-up; see {log.name}")
            if time.time() > deadline:
                raise RuntimeError(
                    f"the trainer did not finish {warmup} rounds in {start_timeout_s:.0f} s; see {log.name}"
                )
            time.sleep(0.05)
        trained_from = time.time()
        pids = _process_tree(proc.pid)  # every rank has started by now
        while time.time() - trained_from - sum(e - b for b, e in paused) < seconds:
            run_trainer(trainer_slice_s, pids)
            if proc.poll() is not None:
                raise RuntimeError(f"the trainer exited ({proc.returncode}) while being timed; see {log.name}")
            signal_trainer(signal.SIGSTOP)
            begin = time.time()
            steps, elapsed, cpu = raw.run(raw_slice_s)
            raw_steps, raw_s, raw_cpu = raw_steps + steps, raw_s + elapsed, raw_cpu + cpu
            signal_trainer(signal.SIGCONT)
            paused.append((begin, time.time()))
        # The trainer (each rank: mpirun would end them at once) finishes its round, checkpoints and exits 75.
        for pid in _process_tree(proc.pid, leaves=True):
            os.kill(pid, signal.SIGTERM)
        # (mpirun reports its ranks' ending in its own way; the ranks' metrics are what is read)
        if proc.wait(timeout=300) != EXIT_PREEMPTED and ranks == 1:
            raise RuntimeError(
                f"the trainer exited {proc.returncode} after SIGTERM, not {EXIT_PREEMPTED}; see {log.name}"
            )
    finally:
        if proc.poll() is None:
            pids = _process_tree(proc.pid)
            signal_trainer(signal.SIGKILL)
            proc.wait()
        log.close()
    trainer = trainer_sps(run_dir, paused, warmup)
    env_sps = raw_steps / raw_s
    out = {
        "env_sps": round(env_sps, 1),
        "trainer_sps": round(trainer["sps"], 1),
        "ratio": round(trainer["sps"] / env_sps, 4),
        "trainer_updates": trainer["updates"],
        "raw_slices": len(paused),
        "trainer_seconds": round(trainer["seconds"], 1),
    }
    out.update(_cpu_per_step(_metrics(run_dir), cpu_at, warmup, raw_cpu / max(raw_steps, 1)))
    return out


def _cpu_per_step(lines: list[dict], cpu_at: dict, warmup: int, raw_cpu_per_step: float) -> dict:
    """CPU microseconds per agent step, trainer (all its processes and threads, between the first and the
    last metrics line seen after the warm-up) and raw envpool, and their ratio raw / trainer.

    Why: where every core the trainer runs on is its own (one core per rank, or the whole machine), its
    steps/s is about 1 / (CPU time per step), and CPU time, unlike wall-clock time, is not inflated by
    other programs waiting for the same cores: on a machine shared with other work, the steadier ratio.
    """
    seen = sorted(n for n in cpu_at if warmup <= n <= len(lines))
    if len(seen) < 2:
        return {}
    a, b = seen[0], seen[-1]
    trainer = (cpu_at[b] - cpu_at[a]) / max(lines[b - 1]["step"] - lines[a - 1]["step"], 1)
    return {
        "trainer_cpu_us_per_step": round(trainer * 1e6, 1),
        "raw_cpu_us_per_step": round(raw_cpu_per_step * 1e6, 1),
        "cpu_ratio": round(raw_cpu_per_step / trainer, 4),
    }


def _process_tree(root: int, leaves: bool = False) -> list[int]:
    """`root` and every process below it (Linux /proc; `leaves`: only those without children, i.e. the
    ranks under mpirun). mpirun's proxies and ranks each start their own session, so the trainer's
    ranks are found by parentage, not by process group."""
    children: dict[int, list[int]] = {}  # parent pid -> child pids
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return [pid for pid in tree if pid not in children] if leaves else tree


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) used so far by the processes `pids` that still run."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = fields[fields.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])
    return total / os.sysconf("SC_CLK_TCK")


def _bench_config(cfg: Config) -> dict:
    cfg_dict = to_dict(cfg)
    cfg_dict["run"].update(total_steps=10**12, checkpoint_every=10**9, tensorboard=False)
    return cfg_dict


def _repeats(title: str, raw_label: str, repeats: int, run_dir: str | None, one_repeat, extra: dict) -> int:
    """Run `one_repeat(path)` `repeats` times, print the table and the JSON line of the median-ratio repeat."""
    rows, ratios, results = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats):
            path = Path(run_dir) / f"repeat_{k + 1}" if run_dir else Path(tmp) / f"bench_run_{k + 1}"
            result = one_repeat(path)
            ratios.append(result["ratio"])
            results.append(result)
            rows.append(
                [
                    str(k + 1),
                    result["env_sps"],
                    result["trainer_sps"],
                    f"{result['ratio']:.3f}",
                    f"{result['cpu_ratio']:.3f}" if "cpu_ratio" in result else "-",
                    f"{result['trainer_seconds']:.0f} s, {result['raw_slices']} raw slices",
                ]
            )
    # The repeat with the median ratio (the lower middle one for an even count) speaks for the run:
    # its raw and trainer steps/s are the ones that ratio was measured from.
    mid = sorted(range(repeats), key=lambda k: ratios[k])[(repeats - 1) // 2]
    if repeats > 1:
        rows.append([f"median: repeat {mid + 1}", *rows[mid][1:]])
    _table(
        title,
        [
            "repeat",
            raw_label,
            "trainer (valid steps, incl. updates)",
            "ratio trainer / raw",
            "ratio by CPU time per step",
            "timed",
        ],
        rows,
    )
    print(json.dumps({**results[mid], "median_repeat": mid + 1, "per_repeat": results, **extra}))
    return 0


def throughput(cfg: Config, seconds: float, run_dir: str | None = None, repeats: int = 3) -> int:
    """`jaxpong bench`: raw envpool steps/s and trainer steps/s on the same settings, interleaved.

    Each repeat is a fresh trainer process whose timed `seconds` are interleaved with slices of raw
    envpool (see `interleaved_repeat`); the repeat with the median ratio is the one reported.
    """
    cfg_dict = _bench_config(cfg)
    raw = RawEnv(cfg)
    try:
        return _repeats(
            f"jaxpong bench: {cfg.algo.algo}, {cfg.model.network} on {cfg.model.obs_mode}, "
            f"{cfg.env.num_envs} envs ({'async' if cfg.is_async else 'sync'}), {os.cpu_count()} cores",
            "raw envpool (random actions)",
            repeats,
            run_dir,
            lambda path: interleaved_repeat(cfg_dict, raw, seconds, path),
            {"algo": cfg.algo.algo, "num_envs": cfg.env.num_envs, "async": cfg.is_async, "seconds": seconds},
        )
    finally:
        raw.close()

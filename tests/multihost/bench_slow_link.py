"""A slow link between hosts, measured (`make bench-slow-link`, root): HOSTS namespace hosts x RANKS ranks
train the default config for SECONDS, first with free links, then with the last host's link rate-limited (tc
tbf, both directions). Per run: round time, the ranks' collect / update (with its allreduces) / exchange-wait
seconds per round, steps/s, the links rank 0 measured at start (links.jsonl) and the report's finding.
Results in OUT/results.json.

    python tests/multihost/bench_slow_link.py [--rate 200mbit] [--seconds 60] [--ranks-per-host 1] [--hosts 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from netns import Hosts  # noqa: E402

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def one_run(hosts: Hosts, out: Path, per_host: int, seconds: float, label: str) -> dict:
    run_dir = out / label
    hostfile = hosts.hostfile(out / "hostfile", per_host)
    cmd = [
        str(MPIEXEC),
        *hosts.mpiexec_args(hostfile),
        "-n",
        str(hosts.n * per_host),
        sys.executable,
        "-m",
        "jaxpong",
        "train",
        "--config",
        "configs/default.yaml",
        "--run-dir",
        str(run_dir),
        "--overwrite",
        "--time-limit-s",
        str(seconds),
        "--num-threads",
        "1",
        "--progress",
        "log",
    ]
    before = hosts.bytes_through()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **hosts.mpi_env()})
    if proc.returncode != 0:
        raise SystemExit(f"{label}: training failed ({proc.returncode}): {proc.stderr[-2000:]}")
    through = hosts.bytes_through() - before
    records = [json.loads(line) for line in (run_dir / "ranks.jsonl").read_text().splitlines() if line.strip()]
    steady = [r for r in records if r["update"] > 2]  # after the compiles
    by_rank: dict[int, list] = {}
    for r in steady:
        by_rank.setdefault(r["rank"], []).append(r)
    rounds = sorted({r["update"] for r in steady})
    ends = {
        u: max(r["start_s"] + r["collect_s"] + r["compute_s"] + r["wait_s"] for r in steady if r["update"] == u)
        for u in rounds
    }
    starts = {u: min(r["start_s"] for r in steady if r["update"] == u) for u in rounds}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = metrics[-1]["step"] - next(m["step"] for m in metrics if m["update"] == rounds[0])
    span = metrics[-1]["time_s"] - next(m["time_s"] for m in metrics if m["update"] == rounds[0])
    report = (run_dir / "imbalance.txt").read_text()
    return {
        "label": label,
        "rounds": len(rounds),
        "round_s": float(np.median([ends[u] - starts[u] for u in rounds])),
        "steps_per_s": steps / span,
        "link_bytes_per_round": through / max(len(metrics), 1),
        "ranks": {
            rank: {
                "host": rs[0].get("host", ""),
                "collect_s": float(np.mean([r["collect_s"] for r in rs])),
                "update_s": float(np.mean([r["compute_s"] for r in rs])),
                "wait_s": float(np.mean([r["wait_s"] for r in rs])),
                "wait_fraction": float(
                    sum(r["wait_s"] for r in rs) / sum(r["collect_s"] + r["compute_s"] + r["wait_s"] for r in rs)
                ),
            }
            for rank, rs in sorted(by_rank.items())
        },
        "links": [json.loads(line) for line in (run_dir / "links.jsonl").read_text().splitlines() if line.strip()][-1][
            "links"
        ]
        if (run_dir / "links.jsonl").exists()
        else [],
        "finding": report.split("finding: ")[-1].strip(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="200mbit", help="the last host's link rate in the second run (tc tbf syntax)")
    p.add_argument("--hosts", type=int, default=2, help="namespace hosts (2 to 4); the last one's link is limited")
    p.add_argument("--seconds", type=float, default=60.0, help="training time of each run")
    p.add_argument("--ranks-per-host", type=int, default=1)
    p.add_argument("--out", default="runs/slow_link")
    a = p.parse_args(argv)
    why = Hosts.unavailable()
    if why:
        print(why, file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with Hosts(a.hosts) as hosts:
        results.append(one_run(hosts, out, a.ranks_per_host, a.seconds, "free"))
        hosts.limit(a.hosts - 1, a.rate)
        results.append(one_run(hosts, out, a.ranks_per_host, a.seconds, f"host{a.hosts - 1}_{a.rate}"))
    for r in results:
        print(
            f"{r['label']}: round {r['round_s']:.3f} s, {r['steps_per_s']:,.0f} steps/s, "
            f"{r['link_bytes_per_round'] / 1e6:.1f} MB over the links a round"
        )
        for rank, s in r["ranks"].items():
            print(
                f"  rank {rank} on {s['host']}: collect {s['collect_s']:.3f} s, update {s['update_s']:.3f} s, "
                f"wait {s['wait_s']:.3f} s ({100 * s['wait_fraction']:.1f} %)"
            )
        for k in r["links"]:
            print(f"  link to {k['host']} (rank {k['rank']}): {k['mb_s']:,.1f} MB/s, round trip {k['rtt_ms']:.3g} ms")
        print(f"  report: {r['finding']}")
    (out / "results.json").write_text(json.dumps({"rate": a.rate, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

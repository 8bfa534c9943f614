"""Checking the simulator (jaxpong/scale/simulate.py) against real runs: `jaxpong simulate --validate` launches
`train` runs of 1, 2 and 4 ranks (with and without a slow rank; deadline 0, auto, SECONDS) and compares
each rank's measured wait fraction with the model's prediction from that run's own distributions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxpong.base.errors import ConfigError
from jaxpong.scale.simulate import load_measured, measured_from_run, mode_of, simulate

STARTUP_S = 20.0
VALIDATION_RUNS = (  # (ranks, slow rank, deadline)
    (1, -1, "0"),
    (1, -1, "auto"),
    (2, -1, "0"),
    (2, -1, "auto"),
    (2, 1, "0"),
    (2, 1, "auto"),
    (2, 1, "WINDOW"),
    (4, 1, "0"),
    (4, 1, "auto"),
)


def _mpirun() -> list[str]:
    here = Path(sys.executable).parent / "mpirun"
    exe = str(here) if here.exists() else shutil.which("mpirun") or shutil.which("mpiexec")
    if not exe:
        raise ConfigError(
            "--validate launches real runs with mpirun, which is not on PATH; install mpich (make install)"
        )
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return [exe, "--oversubscribe"] if "Open MPI" in version else [exe]  # mpich oversubscribes without a flag


def validate(
    seconds: float,
    out_dir,
    rounds: int,
    window_s: float,
    slow_factor: float,
    num_envs: int,
    config: str | None,
    seed: int,
) -> dict:
    """Real `train` runs (1, 2, 4 ranks; with and without a slow rank; deadline 0, auto, SECONDS), each
    compared with the simulator driven by that run's own measured distributions."""
    base = load_measured()
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="jaxpong-validate-"))
    out.mkdir(parents=True, exist_ok=True)
    launcher = _mpirun()
    rows = []
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    for ranks, slow, deadline in VALIDATION_RUNS:
        deadline = f"{window_s:g}" if deadline == "WINDOW" else deadline
        name = f"n{ranks}_{'slow' if slow >= 0 else 'even'}_d{deadline}"
        run_dir = out / name
        oversubscribed = ranks > cores
        # train's --time-limit-s counts from process start: add start-up (imports, compilation), and give
        # oversubscribed runs, whose ranks share cores, twice the time
        limit = (seconds + STARTUP_S) * (2 if oversubscribed else 1)
        cmd = launcher + [
            "-n",
            str(ranks),
            sys.executable,
            "-m",
            "jaxpong",
            "train",
            "--run-dir",
            str(run_dir),
            "--overwrite",
        ]
        if config:
            cmd += ["--config", config]
        else:  # the setup the validation was measured with (then the built-in defaults): sync envs
            cmd += ["--batch-size", "0", "--learning-rate", "5e-4", "--point-episodes", "false"]
        cmd += [
            "--network",
            "mlp",
            "--obs-mode",
            "diff64",
            "--algo",
            "ppo",
            "--num-envs",
            str(num_envs),
            "--num-threads",
            "1",
            "--num-steps",
            "32",
            "--update-epochs",
            "2",
            "--num-minibatches",
            "2",
            "--total-steps",
            "1000000000",
            "--time-limit-s",
            f"{limit:g}",
            "--checkpoint-every",
            "1000000",
            "--progress",
            "off",
            "--deadline-s",
            deadline,
            "--seed",
            str(seed),
        ]
        if slow >= 0:
            cmd += ["--slow-rank", str(slow), "--slow-factor", f"{slow_factor:g}"]
        print(f"[validate] {name}: {' '.join(cmd[1:3])} ... {' '.join(cmd[-8:])}", file=sys.stderr, flush=True)
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit + 300).returncode
        if rc != 0:
            raise ConfigError(f"validation run {name} failed (exit {rc}); see {out / (name + '.log')}")
        from jaxpong.report import stats as report

        stats = report.rank_stats(report.read_ranks(run_dir))
        measured = measured_from_run(run_dir, base)
        mode = mode_of(_parse_deadline(deadline))
        outcome = simulate(measured, mode, ranks, rounds=rounds, seed=seed)
        assert outcome.rank_wait_fraction is not None  # simulate() always sets it
        for s in stats:
            predicted = float(outcome.rank_wait_fraction[s.rank])
            rows.append(
                {
                    "run": name,
                    "ranks": ranks,
                    "slow_rank": slow,
                    "deadline_s": deadline,
                    "mode": mode,
                    "rank": s.rank,
                    "rounds": s.rounds,
                    "measured": round(s.wait_fraction, 4),
                    "predicted": round(predicted, 4),
                    "error": round(abs(predicted - s.wait_fraction), 4),
                    "oversubscribed": oversubscribed,
                }
            )
    return {"rows": rows, "runs_dir": str(out), "cores": cores, "load": (load_before, os.getloadavg()[0])}


def _parse_deadline(text: str):
    from jaxpong.base.config import parse_deadline

    return parse_deadline(text)


def validation_table(rows: list[dict]) -> str:
    lines = [
        "| run | ranks | slow rank | --deadline-s | mode | rank | rounds | measured wait | predicted wait | error |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        note = " (oversubscribed)" if r["oversubscribed"] else ""
        lines.append(
            f"| {r['run']}{note} | {r['ranks']} | {r['slow_rank'] if r['slow_rank'] >= 0 else '-'} | "
            f"{r['deadline_s']} | {r['mode']} | {r['rank']} | {r['rounds']} | {r['measured']:.3f} | "
            f"{r['predicted']:.3f} | {r['error']:.3f} |"
        )
    return "\n".join(lines)


def run(
    *,
    seconds: float,
    out_dir=None,
    rounds: int = 1000,
    window_s: float = 0.15,
    slow_factor: float = 2.0,
    num_envs: int = 4,
    config: str | None = None,
    seed: int = 0,
) -> int:
    """`jaxpong simulate --validate`: the runs, their table, the largest error and one JSON line."""
    report = validate(
        seconds=seconds,
        out_dir=out_dir,
        rounds=rounds,
        window_s=window_s,
        slow_factor=slow_factor,
        num_envs=num_envs,
        config=config,
        seed=seed,
    )
    rows = report["rows"]
    print(validation_table(rows))
    fair = [r for r in rows if not r["oversubscribed"]]
    worst = max((r["error"] for r in fair), default=0.0)
    worst_all = max((r["error"] for r in rows), default=0.0)
    print(
        f"\nlargest error {worst:.3f} with at most {report['cores']} ranks on {report['cores']} cores "
        f"({'within' if worst <= 0.10 else 'NOT within'} 0.10); {worst_all:.3f} including oversubscribed runs. "
        f"Load average (1 min) {report['load'][0]:.1f} before, {report['load'][1]:.1f} after: a load above "
        f"{report['cores']} means other work shared the cores. Runs kept in {report['runs_dir']}"
    )
    print(
        json.dumps(
            {
                "validation": rows,
                "max_error": worst,
                "max_error_oversubscribed": worst_all,
                "within_0.10": worst <= 0.10,
            }
        )
    )
    return 0

"""Measuring the collectives the simulator (jaxpong/scale/simulate.py) models: under `mpirun -n 2`, time
allreduce over message sizes and train's per-round exchange, and fit the alpha-beta model.

`mpirun -n 2 python -m jaxpong simulate --calibrate FILE`; `jaxpong simulate --collectives FILE` uses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxpong.base.errors import ConfigError
from jaxpong.scale.simulate import Collectives


def calibrate(out_path) -> int:
    """Under `mpirun -n 2` (or more): time allreduce over message sizes and the per-round host gather,
    fit the alpha-beta model, and (rank 0) write the Collectives as JSON."""
    from jaxpong.ranks.placement import launched_size

    if launched_size() < 2:
        raise ConfigError(
            "--calibrate times collectives between ranks: run it as mpirun -n 2 python -m jaxpong "
            "simulate --calibrate FILE"
        )
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    sizes = [2**k for k in range(3, 24, 2)]  # 8 B .. 8 MiB
    times = []
    for nbytes in sizes:
        buf = np.ones(nbytes // 4 or 1, np.float32)
        out = np.empty_like(buf)
        reps = int(min(300, max(10, 3e7 / nbytes)))
        comm.Allreduce(buf, out)
        best = math.inf
        for _ in range(3):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(reps):
                comm.Allreduce(buf, out)
            best = min(best, (time.perf_counter() - t) / reps)
        times.append(comm.allreduce(best, op=MPI.MAX))
    # T(n) = 2 (N-1) alpha + 2 (N-1)/N n / beta: alpha from the smallest messages (pure latency), beta from the
    # largest (pure bandwidth); a least-squares line is at the mercy of one noisy size on a shared machine
    alpha = min(times[:3]) / (2 * (size - 1))
    beta = 2 * (size - 1) / size * sizes[-1] / max(times[-1] - 2 * (size - 1) * alpha, 1e-9)
    gather_t, old_t, gather_bytes = _time_exchanges(comm, size)
    gather_latency = max(1e-7, gather_t - (size - 1) * gather_bytes / beta) / math.ceil(math.log2(size))
    coll = Collectives(
        latency_s=alpha,
        bandwidth_bytes_per_s=beta,
        gather_latency_s=gather_latency,
        gather_bytes_per_rank=float(gather_bytes),
    )
    if comm.Get_rank() == 0:
        doc = {
            "collectives": dataclasses.asdict(coll),
            "ranks": size,
            "library": MPI.Get_library_version().split("\n")[0],
            "allreduce_s": dict(zip(map(str, sizes), times)),
            "exchange_s": gather_t,
            "pickled_allgather_s": old_t,
        }
        Path(out_path).write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(doc))
    return 0


def _time_exchanges(comm, size: int, reps: int = 200) -> tuple[float, float, int]:
    """(seconds of train's per-round exchange, seconds of the pickled allgather it replaced, bytes of one
    rank's gathered row), each the best of 5 x `reps` after a barrier, the slowest rank's. Both include
    the arrival check. The records are the default config's: 3 moments, 32 envs' game slots."""
    from mpi4py import MPI

    from jaxpong.ranks.comm import MpiComm
    from jaxpong.ranks.exchange import FILL_BINS, agreed_layout, games_per_row, log_layout, record_row

    mpi = MpiComm()
    record = {
        "update": 1,
        "rank": comm.Get_rank(),
        "start_s": 0.0,
        "collect_s": 0.1,
        "compute_s": 0.1,
        "wait_s": 0.0,
        "valid_samples": 2048,
        "masked_samples": 0,
        "cut_by_deadline": False,
        "deadline_s": None,
    }
    games = [(-21.0, 812)]
    layout, logs = agreed_layout(3), log_layout(games_per_row(32, 80))
    agreed = layout.pack(
        {
            "moments": [2048.0, 1.0, 2.0],
            "fill_counts": np.eye(FILL_BINS)[700],
            "checksum_max": 1.0,
            "checksum_neg_min": -1.0,
        }
    )
    row = record_row(logs, record, games)
    # What each rank sent before: its previous record, games, moments and flags, pickled, to every rank.
    payload = {
        "records": [record],
        "fill_s": 0.1,
        "moments": np.zeros(3),
        "games": games,
        "truncated": 0,
        "filled": 2048,
        "masked": 0,
        "window_reward": 0.0,
        "signal": None,
        "io_failure": None,
        "elapsed_s": 1.0,
        "process_s": 1.0,
        "checksum": None,
        "sparse_length": 4096,
    }

    def new():
        mpi.exchange(agreed, layout, row, timeout_s=600, label="calibration")

    def old():
        mpi._arrive(600, "calibration")
        comm.allgather(payload)

    best = {"new": math.inf, "old": math.inf}
    new(), old()
    for _ in range(5):  # interleaved, so that a busy spell of the machine hits both
        for name, once in (("new", new), ("old", old)):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(reps):
                once()
            best[name] = min(best[name], (time.perf_counter() - t) / reps)
    return comm.allreduce(best["new"], op=MPI.MAX), comm.allreduce(best["old"], op=MPI.MAX), row.nbytes

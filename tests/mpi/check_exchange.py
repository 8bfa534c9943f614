"""Under mpirun -n R: the per-round exchange on real MPI. Each rank sends known values; every rank checks
the reduced record against sums and maxima computed by hand, rank 0 checks the gathered rows."""

import math
import sys

import numpy as np

from jaxpong.ranks.comm import MpiComm
from jaxpong.ranks.exchange import (
    FILL_BINS,
    agreed_layout,
    fill_bin,
    games_per_row,
    log_layout,
    lower_median_of_counts,
    read_rows,
    record_row,
)

comm = MpiComm()
rank, size = comm.rank, comm.size
layout = agreed_layout(3)
logs = log_layout(games_per_row(2, 64))
fills = [0.5 + 0.25 * r for r in range(size)]  # rank r fills its buffer in 0.5 + r/4 s
counts = np.zeros(FILL_BINS)
counts[fill_bin(fills[rank])] = 1
agreed = layout.pack(
    {
        "moments": [rank + 1, 10 * rank, 0.5],
        "filled": 100 + rank,
        "games": rank % 2,
        "rank0_process_s": 12.5 if rank == 0 else 0.0,
        "fill_counts": counts,
        "signal": 15 if rank == size - 1 else 0,
        "sparse_length": 2048 * (rank + 1),
        "checksum_max": 3.0 + rank,
        "checksum_neg_min": -(3.0 + rank),
        "slowest_round_s": 0.1 * rank,
    }
)
record = {
    "update": 7,
    "rank": rank,
    "start_s": 1.0,
    "collect_s": 0.2 + rank,
    "compute_s": 0.1,
    "wait_s": 0.01 * rank,
    "valid_samples": 64 + rank,
    "masked_samples": rank,
    "cut_by_deadline": rank == 1,
    "deadline_s": None,
}
games = [(-21.0 + rank, 800 + rank)] * (rank % 2)
for _ in range(3):  # the same op and datatype serve every round
    reduced, rows = comm.exchange(agreed, layout, record_row(logs, record, games), timeout_s=300, label="the check")
facts = layout.unpack(reduced)
expect = {
    "filled": sum(100 + r for r in range(size)),
    "games": sum(r % 2 for r in range(size)),
    "rank0_process_s": 12.5,
    "signal": 15,
    "sparse_length": 2048 * size,
    "checksum_max": 2.0 + size,
    "checksum_neg_min": -3.0,
    "slowest_round_s": 0.1 * (size - 1),
    "io_failure": 0.0,
}
bad = {k: (facts[k], v) for k, v in expect.items() if not math.isclose(facts[k], v)}
if not np.allclose(facts["moments"], [sum(r + 1 for r in range(size)), 10 * sum(range(size)), 0.5 * size]):
    bad["moments"] = facts["moments"]
median = lower_median_of_counts(facts["fill_counts"])
true_median = sorted(fills)[(size - 1) // 2]
if not abs(median / true_median - 1) < 0.006:
    bad["lower median"] = (median, true_median)
if rank == 0:
    records, by_rank = read_rows(logs, rows)
    if (
        [r["rank"] for r in records] != list(range(size))
        or records[1]["collect_s"] != 1.2
        or not records[1]["cut_by_deadline"]
    ):
        bad["records"] = records
    if by_rank != [[(-21.0 + r, 800 + r)] * (r % 2) for r in range(size)]:
        bad["games"] = by_rank
elif rows is not None:
    bad["rows"] = "a rank other than 0 received rows"
if bad:
    print(f"FAIL rank {rank}: {bad}", flush=True)
    sys.exit(1)
print(f"OK exchange rank {rank} of {size}", flush=True)

"""The per-round exchange: fixed-size records whose reduction sums some fields and takes the maximum of
others, the fill-time histogram the auto deadline is read from, and the rows rank 0 gathers. By hand,
then on real MPI at 3 and 16 ranks."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpong.play.deadline import Deadline, lower_median
from jaxpong.ranks.exchange import (
    FILL_BINS,
    MAX,
    SUM,
    Layout,
    agreed_layout,
    fill_bin,
    games_per_row,
    log_layout,
    lower_median_of_counts,
    read_rows,
    record_row,
)

REPO = Path(__file__).resolve().parent.parent
MPIRUN = Path(sys.executable).parent / "mpirun"


def test_layout_packs_and_combines_sums_and_maxima():
    layout = Layout((("a", 2, SUM), ("b", 1, SUM), ("c", 1, MAX), ("d", 2, MAX)))
    assert layout.width == 6 and layout.sum_width == 3
    x = layout.pack({"a": [1.0, 2.0], "b": 3.0, "c": -5.0, "d": [7.0, 1.0]})
    y = layout.pack({"a": [10.0, 20.0], "b": 30.0, "c": -9.0, "d": [2.0, 4.0]})
    np.testing.assert_array_equal(x, [1, 2, 3, -5, 7, 1])
    layout.combine(x, y)
    assert layout.unpack(x) == {"a": pytest.approx([11.0, 22.0]), "b": 33.0, "c": -5.0, "d": pytest.approx([7.0, 4.0])}
    with pytest.raises(AssertionError):
        Layout((("m", 1, MAX), ("s", 1, SUM)))  # sums must come first


def test_agreed_record_does_not_grow_with_ranks():
    # 3 moments + 5 counters + the histogram + 8 maxima, whatever the rank count: about 9 KB a round.
    assert agreed_layout(3).width == 3 + 5 + FILL_BINS + 8
    assert agreed_layout(3).width * 8 < 10_000


@pytest.mark.parametrize(
    "seconds,expected", [(1e-3, 0), (0.0009, 0), (1.0, 3 * 192), (10.0, 4 * 192), (5e3, FILL_BINS - 1)]
)
def test_fill_bin(seconds, expected):
    assert fill_bin(seconds) == expected


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_fill_bin_ignores_times_that_say_nothing(bad):
    assert fill_bin(bad) is None


def test_histogram_lower_median_is_within_its_bin_of_the_exact_one():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 16, 255, 1536):
        times = np.exp(rng.normal(np.log(0.3), 0.5, n))
        counts = np.zeros(FILL_BINS)
        for t in times:
            counts[fill_bin(t)] += 1
        assert lower_median_of_counts(counts) == pytest.approx(lower_median(times), rel=0.0061)
    assert lower_median_of_counts(np.zeros(FILL_BINS)) is None


def test_deadline_from_the_histogram():
    counts = np.zeros(FILL_BINS)
    for t in (1.0, 2.0, 4.0, 8.0):  # lower median of four: the second, 2 s
        counts[fill_bin(t)] += 1
    deadline = Deadline("auto", margin=0.1, world_size=4)
    deadline.observe_counts(counts)
    assert deadline.seconds() == pytest.approx(2.0 * 1.1, rel=0.0061)
    fixed = Deadline(2.0, world_size=4)
    fixed.observe_counts(counts)
    assert fixed.seconds() == 2.0


def test_rows_carry_records_and_games_to_rank_0():
    layout = log_layout(games_per_row(num_envs=2, buffer_steps=80))
    assert games_per_row(2, 80) == 4 and games_per_row(1, 4096) == 6 and games_per_row(32, 80) == 32
    record = {
        "update": 5,
        "rank": 1,
        "start_s": 2.5,
        "collect_s": 0.25,
        "compute_s": 0.125,
        "wait_s": 0.0625,
        "valid_samples": 120,
        "masked_samples": 8,
        "cut_by_deadline": True,
        "deadline_s": None,
        "eval_s": 3.5,
    }
    rows = np.stack(
        [
            record_row(layout, None, []),  # a rank's first round: no previous record
            record_row(layout, record, [(-20.0, 812), (3.0, 2400)]),
        ]
    )
    records, games = read_rows(layout, rows)
    assert records == [record]
    assert games == [[], [(-20.0, 812), (3.0, 2400)]]
    no_eval = dict(record, deadline_s=1.5)
    del no_eval["eval_s"]
    assert read_rows(layout, record_row(layout, no_eval, [])[None])[0] == [no_eval]
    with pytest.raises(AssertionError):
        record_row(layout, record, [(1.0, 900)] * 5)  # more games than the row holds: the caller keeps the rest


@pytest.mark.parametrize("ranks", [3, pytest.param(16, marks=pytest.mark.slow)])
def test_exchange_on_real_mpi(ranks):
    proc = subprocess.run(
        [str(MPIRUN), "-n", str(ranks), sys.executable, str(REPO / "tests" / "mpi" / "check_exchange.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ranks print concurrently, so lines may run into each other
    assert sorted(map(int, re.findall(rf"OK exchange rank (\d+) of {ranks}", proc.stdout))) == list(range(ranks))

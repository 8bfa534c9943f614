"""`jaxpong report` and `jaxpong simulate`: the simulator's maths against closed forms on synthetic
distributions, the report's numbers on a synthetic ranks.jsonl, and one real 2-rank run with a slow rank.

Nothing here checks timings against thresholds: only maths and what the commands write.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SMOKE_CONFIG
from jaxpong.cli.dispatch import main
from jaxpong.play.deadline import lower_median as train_lower_median
from jaxpong.report import finding as report_finding
from jaxpong.report import stats as report_stats
from jaxpong.scale import simulate as sim

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MPIRUN = Path(sys.executable).parent / "mpirun"
FREE = sim.Collectives(latency_s=0.0, bandwidth_bytes_per_s=1e30, gather_latency_s=0.0, gather_bytes_per_rank=0.0)


def synthetic(
    step=1e-3,
    compute=0.05,
    games=(1000.0,),
    points=(40.0,),
    envs=1,
    steps=100,
    masking="none",
    margin=0.0,
    window_s=0.05,
    ranks_measured=1,
    gap=0.0,
    headroom=0.0,
) -> sim.Measured:
    """Constant (or explicitly listed) distributions and free collectives: closed forms apply."""
    setup = sim.Setup(
        num_envs=envs,
        num_steps=steps,
        optimizer_steps=1,
        message_bytes=0.0,
        masking=masking,
        deadline_margin=margin,
        window_s=window_s,
        buffer_headroom=headroom,
    )
    return sim.Measured(
        step_time_s=[[step]] * ranks_measured,
        gap_s=[[gap]] * ranks_measured,
        compute_s=[compute],
        game_length_steps=list(games),
        point_interval_steps=list(points),
        typical_ranks=list(range(ranks_measured)),
        setup=setup,
        collectives=FREE,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# -- the simulator's maths ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["steps", "window", "deadline", "game"])
def test_constant_step_times_give_zero_wait(mode):
    out = sim.simulate(synthetic(), mode, ranks=64, rounds=20, smooth=False)
    assert out.wait_fraction == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(out.rank_wait_fraction, 0.0)
    assert out.efficiency == pytest.approx(1.0)
    assert out.masked_fraction == 0.0


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0])
def test_slow_rank_gives_the_closed_form_wait(factor):
    """Sync per num_steps, two ranks, rank 1 F times slower: rank 0 waits (F-1) T s every round."""
    T, s, c = 100, 1e-3, 0.05
    out = sim.simulate(
        synthetic(step=s, compute=c, steps=T),
        "steps",
        ranks=2,
        rounds=10,
        slow_rank=1,
        slow_factor=factor,
        smooth=False,
    )
    wait = (factor - 1) * T * s
    assert out.rank_wait_fraction[0] == pytest.approx(wait / (factor * T * s + c))
    assert out.rank_wait_fraction[1] == pytest.approx(0.0, abs=1e-12)
    assert out.efficiency == pytest.approx((T * s + factor * T * s + 2 * c) / (2 * (factor * T * s + c)))
    assert out.samples_per_s == pytest.approx(2 * T / (factor * T * s + c))


@pytest.mark.parametrize("headroom", [0.0, 0.1, 0.5])
def test_auto_deadline_cuts_the_slow_rank_in_closed_form(headroom):
    """Deadline D = lower median of the times to collect num_steps T, x (1 + margin) = the fast rank's x 1.2.
    The slow rank (F = 3) is cut after ceil(D / (F s)) steps; the fast one plays on until D or until its
    buffer of ceil(T (1 + headroom)) rows is full, then waits for the slow one."""
    T, s, c, F, margin = 100, 1e-3, 0.05, 3.0, 0.2
    out = sim.simulate(
        synthetic(step=s, compute=c, steps=T, margin=margin, headroom=headroom),
        "deadline",
        ranks=2,
        rounds=10,
        slow_rank=1,
        slow_factor=F,
        smooth=False,
    )
    deadline = T * s * (1 + margin)
    slow_steps = math.ceil(deadline / (F * s))
    slow_collect = slow_steps * F * s
    fast_steps = min(math.ceil(T * (1 + headroom)), math.ceil(deadline / s))
    fast_collect = fast_steps * s
    wall = max(slow_collect, fast_collect) + c
    assert out.rank_wait_fraction[0] == pytest.approx((wall - c - fast_collect) / wall, abs=1e-9)
    assert out.rank_wait_fraction[1] == pytest.approx((wall - c - slow_collect) / wall, abs=1e-9)
    assert out.samples_per_s == pytest.approx((fast_steps + slow_steps) / wall)
    assert out.efficiency == pytest.approx((fast_collect + slow_collect + 2 * c) / (2 * wall))
    if headroom == 0.0:  # a full buffer before the deadline: the fast rank idles for the difference
        assert out.rank_wait_fraction[0] > 0.05
    if headroom == 0.5:  # room to play until the deadline: nobody idles
        assert out.rank_wait_fraction[0] == pytest.approx(0.0, abs=1e-9)


def test_one_rank_has_no_auto_deadline():
    """As in train: one rank alone has nobody to wait for, so auto means no deadline (= steps)."""
    m = synthetic(step=1e-3, steps=100)
    a = sim.simulate(m, "deadline", ranks=1, rounds=10, smooth=False)
    b = sim.simulate(m, "steps", ranks=1, rounds=10, smooth=False)
    assert a.samples_per_s == pytest.approx(b.samples_per_s)


def test_window_mode_stops_at_the_window_or_the_buffer():
    """Fixed seconds: ceil(W / s) steps (the clock is read after each step), at most num_steps."""
    s, c = 1e-3, 0.0
    out = sim.simulate(
        synthetic(step=s, compute=c, steps=100, window_s=0.0305), "window", ranks=1, rounds=5, smooth=False
    )
    assert out.round_s == pytest.approx(31 * s)
    out = sim.simulate(
        synthetic(step=s, compute=c, steps=10, window_s=0.0305), "window", ranks=1, rounds=5, smooth=False
    )
    assert out.round_s == pytest.approx(10 * s)


def test_game_mode_waits_for_the_slowest_of_n_games():
    """One env per rank, game lengths a or b with probability 1/2: each round lasts the longest of N games,
    E[max] = b - (b - a) / 2^N, so efficiency = mean / E[max] (no update time)."""
    a, b, s = 800.0, 1600.0, 1e-3
    m = synthetic(step=s, compute=0.0, games=(a, b))
    for n in (1, 2, 8):
        out = sim.simulate(m, "game", ranks=n, rounds=4000, smooth=False, seed=3)
        expected_max = b - (b - a) / 2**n
        assert out.round_s == pytest.approx(s * expected_max, rel=0.02)
        assert out.efficiency == pytest.approx(((a + b) / 2) / expected_max, rel=0.02)
    # and efficiency falls as ranks grow
    effs = [sim.simulate(m, "game", ranks=n, rounds=500, smooth=False).efficiency for n in (1, 4, 64)]
    assert effs[0] > effs[1] > effs[2]


def test_masked_tail_with_evenly_spaced_points():
    """Points every d steps with a uniform phase: the tail after the last point is U * d, mean d / 2 per env
    and round, so the masked fraction is d / (2 T); window mode never masks."""
    d, T = 40.0, 400
    m = synthetic(steps=T, points=(d,), envs=8, masking="unscored")
    out = sim.simulate(m, "steps", ranks=16, rounds=400, smooth=False)
    assert out.masked_fraction == pytest.approx(d / (2 * T), rel=0.03)
    assert out.efficiency < 1.0
    assert sim.simulate(m, "window", ranks=16, rounds=20, smooth=False).masked_fraction == 0.0


def test_collective_cost_model():
    c = sim.Collectives(latency_s=1e-6, bandwidth_bytes_per_s=1e9, gather_latency_s=1e-4, gather_bytes_per_rank=1000)
    assert c.allreduce_s(1, 1e6) == 0.0 and c.gather_s(1) == 0.0
    assert c.allreduce_s(4, 1e6) == pytest.approx(2 * 3 * 1e-6 + 2 * 3 / 4 * 1e6 / 1e9)
    assert c.gather_s(1536) == pytest.approx(11 * 1e-4 + 1535 * 1000 / 1e9)
    # collectives lengthen every round by optimizer_steps allreduces and one gather, for every rank
    m = synthetic(step=1e-3, compute=0.01, steps=100)
    m.collectives = c
    m.setup.message_bytes, m.setup.optimizer_steps = 1e6, 4
    out = sim.simulate(m, "steps", ranks=4, rounds=5, smooth=False)
    assert out.round_s == pytest.approx(0.1 + c.gather_s(4) + 0.01 + 4 * c.allreduce_s(4, 1e6))


def test_lower_median_matches_train():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 7, 10):
        x = rng.random(n)
        assert sim.lower_median(x) == train_lower_median(list(x))


def test_parse_ranks():
    assert sim.parse_ranks("1,2,4,...,64") == [1, 2, 4, 8, 16, 32, 64]
    full = sim.parse_ranks("1,2,4,...,1536,10000")
    assert full[:3] == [1, 2, 4] and full[-3:] == [1024, 1536, 10000]
    assert sim.parse_ranks("8, 2") == [2, 8]
    for bad in ("", "0", "a,b", "1,...,8", "4,2,...,8"):
        with pytest.raises(sim.ConfigError):
            sim.parse_ranks(bad)


def test_timing_spread_zero_is_constant():
    m = synthetic()
    m.step_time_s = [[1e-3, 2e-3, 4e-3]]
    m.compute_s = [0.01, 0.02, 0.04]
    flat = sim.scale_spread(m, 0.0)
    assert flat.step_time_s == [[2e-3] * 3]
    assert flat.compute_s == pytest.approx([0.02] * 3)
    assert m.step_time_s == [[1e-3, 2e-3, 4e-3]]  # the original is untouched
    assert sim.simulate(flat, "steps", ranks=32, rounds=10).wait_fraction == pytest.approx(0.0, abs=1e-12)


def test_shipped_defaults_load_and_say_how_they_were_measured():
    m = sim.load_measured()
    assert m.source.get("measured_with"), "the defaults must record the commands that measured them"
    assert len(m.game_length_steps) >= 20 and m.setup.num_envs >= 1
    out = sim.simulate(m, "deadline", ranks=8, rounds=20)
    assert 0.0 < out.efficiency <= 1.0


# -- report on a synthetic run -----------------------------------------------------------------------
def write_synthetic_run(run_dir: Path) -> list[dict]:
    """3 ranks, 6 rounds; rank 2 collects 0.3 s, ranks 0 and 1 0.1 s and 0.15 s; the first round is slow."""
    run_dir.mkdir(parents=True)
    records, t = [], 0.0
    collects = {0: 0.1, 1: 0.15, 2: 0.3}
    for update in range(1, 7):
        first = update == 1
        arrive = {r: c + (1.0 if first else 0.0) for r, c in collects.items()}
        last = max(arrive.values())
        for rank in range(3):
            records.append(
                {
                    "update": update,
                    "rank": rank,
                    "start_s": round(t, 6),
                    "collect_s": arrive[rank],
                    "compute_s": 0.05,
                    "wait_s": round(last - arrive[rank] + 0.001, 6),
                    "valid_samples": 128 if rank < 2 else 64,
                    "masked_samples": 0 if rank < 2 else 16,
                    "cut_by_deadline": rank == 2,
                    "deadline_s": None,
                }
            )
        t += last + 0.001 + 0.05 + 0.002
    (run_dir / "ranks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "update": u,
                    "step": u * 320,
                    "charts/episodes": u,
                    "charts/episodic_length": 900.0 + 10 * u,
                    "charts/episodic_return": -20.0,
                }
            )
            + "\n"
            for u in range(1, 7)
        )
    )
    return records


def test_report_numbers_on_a_synthetic_run(tmp_path, capsys):
    run = tmp_path / "run"
    write_synthetic_run(run)
    stats = {s.rank: s for s in report_stats.rank_stats(report_stats.read_ranks(run))}
    # rounds 2..6 only (the first includes compilation)
    assert all(s.rounds == 5 for s in stats.values())
    for rank, collect in ((0, 0.1), (1, 0.15), (2, 0.3)):
        wait = 0.3 - collect + 0.001
        assert stats[rank].collect_s == pytest.approx(collect)
        assert stats[rank].wait_s == pytest.approx(wait)
        assert stats[rank].wait_fraction == pytest.approx(wait / (collect + 0.05 + wait))
    assert [stats[r].last_arrivals for r in range(3)] == [0, 0, 5]
    assert stats[2].masked_fraction == pytest.approx(16 / 80)
    assert stats[2].valid_samples == 5 * 64 and stats[2].masked_samples == 5 * 16
    assert stats[2].cut_rounds == 5

    code = main(["report", str(run)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = last_json(out)
    assert [r["rank"] for r in doc["ranks"]] == [0, 1, 2]
    assert doc["ranks"][2]["last_arrivals"] == 5
    assert doc["ranks"][0]["wait_fraction"] == pytest.approx(stats[0].wait_fraction, abs=1e-4)
    assert doc["ranks"][2]["masked_fraction"] == pytest.approx(0.2, abs=1e-4)
    assert "rank 2" in doc["finding"] and "late" in doc["finding"]
    assert "masked" in doc["finding"]
    assert (run / "imbalance.png").read_bytes()[:8] == PNG_MAGIC
    assert "finding:" in (run / "imbalance.txt").read_text()
    table = out.split("finding:")[0]
    assert "wait %" in table and len([l for l in table.splitlines() if l.strip()[:1].isdigit()]) == 3


def test_finding_without_a_persistent_late_sender():
    stats = [
        report_stats.RankStats(
            rank=r,
            rounds=10,
            collect_s=0.1,
            compute_s=0.05,
            wait_s=0.005,
            wait_fraction=0.03,
            valid_samples=100,
            masked_samples=0,
            masked_fraction=0.0,
            last_arrivals=la,
            cut_rounds=0,
        )
        for r, la in ((0, 4), (1, 3), (2, 3))
    ]
    text = report_finding.finding(stats)
    assert text.startswith("no persistent late sender")
    assert report_finding.finding(stats[:1]).startswith("one rank")


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for args in (
        ["report", str(tmp_path / "missing")],
        ["report", str(tmp_path)],
        ["simulate", "--from", str(tmp_path / "missing")],
        ["simulate", "--ranks", "x"],
        ["simulate", "--modes", "sometimes"],
    ):
        code = main(args)
        _, err = capsys.readouterr()
        assert code == 2, args
        assert len(err.strip().splitlines()) == 1 and "error" in err, err


def test_simulate_command_writes_table_plot_and_json(tmp_path, capsys):
    out_dir = tmp_path / "sim"
    code = main(["simulate", "--ranks", "1,2,4,...,16", "--rounds", "30", "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = last_json(out)
    got = {(r["mode"], r["ranks"]) for r in doc["results"]}
    assert got == {(m, n) for m in sim.MODES for n in (1, 2, 4, 8, 16)}
    for r in doc["results"]:
        assert 0 < r["efficiency"] <= 1 and 0 <= r["masked_fraction"] < 1 and r["samples_per_s"] > 0
    assert (out_dir / "simulate.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out_dir / "simulate.json").read_text()) == doc


def test_simulate_from_a_synthetic_run(tmp_path, capsys):
    from jaxpong.base import config as config_lib
    from jaxpong.store import rundir

    run = tmp_path / "run"
    write_synthetic_run(run)
    cfg = config_lib.build(str(SMOKE_CONFIG), {"env": {"num_envs": 4}, "dist": {"slow_rank": 2, "slow_factor": 2}})
    rundir.write_config(run, cfg, world_size=3)
    measured = sim.measured_from_run(run)
    assert len(measured.step_time_s) == 3
    assert measured.step_time_s[2][0] == pytest.approx(0.3 * 4 / 80)  # collect_s / steps per env
    assert measured.typical_ranks == [0, 1]  # rank 2 was fault-injected
    assert measured.setup.num_envs == 4 and measured.setup.optimizer_steps == 4
    assert measured.game_length_steps[0] == 910.0  # no games.jsonl: metrics.jsonl's per-update means
    (run / "games.jsonl").write_text(
        "".join(
            json.dumps({"update": u, "rank": 0, "return": -21.0 + u, "length": 800 + u}) + "\n" for u in range(1, 7)
        )
    )
    measured = sim.measured_from_run(run)  # one line per finished game is preferred
    assert measured.game_length_steps == [801.0, 802.0, 803.0, 804.0, 805.0, 806.0]
    assert measured.point_interval_steps[0] == pytest.approx(801 / 22)  # 21-1: 22 points
    assert measured.gap_s[0][0] == pytest.approx(0.002, abs=1e-6)
    code = main(["simulate", "--from", str(run), "--ranks", "3", "--modes", "steps", "--rounds", "50"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert last_json(out)["results"][0]["ranks"] == 3
    assert (run / "simulate.png").is_file()


# -- one real run ------------------------------------------------------------------------------------
@pytest.mark.skipif(not MPIRUN.exists(), reason="needs the venv's mpirun (mpich wheel)")
@pytest.mark.slow
def test_real_two_rank_run_with_a_slow_rank(tmp_path):
    """A 2-rank run whose rank 1 steps 3x slower: train writes imbalance.png itself, and report names rank 1.
    (--time-limit-s counts from process start: about 20 s of start-up, then some 10 s of rounds.)"""
    run = tmp_path / "r2"
    train = [
        sys.executable,
        "-m",
        "jaxpong",
        "train",
        "--config",
        str(SMOKE_CONFIG),
        "--run-dir",
        str(run),
        "--num-envs",
        "4",
        "--num-threads",
        "1",
        "--slow-rank",
        "1",
        "--slow-factor",
        "3",
        "--deadline-s",
        "0",
        "--total-steps",
        "1000000000",
        "--time-limit-s",
        "30",
        "--checkpoint-every",
        "100000",
        "--progress",
        "off",
    ]
    proc = subprocess.run([str(MPIRUN), "-n", "2", *train], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "imbalance.png").read_bytes()[:8] == PNG_MAGIC  # written by train at the end
    assert "late senders:" in proc.stderr
    rep = subprocess.run(
        [sys.executable, "-m", "jaxpong", "report", str(run)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert rep.returncode == 0, rep.stderr
    doc = last_json(rep.stdout)
    r0, r1 = doc["ranks"]
    assert r1["last_arrivals"] > r0["last_arrivals"]
    assert r0["wait_fraction"] > r1["wait_fraction"] + 0.1
    assert doc["finding"].startswith("rank 1 is the late sender")
    # the simulator, driven by this run's own distributions, predicts who waits
    measured = sim.measured_from_run(run)
    out = sim.simulate(measured, "steps", ranks=2, rounds=300)
    assert out.rank_wait_fraction[0] > out.rank_wait_fraction[1]


def test_the_late_senders_host_by_hand():
    """Records that name hosts: the finding says on which host the late senders ran (here all of host b's
    ranks), the table gains a host column; records of one host, or without hosts, say nothing of hosts."""
    records = []
    for update in range(1, 12):
        for rank in range(4):
            late = rank >= 2  # host b's ranks arrive last: they wait least
            records.append(
                {
                    "update": update,
                    "rank": rank,
                    "start_s": 0.0,
                    "collect_s": 0.3 if late else 0.1,
                    "compute_s": 0.05,
                    "wait_s": (0.001 if (rank + update) % 2 else 0.002) if late else 0.2,  # 2 and 3 take turns last
                    "valid_samples": 100,
                    "masked_samples": 0,
                    "cut_by_deadline": False,
                    "host": "a" if rank < 2 else "b",
                }
            )
    stats = report_stats.rank_stats(records)
    assert [s.host for s in stats] == ["a", "a", "b", "b"]
    text = report_finding.finding(stats)
    assert "By host: host b: ranks 2 and 3 (all of its ranks)." in text, text
    assert report_finding.table(stats).splitlines()[0].split()[-1] == "host"
    one_host = [{**r, "host": "a"} for r in records]
    assert "By host" not in report_finding.finding(report_stats.rank_stats(one_host))
    no_host = [{k: v for k, v in r.items() if k != "host"} for r in records]
    assert "host" not in report_finding.table(report_stats.rank_stats(no_host))


def test_a_long_update_across_hosts_is_named():
    """Two hosts whose ranks spend 60 % of each round in the update (its allreduces): the finding says so;
    the same numbers on one host say nothing of it."""

    def records(hosts):
        return [
            {
                "update": u,
                "rank": r,
                "start_s": 0.0,
                "collect_s": 0.3,
                "compute_s": 0.6,
                "wait_s": 0.1 if (r + u) % 2 else 0.09,
                "valid_samples": 100,
                "masked_samples": 0,
                "cut_by_deadline": True,
                "host": hosts[r],
            }
            for u in range(1, 12)
            for r in range(2)
        ]

    text = report_finding.finding(report_stats.rank_stats(records(["a", "b"])))
    assert "The update, with its allreduces across hosts, took 60% of each round (0.6 s)" in text, text
    assert "The update" not in report_finding.finding(report_stats.rank_stats(records(["a", "a"])))


def _host_stats(round_s: float, update_s: float) -> list:
    return [
        report_stats.RankStats(
            rank=r,
            rounds=10,
            collect_s=round_s - update_s - 0.01,
            compute_s=update_s,
            wait_s=0.01,
            wait_fraction=0.01 / round_s,
            valid_samples=100,
            masked_samples=0,
            masked_fraction=0.0,
            last_arrivals=5,
            cut_rounds=0,
            host=h,
        )
        for r, h in enumerate(["h0", "h0", "h1", "h1", "h2", "h2"])
    ]


def test_the_slow_link_is_named_by_its_host_with_its_cost_by_hand():
    """Rank 0 measured h1 at 25 MB/s and h2 at 1,000 MB/s: h1 (ranks 2 and 3) is named, 40x slower. The
    update's 16 allreduces of 1.08 MB carry 17.28 MB a round, and the update took 0.78 s of a 1.5 s round."""
    record = {
        "hosts": ["h0", "h0", "h1", "h1", "h2", "h2"],
        "links": [
            {"host": "h1", "rank": 2, "mb_s": 25.0, "rtt_ms": 1.0},
            {"host": "h2", "rank": 4, "mb_s": 1000.0, "rtt_ms": 0.1},
        ],
        "allreduce_bytes": 1_080_000,
        "allreduces_per_round": 16,
    }
    text = report_finding.link_text(record, _host_stats(1.5, 0.78))
    assert "Links from rank 0's host h0, measured at start (links.jsonl): h1 25 MB/s, h2 1,000 MB/s." in text
    assert "Host h1's link is the slow one (40x slower than the next): ranks 2 and 3 there slow" in text
    assert (
        "16 allreduces carry about 17.3 MB a round over each link; the update took 0.78 s, 52% of the mean round "
        "(1.5 s) on every rank alike: fewer, larger optimizer steps or a faster link would shorten it; the deadline "
        "cannot (it cuts collection only)." in text
    )
    # The report gives the update's share once: with the links' cost, finding leaves its own out.
    assert report_finding.links_carry_cost(record)
    assert "The update, with its allreduces" not in report_finding.finding(_host_stats(1.5, 0.78), update_share=False)
    assert "The update, with its allreduces" in report_finding.finding(_host_stats(1.5, 0.78))
    # A rate below 10 MB/s keeps two digits: a tbf-shaped link read 1.4 MB/s, not "1 MB/s".
    slow = dict(record, links=[dict(record["links"][0], mb_s=1.43), record["links"][1]])
    assert "h1 1.4 MB/s, h2 1,000 MB/s." in report_finding.link_text(slow, _host_stats(1.5, 0.78))
    # Links alike: no host named; a short update is not called a cost.
    fast = dict(record, links=[dict(k, mb_s=1000.0) for k in record["links"]])
    text = report_finding.link_text(fast, _host_stats(1.5, 0.1))
    assert "slow one" not in text and "All of them alike" in text
    assert "the update took 0.1 s, 7% of the mean round (1.5 s)." in text
    assert report_finding.link_text(None, _host_stats(1.5, 0.1)) == ""


def test_links_are_read_from_the_last_complete_line(tmp_path):
    first = {"hosts": ["a", "b"], "links": [{"host": "b", "rank": 1, "mb_s": 10.0, "rtt_ms": 1.0}]}
    second = dict(first, links=[{"host": "b", "rank": 1, "mb_s": 20.0, "rtt_ms": 1.0}])
    (tmp_path / "links.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n" + '{"hosts": ["a"')
    assert report_stats.read_links(tmp_path)["links"][0]["mb_s"] == 20.0
    assert report_stats.read_links(tmp_path / "nothing") is None
    # A later process on one host wrote a line without links: there are no links to speak of.
    with (tmp_path / "links.jsonl").open("a") as f:
        f.write("\n" + json.dumps({"update": 40, "hosts": ["a"], "links": []}) + "\n")
    assert report_stats.read_links(tmp_path) is None

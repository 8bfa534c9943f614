"""`jaxpong report` at many ranks: the heatmap picture and the late senders it names on synthetic
ranks.jsonl files of 256 and 1,536 ranks, the Chrome trace-event timeline checked event by event on a
small hand-made file, and (marker `scale`, `make test-scale`) a real 16-rank run with one slow rank.

Nothing here checks timings against thresholds: only what the report finds and what it writes.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SMOKE_CONFIG
from jaxpong.cli.dispatch import main
from jaxpong.report import finding as report_finding
from jaxpong.report import pictures as report_pictures
from jaxpong.report import stats as report_stats
from jaxpong.report import trace as report_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MPIRUN = Path(sys.executable).parent / "mpirun"


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    return struct.unpack(">II", head[16:24])


def write_many_rank_run(
    run_dir: Path,
    ranks: int,
    rounds: int,
    late=(1234,),
    masked_rank: int | None = None,
    cut_rank: int | None = None,
    seed: int = 0,
) -> Path:
    """A synthetic ranks.jsonl: every rank collects 0.2-0.22 s a round, except the `late` ranks (0.3 s; with
    several, one of them, in turn, 0.3 s and the others like everyone); compute 0.05 s; each rank waits for
    the last arrival plus 1 ms. Round 1 compiles (5 s more collection). `masked_rank` masks 40 of its 104
    samples a round; `cut_rank` is a slow rank that a deadline cuts: 16 samples instead of 64, on time."""
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t = 0.0
    with open(run_dir / "ranks.jsonl", "w") as out:
        for update in range(1, rounds + 1):
            collect = 0.2 + 0.02 * rng.random(ranks)
            if late:
                collect[late[update % len(late)]] = 0.3
            if update == 1:
                collect += 5.0
            last = float(collect.max())
            wait = last - collect + 0.001
            out.writelines(
                f'{{"update": {update}, "rank": {r}, "start_s": {t:.6f}, "collect_s": {collect[r]:.6f}, '
                f'"compute_s": 0.05, "wait_s": {wait[r]:.6f}, "valid_samples": {16 if r == cut_rank else 64}, '
                f'"masked_samples": {40 if r == masked_rank else 0}, '
                f'"cut_by_deadline": {"true" if r == cut_rank else "false"}, "deadline_s": null}}\n'
                for r in range(ranks)
            )
            t += last + 0.001 + 0.05 + 0.003
    return run_dir


def heatmap_row_of_lightest_wait(png: Path, ranks: int) -> float:
    """The rank at the lightest pixel row of the wait heatmap (the least waiting), read back from the PNG."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[:, :, :3]
    height, width = pixels.shape[:2]
    top = round(height * (1 - report_pictures._HEAT_BOTTOM - report_pictures._HEAT_HEIGHT)) + 2
    bottom = round(height * (1 - report_pictures._HEAT_BOTTOM)) - 2
    x = round(width * (report_pictures._HEAT_LEFTS[0] + report_pictures._HEAT_WIDTH / 2))
    brightness = pixels[top:bottom, x - 20 : x + 20].mean(axis=(1, 2))
    row = top + int(np.argmax(brightness))
    frac = (row - height * (1 - report_pictures._HEAT_BOTTOM - report_pictures._HEAT_HEIGHT)) / (
        height * report_pictures._HEAT_HEIGHT
    )
    return frac * ranks


# -- 1,536 ranks -----------------------------------------------------------------------------------
def test_1536_ranks_heatmap_names_the_persistent_late_sender(tmp_path, capsys):
    run = write_many_rank_run(tmp_path / "run", ranks=1536, rounds=40, late=(1234,), masked_rank=77)
    code = main(["report", str(run)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = last_json(out)
    assert doc["num_ranks"] == 1536 and doc["picture"] == "heatmap"
    assert doc["late_senders"] == [1234]
    assert doc["finding"].startswith("rank 1234 is the late sender: it arrived last in 100% of 39 rounds")
    assert "the other 1535 ranks lost on average" in doc["finding"]
    # the printed table and the JSON list the ranks most often last; imbalance.txt holds every rank
    assert len(doc["ranks"]) == report_finding.TABLE_TOP and doc["ranks"][0]["rank"] == 1234
    table = out.split("finding:")[0]
    assert len([line for line in table.splitlines() if line.strip()[:1].isdigit()]) == report_finding.TABLE_TOP
    full = (run / "imbalance.txt").read_text().split("finding:")[0]
    assert len([line for line in full.splitlines() if line.strip()[:1].isdigit()]) == 1536
    # the picture: the fixed heatmap canvas; 1,536 ranks share rows three by three (said on the figure)
    assert png_size(run / "imbalance.png") == (1500, 950)
    assert report_pictures.heatmap_cells(1536, 39) == (3, 1)
    assert abs(heatmap_row_of_lightest_wait(run / "imbalance.png", 1536) - 1234) <= 6
    # the trace: 1,536 tracks, 3 phases a round, every round
    assert doc["trace"] == str(run / "trace.json") and doc["trace_events"] == 1536 * 40 * 3
    assert f"trace:   {run / 'trace.json'}" in out


def test_1536_ranks_without_a_persistent_late_sender(tmp_path):
    run = write_many_rank_run(tmp_path / "run", ranks=1536, rounds=30, late=())
    rounds = report_stats.read_rounds(run)
    stats = report_stats.rank_stats(rounds)
    assert len(stats) == 1536 and all(s.rounds == 29 for s in stats)
    assert sum(s.last_arrivals for s in stats) == 29
    assert report_finding.late_senders(stats) == []
    assert report_finding.finding(stats).startswith("no persistent late sender")


def test_a_slow_rank_that_the_deadline_cuts_is_named_by_its_speed(tmp_path, capsys):
    run = write_many_rank_run(tmp_path / "run", ranks=300, rounds=20, late=(), cut_rank=77)
    assert main(["report", str(run)]) == 0
    doc = last_json(capsys.readouterr()[0])
    assert doc["late_senders"] == [] and doc["slow_collectors"] == [77]
    assert doc["finding"].startswith("no persistent late sender")
    assert "Rank 77 plays slowly: 0.2" in doc["finding"]  # 16 samples against 64 in the same time
    assert (
        "the deadline cut its collection in 100% of rounds, so it arrived on time with 25% of the others' samples"
        in doc["finding"]
    )
    assert "slow collectors (slowest first): 77" in (run / "imbalance.txt").read_text()


# -- 256 ranks, more rounds than pixel columns, two late senders -------------------------------------
def test_256_ranks_two_late_senders_and_binned_rounds(tmp_path, capsys):
    run = write_many_rank_run(tmp_path / "run", ranks=256, rounds=500, late=(17, 200))
    code = main(["report", str(run), "--trace-rounds", "10"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = last_json(out)
    assert doc["picture"] == "heatmap" and sorted(doc["late_senders"]) == [17, 200]
    assert doc["finding"].startswith("ranks ")
    assert "are the persistent late senders: together they arrived last in 100% of 499 rounds" in doc["finding"]
    assert "rank 17 in 50%" in doc["finding"] and "rank 200 in 50%" in doc["finding"]
    assert report_pictures.heatmap_cells(256, 499) == (1, 2)  # every rank its own row; two rounds a column
    assert png_size(run / "imbalance.png") == (1500, 950)
    assert doc["trace_events"] == 256 * 10 * 3  # --trace-rounds: the last 10 rounds only
    assert "(the last 10 of 500 rounds, 7,680 events" in out
    assert "persistent late senders (most often last first): 17, 200" in (run / "imbalance.txt").read_text()


def test_the_trace_keeps_the_last_rounds_that_fit(tmp_path, capsys, monkeypatch):
    run = write_many_rank_run(tmp_path / "run", ranks=40, rounds=30, late=(3,))
    monkeypatch.setattr(report_trace, "TRACE_MAX_EVENTS", 40 * 3 * 12)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr()[0]
    doc = last_json(out)
    assert (doc["trace_rounds"], doc["rounds"], doc["trace_events"]) == (12, 30, 40 * 12 * 3)
    _, complete, _ = _trace(run)
    assert {e["args"]["update"] for e in complete} == set(range(19, 31))
    assert main(["report", str(run), "--trace-rounds", "0"]) == 0
    assert last_json(capsys.readouterr()[0])["trace_events"] == 40 * 30 * 3


def test_picture_choice_by_rank_count(tmp_path, capsys):
    run = write_many_rank_run(tmp_path / "run", ranks=report_pictures.TIMELINE_MAX_RANKS, rounds=6, late=(3,))
    assert main(["report", str(run)]) == 0
    doc = last_json(capsys.readouterr()[0])
    assert doc["picture"] == "timeline" and doc["late_senders"] == [3]
    assert len(doc["ranks"]) == report_pictures.TIMELINE_MAX_RANKS
    assert main(["report", str(run), "--picture", "heatmap", "--out", str(tmp_path / "h.png")]) == 0
    doc = last_json(capsys.readouterr()[0])
    assert doc["picture"] == "heatmap" and png_size(tmp_path / "h.png") == (1500, 950)
    with pytest.raises(SystemExit) as stop:
        main(["report", str(run), "--picture", "sometimes"])
    assert stop.value.code == 2
    assert main(["report", str(run), "--trace-rounds", "-1"]) == 2


def test_streamed_matrices_match_the_records(tmp_path):
    """read_rounds (streamed) and rank_stats on the list of dicts give the same numbers; a line cut short
    by a crash and a record without the needed fields are skipped; a repeated (rank, update) keeps the last."""
    run = write_many_rank_run(tmp_path / "run", ranks=5, rounds=7, late=(2,), masked_rank=4)
    with open(run / "ranks.jsonl", "a") as out:
        out.write('{"update": 7, "rank": 1, "start_s": 9.0, "collect_s": 0.25, "compute_s": 0.05, "wait_s": 0.02}\n')
        out.write('{"update": 8, "rank": 0, "start_s": 1.0}\n{"update": 8, "ra')
    streamed = report_stats.rank_stats(report_stats.read_rounds(run))
    listed = report_stats.rank_stats(report_stats.read_ranks(run))
    assert streamed == listed
    rounds = report_stats.read_rounds(run)
    assert rounds.present.shape == (5, 7) and rounds.present.all()
    assert rounds.start_s[1, 6] == 9.0 and rounds.collect_s[1, 6] == 0.25
    assert streamed[4].masked_fraction == pytest.approx(40 / 104)
    assert streamed[2].last_arrivals == 6


# -- the trace, event by event -----------------------------------------------------------------------
TRACE_RECORDS = [  # 2 ranks x 2 rounds; rank 1 is late; rank 0 evaluates after round 2
    {"update": 1, "rank": 0, "start_s": 0.5, "collect_s": 0.1, "compute_s": 0.04, "wait_s": 0.2},
    {"update": 1, "rank": 1, "start_s": 0.5, "collect_s": 0.3, "compute_s": 0.04, "wait_s": 0.001},
    {"update": 2, "rank": 0, "start_s": 0.9, "collect_s": 0.12, "compute_s": 0.05, "wait_s": 0.18, "eval_s": 1.5},
    {"update": 2, "rank": 1, "start_s": 0.9, "collect_s": 0.3, "compute_s": 0.05, "wait_s": 0.002},
]


def _x(name, rank, ts, dur, update):
    return {"name": name, "ph": "X", "pid": 1, "tid": rank + 1, "ts": ts, "dur": dur, "args": {"update": update}}


def _trace(run: Path) -> tuple[list[dict], list[dict], dict]:
    doc = json.loads((run / "trace.json").read_text())
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(meta) + len(complete) == len(doc["traceEvents"])
    return meta, complete, doc


def _approx_events(events):
    return [{**e, "ts": pytest.approx(e["ts"], abs=1e-3), "dur": pytest.approx(e["dur"], abs=1e-3)} for e in events]


def test_trace_events_by_hand(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ranks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRACE_RECORDS))
    assert main(["report", str(run)]) == 0
    doc = last_json(capsys.readouterr()[0])
    meta, complete, whole = _trace(run)
    assert whole["displayTimeUnit"] == "ms"
    # one process, one named and ordered thread (track) per rank, tid = rank + 1
    assert meta == [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "jaxpong run"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "rank 0"}},
        {"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": 1, "args": {"sort_index": 0}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "rank 1"}},
        {"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": 2, "args": {"sort_index": 1}},
    ]
    # ranks x rounds x (collect, wait, update) + rank 0's evaluation; microseconds, back to back
    assert len(complete) == 2 * 2 * 3 + 1 == doc["trace_events"]
    expected = [
        _x("collect", 0, 500_000, 100_000, 1),
        _x("wait", 0, 600_000, 200_000, 1),
        _x("update", 0, 800_000, 40_000, 1),
        _x("collect", 0, 900_000, 120_000, 2),
        _x("wait", 0, 1_020_000, 180_000, 2),
        _x("update", 0, 1_200_000, 50_000, 2),
        _x("eval", 0, 1_250_000, 1_500_000, 2),
        _x("collect", 1, 500_000, 300_000, 1),
        _x("wait", 1, 800_000, 1_000, 1),
        _x("update", 1, 801_000, 40_000, 1),
        _x("collect", 1, 900_000, 300_000, 2),
        _x("wait", 1, 1_200_000, 2_000, 2),
        _x("update", 1, 1_202_000, 50_000, 2),
    ]
    assert complete == _approx_events(expected)


def test_trace_with_a_prepare_phase(tmp_path):
    """Records with prepare_s (the part of compute_s before the gather) give four phases a round."""
    records = [{**r, "prepare_s": 0.01} for r in TRACE_RECORDS if r["rank"] == 1]
    rounds = report_stats.Rounds.from_records(records)
    info = report_trace.write_trace(rounds, tmp_path / "t.json", name="x")
    assert info["phases"] == ["collect", "prepare", "wait", "update"] and info["events"] == 1 * 2 * 4
    complete = [e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert complete == _approx_events(
        [
            _x("collect", 1, 500_000, 300_000, 1),
            _x("prepare", 1, 800_000, 10_000, 1),
            _x("wait", 1, 810_000, 1_000, 1),
            _x("update", 1, 811_000, 30_000, 1),
            _x("collect", 1, 900_000, 300_000, 2),
            _x("prepare", 1, 1_200_000, 10_000, 2),
            _x("wait", 1, 1_210_000, 2_000, 2),
            _x("update", 1, 1_212_000, 40_000, 2),
        ]
    )


# -- a real 16-rank run ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["auto", "0"], ids=["auto-deadline", "no-deadline"])
def sixteen_rank_run(request, tmp_path_factory) -> tuple[Path, str]:
    """16 ranks on 2 cores (oversubscribed), smoke config, 2 envs a rank, rank 5 stepping 3x slower: 12
    rounds of 1,024 steps, with the auto deadline and without one. Each run is made once per test module:
    2-7 minutes, mostly 16 start-ups and compiles, longer on a loaded machine."""
    run = tmp_path_factory.mktemp("r16") / "run"
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
        "2",
        "--num-threads",
        "1",
        "--total-steps",
        "12288",
        "--slow-rank",
        "5",
        "--slow-factor",
        "3",
        "--deadline-s",
        request.param,
        "--checkpoint-every",
        "100000",
        "--progress",
        "off",
    ]
    proc = subprocess.run(
        [str(MPIRUN), "-n", "16", *train],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "1000"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run / "stderr.txt").write_text(proc.stderr)
    return run, request.param


@pytest.mark.scale
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not MPIRUN.exists(), reason="needs the venv's mpirun (mpich wheel)")
def test_report_names_the_slow_rank_among_16(sixteen_rank_run, tmp_path):
    run, deadline = sixteen_rank_run
    records = report_stats.read_ranks(run)
    updates = sorted({r["update"] for r in records})
    assert len(updates) >= 8
    for u in updates:  # every rank in every round
        assert sorted(r["rank"] for r in records if r["update"] == u) == list(range(16))
    rep = subprocess.run(
        [sys.executable, "-m", "jaxpong", "report", str(run)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert rep.returncode == 0, rep.stderr
    doc = last_json(rep.stdout)
    assert doc["picture"] == "timeline" and doc["num_ranks"] == 16
    if deadline == "0":  # everyone waits for the slow rank every round
        assert doc["late_senders"] == [5], doc["finding"]
        # Last in (nearly) every round: the first round's arrivals follow the shared first compiles (one
        # rank compiles, the others then load), not the games, so it may be someone else there.
        share = re.match(r"rank 5 is the late sender: it arrived last in (\d+)% of (\d+) rounds", doc["finding"])
        assert share and int(share[1]) >= 100 * (int(share[2]) - 1) / int(share[2]) - 0.5, doc["finding"]
    else:
        # The auto deadline cuts the slow rank, which arrives on time with fewer samples: it is named as the
        # slow collector (were it not cut, it would be the late sender). Either way, rank 5 alone.
        assert set(doc["late_senders"]) | set(doc["slow_collectors"]) == {5}, doc["finding"]
        assert doc["finding"].startswith("rank 5 is the late sender") or "Rank 5 plays slowly" in doc["finding"]
    width, height = png_size(run / "imbalance.png")
    assert 1000 <= width <= 1400 and 800 <= height <= 2000
    evals = sum(1 for r in records if r.get("eval_s"))
    assert doc["trace_events"] == 16 * len(updates) * 3 + evals
    _, complete, _ = _trace(run)
    assert len({e["tid"] for e in complete}) == 16
    # the heatmap view of the same run, for a side-by-side look
    heat = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxpong",
            "report",
            str(run),
            "--picture",
            "heatmap",
            "--out",
            str(tmp_path / "heat.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert heat.returncode == 0, heat.stderr
    heat_doc = last_json(heat.stdout)
    assert heat_doc["picture"] == "heatmap" and heat_doc["finding"] == doc["finding"]
    assert png_size(tmp_path / "heat.png") == (1500, 950)

"""The device bench's summary (jaxpong/bench/device.py): predicted against measured seconds to +18, by hand."""

import json

from jaxpong.bench import device


def _seed_dir(tmp_path, name, reach_at_game=None, games=25):
    """A trained seed's folder: `games` full games 1 s and 1,000 agent steps apart from 10 s, each lost 0-21
    (return -21) until game `reach_at_game` (1-based), +21 from then; metrics from 5 s (first update) to 35 s."""
    run = tmp_path / name
    run.mkdir()
    rows = [
        {"return": 21.0 if reach_at_game and i >= reach_at_game else -21.0, "process_s": 10.0 + i, "step": 1000 * i}
        for i in range(1, games + 1)
    ]
    (run / "games.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = [{"step": 0, "time_s": 0.0, "process_s": 5.0}, {"step": 30_000, "time_s": 30.0, "process_s": 35.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def test_lower_median_counts_a_miss_as_infinitely_slow():
    from jaxpong.bench.learning import lower_median

    assert lower_median([3.0, None, 1.0]) == 3.0  # 1, 3, inf
    assert lower_median([None, 2.0]) == 2.0  # the lower of 2 and inf
    assert lower_median([None, None, 5.0]) is None  # 5, inf, inf: most seeds missed
    assert lower_median([]) is None


def test_a_seed_reaches_18_when_its_last_20_games_average_18(tmp_path):
    # +21 from game 2 on: games 1..20 average (-21 + 19 x 21) / 20 = 18.9 >= 18, first at game 20: 30 s since
    # process start, 20,000 agent steps.
    row = device.measured(_seed_dir(tmp_path, "seed_1", reach_at_game=2))
    assert row["seconds"] == 30.0 and row["steps"] == 20_000
    assert row["startup_s"] == 5.0 and row["steps_per_s"] == 1000.0  # 30,000 steps in 30 s
    # +21 only from game 3: games 1..20 average (2 x -21 + 18 x 21) / 20 = 16.8; games 2..21 average 18.9.
    assert device.measured(_seed_dir(tmp_path, "seed_2", reach_at_game=3))["seconds"] == 31.0
    never = device.measured(_seed_dir(tmp_path, "seed_3"))
    assert never["seconds"] is None and never["steps"] is None and never["last20"] == -21.0
    assert never["trained_steps"] == 30_000 and never["trained_s"] == 35.0  # its last update


def test_compare_and_speedups_by_hand():
    prediction = {
        "startup_s": 10.0,
        "rows": [{"ranks": 8, "samples_per_s": 20_000.0, "steps_18": 9e5, "seconds_18": 55.0}],
    }
    eight = device.predicted(prediction, 8)
    assert eight == {"startup_s": 10.0, "steps_per_s": 20_000.0, "steps": 9e5, "seconds": 55.0}
    assert device.predicted(prediction, 1) is None and device.predicted(None, 8) is None
    one = {"startup_s": 5.0, "steps_per_s": 10_000.0, "steps": 8e5, "seconds": 100.0}
    summary = device.compare(
        [
            (1, one, [{"seconds": 110.0, "steps": 8e5}, {"seconds": 90.0, "steps": 7e5}]),
            (8, {**eight, "seconds": 50.0}, [{"seconds": 60.0, "steps": 9e5}, {"seconds": None, "steps": None}]),
        ]
    )
    first, second = summary["counts"]
    assert first["median"] == {"seconds": 90.0, "steps": 7e5}  # the lower of 90 and 110
    assert first["measured_over_predicted"] == 0.9  # 90 / 100
    assert second["median"] == {"seconds": 60.0, "steps": 9e5}  # 60 and a miss: the lower is 60
    assert second["measured_over_predicted"] == 1.2  # 60 / 50
    assert second["speedup_over_first"] == {"predicted": 2.0, "measured": 1.5}  # 100 / 50 and 90 / 60


def test_main_writes_the_table_and_json(tmp_path, capsys):
    log = tmp_path / "predict_1.log"
    row = {"ranks": 1, "samples_per_s": 1000.0, "steps_18": 20_000, "seconds_18": 25.0}
    log.write_text("| a table |\n" + json.dumps({"startup_s": 5.0, "rows": [row]}) + "\n")
    seed = _seed_dir(tmp_path, "seed_1", reach_at_game=2)
    assert device.main(["--count", "1", str(log), str(seed), "--out", str(tmp_path / "out")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["counts"][0]["measured_over_predicted"] == 1.2  # 30 s measured, 25 predicted
    assert "| 1 | seed_1 | 5.0 | 1,000 | 20,000 | 30.0 |" in (tmp_path / "out" / "summary.md").read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == last

"""The throughput benchmark's arithmetic: trainer steps/s with the stopped (raw envpool) slices taken out."""

from __future__ import annotations

import json

import pytest

from jaxpong.bench.throughput import WARMUP_UPDATES, trainer_sps


def test_trainer_sps_leaves_out_the_seconds_the_trainer_was_stopped(tmp_path):
    # Rounds logged at wall-clock 100, 101, 103, 106 (time_s counts from 0 at 100). The measured window
    # runs from the warm-up line (101) to the last line (106): 5 s, of which the trainer was stopped
    # 102.0-102.5 and, of the pause 105.5-107.0, the part up to 106: 1 s in all. A pause before the
    # window (100.2-100.4) does not count. Steps 1,000 -> 8,000 in 4 active seconds: 1,750 steps/s.
    rows = [(100.0, 0.0, 0, 0), (101.0, 1.0, 1000, 1010), (103.0, 3.0, 4000, 4040), (106.0, 6.0, 8000, 8080)]
    assert WARMUP_UPDATES == 2
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for wall, t, step, env_steps in rows:
            f.write(json.dumps({"wall_time": wall, "time_s": t, "step": step, "charts/env_steps": env_steps}) + "\n")
        f.write('{"wall_time": 107.0, "time_s"')  # a line cut by SIGSTOP is ignored
    result = trainer_sps(tmp_path, paused=[(100.2, 100.4), (102.0, 102.5), (105.5, 107.0)])
    assert result["seconds"] == pytest.approx(4.0)
    assert result["sps"] == pytest.approx(1750.0)
    assert result["env_sps"] == pytest.approx(7070 / 4.0)
    assert trainer_sps(tmp_path)["sps"] == pytest.approx(7000 / 5.0)


def test_trainer_sps_needs_rounds_after_the_warm_up(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"wall_time": 1.0, "time_s": 0.0, "step": 0, "charts/env_steps": 0}) + "\n"
    )
    with pytest.raises(RuntimeError, match="more --seconds"):
        trainer_sps(tmp_path)


def test_time_ratios_count_a_missed_milestone_as_infinitely_slow():
    from jaxpong.bench.learning import _ratio

    assert _ratio({"time_s": 90.0}, {"time_s": 120.0}) == pytest.approx(0.75)
    assert _ratio(None, {"time_s": 120.0}) == float("inf")  # this count never got there
    assert _ratio({"time_s": 90.0}, None) == 0.0  # only the baseline missed it
    assert _ratio(None, None) == float("inf")  # neither: unknown, counted against the count compared


def test_ranks_count_from_the_launchers_start_and_pass_it_on_to_nothing(tmp_path):
    """A rank that `train --ranks N` started takes JAXPONG_LAUNCH_START (the launcher's own start) as its
    start and removes it, so nothing it starts inherits it; a value from the future or from long ago is
    someone else's and is ignored."""
    import os
    import subprocess
    import sys
    import time

    probe = "import os, jaxpong; print(jaxpong.PROCESS_START, os.environ.get('JAXPONG_LAUNCH_START'))"
    for given, taken in ((time.time() - 5, True), (time.time() + 100, False), (time.time() - 10_000, False)):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, "JAXPONG_LAUNCH_START": repr(given)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert (float(out[0]) == pytest.approx(given, abs=1e-6)) == taken and out[1] == "None"


def test_bench_learn_passes_greedy_games_at_one_rank_count(monkeypatch, capsys):
    """`bench --learn --greedy-games 0` reaches the learning benchmark (the device bench skips greedy games)."""
    from jaxpong.bench import learning
    from jaxpong.cli.dispatch import main

    seen: dict = {}
    monkeypatch.setattr(learning, "learning_benchmark", lambda cfg, **kwargs: seen.update(kwargs) or 0)
    assert main(["bench", "--learn", "--time-limit-s", "5", "--greedy-games", "0"]) == 0
    assert seen["greedy_games"] == 0 and seen["seeds"] == 1
    assert main(["bench", "--learn", "--time-limit-s", "5", "--greedy-games", "-1"]) == 2
    assert "--greedy-games: -1 must be 0 or more" in capsys.readouterr().err


def test_a_seed_is_extended_only_where_its_learning_rate_schedule_stays(tmp_path):
    """A seed trained to 800k is resumed to 1.6M when its rate annealed over a fixed 10M horizon (the
    schedule goes on unchanged); one whose rate annealed over its own 800k budget would get another
    schedule at the resume, and is refused with the flag that keeps it; a seed that already won is not."""
    import yaml

    from jaxpong.base.config import Config
    from jaxpong.base.errors import ConfigError
    from jaxpong.bench.learning import _extends, resume_flags

    row = {"steps": 800_000, "best_return": 12.0}
    saved = {"run": {"total_steps": 800_000}, "algo": {"anneal_lr": True, "anneal_steps": 10_000_000}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    longer = Config.from_dict(
        {"run": {"total_steps": 1_600_000, "target_return": 20.0}, "algo": {"anneal_steps": 10_000_000}}
    )
    assert _extends(tmp_path, row, longer)
    assert not _extends(tmp_path, dict(row, best_return=20.5), longer)  # reached the target already
    saved["algo"]["anneal_steps"] = 0  # annealed over its own 800k
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(
        ConfigError, match="annealed over 800,000 agent steps.*would anneal over 10,000,000.*--anneal-steps 800000"
    ):
        _extends(tmp_path, row, longer)
    # The flag the message names is what the resume then runs with: the seed extends, over its own 800k.
    kept = Config.from_dict({"run": {"total_steps": 1_600_000}, "algo": {"anneal_steps": 800_000}})
    assert _extends(tmp_path, row, kept)
    assert resume_flags(kept)[-4:] == ["--anneal-lr", "true", "--anneal-steps", "800000"]
    # A benchmark without annealing would change a seed that annealed: refused, and the other way round.
    flat = Config.from_dict({"run": {"total_steps": 1_600_000}, "algo": {"anneal_lr": False}})
    with pytest.raises(ConfigError, match="would not anneal; give --anneal-steps 800000"):
        _extends(tmp_path, row, flat)
    saved["algo"]["anneal_lr"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="was not annealed.*give --anneal-lr false"):
        _extends(tmp_path, row, longer)
    assert _extends(tmp_path, row, flat)

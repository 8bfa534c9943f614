"""The batch study's summary (jaxpong/scale/batchstudy.py): medians of agent steps over seeds, where a seed that
missed a milestone counts as infinitely slow and a seed that stopped at a lower target is left out."""

from __future__ import annotations

import json

import pytest

from jaxpong.scale.batchstudy import summarise, table


def _run(scale: int, seed: int, m0, m18, m20, target: float | None = None) -> dict:
    def hit(step):
        return None if step is None else {"time_s": 1.0, "step": step}

    row = {
        "rule": "minibatch",
        "scale": scale,
        "seed": seed,
        "milestones": {"0": hit(m0), "18": hit(m18), "20": hit(m20)},
    }
    if target is not None:
        row["target"] = target
    return row


def test_the_median_is_an_observed_seed_and_a_miss_is_infinitely_slow():
    rows = summarise(
        [
            _run(1, 1, 300_000, 900_000, 1_300_000),
            _run(1, 2, 200_000, 800_000, None),  # never reached +20 within its steps
            _run(1, 3, 400_000, 1_000_000, 2_300_000),
        ]
    )
    (r,) = rows
    assert (r["seeds"], r["steps_0"], r["steps_18"]) == (3, 300_000, 900_000)  # sorted middles
    # +20: 1.3M, 2.3M, inf -> the lower median of three is the middle one, 2.3M
    assert (r["steps_20"], r["reached_20"], r["measured_20"]) == (2_300_000, 2, 3)


def test_fewer_than_half_reaching_gives_no_median():
    rows = summarise([_run(2, 1, 400_000, None, None), _run(2, 2, 500_000, 1_100_000, None)])
    # two seeds: the lower median is the first of [1.1M, inf] = 1.1M for +18; +20 [inf, inf] -> None
    assert rows[0]["steps_18"] == 1_100_000 and rows[0]["steps_20"] is None and rows[0]["reached_20"] == 0


def test_a_run_that_stopped_at_plus_18_leaves_plus_20_unmeasured_not_missed():
    rows = summarise(
        [
            _run(4, 1, 500_000, 1_200_000, 2_000_000),  # an older row: ran on to +20
            _run(4, 2, 450_000, 1_400_000, None, target=18),
            _run(4, 3, 600_000, 1_300_000, None, target=18),
        ]
    )
    r = rows[0]
    assert (r["steps_18"], r["reached_18"], r["measured_18"]) == (1_300_000, 3, 3)
    # Only seed 1 ran to +20, and it got there: a median of one, not a miss counted twice.
    assert (r["steps_20"], r["reached_20"], r["measured_20"]) == (2_000_000, 1, 1)
    assert "| 2,000k (1/1) |" in table(rows)


def test_the_table_gives_each_scale_against_1x():
    rows = summarise([_run(1, 1, 300_000, 800_000, None), _run(2, 1, 400_000, 1_000_000, None)])
    text = table(rows)
    assert "| minibatch | 2x | 1 | 400k | 1,000k (1/1) | - (0/1) | 1.25x | - | - | - |" in text


def test_bad_study_flags_get_one_line(capsys):
    from jaxpong.scale.batchstudy import main

    assert main(["--scales", "1,x"]) == 2
    assert "--scales: '1,x' is not a comma-separated list" in capsys.readouterr().err
    assert main(["--seeds", "0"]) == 2
    assert "--seeds: '0': every value must be at least 1" in capsys.readouterr().err
    assert main(["--rules", "sqrt"]) == 2
    assert "--rules: 'sqrt' is not an arm; name a batch rule (minibatch, steps" in capsys.readouterr().err
    assert main(["--rules", "minibatch+fast"]) == 2
    assert "optionally followed by +ewma or +kl" in capsys.readouterr().err
    assert main(["--total-steps", "0"]) == 2  # the same spelling as train's and bench --learn's
    assert "--jobs, --ranks and --total-steps must be at least 1" in capsys.readouterr().err
    assert main(["--config", "nope.yaml", "--out", "/nonexistent/x"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arm, scale, expected",
    [
        # one process standing in for 8 ranks of 32 games: 32 minibatches of 512, as 8 real ranks get
        ("minibatch", 8, ["256", "64", "32", "0.001", "none"]),
        # steps at 16x: 16-step rounds, 8,192 samples; 16 minibatches wanted, a rank's 512 allow 8
        ("steps+ewma", 16, ["512", "16", "8", "0.001", "none", "--proximal", "ewma"]),
        ("sqrt_lr+kl", 4, ["128", "64", "4", "0.002", "none", "--target-kl", "0.008"]),
        ("none", 8, ["256", "64", "4", "0.001", "none"]),
    ],
)
def test_an_arm_is_one_process_with_the_rule_of_k_ranks(arm, scale, expected):
    from jaxpong.base.config import build
    from jaxpong.scale.batchstudy import run_args

    args = run_args(arm, scale, build("configs/default.yaml", {}))
    flags = ["--num-envs", "--num-steps", "--num-minibatches", "--learning-rate", "--batch-rule"]
    assert args[:10:2] == flags
    assert args[1:10:2] + args[10:] == expected


def test_rounds_to_a_milestone_and_the_late_drift_by_hand(tmp_path):
    """A run's row gains the round by which it reached each milestone and the median late KL and clip
    fraction over its rounds up to +18; the summary takes the lower median of rounds and the seeds' median."""
    from jaxpong.scale.batchstudy import _row

    metrics = [
        {"update": u, "step": 1000 * u, "time_s": u, "charts/approx_kl_late": kl, "charts/clipfrac_late": cf}
        for u, kl, cf in ((1, 0.01, 0.1), (2, 0.02, 0.2), (3, 0.03, 0.3), (4, 0.5, 0.9))
    ]
    # 20 games of -21 by step 1000, then 20 of +19 finished by step 2500 (round 3): 0 and +18 at 2500.
    games = [{"update": 1, "step": 1000, "process_s": 1.0, "return": -21.0, "length": 2}] * 20
    games += [{"update": 3, "step": 2500, "process_s": 2.0, "return": 19.0, "length": 2}] * 20
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (tmp_path / "games.jsonl").write_text("".join(json.dumps(g) + "\n" for g in games))
    row = _row("minibatch", 8, 1, 256, tmp_path, 10_000, 18, 10_000_000)
    assert row["anneal_steps"] == 10_000_000
    # by the games' middles (2 steps x 256 games / 2 = 256 before their ends): the +19s were played around 2,244
    assert row["played"] == {"0": 2244, "18": 2244, "20": None}
    assert row["rounds"] == {"0": 3, "18": 3, "20": None}
    # rounds up to step 2,500: KL 0.01, 0.02 (round 3 ends at 3,000 > 2,500) -> median 0.015
    assert (row["approx_kl_late"], row["clipfrac_late"]) == (0.015, 0.15)
    other = dict(row, seed=2, rounds={"0": 5, "18": 7, "20": None}, approx_kl_late=0.025, clipfrac_late=0.25)
    (summary,) = summarise([row, other])
    assert summary["rounds_18"] == 3 and summary["approx_kl_late"] == 0.02 and summary["played_18"] == 2244
    assert "| minibatch | 8x | 2 |" in table([summary]) and "| 3 | 2k | 0.0200 | 0.200 |" in table([summary])


def test_the_learning_rate_anneals_over_the_configs_horizon_not_the_studys_cap(tmp_path):
    """configs/default.yaml trains for 10M steps: a study run capped at 2.5M anneals over 10M all the same (at
    1.5M its rate is 85% of the start, not 40%), unless the study's flags give --anneal-steps; a folder of runs
    that annealed over another horizon is not mixed in."""
    from jaxpong.base.config import build
    from jaxpong.base.errors import ConfigError
    from jaxpong.scale.batchstudy import anneal_horizon, batch_study

    cfg = build("configs/default.yaml", {})
    assert anneal_horizon(cfg, [], 2_500_000) == (["--anneal-steps", "10000000"], 10_000_000)
    assert anneal_horizon(cfg, ["--anneal-steps", "5000"], 2_500_000) == ([], 5000)
    assert anneal_horizon(cfg, ["--seed", "3", "--anneal-steps=0"], 2_500_000) == ([], 2_500_000)  # 0: the cap
    four = build("configs/default.yaml", {"algo": {"anneal_steps": 4_000_000}})
    assert anneal_horizon(four, [], 2_500_000) == (["--anneal-steps", "4000000"], 4_000_000)
    with pytest.raises(ConfigError, match="--anneal-steps: 'x' is not a whole number"):
        anneal_horizon(cfg, ["--anneal-steps", "x"], 1)
    old = {"rule": "minibatch", "scale": 8, "seed": 1, "max_steps": 2_500_000, "milestones": {}}  # no anneal_steps
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n")
    with pytest.raises(ConfigError, match=r"annealed over 2,500,000 agent steps; this study anneals over 10,000,000"):
        batch_study("configs/default.yaml", scales=[8], seeds=[1], rules=["minibatch"], max_steps=1, out_dir=tmp_path)


def test_played_milestones_move_each_milestone_back_by_half_the_games_span():
    """4 games side by side, a window of 2. By their ends the means are -1 at 1,100 (-15, -10), 19 at 1,200
    (0, +10, +18) and 20.5 at 2,000 (+20). The two games that reached each mean lasted (100, 300), (300, 100)
    and (100, 100) steps: medians 200, 200 and 100, each spanning x 4 games, so they were played around
    1,100 - 400 = 700, 1,200 - 400 = 800 and 2,000 - 200 = 1,800."""
    from jaxpong.bench.learning import milestones_from_games, played_milestones

    games = [
        {"step": 1000, "length": 100, "return": -21.0, "process_s": 1.0},
        {"step": 1100, "length": 300, "return": 19.0, "process_s": 2.0},
        {"step": 1200, "length": 100, "return": 19.0, "process_s": 3.0},
        {"step": 1400, "length": 100, "return": 20.0, "process_s": 4.0},
        {"step": 2000, "length": 100, "return": 21.0, "process_s": 5.0},
    ]
    ended = milestones_from_games(games, window=2)
    assert [ended[m]["step"] for m in ("-10", "18", "20")] == [1100, 1200, 2000]
    assert played_milestones(games, 4, window=2) == {
        "-15": 700,
        "-10": 700,
        "0": 800,
        "10": 800,
        "18": 800,
        "20": 1800,
    }
    assert played_milestones(games[:1], 4, window=2) == {m: None for m in ("-15", "-10", "0", "10", "18", "20")}


def test_a_resumed_runs_milestones_count_the_time_of_every_process():
    """A run's first process ended its last game at 300 s; the resumed process's clock starts again, and its
    games end at 40 s and 60 s of its own: 340 s and 360 s since the run's first command. A window of 1
    puts +20 at the second game of the resumed process (step 900)."""
    from jaxpong.bench.learning import elapsed_s, milestones_from_games

    games = [
        {"step": 100, "return": -21.0, "process_s": 200.0},
        {"step": 500, "return": 10.0, "process_s": 300.0},
        {"step": 800, "return": 19.0, "process_s": 40.0},
        {"step": 900, "return": 21.0, "process_s": 60.0},
    ]
    assert elapsed_s(games) == [200.0, 300.0, 340.0, 360.0]
    # A resumed process whose first game ends later on its own clock than the first process's last game
    # shows by its lag behind the run's clock (time_s goes on across the resume; process_s starts again).
    timed = [
        {"step": 100, "return": -21.0, "process_s": 27.0, "time_s": 20.0},
        {"step": 200, "return": 21.0, "process_s": 47.0, "time_s": 40.0},  # lag 7 s: the same process
        {"step": 300, "return": 21.0, "process_s": 90.0, "time_s": 50.0},  # lag 40 s: a new one, 47 s before it
    ]
    assert elapsed_s(timed) == [27.0, 47.0, 137.0]
    reached = milestones_from_games(games, window=1)
    assert reached["18"] == {"time_s": 340.0, "step": 800}
    assert reached["20"] == {"time_s": 360.0, "step": 900}


def test_a_rerun_dates_older_rows_by_the_games_middles_from_their_run_folders(tmp_path):
    """A row written before the played column gains it when the study runs again (nothing left to train):
    20 games of 19 over 2 steps each on 256 games, ended at 1,000, were played around 1,000 - 256 = 744."""
    from jaxpong.scale.batchstudy import batch_study

    row = {"rule": "minibatch", "scale": 8, "seed": 1, "games": 256, "max_steps": 5000, "anneal_steps": 10_000_000}
    row["milestones"] = {"0": {"step": 1000}, "18": {"step": 1000}, "20": None}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "minibatch_x8_seed1").mkdir()
    game = {"step": 1000, "length": 2, "return": 19.0, "process_s": 1.0}
    (tmp_path / "minibatch_x8_seed1" / "games.jsonl").write_text((json.dumps(game) + "\n") * 20)
    assert (
        batch_study(
            "configs/default.yaml",
            scales=[8],
            seeds=[1],
            rules=["minibatch"],
            max_steps=5000,
            out_dir=str(tmp_path),
            target=18,
        )
        == 0
    )
    (again,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert again["played"] == {"0": 744, "18": 744, "20": None}
    # rounds to +18 (not in this row) -, +18 by the games' middle 744 -> 1k, then no drift figures
    assert "| - | 1k | - | - |" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize(
    "arm, ranks, scale, flags",
    [
        # 4 ranks share the default's 32 games down to the floor of 16 each: 64 in all, the emulated 2x
        ("minibatch", 4, 2, ["--ranks", "4", "--oversubscribe", "--batch-rule", "minibatch"]),
        # 8 ranks of 16: 128 games, 4x (16 minibatches of 512 either way), with the arm's modifier
        (
            "minibatch+ewma",
            8,
            4,
            ["--ranks", "8", "--oversubscribe", "--batch-rule", "minibatch", "--proximal", "ewma"],
        ),
    ],
)
def test_real_ranks_share_the_games_and_land_on_an_emulated_scale(arm, ranks, scale, flags):
    from jaxpong.base.config import build
    from jaxpong.scale.batchstudy import real_ranks

    assert real_ranks(arm, ranks, build("configs/default.yaml", {})) == (scale, flags)


def test_real_ranks_whose_games_match_no_scale_are_refused():
    """3 ranks of 16 games play 48, 1.5x the default's 32: no emulated row to set them beside. 16 ranks of 16
    play 256 (8x), but a rank's 1,024 samples cap the minibatches at 16 where the 8x stand-in (ranks of 32,
    2,048 samples) gets 32: another update, so no check of the stand-in."""
    from jaxpong.base.config import build
    from jaxpong.base.errors import ConfigError
    from jaxpong.scale.batchstudy import real_ranks

    with pytest.raises(ConfigError, match="--ranks 3: 48 games in all is not a whole multiple of the config's 32"):
        real_ranks("minibatch", 3, build("configs/default.yaml", {}))
    with pytest.raises(ConfigError, match="ranks of 16 games get 16 minibatches.*8x stand-in .* gets 32"):
        real_ranks("minibatch", 16, build("configs/default.yaml", {}))


def test_real_rank_rows_sit_beside_the_emulated_ones_in_the_table(tmp_path):
    """A 1x row at 800k, an emulated 2x at 900k and 4 real ranks (2x) at 1,000k: the real row is labelled by its
    ranks and compared with the 1x of its arm (1.25x); its folder is minibatch@4_x2_seed1."""
    from jaxpong.scale.batchstudy import batch_study, run_name, summarise, table

    def row(rule, scale, step):
        milestones = {"0": {"step": step // 2}, "18": {"step": step}, "20": None}
        return {"rule": rule, "scale": scale, "seed": 1, "target": 18, "milestones": milestones}

    rows = summarise([row("minibatch", 1, 800_000), row("minibatch", 2, 900_000), row("minibatch@4", 2, 1_000_000)])
    text = table(rows)
    assert "| minibatch, 4 real ranks | 2x | 1 | 500k | 1,000k (1/1) | - (0/0) | 1.25x |" in text, text
    assert "| minibatch | 2x | 1 | 450k | 900k (1/1) | - (0/0) | 1.12x |" in text, text
    assert run_name("minibatch@4", 2, 1) == "minibatch@4_x2_seed1"
    # A study of real ranks with its rows (real and emulated) already there trains nothing and tables both.
    extra = dict(games=64, max_steps=5000, anneal_steps=10_000_000)
    done = [dict(row("minibatch@4", 2, 1_000_000), **extra), dict(row("minibatch", 2, 900_000), **extra)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done))
    kwargs = dict(scales=[8], seeds=[1], rules=["minibatch"], max_steps=5000, out_dir=str(tmp_path), target=18)
    assert batch_study("configs/default.yaml", ranks=4, **kwargs) == 0
    written = (tmp_path / "table.md").read_text()
    assert "| minibatch, 4 real ranks | 2x |" in written and "| minibatch | 2x |" in written

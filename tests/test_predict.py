"""The time-to-win prediction's pure parts (jaxpong/scale/predict.py): steps between and beyond the batch study's
scales, and what limits a rank count."""

from __future__ import annotations

import pytest

from jaxpong.scale.predict import StepsModel, limit


def _model():
    steps = {"0": [400_000, 400_000, 800_000], "18": [800_000, 1_000_000, None], "20": [None, None, None]}
    return StepsModel(scales=[1, 2, 4], steps=steps, minibatch=[512, 512, 1024], b_crit=1024.0)


def test_measured_scales_are_read_back_and_interpolated_in_log_log():
    m = _model()
    assert m.at("0", 1, 512) == pytest.approx(400_000)
    assert m.at("0", 4, 1024) == pytest.approx(800_000)
    assert m.at("0", 2.8284271, 512) == pytest.approx(565_685, rel=1e-4)  # halfway in log: the geometric mean
    assert m.at("20", 1, 512) is None


def test_beyond_the_study_samples_grow_with_the_batch_past_the_critical_batch():
    # 18 was reached up to scale 2 (B = 512): E_min = 1.0M / (1 + 512/1024) = 666,667; at B = 8192: x (1 + 8) = 6.0M
    assert _model().at("18", 16, 8192) == pytest.approx(6_000_000)


def test_what_limits_a_rank_count():
    assert limit(0.99, 0.0, 1.0) == "-"
    assert limit(0.80, 0.15, 1.0) == "late senders"  # 0.15 of the 0.20 lost is waiting
    assert limit(0.80, 0.02, 1.0) == "collectives"
    assert limit(0.80, 0.15, 3.0) == "critical batch"  # 3x the samples outweighs 1.25x the time


def test_the_study_scales_minibatch_is_the_one_the_study_trained_with():
    """The study's one process at scale k runs k x 32 games with the minibatch rule's count (k x 4), so its
    optimizer steps average 512 samples at every scale up to 8x, however the ranks would share games."""
    from jaxpong.base.config import build
    from jaxpong.scale.predict import steps_model

    reached = {"0": {"step": 500_000}, "18": {"step": 900_000}, "20": None}
    results = [{"rule": "minibatch", "scale": s, "seed": 1, "milestones": reached} for s in (1, 2, 4, 8, 16)]
    model = steps_model(results, "minibatch", 1000.0, build("configs/default.yaml", {}))
    assert model.minibatch == [512, 512, 512, 512, 1024]


def test_a_higher_milestone_is_never_predicted_sooner_than_a_lower_one():
    """+20 measured only at 1x (runs that stopped at +18 elsewhere) extrapolates from 1x with E_min (1 + B /
    B_crit): at scale 4 and the same batch it stays 1.2M, below the +18 of 1.6M measured there; it is
    floored at +18's."""
    from jaxpong.scale.predict import milestone_steps

    steps = {"0": [300_000, 600_000], "18": [800_000, 1_600_000], "20": [1_200_000, None]}
    model = StepsModel(scales=[1, 4], steps=steps, minibatch=[512, 512], b_crit=1024.0)
    assert model.at("20", 4, 512) == pytest.approx(1_200_000)
    assert milestone_steps(model, 4, 512) == pytest.approx({"0": 600_000, "18": 1_600_000, "20": 1_600_000})
    assert milestone_steps(model, 1, 512) == pytest.approx({"0": 300_000, "18": 800_000, "20": 1_200_000})


def test_the_rules_round_sets_the_simulated_round_its_collectives_and_its_compute():
    """At 8 ranks of 32 games each (256 games, 8x) the steps rule plays rounds of 64 / sqrt(8) = 22.6, so 23
    steps, and 23 x 256 / 512 = 11.5, so 11 minibatches of about 512 samples: the simulated round has 23 rows
    and 4 epochs x 11 minibatches = 44 allreduces, and the update's compute scales by 23 / 64."""
    from jaxpong.base.config import build
    from jaxpong.learn import batch_rule
    from jaxpong.scale.predict import rule_setup
    from jaxpong.scale.simulate import Measured, Setup

    measured = Measured(
        step_time_s=[[0.01]],
        gap_s=[[0.0]],
        compute_s=[0.64, 1.28],
        game_length_steps=[3000],
        point_interval_steps=[150],
        typical_ranks=[0],
        setup=Setup(num_envs=32, num_steps=64, optimizer_steps=16),
    )
    cfg = build("configs/default.yaml", {"algo": {"batch_rule": "steps"}, "env": {"min_rank_games": 32}})
    scaled, _ = batch_rule.apply(cfg, 8)
    assert scaled.algo.num_steps == 23
    got = rule_setup(measured, scaled)
    assert got.setup.num_steps == 23
    assert scaled.algo.num_minibatches == 11 and got.setup.optimizer_steps == 44
    assert got.compute_s == pytest.approx([0.64 * 23 / 64, 1.28 * 23 / 64])
    assert measured.setup.num_steps == 64 and measured.compute_s == [0.64, 1.28]  # the measured ones stay
    # today's rule keeps the round: 64 rows, 8 x 4 minibatches x 4 epochs allreduces, the same compute
    today, _ = batch_rule.apply(build("configs/default.yaml", {"env": {"min_rank_games": 32}}), 8)
    same = rule_setup(measured, today)
    assert same.setup.num_steps == 64 and same.setup.optimizer_steps == 4 * 32
    assert same.compute_s == pytest.approx([0.64, 1.28])

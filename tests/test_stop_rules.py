"""When training stops: the stop rules as pure functions of the config, the step count and the facts
every rank agrees on after a round's exchange (no envs, no jax work)."""

from __future__ import annotations

import collections
import math
import signal
from pathlib import Path

import pytest

from jaxpong.base.config import Config
from jaxpong.training.stop import RECENT_GAMES, stop_reason, target_reached


def config(total_steps=10_000, time_limit_s=0.0, target_return=math.nan) -> Config:
    cfg = Config()
    cfg.run.total_steps, cfg.run.time_limit_s, cfg.run.target_return = total_steps, time_limit_s, target_return
    return cfg


def facts(process_s=1.0, sig=0, stop_request=0.0):
    """The agreed facts the stop rules read: rank 0's process seconds, a signal's number, rank 0's stop request."""
    return {"rank0_process_s": process_s, "signal": float(sig), "stop_request": stop_request}


def reason(cfg, step=0, f=None, time_limit_s=None, recent_mean=None):
    return stop_reason(cfg, step, f or facts(), time_limit_s, Path("runs/x"), 2, recent_mean)


def test_nothing_stops_a_young_run():
    assert reason(config()) == ""


def test_total_steps():
    assert reason(config(), step=9_999) == ""
    assert "--total-steps 10,000" in reason(config(), step=10_000)
    assert "--total-steps" in reason(config(), step=10_256)


def test_time_limit_uses_rank_0_elapsed_time():
    cfg = config(time_limit_s=30.0)
    assert reason(cfg, f=facts(process_s=29.9)) == ""
    assert "--time-limit-s 30" in reason(cfg, f=facts(process_s=30.0))
    # An explicit limit passed to run() replaces the configured one.
    assert "--time-limit-s 5" in reason(cfg, f=facts(process_s=6.0), time_limit_s=5.0)
    assert reason(config(time_limit_s=0.0), f=facts(process_s=1e9)) == ""  # 0 = none


def test_target_return_needs_twenty_games_with_a_mean_at_least_the_target():
    assert RECENT_GAMES == 20

    def recent(returns):
        return collections.deque(returns, maxlen=RECENT_GAMES)

    assert not target_reached(0.0, recent([21.0] * 19))  # 19 perfect games are not enough
    assert target_reached(0.0, recent([-2.0, 2.0] * 10))  # 20 games averaging exactly the target
    assert not target_reached(0.0, recent([-2.0, 2.0] * 9 + [-2.0, 1.9]))  # just below
    assert target_reached(20.0, recent([-21.0] * 10 + [21.0] * 20))  # only the last 20 count
    assert not target_reached(math.nan, recent([21.0] * 20))  # nan = never, however good


def test_rank_0s_stop_request_stops_every_rank():
    cfg = config(target_return=0.0)
    assert reason(cfg, f=facts(stop_request=0.0)) == ""
    assert (
        reason(cfg, f=facts(stop_request=1.0), recent_mean=0.0)
        == "reached --target-return 0 (mean of the last 20 games +0.00)"
    )
    assert reason(cfg, f=facts(stop_request=1.0)) == "reached --target-return 0"  # another rank: no games to quote


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_on_any_rank_stops_first(sig):
    text = reason(config(), step=10_000, f=facts(sig=int(sig)))  # the step limit is reached too
    assert text.startswith(f"signal {sig.name}") and "--resume" in text

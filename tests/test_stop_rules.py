"""When training stops: Trainer._stop_reason on constructed state (no envs, no jax work)."""

from __future__ import annotations

import collections
import math

import pytest

from jaxpong.config import Config
from jaxpong.train import RECENT_GAMES, Counters, Trainer


def bare_trainer(total_steps=10_000, time_limit_s=0.0, target_return=math.nan, step=0, returns=()):
    """A Trainer with only what the stop rules read (cfg, counters, recent games)."""
    trainer = object.__new__(Trainer)
    trainer.cfg = Config()
    trainer.cfg.run.total_steps = total_steps
    trainer.cfg.run.time_limit_s = time_limit_s
    trainer.cfg.run.target_return = target_return
    trainer.counters = Counters(step=step)
    trainer.recent = collections.deque(returns, maxlen=RECENT_GAMES)
    return trainer


def gathered(process_s=1.0, signal=None):
    return [{"signal": signal, "process_s": process_s}, {"signal": None, "process_s": process_s + 5}]


def test_nothing_stops_a_young_run():
    assert bare_trainer()._stop_reason(gathered(), None) == ""


def test_total_steps():
    assert bare_trainer(step=9_999)._stop_reason(gathered(), None) == ""
    assert "--total-steps 10,000" in bare_trainer(step=10_000)._stop_reason(gathered(), None)
    assert "--total-steps" in bare_trainer(step=10_256)._stop_reason(gathered(), None)


def test_time_limit_uses_rank_0_elapsed_time():
    t = bare_trainer(time_limit_s=30.0)
    assert t._stop_reason(gathered(process_s=29.9), None) == ""  # rank 1's 34.9 s does not count
    assert "--time-limit-s 30" in t._stop_reason(gathered(process_s=30.0), None)
    # An explicit limit passed to run() replaces the configured one.
    assert "--time-limit-s 5" in t._stop_reason(gathered(process_s=6.0), 5.0)
    assert bare_trainer(time_limit_s=0.0)._stop_reason(gathered(process_s=1e9), None) == ""  # 0 = none


def test_target_return_needs_twenty_games_with_a_mean_at_least_the_target():
    assert RECENT_GAMES == 20
    # 19 perfect games are not enough.
    assert bare_trainer(target_return=0.0, returns=[21.0] * 19)._stop_reason(gathered(), None) == ""
    # 20 games averaging exactly the target: stop.
    reason = bare_trainer(target_return=0.0, returns=[-2.0, 2.0] * 10)._stop_reason(gathered(), None)
    assert "--target-return 0" in reason and "+0.00" in reason
    # Just below the target: go on.
    assert bare_trainer(target_return=0.0, returns=[-2.0, 2.0] * 9 + [-2.0, 1.9])._stop_reason(gathered(), None) == ""
    # Only the last 20 games count: 10 early losses then 20 wins.
    assert "--target-return" in bare_trainer(target_return=20.0, returns=[-21.0] * 10 + [21.0] * 20)._stop_reason(gathered(), None)
    # nan = never, however good.
    assert bare_trainer(target_return=math.nan, returns=[21.0] * 20)._stop_reason(gathered(), None) == ""


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGINT"])
def test_a_signal_on_any_rank_stops_first(signal):
    t = bare_trainer(step=10_000)  # the step limit is reached too: the signal is what is reported
    g = gathered()
    g[1]["signal"] = signal
    reason = t._stop_reason(g, None)
    assert reason.startswith(f"signal {signal}") and "--resume" in reason

"""When each round's collection stops: the deadline that keeps every rank's collective on time.

auto     deadline = lower median over ranks of the time a rank needs to fill its buffer (measured
         last round, scaled up for ranks that were cut), x (1 + margin): typical ranks fill their
         buffers, slower ranks are cut and join with what they have. The lower median of two
         ranks is the faster one. The first round has no deadline (it includes compilation), and
         one rank alone has nobody to wait for, so there auto means no deadline.
SECONDS  a fixed wall-clock budget per round (the 2016 windows: 2 s).
0        no deadline: every rank collects its full buffer (the plain synchronous baseline).
game     no clock: each rank plays until every one of its envs has finished a game (2016, before the fix).
"""

from __future__ import annotations

from jaxpong.ranks.exchange import lower_median_of_counts


def fill_time_estimate(collect_s: float, filled_steps: int, num_envs: int, num_steps: int) -> float:
    """Seconds this rank would need to fill its whole [num_steps, num_envs] buffer at last round's speed."""
    per_env = filled_steps / max(num_envs, 1)
    return collect_s * num_steps / max(per_env, 1e-9)


def lower_median(values) -> float:
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


class Deadline:
    def __init__(self, spec: float | str, margin: float = 0.0, world_size: int = 2):
        self.spec = 0.0 if spec == "auto" and world_size == 1 else spec
        self.margin = margin
        self.auto_s: float | None = None

    @property
    def until_game_end(self) -> bool:
        return self.spec == "game"

    def seconds(self) -> float | None:
        """The coming round's budget in seconds, or None for no clock."""
        if self.spec == "auto":
            return self.auto_s
        if self.spec == "game" or self.spec == 0.0:
            return None
        return float(self.spec)

    def observe_counts(self, fill_counts) -> None:
        """Every rank calls this with the same reduced histogram of the ranks' fill-time estimates
        (jaxpong/ranks/exchange.py), so all agree on the deadline: the lower median, to within 0.6 %."""
        median = lower_median_of_counts(fill_counts)
        if self.spec == "auto" and median is not None:
            self.auto_s = median * (1.0 + self.margin)

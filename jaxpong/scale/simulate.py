"""What a setup would cost at scales you cannot try: a Monte Carlo model of jaxpong's update rounds.

`python -m jaxpong simulate --ranks 1,2,4,...,1536,10000 [--from RUN_DIR]`

One round, for rank r of N (seconds; every input is drawn from measured distributions):

    arrive_r = gap_r + steps_r * step_r              host work since the last update, then collection
    wait_r   = max_j arrive_j - arrive_r + gather(N)  the late-sender cost: ranks.jsonl's wait_s
    update   = compute + optimizer_steps * allreduce(N, message_bytes)   the same on every rank
    wall     = max_j arrive_j + gather(N) + update

`step_r` is the time of one step of all the rank's envs (one row of its [num_steps, num_envs]
buffer), `gap_r` the host work between rounds (rank 0 logs and checkpoints there). How many steps
a rank plays depends on the mode, named as train's --deadline-s:

    game      until every one of the rank's envs has finished a game; games run on across rounds, so
              after the first round it is the longest remaining game (train: game; the 2016 original)
    steps     num_steps                                                      (train: 0)
    window    until window_s seconds have passed, at most num_steps; steps after a window's last point
              keep return 0 and count, as in 2016's fix                       (train: SECONDS)
    deadline  until D = lower median over ranks of last round's fill times (num_steps * step) x
              (1 + margin), at most num_steps x (1 + buffer_headroom): faster ranks keep playing until
              the deadline; one rank has no deadline                         (train: auto)

A rank checks the clock after each step, so a cut rank plays ceil(D / step) steps. Masking (setups
with masking 'unscored', i.e. pg with --pg-unscored mask; never in window mode): the steps of an env
after its last point in the round carry no gradient weight. Points are modelled as evenly spaced,
d steps apart, with a uniform phase: the masked tail of an env is min(U * d, steps), U ~ U(0, 1).

Collectives, a latency-bandwidth (alpha-beta) model:

    allreduce(N, n) = 2 (N - 1) alpha + 2 (N - 1) / N * n / beta      ring allreduce: reduce-scatter then
                                                                      allgather, N - 1 steps each
    gather(N)       = ceil(log2 N) * gather_latency + (N - 1) * m / beta   the per-round exchange: arrival
                                                                      check, Allreduce of the agreed record,
                                                                      Gather of an m-byte row per rank to
                                                                      rank 0 (jaxpong/ranks/exchange.py)

(Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms"; Thakur, Rabenseifner & Gropp
2005, "Optimization of collective communication operations in MPICH"). Both are 0 for one rank.

What the model reports, over all rounds but the first (which in train includes compilation):

    efficiency       rank-seconds spent on work one rank alone would also do (stepping games whose
                     samples carry gradient weight, and the update's own computation) / (N x wall):
                     waiting for late senders, collectives, host gaps and masked samples are the loss
    masked_fraction  masked samples / all samples played
    samples_per_s    samples carrying gradient weight, all ranks, per wall-clock second
    wait_fraction    as in ranks.jsonl: sum(wait) / sum(collect + update + wait), per rank

Inputs are resampled with a smoothed bootstrap (log scale, mean and variance kept), so the slowest of
many ranks can be slower than anything measured; constant inputs stay exactly constant. Simulated rank i
< R (the measured run's rank count) draws from measured rank i; further ranks draw from the pooled
ranks that were not fault-injected, with the between-round gaps of ranks other than rank 0.

Limits: ranks do not compete for cores (measured step times include whatever contention the
measured run had, on average, but not its dependence on how many ranks busy-wait at a time);
compute time is common to all ranks in a round (train's per-step allreduce keeps updates in step);
rank 0's logging cost does not grow with N; the network is one flat alpha-beta fabric.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError

MODES = ("game", "steps", "window", "deadline")
MODE_FLAG = {"game": "game", "steps": "0", "window": "SECONDS", "deadline": "auto"}
DEFAULT_RANKS = "1,2,4,...,1024,1536,10000"
DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "data" / "simulate_defaults.json"
MASKINGS = ("unscored", "none")
POINTS_TO_WIN = 21


# -- inputs ---------------------------------------------------------------------------------------
@dataclass
class Collectives:
    """The alpha-beta model of the two collectives of a round."""

    latency_s: float = 5e-6  # alpha: one message step of the allreduce
    bandwidth_bytes_per_s: float = 5e9  # beta
    gather_latency_s: float = 1e-4  # one tree step of the per-round exchange (its three collectives)
    gather_bytes_per_rank: float = 608.0  # the fixed-width row each rank sends to rank 0 (default config)

    def allreduce_s(self, ranks: int, nbytes: float) -> float:
        if ranks <= 1:
            return 0.0
        return 2 * (ranks - 1) * self.latency_s + 2 * (ranks - 1) / ranks * nbytes / self.bandwidth_bytes_per_s

    def gather_s(self, ranks: int) -> float:
        if ranks <= 1:
            return 0.0
        return (
            math.ceil(math.log2(ranks)) * self.gather_latency_s
            + (ranks - 1) * self.gather_bytes_per_rank / self.bandwidth_bytes_per_s
        )


@dataclass
class Setup:
    """What one rank does per round: from a run's config.yaml, or the shipped 2016 setup."""

    num_envs: int = 1
    num_steps: int = 4096
    optimizer_steps: int = 1  # collectives per round (ppo: epochs x minibatches)
    message_bytes: float = 4.0 * 1_280_204  # gradient sums + count + metrics, float32
    masking: str = "unscored"  # 'unscored': pg --pg-unscored mask; 'none': ppo, or pg --pg-unscored zero
    deadline_margin: float = 0.02
    buffer_headroom: float = 0.25  # train's --buffer-headroom: room beyond num_steps when a deadline is set
    window_s: float = 2.0


@dataclass
class Measured:
    """The measured distributions that drive the model, with the setup they were measured in."""

    step_time_s: list  # [measured rank] -> samples of seconds per step of all that rank's envs
    gap_s: list  # [measured rank] -> samples of host seconds between rounds
    compute_s: list  # samples of the update's seconds per round, collectives excluded
    game_length_steps: list  # samples of agent steps per full game
    point_interval_steps: list  # samples of agent steps per point
    typical_ranks: list  # measured ranks that further simulated ranks resemble
    setup: Setup = field(default_factory=Setup)
    collectives: Collectives = field(default_factory=Collectives)
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict, origin: str = "distributions") -> Measured:
        try:
            doc = dict(doc)
            setup = Setup(**doc.pop("setup", {}))
            coll = Collectives(**doc.pop("collectives", {}))
            m = cls(setup=setup, collectives=coll, **doc)
        except TypeError as err:
            raise ConfigError(f"{origin}: not a jaxpong simulate distributions file ({err})") from None
        m.check(origin)
        return m

    def check(self, origin: str = "distributions") -> None:
        def positive(name, values):
            a = np.asarray(values, float)
            if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ConfigError(f"{origin}: {name} must be a non-empty list of numbers >= 0")

        if not self.step_time_s or len(self.gap_s) != len(self.step_time_s):
            raise ConfigError(f"{origin}: step_time_s and gap_s need one list per measured rank")
        for r, (s, g) in enumerate(zip(self.step_time_s, self.gap_s)):
            positive(f"step_time_s[{r}]", s)
            positive(f"gap_s[{r}]", g)
        for name in ("compute_s", "game_length_steps", "point_interval_steps"):
            positive(name, getattr(self, name))
        if not self.typical_ranks or any(not 0 <= r < len(self.step_time_s) for r in self.typical_ranks):
            raise ConfigError(f"{origin}: typical_ranks must name measured ranks")
        if self.setup.masking not in MASKINGS:
            raise ConfigError(f"{origin}: setup.masking must be one of {', '.join(MASKINGS)}")
        if self.setup.num_envs < 1 or self.setup.num_steps < 1:
            raise ConfigError(f"{origin}: setup.num_envs and setup.num_steps must be >= 1")


def load_collectives(path) -> Collectives:
    """The collectives `simulate --calibrate` wrote to `path`."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict) or "collectives" not in doc:
        raise ConfigError(f"--collectives {str(path)!r}: give the JSON file --calibrate wrote")
    return Collectives(**doc["collectives"])


def load_measured(path=None) -> Measured:
    p = Path(path) if path else DEFAULTS_FILE
    if not p.is_file():
        raise ConfigError(f"distributions file {str(p)!r} not found")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{str(p)!r} is not valid JSON") from None
    measured = Measured.from_dict(doc, origin=str(p))
    measured.source["name"] = "the shipped defaults" if p == DEFAULTS_FILE else str(p)
    return measured


def scale_spread(measured: Measured, factor: float) -> Measured:
    """A copy whose timings (step times per rank, gaps per rank, update times) lie `factor` times as far
    from their medians on a log scale: 1 = as measured, 0 = constant at the median. Game lengths are
    Pong's own and stay as measured. A what-if for machines quieter (or noisier) than the measured one."""
    if factor < 0:
        raise ConfigError(f"--timing-spread: {factor} must be >= 0")

    def shrink(values):
        x = np.asarray(values, float)
        pos = x[x > 0]
        if pos.size == 0:
            return list(x)
        med = float(np.median(pos))
        return [float(med * (v / med) ** factor) if v > 0 else 0.0 for v in x]

    return dataclasses.replace(
        measured,
        step_time_s=[shrink(v) for v in measured.step_time_s],
        gap_s=[shrink(v) for v in measured.gap_s],
        compute_s=shrink(measured.compute_s),
        setup=dataclasses.replace(measured.setup),
        collectives=dataclasses.replace(measured.collectives),
        source={**measured.source, "timing_spread": factor},
    )


# -- sampling -------------------------------------------------------------------------------------
def _sampler(samples, rng: np.random.Generator, smooth: bool = True):
    """A smoothed bootstrap on log scale that keeps the samples' mean and variance (Silverman 1986, 6.4.1):
    y = log(sample), y' = m + (y - m + h z) / sqrt(1 + h^2 / sd^2), z ~ N(0, 1), h = 1.06 sd n^(-1/5).
    Draws can lie beyond the extremes measured (the slowest of 1,536 ranks may be slower than any of 76
    samples); without `smooth`, or for constant samples, it is a plain bootstrap."""
    x = np.asarray(samples, float)
    pos = x[x > 0]
    h = sd = mean = 0.0
    if smooth and pos.size > 1:
        logs = np.log(pos)
        mean, sd = float(logs.mean()), float(logs.std())
        h = 1.06 * sd * pos.size**-0.2

    def draw(shape):
        out = x[rng.integers(0, x.size, size=shape)]
        if h > 0:
            y = np.log(np.where(out > 0, out, 1.0))
            y = mean + (y - mean + h * rng.standard_normal(shape)) / math.sqrt(1.0 + (h / sd) ** 2)
            out = np.where(out > 0, np.exp(y), 0.0)
        return out

    return draw


def _per_rank(by_rank: list, extra: list, ranks: int, rounds: int, rng, smooth: bool) -> np.ndarray:
    """[rounds, ranks]: measured rank i's samples for simulated rank i < R, the pooled `extra` beyond."""
    out = np.empty((rounds, ranks))
    own = min(len(by_rank), ranks)
    for i in range(own):
        out[:, i] = _sampler(by_rank[i], rng, smooth)((rounds,))
    if ranks > own:
        out[:, own:] = _sampler(extra, rng, smooth)((rounds, ranks - own))
    return out


def lower_median(values: np.ndarray) -> float:
    """As train's auto deadline: the lower of the two middle values (the faster of two ranks)."""
    k = (len(values) - 1) // 2
    return float(np.partition(values, k)[k])


# -- the model ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    mode: str
    ranks: int
    efficiency: float
    masked_fraction: float
    samples_per_s: float
    wait_fraction: float  # mean over ranks
    round_s: float  # mean wall-clock seconds per round
    rank_wait_fraction: np.ndarray | None = field(repr=False, default=None)

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "ranks": self.ranks,
            "efficiency": round(self.efficiency, 4),
            "masked_fraction": round(self.masked_fraction, 5),
            "samples_per_s": round(self.samples_per_s, 1),
            "wait_fraction": round(self.wait_fraction, 4),
            "round_s": round(self.round_s, 5),
        }


def simulate(
    measured: Measured,
    mode: str,
    ranks: int,
    rounds: int = 300,
    seed: int = 0,
    slow_rank: int = -1,
    slow_factor: float = 1.0,
    smooth: bool = True,
) -> Outcome:
    """Monte Carlo of `rounds` update rounds of `ranks` ranks in `mode` (plus a first round left out).
    `smooth=False` resamples the measured values exactly (a plain bootstrap), as the tests' closed forms need."""
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if ranks < 1 or rounds < 1:
        raise ConfigError("ranks and rounds must be >= 1")
    setup, coll = measured.setup, measured.collectives
    rng = np.random.default_rng([seed, ranks, MODES.index(mode)])
    n = rounds + 1
    envs, cap = setup.num_envs, float(setup.num_steps)
    typical = [x for r in measured.typical_ranks for x in measured.step_time_s[r]]
    step = _per_rank(measured.step_time_s, typical, ranks, n, rng, smooth)
    if 0 <= slow_rank < ranks:
        step[:, slow_rank] *= slow_factor
    quiet = [x for r in range(1, len(measured.gap_s)) for x in measured.gap_s[r]]
    if not quiet:  # measured on one rank: further ranks have the loop's own overhead, not rank 0's logging
        quiet = [float(np.percentile(measured.gap_s[0], 10))]
    gap = _per_rank(measured.gap_s, quiet, ranks, n, rng, smooth)
    compute = _sampler(measured.compute_s, rng, smooth)((n,))
    game_length = _sampler(measured.game_length_steps, rng, smooth)
    point_interval = _sampler(measured.point_interval_steps, rng, smooth)
    gather = coll.gather_s(ranks)
    collectives = setup.optimizer_steps * coll.allreduce_s(ranks, setup.message_bytes)
    masks = setup.masking == "unscored" and mode != "window"

    remaining = np.ceil(game_length((ranks, envs))) if mode == "game" else None
    deadline = None
    wall_total = useful_total = weighted_total = masked_total = 0.0
    wait_sum, busy_sum = np.zeros(ranks), np.zeros(ranks)
    for k in range(n):
        s = step[k]
        just_ended = None
        if mode == "steps":
            steps = np.full(ranks, cap)
        elif mode == "window":
            steps = np.minimum(cap, np.maximum(1.0, np.ceil(setup.window_s / s)))
        elif mode == "deadline":
            room = cap if ranks == 1 else np.ceil(cap * (1.0 + setup.buffer_headroom))
            steps = (
                np.full(ranks, cap) if deadline is None else np.minimum(room, np.maximum(1.0, np.ceil(deadline / s)))
            )
            if ranks > 1:
                deadline = lower_median(cap * s) * (1.0 + setup.deadline_margin)
        else:
            assert remaining is not None  # mode == "game"
            steps = remaining.max(axis=1)
            remaining -= steps[:, None]
            just_ended = remaining == 0
            while (need := remaining <= 0).any():
                remaining[need] += np.ceil(game_length(int(need.sum())))
        collect = steps * s
        arrive = gap[k] + collect
        last = float(arrive.max())
        wait = last - arrive + gather
        update = compute[k] + collectives
        wall = last + gather + update
        samples = steps * envs
        if masks:
            tail = np.minimum(rng.random((ranks, envs)) * point_interval((ranks, envs)), steps[:, None])
            if just_ended is not None:
                tail[just_ended] = 0.0
            masked = tail.sum(axis=1)
        else:
            masked = np.zeros(ranks)
        if k == 0:
            continue  # train's first round includes compilation: left out, as in its wait fractions
        weighted = samples - masked
        wall_total += wall
        useful_total += float((collect * weighted / samples).sum()) + ranks * compute[k]
        weighted_total += float(weighted.sum())
        masked_total += float(masked.sum())
        wait_sum += wait
        busy_sum += collect + update + wait
    rank_wait = wait_sum / busy_sum
    return Outcome(
        mode=mode,
        ranks=ranks,
        efficiency=useful_total / (ranks * wall_total),
        masked_fraction=masked_total / (weighted_total + masked_total),
        samples_per_s=weighted_total / wall_total,
        wait_fraction=float(rank_wait.mean()),
        round_s=wall_total / rounds,
        rank_wait_fraction=rank_wait,
    )


def parse_ranks(text: str) -> list[int]:
    """'1,2,4,...,64,100' -> [1, 2, 4, 8, 16, 32, 64, 100]: '...' continues the ratio of the two values before it."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    out: list[int] = []
    try:
        for i, p in enumerate(parts):
            if p in ("...", "…"):
                if len(out) < 2 or i + 1 >= len(parts) or out[-1] <= out[-2]:
                    raise ValueError
                ratio, stop = out[-1] / out[-2], int(parts[i + 1])
                while round(out[-1] * ratio) < stop:
                    out.append(int(round(out[-1] * ratio)))
            else:
                out.append(int(p))
    except ValueError:
        raise ConfigError(
            f"--ranks {text!r}: give rank counts such as 1,2,4,...,1536,10000 "
            "('...' continues the ratio of the two values before it up to the next)"
        ) from None
    if not out or any(r < 1 for r in out):
        raise ConfigError(f"--ranks {text!r}: rank counts must be >= 1")
    return sorted(set(out))


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"--modes {text!r}: choose from {', '.join(MODES)}")
    return modes


# -- distributions from a run ---------------------------------------------------------------------
def mode_of(deadline) -> str:
    """train's --deadline-s value (parsed) -> the simulator's mode."""
    if deadline == "game":
        return "game"
    if deadline == "auto":
        return "deadline"
    return "steps" if float(deadline) == 0.0 else "window"


def message_bytes(cfg) -> float:
    """Bytes of one allreduce in train: float32 gradient sums of every parameter, the count, the metrics."""
    import jax
    import jax.numpy as jnp

    from jaxpong.learn.algorithms import ALGORITHMS
    from jaxpong.learn.networks import make_network
    from jaxpong.play.envs import frame_shape
    from jaxpong.play.preprocess import PREPROCESSORS, to_float

    stack, h, w = frame_shape(cfg.model)
    network = make_network(cfg.model)

    def init(key):
        x = to_float(PREPROCESSORS[cfg.model.obs_mode](jnp.zeros((1, stack, h, w), jnp.uint8)))
        return network.init(key, x)

    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    return 4.0 * (params + 1 + len(ALGORITHMS[cfg.algo.algo].METRICS))


def _points(game_return: float) -> float:
    """Points played in a full game (first to 21): 42 - |return|."""
    return 2 * POINTS_TO_WIN - min(abs(float(game_return)), POINTS_TO_WIN)


def _games(run_dir: Path) -> tuple[list[float], list[float], str]:
    """Game lengths and steps per point of a run's finished games, and where they came from.

    games.jsonl (one line per finished game) where the run has it; otherwise metrics.jsonl, whose lines
    hold the MEAN over the games that finished in their update: lines where exactly one game finished
    are single games and are preferred (means understate the spread)."""
    from jaxpong.report import stats as report

    path = Path(run_dir) / "games.jsonl"
    if path.is_file():
        rows = [g for g in report._read_jsonl(path) if isinstance(g.get("length"), (int, float)) and "return" in g]
        if rows:
            return (
                [float(g["length"]) for g in rows],
                [float(g["length"]) / max(_points(g["return"]), 1.0) for g in rows],
                "games.jsonl",
            )
    metrics = report.read_metrics(run_dir)
    single, means, prev = [], [], 0  # a fresh run starts with no game
    for m in metrics:
        episodes = m.get("charts/episodes")
        length, ret = m.get("charts/episodic_length"), m.get("charts/episodic_return")
        if length is not None and ret is not None:
            row = (float(length), float(length) / max(_points(ret), 1.0))
            means.append(row)
            if prev is not None and episodes is not None and episodes - prev == 1:
                single.append(row)
        if episodes is not None:
            prev = episodes
    chosen, origin = (
        (single, "metrics.jsonl, single-game updates")
        if len(single) >= 10
        else (means, "metrics.jsonl, per-update means")
    )
    return [r[0] for r in chosen], [r[1] for r in chosen], origin


def measured_from_run(run_dir, base: Measured | None = None) -> Measured:
    """The distributions of a real run: per-rank step times and gaps from ranks.jsonl, game lengths
    from metrics.jsonl, the setup from config.yaml; collectives (and game lengths, where the run
    finished no game) from `base` (the shipped defaults)."""
    from jaxpong.learn import batch_rule
    from jaxpong.report import stats as report

    base = base or load_measured()
    path = report.check_run_dir(run_dir)
    records = report.read_ranks(path)
    cfg = Config.from_run(path)
    ranks = sorted({r["rank"] for r in records})
    if ranks != list(range(len(ranks))):
        raise ConfigError(f"{path}/ranks.jsonl: ranks {ranks} are not 0..N-1")
    cfg, _ = batch_rule.apply(cfg, len(ranks))  # config.yaml keeps the user's values; the ranks ran these
    envs, cap = cfg.env.num_envs, cfg.algo.num_steps
    steady = report.steady_records(records)
    by_rank = {r: sorted((x for x in records if x["rank"] == r), key=lambda x: x["update"]) for r in ranks}
    steps, gaps = [], []
    first = min(x["update"] for x in records)
    for r in ranks:
        rows = by_rank[r]
        s = [
            x["collect_s"] * envs / (x.get("valid_samples", 0) + x.get("masked_samples", 0))
            for x in rows
            if x["update"] > first and x.get("valid_samples", 0) + x.get("masked_samples", 0) > 0
        ]
        g = [
            max(0.0, b["start_s"] - (a["start_s"] + a["collect_s"] + a["compute_s"] + a["wait_s"]))
            for a, b in zip(rows, rows[1:])
            if a["update"] > first and b["update"] == a["update"] + 1
        ]
        if not s:
            raise ConfigError(f"{path}: rank {r} has no round after the first with samples; run longer")
        steps.append(s)
        gaps.append(g or [0.0])
    setup = Setup(
        num_envs=envs,
        num_steps=cap,
        optimizer_steps=cfg.algo.update_epochs * cfg.algo.num_minibatches if cfg.algo.algo == "ppo" else 1,
        message_bytes=message_bytes(cfg),
        masking="unscored" if cfg.algo.algo == "pg" and cfg.algo.pg_unscored == "mask" else "none",
        deadline_margin=cfg.dist.deadline_margin,
        buffer_headroom=cfg.dist.buffer_headroom,
    )
    slow = cfg.dist.slow_rank if cfg.dist.slow_factor > 1.0 else -1
    typical = [r for r in ranks if r != slow] or ranks
    deadline = cfg.deadline
    if isinstance(deadline, float) and deadline > 0:
        setup.window_s = deadline
    else:
        setup.window_s = 0.9 * cap * float(np.median([x for r in typical for x in steps[r]]))
    coll = base.collectives
    per_round: dict[int, list[float]] = {}
    for x in steady:
        per_round.setdefault(x["update"], []).append(x["compute_s"])
    own = setup.optimizer_steps * coll.allreduce_s(len(ranks), setup.message_bytes)
    compute = [max(1e-6, float(np.median(v)) - own) for v in per_round.values()]
    lengths, intervals, origin = _games(path)
    source = {
        "run_dir": str(path),
        "ranks": len(ranks),
        "rounds": len(per_round),
        "slow_rank": slow,
        "slow_factor": cfg.dist.slow_factor,
        "deadline_s": cfg.dist.deadline_s,
        "games": f"{len(lengths)} from {origin}"
        if lengths
        else f"none finished: game lengths from {base.source.get('name', 'the defaults')}",
        "collectives": f"from {base.source.get('name', 'the defaults')}",
    }
    if not lengths:
        lengths, intervals = base.game_length_steps, base.point_interval_steps
    return Measured(
        step_time_s=steps,
        gap_s=gaps,
        compute_s=compute,
        game_length_steps=lengths,
        point_interval_steps=intervals,
        typical_ranks=typical,
        setup=setup,
        collectives=coll,
        source=source,
    )

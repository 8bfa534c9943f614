"""One update round on one rank: collect -> prepare -> exchange -> update, returning what the round leaves.

Every rank issues the same collectives in the same order every round: the host exchange of fixed-size
records (jaxpong/ranks/exchange.py; its duration is the rank's wait: the late-sender cost), then the jitted
update with one allreduce per optimizer step. One rank is the degenerate case of many: the same code
runs with a communicator that does nothing. The round never decides to stop: it sends the stop flags
it is given and returns the agreed facts, from which the run loop (jaxpong/training/run.py) decides.
"""

from __future__ import annotations

import hashlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.base.clock import PROCESS_START
from jaxpong.base.config import Config
from jaxpong.learn import noise_scale
from jaxpong.learn.learner import (
    TrainState,
    adapt_lr_scale,
    lr_fraction,
    make_optimize,
    make_prepare,
    metric_names,
    sparse_round,
)
from jaxpong.play.batch import Batch
from jaxpong.play.deadline import Deadline, fill_time_estimate
from jaxpong.play.envs import PURPOSE_TRAIN, env_seeds, make_env
from jaxpong.play.keys import round_key, sampling_root
from jaxpong.play.rollout import Collector, make_policy_step
from jaxpong.play.sparse import RoundCells, reuse_length
from jaxpong.ranks.exchange import (
    FILL_BINS,
    Layout,
    agreed_layout,
    fill_bin,
    games_per_row,
    log_layout,
    read_rows,
    record_row,
)
from jaxpong.ranks.watchdog import Watchdog, hang_limit
from jaxpong.training.between_rounds import eval_allowance_s
from jaxpong.training.stop import EXIT_FAULT, Stop


@dataclass
class Counters:
    """Host-side counters, saved with every checkpoint."""

    update: int = 0
    step: int = 0  # valid agent steps used for learning, all ranks, whole run
    env_steps: int = 0  # all agent steps played, all ranks
    episodes: int = 0
    masked: int = 0
    skipped_updates: int = 0
    resume_count: int = 0
    elapsed_s: float = 0.0  # training seconds of earlier processes of this run
    recent_returns: list = field(default_factory=list)
    window_reward_ema: float | None = None  # the 2016 running reward, per round
    lr_scale: float = 1.0  # algo.target_kl's multiplier of the learning rate (learner.adapt_lr_scale)


@dataclass
class RoundOutcome:
    """What one round leaves: the agreed facts (every rank), what rank 0 gathered (the ranks' previous
    records and this round's games per rank; empty elsewhere), this rank's own record, the update's
    metrics, this round's games flattened (rank 0) and whether the update was skipped."""

    facts: dict
    records: list
    games_by_rank: list
    record: dict
    metrics: np.ndarray
    games: list
    skipped: int


@dataclass
class Prepared:
    """This rank's round between collection and the exchange: the batch and the learner's targets for it,
    the moments every rank sums, and (sparse input) the nonzero cells with the order the update draws them in."""

    batch: Batch
    targets: dict
    moments: np.ndarray
    masked: int
    sparse: tuple[RoundCells, np.ndarray] | None
    seconds: float


def buffer_steps(cfg: Config, deadline: Deadline) -> int:
    """Rows of each env's buffer. With a clock deadline, num_steps is what the typical rank collects
    by the deadline, and the headroom lets faster ranks keep playing until it instead of idling."""
    if deadline.spec == "auto" or (isinstance(deadline.spec, float) and deadline.spec > 0):
        return int(math.ceil(cfg.algo.num_steps * (1.0 + cfg.dist.buffer_headroom)))
    return cfg.algo.num_steps


def param_checksum(params) -> float:
    """A cheap fingerprint of the parameters; equal on every rank while they stay replicated."""
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(params)]
    flat = np.concatenate(leaves)
    return float(flat.sum() + (flat * np.linspace(1.0, 2.0, flat.size)).sum())


def sparse_update(cfg: Config) -> tuple[bool, bool]:
    """(asked for, used): the update's first layer from each sample's nonzero cells (jaxpong/play/sparse.py).
    Mirroring flips dense frames, so with it the update keeps the dense product."""
    wanted = cfg.model.sparse_input and cfg.model.network == "mlp"
    return wanted, wanted and not cfg.algo.mirror_augment


def _apply_fn(network):
    return lambda params, x: network.apply(params, x)


class RoundExchange:
    """The round's EXCHANGE step on this rank (a part of `Round`): the fixed-size agreed record every rank
    decides from, and the row of timings and games gathered to rank 0; waiting in it for the last rank is
    this rank's wait, the late-sender cost. The attributes below are Round's."""

    cfg: Config
    comm: Any
    signals: Any
    is_main: bool
    collector: Collector
    deadline: Deadline
    watchdog: Watchdog
    agreed_layout: Layout | None
    log_layout: Layout
    game_slots: int
    carried_games: list
    slowest_round_s: float
    last_eval_s: float
    clock_start: float
    hang_limit: Callable[..., float]

    def _exchange(
        self,
        state: TrainState,
        counters: Counters,
        prepared: Prepared,
        info,
        pending_record: dict | None,
        io_failure: bool,
        stop_request: bool,
    ) -> tuple[dict, tuple, float]:
        """(agreed facts, rank 0's gathered (records, games per rank), seconds waited)."""
        cfg, comm = self.cfg, self.comm
        check = cfg.dist.replication_check_every and counters.update % cfg.dist.replication_check_every == 0
        signal_now = self.signals.received
        self.signals.announce()  # after the read: a signal in this round's record has been announced
        games_here = self.carried_games + self.collector.scores.drain()
        games_sent, self.carried_games = games_here[: self.game_slots], games_here[self.game_slots :]
        checksum = param_checksum(state.params) if check and comm.size > 1 else -math.inf
        fill_counts = np.zeros(FILL_BINS)
        fill_at = fill_bin(fill_time_estimate(info.collect_s, info.filled_steps, cfg.env.num_envs, cfg.algo.num_steps))
        if fill_at is not None:
            fill_counts[fill_at] = 1.0
        batch = prepared.batch
        layout = self.agreed_layout = self.agreed_layout or agreed_layout(prepared.moments.size)
        agreed = layout.pack(
            {
                "moments": prepared.moments,
                "filled": info.filled_steps,
                "masked": prepared.masked,
                "games": len(games_sent),
                # The 2016 criterion: reward summed over this round's window of play, per game stepped.
                "window_reward": float(np.asarray(batch.rewards)[np.asarray(batch.filled)].sum()) / cfg.env.num_envs,
                "rank0_process_s": time.time() - self.clock_start if self.is_main else 0.0,
                "fill_counts": fill_counts,
                "signal": int(signal.Signals[signal_now]) if signal_now else 0,
                "io_failure": float(io_failure),
                "stop_request": float(stop_request),
                "sparse_length": prepared.sparse[0].length(prepared.sparse[1]) if prepared.sparse is not None else 0,
                "checksum_max": checksum,
                "checksum_neg_min": -checksum,
                "slowest_round_s": pending_record["collect_s"] + pending_record["compute_s"] if pending_record else 0.0,
                "rank0_eval_s": self.last_eval_s if self.is_main else 0.0,
            }
        )
        row = record_row(self.log_layout, pending_record, games_sent)
        t_wait = time.perf_counter()
        # Everyone waits here for the last rank: the late-sender cost.
        limit = self.hang_limit(counters.update)
        label = f"the exchange after update {counters.update}"
        # The arrival check names a rank that never arrives; the watchdog covers one that stops halfway through.
        self.watchdog.arm(label, limit + 5.0)
        reduced, rows = comm.exchange(agreed, layout, row, timeout_s=limit, label=label)
        self.watchdog.disarm()
        wait_s = time.perf_counter() - t_wait
        facts = layout.unpack(reduced)
        logged = read_rows(self.log_layout, rows) if rows is not None else ([], [])
        if facts["slowest_round_s"] > 0:
            self.slowest_round_s = facts["slowest_round_s"]
        self.last_eval_s = facts["rank0_eval_s"]
        if math.isfinite(facts["checksum_max"]):
            high, low = facts["checksum_max"], -facts["checksum_neg_min"]
            if high - low > 1e-6 * max(1.0, abs(high)):
                raise Stop(
                    f"ranks hold different parameters at update {counters.update} (checksums from {low} to "
                    f"{high}); replication broke",
                    EXIT_FAULT,
                )
        self.deadline.observe_counts(facts["fill_counts"])
        return facts, logged, wait_s


class Round(RoundExchange):
    """The round's machinery on this rank (jitted steps, envs, collector, deadline, watchdog), made once
    per process, and what this rank carries from one round to the next (games beyond
    a row's room, the agreed layout, the update's compiled list lengths, recent round times)."""

    def __init__(self, cfg: Config, comm, network, optimizer, counters: Counters, signals):
        self.cfg, self.comm, self.signals = cfg, comm, signals
        self.is_main = comm.rank == 0
        apply_fn = _apply_fn(network)
        self.policy_step = make_policy_step(apply_fn, cfg.model.obs_mode)
        self.prepare_targets = make_prepare(cfg, apply_fn)
        self.optimize = make_optimize(cfg, apply_fn, optimizer, comm.allreduce_sum)
        self.noise = noise_scale.NoiseScaleState.zeros()  # the gradient noise scale's running sums, round to round
        self.sparse_input = sparse_update(cfg)[1]
        self.sparse_lengths: set[int] = set()  # list lengths the update has been compiled for
        # algo.target_kl reads the late KL from the update's metrics to set the next round's learning rate.
        adaptive = cfg.algo.algo == "ppo" and cfg.algo.target_kl > 0
        self.kl_column = metric_names(cfg.algo.algo).index("charts/approx_kl_late") if adaptive else None
        if not adaptive:
            counters.lr_scale = 1.0  # a run resumed with the rule off trains at the learning rate it is given
        # This rank's games and their draws are numbered among all ranks' games (jaxpong/play/keys.py): what a
        # game plays does not depend on which rank steps it.
        first_game = comm.rank * cfg.env.num_envs
        self.sampling_root = sampling_root(cfg.run.seed, counters.resume_count)
        seeds = env_seeds(cfg.run.seed, counters.resume_count, PURPOSE_TRAIN, cfg.env.num_envs, first_game)
        self.env = make_env(cfg, seeds=seeds)
        slow = cfg.dist.slow_factor if cfg.dist.slow_rank == comm.rank else 1.0
        self.deadline = Deadline(cfg.deadline, cfg.dist.deadline_margin, comm.size)
        self.collector = Collector(
            self.env,
            cfg,
            apply_fn,
            num_steps=buffer_steps(cfg, self.deadline),
            slow_factor=slow,
            first_game=first_game,
        )
        self.agreed_layout: Layout | None = None  # made at the first round, when the moments' size is known
        self.game_slots = games_per_row(cfg.env.num_envs, buffer_steps(cfg, self.deadline))
        self.log_layout = log_layout(self.game_slots)
        self.carried_games: list = []  # finished games beyond a row's room, sent with the next round
        self.rounds_here = 0  # rounds completed by this process (a resumed one compiles afresh too)
        self.slowest_round_s = 0.0
        # How long rank 0's last evaluation took: rank 0 sets it when it evaluates, every rank learns it
        # from the next exchange, and the hang limits allow for it.
        self.last_eval_s = 0.0
        self.watchdog = Watchdog(comm)
        # When --time-limit-s started counting (time.time()): this process's start on the command line, the
        # call's start in the Python API (Training.run sets it).
        self.clock_start = PROCESS_START

    def hang_limit(self, update: int, compiles: bool = False) -> float:
        """How long one collective may block before the job is declared dead or hung (`compiles`: the
        update compiles again this round, for a new sparse list length)."""
        return hang_limit(
            self.cfg.dist.hang_timeout_s, self.rounds_here, self.slowest_round_s, compiles=compiles
        ) + eval_allowance_s(self.cfg, update, self.last_eval_s)

    def _compile_first(self, lowered: list, timeout_s: float, label: str) -> None:
        """Compile these lowered programs on one rank of this host first, then on the others (which load
        them from the persistent cache); named by their text, so a later start on a warm cache skips the wait."""
        if self.comm.size == 1:
            return
        key = hashlib.sha256("".join(program.as_text() for program in lowered).encode()).hexdigest()[:40]
        self.comm.host_first(lambda: [program.compile() for program in lowered], timeout_s, label, key=key)

    def play(
        self,
        state: TrainState,
        counters: Counters,
        t0: float,
        pending_record: dict | None,
        *,
        io_failure: bool,
        stop_request: bool,
    ) -> tuple[TrainState, RoundOutcome]:
        """One round: the new training state and what the round leaves. `pending_record` is this rank's
        previous record (sent to rank 0 with this exchange); `io_failure` and `stop_request` are rank 0's
        flags for every rank (a failed write; --target-return reached). Advances `counters`."""
        round_start = time.perf_counter()
        deadline_s = self.deadline.seconds()
        if self.rounds_here == 0:  # one rank per host compiles the policy steps, the others load them
            self._compile_first(
                self.collector.lowered_steps(state.params),
                self.hang_limit(counters.update, compiles=True),
                "the policy step's first compile",
            )

        # COLLECT: play until the deadline or a full buffer.
        batch, info = self.collector.collect(
            state.params,
            round_key(self.sampling_root, counters.update),
            deadline_s,
            until_game_end=self.deadline.until_game_end,
        )

        # PREPARE: the learner's targets and the moments every rank sums.
        prepared = self._prepare(state, batch)

        # EXCHANGE: the fixed-size records every rank decides from; everyone waits here for the last rank.
        facts, logged, wait_s = self._exchange(
            state, counters, prepared, info, pending_record, io_failure, stop_request
        )

        # UPDATE: the same optax steps on every rank, one fused allreduce each.
        t_opt = time.perf_counter()
        skipped_before = int(state.opt_state.total_notfinite)
        state, metrics = self._update(state, counters, prepared, facts)
        compute_s = prepared.seconds + (time.perf_counter() - t_opt)

        games = [g for per_rank in logged[1] for g in per_rank]  # rank 0 only; the others learn the count
        count(counters, facts, self.comm.size)
        # An update (round) is skipped when any of its optimizer steps had a non-finite gradient; optax
        # left parameters and optimizer state untouched for those steps, on every rank alike.
        skipped = int(int(state.opt_state.total_notfinite) > skipped_before)
        if self.kl_column is not None and not skipped:  # a skipped update moved nothing: its KL says nothing
            kl = float(metrics[self.kl_column])
            counters.lr_scale = adapt_lr_scale(counters.lr_scale, kl, self.cfg.algo.target_kl)
        counters.skipped_updates += skipped
        record = {
            "update": counters.update,
            "rank": self.comm.rank,
            "start_s": round(round_start - t0, 6),
            "collect_s": round(info.collect_s, 6),
            "compute_s": round(compute_s, 6),
            "wait_s": round(wait_s, 6),
            "valid_samples": int(prepared.moments[0]),
            "masked_samples": prepared.masked,
            "cut_by_deadline": info.cut_by_deadline,
            "deadline_s": deadline_s,
        }
        self.rounds_here += 1
        return state, RoundOutcome(facts, logged[0], logged[1], record, metrics, games, skipped)

    def _prepare(self, state: TrainState, batch) -> Prepared:
        start = time.perf_counter()
        sparse = None
        if self.sparse_input:
            # The nonzero cells of the samples that carry weight, and the order the update will draw
            # its minibatches in from the same key; the lists themselves are made after the exchange.
            sparse = sparse_round(self.cfg, state.key, batch)
            batch = batch.replace(features=None)
        batch = jax.tree.map(jnp.asarray, batch)
        if self.rounds_here == 0:
            self._compile_first(
                [self.prepare_targets.lower(state.params, batch)],
                self.hang_limit(0, compiles=True),
                "the targets' first compile",
            )
        targets, moments = self.prepare_targets(state.params, batch)
        moments = np.asarray(moments, np.float64)
        masked = int(np.asarray(targets["masked"]).sum())
        return Prepared(batch, targets, moments, masked, sparse, time.perf_counter() - start)

    def _update(
        self, state: TrainState, counters: Counters, prepared: Prepared, facts: dict
    ) -> tuple[TrainState, np.ndarray]:
        cfg = self.cfg
        sparse_features, compiles = None, False
        if prepared.sparse is not None:
            cells, order = prepared.sparse
            # Every rank pads its lists to the round's longest: one shape on all ranks, so when a new
            # length makes the update compile again, all ranks compile in the same round.
            length = reuse_length(int(facts["sparse_length"]), self.sparse_lengths)
            compiles = length not in self.sparse_lengths
            self.sparse_lengths.add(length)
            sparse_features = jax.tree.map(jnp.asarray, cells.minibatches(order, length))
        lr_frac = lr_fraction(cfg, counters.step) * counters.lr_scale
        # --debug-nan-at-update: poison the loss of these updates, to show that non-finite gradients are skipped.
        nan_from = cfg.run.debug_nan_at_update
        poison = float("nan") if 0 <= nan_from <= counters.update < nan_from + cfg.run.debug_nan_count else 1.0
        args = (
            state,
            prepared.batch,
            prepared.targets,
            jnp.asarray(facts["moments"], jnp.float32),
            lr_frac,
            poison,
            sparse_features,
        )
        if (self.rounds_here == 0 or compiles) and self.comm.same_program:
            # Lowering and compiling runs no collective, so one rank of each host can go first.
            self._compile_first(
                [self.optimize.lower(*args, noise=self.noise)],
                self.hang_limit(counters.update, compiles=True),
                "the update's compile",
            )
        self.watchdog.arm(
            f"the update after round {counters.update + 1} (its allreduces)", self.hang_limit(counters.update, compiles)
        )
        state, metrics, _counts, self.noise = self.optimize(*args, noise=self.noise)
        metrics = np.asarray(metrics)
        self.watchdog.disarm()
        return state, metrics


def count(counters: Counters, facts: dict, world_size: int) -> None:
    """Advance the run's counters by one round's agreed facts (the same on every rank)."""
    valid_global = int(round(facts["moments"][0]))
    window = facts["window_reward"] / world_size
    # Karpathy's running reward (0.99 decay), here per round: the moving average the 2016 run reported.
    ema = counters.window_reward_ema
    counters.window_reward_ema = window if ema is None else 0.99 * ema + 0.01 * window
    counters.update += 1
    counters.step += valid_global
    counters.env_steps += int(facts["filled"])
    counters.masked += int(facts["masked"])
    counters.episodes += int(facts["games"])

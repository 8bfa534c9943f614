"""The training loop: rounds of (collect until the deadline) -> (exchange per-round facts) -> (update).

One rank is the degenerate case of many: the same code runs with a communicator that does nothing.
Every rank issues the same collectives in the same order every round: the host exchange of fixed-size
records (jaxpong/exchange.py; its duration is the rank's wait: the late-sender cost), then the jitted
update with one allreduce per optimizer step. Stop decisions are computed from the agreed (reduced)
facts, so all ranks agree.
"""

from __future__ import annotations

import collections
import gc
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong import PROCESS_START
from jaxpong.algorithms import ALGORITHMS
from jaxpong.checkpoint import Checkpoints, ResumeRefused, resume_changes
from jaxpong.config import Config, ConfigError, to_dict
from jaxpong.deadline import Deadline, fill_time_estimate
from jaxpong.envs import PURPOSE_TRAIN, env_seeds, make_env
from jaxpong.exchange import (FILL_BINS, Layout, agreed_layout, fill_bin, games_per_row, log_layout,
                              read_rows, record_row)
from jaxpong.keys import sampling_key
from jaxpong.learner import init_state, lr_fraction, make_optimize, make_optimizer, make_prepare, sparse_round
from jaxpong.logger import Progress, RunLogger, log_line
from jaxpong.networks import make_network
from jaxpong.rollout import Collector, make_policy_step
from jaxpong.rundir import WriteFailed
from jaxpong.sparse import reuse_length
from jaxpong.watchdog import Watchdog, hang_limit

EXIT_OK, EXIT_FAULT, EXIT_USAGE, EXIT_IO_ERROR, EXIT_PREEMPTED = 0, 1, 2, 74, 75  # 74: sysexits' EX_IOERR
RECENT_GAMES = 20
CAPTURE_VIDEO_STEPS = 600  # --capture-video: the clip's length in agent steps at most (40 s at real speed)


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


class Stop(Exception):
    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.reason, self.code = reason, code


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


def target_reached(target: float, recent) -> bool:
    """The last RECENT_GAMES full games average at least `target` (nan: never)."""
    return not math.isnan(target) and len(recent) >= RECENT_GAMES and float(np.mean(recent)) >= target


def stop_reason(cfg: Config, step: int, facts: dict, time_limit_s: float | None, run_dir: Path, world_size: int,
                recent_mean: float | None = None) -> str:
    """Why every rank stops after this round ("" to go on), from the agreed facts alone, so all agree.

    A signal on any rank stops first; then --total-steps (counted over the whole run), --time-limit-s
    (rank 0's seconds since its process started; `time_limit_s` replaces the configured limit), and
    --target-return, which rank 0 asks for one round after its games reached it (`recent_mean`: its
    last-20 mean, for the message).
    """
    if facts["signal"]:
        from jaxpong.cli import resume_command

        return (f"signal {signal.Signals(int(facts['signal'])).name} received; checkpoint written; to continue: "
                f"{resume_command(run_dir, world_size)}")
    if step >= cfg.run.total_steps:
        return f"reached --total-steps {cfg.run.total_steps:,}"
    limit = time_limit_s if time_limit_s is not None else cfg.run.time_limit_s
    if limit and facts["rank0_process_s"] >= limit:
        return f"reached --time-limit-s {limit:g}"
    if facts["stop_request"]:
        mean = f" (mean of the last {RECENT_GAMES} games {recent_mean:+.2f})" if recent_mean is not None else ""
        return f"reached --target-return {cfg.run.target_return:g}{mean}"
    return ""


class SignalFlag:
    """SIGTERM/SIGINT ask for a clean stop at the end of the round; a second one exits at once.

    The handler only sets the flag: printing through sys.stderr from a handler can land while the main
    thread is inside that same buffered stream's write, and CPython then raises "reentrant call". The
    main thread says what it will do (`announce`, once a round); the second signal's last words go out
    with one unbuffered os.write, which is safe there.
    """

    def __init__(self):
        self.received: str | None = None
        self._announced = False

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:
            # Second signal: leave now. The last checkpoint on disk is intact (written atomically).
            os.write(2, f"jaxpong: second signal ({signal.Signals(signum).name}): exiting at once\n".encode())
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name

    def announce(self) -> None:
        """Main thread: say once that a signal arrived and what happens next."""
        if self.received is not None and not self._announced:
            self._announced = True
            print(f"jaxpong: {self.received} received: finishing this round, then checkpointing and exiting "
                  f"with status {EXIT_PREEMPTED} (send it again to exit at once)", file=sys.stderr, flush=True)


def _apply_fn(network):
    return lambda params, x: network.apply(params, x)


class Trainer:
    def __init__(self, cfg: Config, comm, run_dir: Path, resume_step: int | None = None, resume_fallback: bool = False):
        self.cfg, self.comm, self.run_dir = cfg, comm, Path(run_dir)
        self.is_main = comm.rank == 0
        self.signals = SignalFlag()
        self.network = make_network(cfg.model)
        apply_fn = _apply_fn(self.network)
        self.optimizer = make_optimizer(cfg)
        self.policy_step = make_policy_step(apply_fn, cfg.model.obs_mode)
        self.prepare = make_prepare(cfg, apply_fn)
        self.optimize = make_optimize(cfg, apply_fn, self.optimizer, comm.allreduce_sum)
        # The update's first layer from each sample's nonzero cells (jaxpong/sparse.py); mirroring flips
        # dense frames, so it keeps the dense product.
        wants_sparse = cfg.model.sparse_input and cfg.model.network == "mlp"
        self.sparse_input = wants_sparse and not cfg.algo.mirror_augment
        self.sparse_lengths: set[int] = set()  # list lengths the update has been compiled for
        if self.is_main and wants_sparse and cfg.algo.mirror_augment:
            log_line("model.sparse_input is not used with algo.mirror_augment (mirroring flips dense frames)")
        self.metric_names = ALGORITHMS[cfg.algo.algo].METRICS
        self.counters = Counters()
        state = init_state(cfg, self.network, self.optimizer, jax.random.PRNGKey(cfg.run.seed))
        self.checkpoints = Checkpoints(self.run_dir / "checkpoints", keep=cfg.run.keep_checkpoints) if self.is_main else None
        shared = None
        if self.is_main:
            try:
                if resume_step is not None:
                    state = self._restore(resume_step, state, resume_fallback)
                shared = (jax.tree.map(np.asarray, state), self.counters)
            except ConfigError as err:
                shared = str(err)  # every rank must learn of it, or the others would wait forever
        # Rank 0's state (fresh or restored) is everyone's state: replication starts exact.
        shared = comm.bcast(shared)
        if isinstance(shared, str):
            raise ConfigError(shared)
        host_state, self.counters = shared
        self.state = jax.tree.map(jnp.asarray, host_state)
        # Each rank draws its own actions, from a stream apart from the update's (jaxpong/keys.py).
        self.sample_key = sampling_key(cfg.run.seed, comm.rank, self.counters.resume_count)
        seeds = env_seeds(cfg.run.seed, comm.rank, self.counters.resume_count, PURPOSE_TRAIN, cfg.env.num_envs)
        self.env = make_env(cfg, seeds=seeds)
        slow = cfg.dist.slow_factor if cfg.dist.slow_rank == comm.rank else 1.0
        self.deadline = Deadline(cfg.deadline, cfg.dist.deadline_margin, comm.size)
        self.collector = Collector(self.env, cfg, self.policy_step, num_steps=buffer_steps(cfg, self.deadline),
                                   slow_factor=slow)
        self.logger = RunLogger(self.run_dir, cfg.run.tensorboard,
                                resume_update=self.counters.update if resume_step is not None else None,
                                resume_step=self.counters.step if resume_step is not None else None) if self.is_main else None
        self.recent = collections.deque(self.counters.recent_returns, maxlen=RECENT_GAMES)
        self.rank_totals = collections.defaultdict(lambda: np.zeros(4))  # wait, busy, valid, masked per rank
        self.rounds_here = 0  # rounds completed by this process (a resumed one compiles afresh too)
        self.first_update = self.counters.update  # the counter before this process's first round
        self.io_failure: WriteFailed | None = None  # rank 0: a failed write; every rank stops at the next exchange
        self.target_reached = False  # rank 0: the last-20 mean reached --target-return; everyone stops next round
        self.agreed_layout: Layout | None = None  # made at the first round, when the moments' size is known
        self.game_slots = games_per_row(cfg.env.num_envs, buffer_steps(cfg, self.deadline))
        self.log_layout = log_layout(self.game_slots)
        self.carried_games: list = []  # finished games beyond a row's room, sent with the next round
        self.last_eval_s = 0.0  # how long rank 0's last evaluation took (every rank learns it from the records)
        self.best_checkpoints = None  # rank 0: checkpoints_best/, opened at the first evaluation
        self.best_eval_return: float | None = None
        self.slowest_round_s = 0.0
        self.consecutive_skips = 0
        self._live_t0: float | None = None  # set while run() is training
        self.watchdog = Watchdog(comm)

    def _restore(self, step: int, template, fallback: bool):
        """Restore checkpoint `step`; with `fallback`, the newest one that restores cleanly instead."""
        candidates = [step] + ([s for s in reversed(self.checkpoints.steps()) if s < step] if fallback else [])
        first_error = None
        compared = False
        for candidate in candidates:
            try:
                if not compared:
                    # Before restoring: a changed model would otherwise fail there with a shape error, or
                    # (another algorithm or optimizer of the same shapes) restore and train the wrong thing.
                    saved = self.checkpoints.read_meta(candidate).get("config") or {}
                    changes = resume_changes(saved, self.cfg, self.checkpoints.directory / str(candidate))
                    compared = True
                    if changes:
                        log_line(f"resume changes {len(changes)} setting(s) of the checkpoint's config: " + ", ".join(changes))
                state, meta = self.checkpoints.restore(candidate, template)
                self.counters = Counters(**meta["counters"])
            except ResumeRefused:
                raise
            except (ConfigError, TypeError, KeyError) as err:
                first_error = first_error or err
                if fallback:
                    log_line(f"checkpoint at step {candidate:,} is unusable ({err}); trying an older one")
                continue
            if candidate != step:
                log_line(f"--resume-fallback: resuming from the newest good checkpoint, step {candidate:,}")
            self.counters.resume_count += 1
            self.resumed_from = candidate
            saved_ranks = meta.get("world_size", 1)
            if saved_ranks != self.comm.size:
                log_line(f"resuming a run checkpointed with {saved_ranks} rank(s) on {self.comm.size} rank(s); "
                         f"counters continue from update {self.counters.update}, step {self.counters.step:,}")
            return state
        if fallback and len(candidates) > 1:
            raise ConfigError(f"no usable checkpoint in {self.checkpoints.directory} (newest: {first_error})")
        if "another model shape" in str(first_error):
            raise ConfigError(str(first_error))  # every checkpoint of the run has that shape: no fallback helps
        raise ConfigError(f"{first_error}; use --resume-fallback to resume from the newest good checkpoint")

    def _hang_limit(self, compiles: bool = False) -> float:
        """How long one collective may block before the job is declared dead or hung (`compiles`: the
        update compiles again this round, for a new sparse list length)."""
        return hang_limit(self.cfg.dist.hang_timeout_s, self.rounds_here, self.slowest_round_s,
                          compiles=compiles) + self._eval_allowance_s()

    # -- one round ---------------------------------------------------------------------------------
    def _round(self, t0: float, pending_record: dict | None):
        cfg, comm, c = self.cfg, self.comm, self.counters
        round_start = time.perf_counter()
        deadline_s = self.deadline.seconds()
        batch, info, self.sample_key = self.collector.collect(
            self.state.params, self.sample_key, deadline_s, until_game_end=self.deadline.until_game_end)
        t_prep = time.perf_counter()
        cells = None
        if self.sparse_input:
            # The nonzero cells of the samples that carry weight, and the order the update will draw
            # its minibatches in from the same key; the lists themselves are made after the exchange.
            T, N = batch.actions.shape
            cells, order = sparse_round(cfg, self.state.key, batch.features.reshape(T * N, -1), batch.valid.reshape(-1))
            batch = batch.replace(features=None)
        batch = jax.tree.map(jnp.asarray, batch)
        targets, moments = self.prepare(self.state.params, batch)
        moments = np.asarray(moments, np.float64)
        masked = int(np.asarray(targets["masked"]).sum())
        prep_s = time.perf_counter() - t_prep

        check = cfg.dist.replication_check_every and c.update % cfg.dist.replication_check_every == 0
        signal_now = self.signals.received
        self.signals.announce()  # after the read: a signal in this round's record has been announced
        games_here = self.carried_games + self.collector.scores.drain()
        games_sent, self.carried_games = games_here[:self.game_slots], games_here[self.game_slots:]
        checksum = param_checksum(self.state.params) if check and comm.size > 1 else -math.inf
        fill_counts = np.zeros(FILL_BINS)
        fill_at = fill_bin(fill_time_estimate(info.collect_s, info.filled_steps, cfg.env.num_envs, cfg.algo.num_steps))
        if fill_at is not None:
            fill_counts[fill_at] = 1.0
        layout = self.agreed_layout = self.agreed_layout or agreed_layout(moments.size)
        agreed = layout.pack({
            "moments": moments, "filled": info.filled_steps, "masked": masked, "games": len(games_sent),
            # The 2016 criterion: reward summed over this round's window of play, per game stepped.
            "window_reward": float(np.asarray(batch.rewards)[np.asarray(batch.filled)].sum()) / cfg.env.num_envs,
            "rank0_process_s": time.time() - PROCESS_START if self.is_main else 0.0,
            "fill_counts": fill_counts,
            "signal": int(signal.Signals[signal_now]) if signal_now else 0,
            "io_failure": float(self.io_failure is not None),
            "stop_request": float(self.target_reached),
            "sparse_length": cells.length(order) if cells is not None else 0,
            "checksum_max": checksum, "checksum_neg_min": -checksum,
            "slowest_round_s": pending_record["collect_s"] + pending_record["compute_s"] if pending_record else 0.0,
            "rank0_eval_s": self.last_eval_s if self.is_main else 0.0,
        })
        row = record_row(self.log_layout, pending_record, games_sent)
        t_wait = time.perf_counter()
        # Everyone waits here for the last rank: the late-sender cost.
        limit = self._hang_limit()
        label = f"the exchange after update {c.update}"
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
                raise Stop(f"ranks hold different parameters at update {c.update} (checksums from {low} to {high}); "
                           "replication broke", EXIT_FAULT)
        self.deadline.observe_counts(facts["fill_counts"])
        norm = facts["moments"]

        t_opt = time.perf_counter()
        sparse_features, compiles = None, False
        if cells is not None:
            # Every rank pads its lists to the round's longest: one shape on all ranks, so when a new
            # length makes the update compile again, all ranks compile in the same round.
            length = reuse_length(int(facts["sparse_length"]), self.sparse_lengths)
            compiles = length not in self.sparse_lengths
            self.sparse_lengths.add(length)
            sparse_features = jax.tree.map(jnp.asarray, cells.minibatches(order, length))
        lr_frac = lr_fraction(cfg, c.step)
        nan_from = cfg.run.debug_nan_at_update
        poison = float("nan") if 0 <= nan_from <= c.update < nan_from + cfg.run.debug_nan_count else 1.0
        skipped_before = int(self.state.opt_state.total_notfinite)
        self.watchdog.arm(f"the update after round {c.update + 1} (its allreduces)", self._hang_limit(compiles))
        self.state, metrics, counts = self.optimize(self.state, batch, targets, jnp.asarray(norm, jnp.float32),
                                                    lr_frac, poison, sparse_features)
        metrics = np.asarray(metrics)
        self.watchdog.disarm()
        compute_s = prep_s + (time.perf_counter() - t_opt)

        valid_global = int(round(norm[0]))
        window = facts["window_reward"] / comm.size
        # Karpathy's running reward (0.99 decay), here per round: the moving average the 2016 run reported.
        ema = c.window_reward_ema
        c.window_reward_ema = window if ema is None else 0.99 * ema + 0.01 * window
        games = [g for per_rank in logged[1] for g in per_rank]  # rank 0 only; the others learn the count
        c.update += 1
        c.step += valid_global
        c.env_steps += int(facts["filled"])
        c.masked += int(facts["masked"])
        c.episodes += int(facts["games"])
        self.recent.extend(r for r, _ in games)
        # Rank 0 alone holds the games; it asks everyone to stop at the next exchange.
        self.target_reached = self.is_main and target_reached(cfg.run.target_return, self.recent)
        # An update (round) is skipped when any of its optimizer steps had a non-finite gradient; optax
        # left parameters and optimizer state untouched for those steps, on every rank alike.
        skipped = int(int(self.state.opt_state.total_notfinite) > skipped_before)
        c.skipped_updates += skipped
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        record = {
            "update": c.update, "rank": comm.rank, "start_s": round(round_start - t0, 6),
            "collect_s": round(info.collect_s, 6), "compute_s": round(compute_s, 6), "wait_s": round(wait_s, 6),
            "valid_samples": int(moments[0]), "masked_samples": masked, "cut_by_deadline": info.cut_by_deadline,
            "deadline_s": deadline_s,
        }
        self.rounds_here += 1
        return RoundOutcome(facts, logged[0], logged[1], record, metrics, games, skipped)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, time_limit_s: float | None = None) -> int:
        cfg, comm, c = self.cfg, self.comm, self.counters
        self.signals.install()
        # Everything alive now (modules, jitted functions, the network) lives for the whole run: keep it
        # out of the cyclic garbage collector's scans, which otherwise revisit it from the hot loop.
        # Collect first, so that no garbage of the set-up is frozen with it.
        gc.collect()
        gc.freeze()
        comm.barrier()
        t0 = self._live_t0 = time.perf_counter()
        progress = Progress(cfg.run.progress, cfg.run.total_steps, cfg.run.progress_every_s, enabled=self.is_main,
                            time_limit_s=time_limit_s if time_limit_s is not None else cfg.run.time_limit_s)
        pending: dict | None = None  # this rank's previous round's record, sent with the next exchange
        code, reason = EXIT_OK, ""
        last_log_step, last_log_time = c.step, 0.0
        start_step = c.step
        try:
            if c.step >= cfg.run.total_steps:
                raise Stop(f"already at --total-steps {cfg.run.total_steps:,} (step {c.step:,}); nothing to train", EXIT_OK)
            while True:
                out = self._round(t0, pending)
                pending = record = out.record
                self._account(out.records)
                now = time.perf_counter() - t0
                eval_metrics = self._evaluate_between_rounds(record)  # rank 0 only, when due
                self._video_between_rounds(record)  # rank 0 only, when due (--video-every)
                if self.is_main and self.io_failure is None:
                    try:
                        self.logger.log_ranks(out.records)
                        self.logger.log_games([
                            {"update": c.update, "step": c.step, "time_s": round(c.elapsed_s + now, 3),
                             "process_s": round(time.time() - PROCESS_START, 3), "rank": k, "return": ret, "length": n}
                            for k, per_rank in enumerate(out.games_by_rank) for ret, n in per_rank])
                        if c.update % cfg.run.log_every == 0 or eval_metrics:
                            sps = (c.step - last_log_step) / max(now - last_log_time, 1e-9)
                            last_log_step, last_log_time = c.step, now
                            self._log(now, sps, out, extra=eval_metrics)
                    except WriteFailed as err:
                        self.io_failure = err  # every rank learns of it at the next exchange and stops
                if self.is_main:
                    progress.update(c.step, (c.step - start_step) / max(now, 1e-9) if c.update > 1 else 0.0,
                                    self.recent_mean(), now)
                if self.consecutive_skips >= cfg.run.max_bad_updates:
                    raise Stop(f"{self.consecutive_skips} consecutive updates had non-finite "
                               "gradients; stopping with the last good checkpoint kept", EXIT_FAULT)
                reason = self._stop_reason(out.facts, time_limit_s)
                if reason:
                    break
                if self.is_main and self.io_failure is None and c.update % cfg.run.checkpoint_every == 0:
                    try:
                        self.save()
                    except WriteFailed as err:
                        self.io_failure = err
        except Stop as stop:
            code, reason = stop.code, stop.reason
        finally:
            progress.close()
        # The last round's timings and a final replication check: one more exchange, which every rank makes.
        layout = self.agreed_layout or agreed_layout(1)
        checksum = param_checksum(self.state.params)
        reduced, rows = comm.exchange(layout.pack({"checksum_max": checksum, "checksum_neg_min": -checksum}), layout,
                                      record_row(self.log_layout, pending, []), timeout_s=self._hang_limit(),
                                      label="the final exchange")
        final_records = read_rows(self.log_layout, rows)[0] if rows is not None else []
        c.elapsed_s += time.perf_counter() - t0
        self._live_t0 = None
        facts = layout.unpack(reduced)
        high, low = facts["checksum_max"], -facts["checksum_neg_min"]
        if high - low > 1e-6 * max(1.0, abs(high)):
            code, reason = EXIT_FAULT, f"ranks ended with different parameters (checksums from {low} to {high}); replication broke"
        if self.is_main:
            if comm.size > 1 and code != EXIT_FAULT:
                log_line(f"parameters identical on all {comm.size} ranks at the end (checksum {high:.6g})")
            code, reason = self._finish_files(final_records, code, reason)
            log_line(f"stopped: {reason} (update {c.update}, step {c.step:,}, {c.episodes} games, "
                     f"return(last {RECENT_GAMES}) {self._fmt(self.recent_mean())})")
            if code != EXIT_IO_ERROR:
                if comm.size > 1:
                    self._write_imbalance_report()
                self._write_end_of_run_media(code, reason)
        self.env.close()
        if code == EXIT_OK and reason.startswith("signal"):
            code = EXIT_PREEMPTED
        return code

    def _finish_files(self, final_records: list, code: int, reason: str) -> tuple[int, str]:
        """Rank 0 at the end: the last timings, the final checkpoint (unless the last checkpoint write
        failed: the disk is most likely still full), closing the logs. Any failed write makes the exit
        status EXIT_IO_ERROR and the reason one line that says what failed and where to resume from."""
        def attempt(action) -> None:
            try:
                action()
            except WriteFailed as err:
                self.io_failure = self.io_failure or err

        if self.io_failure is None:
            attempt(lambda: self.logger.log_ranks(final_records))
        if code != EXIT_FAULT and (self.io_failure is None or self.io_failure.what != "checkpoint"):
            attempt(self.save)
        attempt(self.logger.close)
        if self.io_failure is None:
            return code, reason
        newest = self.checkpoints.newest_complete()
        where = (f"the newest good checkpoint is step {newest:,} ({self.checkpoints.directory / str(newest)}); "
                 f"fix the cause (free space, permissions), then resume with: jaxpong train --resume {self.run_dir}"
                 if newest is not None else "no checkpoint was kept; fix the cause and start the run again")
        return EXIT_IO_ERROR, f"{self.io_failure}; {where}"

    def _write_imbalance_report(self) -> None:
        """`jaxpong report` at the end of a multi-rank run (rank 0): a failure here never fails the run."""
        try:
            from jaxpong.report import IMAGE_NAME, write_after_training

            finding = write_after_training(self.run_dir)
            log_line(f"late senders: {finding} (picture: {self.run_dir / IMAGE_NAME})")
        except Exception as err:  # noqa: BLE001 - the run itself has succeeded; say so and move on
            log_line(f"imbalance report not written ({type(err).__name__}: {err}); try `jaxpong report {self.run_dir}`")

    def _account(self, records: list[dict]):
        """Rank 0: per-rank totals of wait, busy time and samples, from the gathered records."""
        for r in records:
            if r["update"] > self.first_update + 1:  # a process's first round includes compilation
                t = self.rank_totals[r["rank"]]
                t += [r["wait_s"], r["collect_s"] + r["compute_s"], r["valid_samples"], r["masked_samples"]]

    def _stop_reason(self, facts: dict, time_limit_s) -> str:
        if facts["io_failure"]:
            raise Stop(str(self.io_failure) if self.io_failure else "rank 0 could not write a file of the run", EXIT_IO_ERROR)
        return stop_reason(self.cfg, self.counters.step, facts, time_limit_s, self.run_dir, self.comm.size,
                           self.recent_mean() if self.is_main else None)

    def recent_mean(self):
        return float(np.mean(self.recent)) if self.recent else None

    @staticmethod
    def _fmt(x):
        return "-" if x is None else f"{x:+.2f}"

    def _log(self, now, sps, out: RoundOutcome, extra: dict | None = None):
        c, games, facts = self.counters, out.games, out.facts
        line = {"update": c.update, "step": c.step, "time_s": round(c.elapsed_s + now, 3),
                "process_s": round(time.time() - PROCESS_START, 3), "wall_time": round(time.time(), 3),
                "charts/SPS": round(sps, 1),
                "charts/episodes": c.episodes, "charts/env_steps": c.env_steps,
                "charts/learning_rate": self.cfg.algo.learning_rate * lr_fraction(self.cfg, c.step)}
        if games:
            line["charts/episodic_return"] = float(np.mean([r for r, _ in games]))
            line["charts/episodic_length"] = float(np.mean([n for _, n in games]))
        if self.recent:
            line["charts/return_last20"] = self.recent_mean()
        line["charts/window_reward"] = facts["window_reward"] / self.comm.size
        line["charts/window_reward_ema"] = c.window_reward_ema
        for name, value in zip(self.metric_names, out.metrics):
            line[name] = float(value)
        valid, masked = int(facts["moments"][0]), int(facts["masked"])
        waits = [t[0] / max(t[0] + t[1], 1e-12) for t in self.rank_totals.values()]
        line.update({
            "comm/world_size": self.comm.size,
            "comm/masked_fraction": masked / max(valid + masked, 1),
            "comm/deadline_s": out.record["deadline_s"] or 0.0,
            "faults/skipped_updates": c.skipped_updates,
        })
        if waits:
            line["comm/wait_fraction_max"] = max(waits)
            line["comm/wait_fraction_mean"] = float(np.mean(waits))
        if out.records:
            line["comm/allreduce_ms"] = 1000.0 * min(r["wait_s"] for r in out.records)
        line.update(extra or {})
        self.logger.log(line)

    def save(self, checkpoints: Checkpoints | None = None, extra_meta: dict | None = None):
        """Checkpoint the training state (into checkpoints/, or `checkpoints`), with `extra_meta` in its metadata."""
        c = self.counters
        c.recent_returns = list(self.recent)
        meta = {"counters": asdict(c), "config": to_dict(self.cfg), "world_size": self.comm.size,
                "algo": self.cfg.algo.algo, "network": self.cfg.model.network}
        if self._live_t0 is not None:  # a checkpoint mid-run: count this process's seconds so far
            meta["counters"]["elapsed_s"] = c.elapsed_s + time.perf_counter() - self._live_t0
        meta.update(extra_meta or {})
        (checkpoints or self.checkpoints).save(c.step, jax.tree.map(np.asarray, self.state), meta)

    # -- evaluation during training, best checkpoint, end-of-run pictures (rank 0) -----------------
    # Rank 0 evaluates between rounds, after the update of every eval_every-th round: greedy full
    # games on fresh envs of their own (seeded for evaluation, so the same games each time). The
    # other ranks meanwhile play their next round and then wait for rank 0 at the next gather, so
    # rank 0's evaluation time shows as their wait (and as rank 0's "eval_s" in ranks.jsonl), and the
    # wall-clock time and steps/s of the run include it. Every rank knows when an evaluation is due
    # (the schedule is in the config), and the next collective's hang limit allows for it.

    def _eval_due(self, update: int) -> bool:
        every = self.cfg.run.eval_every
        return bool(every) and update > 0 and update % every == 0

    def _video_due(self, update: int) -> bool:
        every = self.cfg.run.video_every
        return bool(every) and update > 0 and update % every == 0

    def _eval_allowance_s(self) -> float:
        """Extra seconds the next collective may take because rank 0 is evaluating (or recording a
        --video-every clip) before it."""
        if not (self._eval_due(self.counters.update) or self._video_due(self.counters.update)):
            return 0.0
        return max(10 * self.cfg.dist.hang_timeout_s, 3 * self.last_eval_s)

    def _evaluate_between_rounds(self, record: dict) -> dict:
        """Rank 0, when due: evaluate, keep the best checkpoint, and return the eval/* metrics for this
        update's line ({} otherwise). Its duration reaches every rank with the next exchange."""
        if not (self.is_main and self._eval_due(self.counters.update)):
            return {}
        from jaxpong.evaluate import play_games
        from jaxpong.policy import BEST_DIR

        c = self.counters
        result = play_games(self.cfg, self.state.params, episodes=self.cfg.run.eval_episodes, seed=self.cfg.run.seed,
                            greedy=True, policy_step=self.policy_step)
        summary = result.summary()
        record["eval_s"] = round(result.seconds, 6)  # for ranks.jsonl
        self.last_eval_s = result.seconds
        if self.best_checkpoints is None:
            self.best_checkpoints = Checkpoints(self.run_dir / BEST_DIR, keep=1)
            self.best_eval_return = self._saved_best_return()
        mean = summary["mean_return"]
        improved = mean is not None and (self.best_eval_return is None or mean > self.best_eval_return)
        if improved and self.io_failure is None:
            self.best_eval_return = mean
            try:
                self.save(self.best_checkpoints, {"eval": {**summary, "update": c.update}})
            except WriteFailed as err:
                self.io_failure = err
        log_line(f"eval at update {c.update} (step {c.step:,}): {summary['episodes']} greedy games, mean "
                 f"{self._fmt(mean)} (min {self._fmt(summary['min_return'])}, max {self._fmt(summary['max_return'])})"
                 f"{'; new best, saved to ' + BEST_DIR if improved else ''} [{result.seconds:.1f} s]")
        metrics = {"eval/episodes": summary["episodes"], "eval/truncated": summary["truncated"],
                   "eval/seconds": round(result.seconds, 3)}
        if mean is not None:
            metrics.update({"eval/mean_return": mean, "eval/std_return": summary["std_return"],
                            "eval/min_return": summary["min_return"], "eval/max_return": summary["max_return"],
                            "eval/best_return": self.best_eval_return})
        return metrics

    def _video_between_rounds(self, record: dict) -> None:
        """Rank 0, every video_every updates: a clip of the current policy, timed like an evaluation (its
        seconds join eval_s, which the other ranks' hang limit allows for). A failure is reported, not fatal."""
        if not (self.is_main and self._video_due(self.counters.update)):
            return
        from jaxpong.video import clip_during_training

        start = time.perf_counter()
        try:
            info = clip_during_training(self.cfg, self.state.params, self.run_dir, self.counters.step,
                                        policy_step=self.policy_step)
            log_line(f"video at update {self.counters.update}: {info['out']} ({info['agent_steps']} agent steps, "
                     f"score {info['agent_score']}-{info['opponent_score']}) [{time.perf_counter() - start:.1f} s]")
        except (ConfigError, OSError, RuntimeError) as err:
            log_line(f"no video written at update {self.counters.update}: {err}")
        seconds = time.perf_counter() - start
        record["eval_s"] = round(record.get("eval_s", 0.0) + seconds, 6)  # reaches every rank with the next gather
        self.last_eval_s = record["eval_s"]

    def _saved_best_return(self) -> float | None:
        """The best evaluation kept by an earlier process of this run (after --resume), if any."""
        steps = self.best_checkpoints.steps()
        if not steps:
            return None
        try:
            return (self.best_checkpoints.read_meta(steps[-1]).get("eval") or {}).get("mean_return")
        except ConfigError:
            return None  # unreadable: the next evaluation replaces it

    def _write_end_of_run_media(self, code: int, reason: str) -> None:
        """Rank 0, after the last checkpoint: learning_curve.png, and with --capture-video a short clip of the
        final policy (videos/final.mp4). A failure here is reported but does not change the exit status."""
        from jaxpong.plots import plot_runs

        try:
            log_line(f"learning curve: {plot_runs([self.run_dir], self.run_dir / 'learning_curve.png')}")
        except (ConfigError, OSError, ValueError, RuntimeError) as err:
            log_line(f"no learning curve written: {err}")
        if not self.cfg.run.capture_video or code == EXIT_FAULT or reason.startswith("signal"):
            return
        from jaxpong.video import record

        try:
            info = record(self.cfg, self.state.params, self.run_dir / "videos" / "final.mp4", seed=self.cfg.run.seed,
                          max_steps=CAPTURE_VIDEO_STEPS, policy_step=self.policy_step)
            log_line(f"video: {info['out']} ({info['agent_steps']} agent steps, score {info['agent_score']}-"
                     f"{info['opponent_score']})")
        except (ConfigError, OSError, RuntimeError) as err:
            log_line(f"no video written: {err}")

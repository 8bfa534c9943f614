"""The run loop around the round (jaxpong/training/round.py): stop rules, checkpoints, evaluation between rounds,
logging, progress, and the end of the run (a final exchange that checks replication, the last files,
the pictures). `Training` is this loop with two parts of its own: rank 0's records of each round
(jaxpong/training/records.py) and the end of the run (jaxpong/training/finish.py).

Stop decisions are computed from the agreed (reduced) facts of each round's exchange, so all ranks
agree; rank 0 alone writes files and asks for stops through the flags the next exchange carries.
"""

from __future__ import annotations

import collections
import gc
import socket
import time
from dataclasses import asdict
from pathlib import Path

import jax
import numpy as np

from jaxpong.base.clock import PROCESS_START
from jaxpong.base.config import Config, to_dict
from jaxpong.base.console import log_line
from jaxpong.learn import batch_rule
from jaxpong.learn.learner import make_optimizer, metric_names
from jaxpong.learn.networks import make_network
from jaxpong.store.checkpoint import Checkpoints
from jaxpong.store.logger import Progress, RunLogger
from jaxpong.store.rundir import WriteFailed
from jaxpong.training.between_rounds import Evaluations, clip, eval_due, video_due
from jaxpong.training.finish import RunEnd, RunEnding
from jaxpong.training.records import RoundRecords
from jaxpong.training.resume import starting_state
from jaxpong.training.round import Round, sparse_update
from jaxpong.training.signals import SignalFlag
from jaxpong.training.stop import (
    EXIT_FAULT,
    EXIT_IO_ERROR,
    EXIT_OK,
    RECENT_GAMES,
    Stop,
    stop_reason,
    target_reached,
)


class Training(RoundRecords, RunEnding):
    """One process's part of a training run: set up on every rank (rank 0's state is everyone's), then `run`."""

    def __init__(self, cfg: Config, comm, run_dir: Path, resume_step: int | None = None, resume_fallback: bool = False):
        self.cfg, self.comm, self.run_dir = cfg, comm, Path(run_dir)
        self.is_main = comm.rank == 0
        self.signals = SignalFlag()
        network = make_network(cfg.model)
        # The games and the update follow the rank count (jaxpong/learn/batch_rule.py); the saved config keeps the
        # user's values, so a resume at another rank count derives its own. The optimizer is built from the
        # rule's config: batch_rule sqrt_lr sets its learning rate.
        round_cfg, rule_lines = batch_rule.apply(cfg, comm.size)
        optimizer = make_optimizer(round_cfg)
        wants_sparse, _ = sparse_update(cfg)
        if self.is_main and wants_sparse and cfg.algo.mirror_augment:
            log_line("model.sparse_input is not used with algo.mirror_augment (mirroring flips dense frames)")
        self.metric_names = metric_names(cfg.algo.algo)
        self.checkpoints = (
            Checkpoints(self.run_dir / "checkpoints", keep=cfg.run.keep_checkpoints) if self.is_main else None
        )
        start = starting_state(cfg, comm, network, optimizer, self.checkpoints, resume_step, resume_fallback)
        self.state, self.counters, self.resumed_from = start.state, start.counters, start.resumed_from
        for line in rule_lines if self.is_main else []:
            log_line(line)
        self.round = Round(round_cfg, comm, network, optimizer, self.counters, self.signals)
        # Each rank's host, for ranks.jsonl and the report (a late host shows as a host, not only as ranks).
        hosts = comm.gather_to_root(socket.gethostname()) if comm.size > 1 else None
        # Across hosts, rank 0 times its link to each other host once (a slow link slows every rank's
        # allreduces alike, so it cannot show as a late rank; this names it).
        # A host that does not answer ends the job within the hang limit, as in any collective.
        links = comm.link_probe(hosts, timeout_s=cfg.dist.hang_timeout_s) if comm.size > 1 else None
        self.logger = (
            RunLogger(
                self.run_dir,
                cfg.run.tensorboard,
                resume_update=self.counters.update if resume_step is not None else None,
                resume_step=self.counters.step if resume_step is not None else None,
            )
            if self.is_main
            else None
        )
        if self.logger is not None:
            self.logger.hosts = hosts
            if links:
                assert hosts is not None  # links are measured between the hosts of several ranks
                self.logger.log_links(self._links_record(hosts, links, round_cfg))
            elif (self.run_dir / "links.jsonl").exists():
                # Resumed on one host after a run across hosts: a line without links, so the report does not
                # speak of links this process did not use.
                here = hosts or [socket.gethostname()]
                self.logger.log_links({"update": self.counters.update, "hosts": here, "links": []})
        self.evaluations = Evaluations(cfg, self.run_dir, self.round.policy_step) if self.is_main else None
        self.recent = collections.deque(self.counters.recent_returns, maxlen=RECENT_GAMES)
        self.rank_totals: dict[int, np.ndarray] = collections.defaultdict(
            lambda: np.zeros(4)
        )  # wait, busy, valid, masked per rank
        self.first_update = self.counters.update  # the counter before this process's first round
        self.io_failure: WriteFailed | None = None  # rank 0: a failed write; every rank stops at the next exchange
        self.target_reached = False  # rank 0: the last-20 mean reached --target-return; everyone stops next round
        self.consecutive_skips = 0
        self._live_t0: float | None = None  # set while run() is training

    def run(self, time_limit_s: float | None = None, clock_start: float | None = None) -> RunEnd:
        """Rounds until a stop rule holds; then the final exchange, the last files and pictures.
        `time_limit_s` replaces the configured --time-limit-s; `clock_start` (time.time()) is when it
        started counting (default: this process's start)."""
        cfg, comm, c = self.cfg, self.comm, self.counters
        self.round.clock_start = PROCESS_START if clock_start is None else clock_start
        self.signals.install()
        # Everything alive now (modules, jitted functions, the network) lives for the whole run: keep it
        # out of the cyclic garbage collector's scans, which otherwise revisit it from the hot loop.
        # Collect first, so that no garbage of the set-up is frozen with it.
        gc.collect()
        gc.freeze()
        comm.barrier()
        t0 = self._live_t0 = time.perf_counter()
        progress = Progress(
            cfg.run.progress,
            cfg.run.total_steps,
            cfg.run.progress_every_s,
            enabled=self.is_main,
            time_limit_s=time_limit_s if time_limit_s is not None else cfg.run.time_limit_s,
            clock_start=self.round.clock_start,
        )
        pending: dict | None = None  # this rank's previous round's record, sent with the next exchange
        code, reason = EXIT_OK, ""
        last_log_step, last_log_time = c.step, 0.0
        start_step = c.step
        try:
            if c.step >= cfg.run.total_steps:
                raise Stop(
                    f"already at --total-steps {cfg.run.total_steps:,} (step {c.step:,}); nothing to train", EXIT_OK
                )
            while True:
                self.state, out = self.round.play(
                    self.state, c, t0, pending, io_failure=self.io_failure is not None, stop_request=self.target_reached
                )
                pending = record = out.record
                self.recent.extend(r for r, _ in out.games)
                # Rank 0 alone holds the games; it asks everyone to stop at the next exchange.
                self.target_reached = self.is_main and target_reached(cfg.run.target_return, self.recent)
                self.consecutive_skips = self.consecutive_skips + 1 if out.skipped else 0
                self._account(out.records)
                now = time.perf_counter() - t0
                eval_metrics = self._between_rounds(record)  # rank 0 only, when due
                if self.is_main and self.io_failure is None:
                    assert self.logger is not None  # rank 0 has the logger
                    try:
                        self.logger.log_ranks(out.records)
                        self.logger.log_games(
                            [
                                {
                                    "update": c.update,
                                    "step": c.step,
                                    "time_s": round(c.elapsed_s + now, 3),
                                    "process_s": round(time.time() - PROCESS_START, 3),
                                    "rank": k,
                                    "return": ret,
                                    "length": n,
                                }
                                for k, per_rank in enumerate(out.games_by_rank)
                                for ret, n in per_rank
                            ]
                        )
                        if c.update % cfg.run.log_every == 0 or eval_metrics:
                            sps = (c.step - last_log_step) / max(now - last_log_time, 1e-9)
                            last_log_step, last_log_time = c.step, now
                            self._log(now, sps, out, extra=eval_metrics)
                    except WriteFailed as err:
                        self.io_failure = err  # every rank learns of it at the next exchange and stops
                if self.is_main:
                    progress.update(
                        c.step, (c.step - start_step) / max(now, 1e-9) if c.update > 1 else 0.0, self.recent_mean(), now
                    )
                if self.consecutive_skips >= cfg.run.max_bad_updates:
                    raise Stop(
                        f"{self.consecutive_skips} consecutive updates had non-finite "
                        "gradients; stopping with the last good checkpoint kept",
                        EXIT_FAULT,
                    )
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
        return self._end(pending, code, reason, t0)

    def _between_rounds(self, record: dict) -> dict:
        """Rank 0, when due: evaluate (keeping the best checkpoint) and record a --video-every clip; return
        the eval/* metrics for this update's line ({} otherwise). Their seconds join this rank's record
        ("eval_s", for ranks.jsonl) and reach every rank with the next exchange."""
        if not self.is_main:
            return {}
        c = self.counters
        metrics: dict = {}
        if eval_due(self.cfg, c.update):
            assert self.evaluations is not None  # rank 0 has the evaluations
            evaluation = self.evaluations.evaluate(
                self.state.params, c.update, c.step, self.save, can_write=self.io_failure is None
            )
            self.io_failure = self.io_failure or evaluation.failure
            record["eval_s"] = round(evaluation.seconds, 6)
            self.round.last_eval_s = evaluation.seconds
            metrics = evaluation.metrics
        if video_due(self.cfg, c.update):
            seconds = clip(self.cfg, self.state.params, self.run_dir, c.update, c.step, self.round.policy_step)
            record["eval_s"] = round(record.get("eval_s", 0.0) + seconds, 6)
            self.round.last_eval_s = record["eval_s"]
        return metrics

    def _stop_reason(self, facts: dict, time_limit_s) -> str:
        if facts["io_failure"]:
            raise Stop(
                str(self.io_failure) if self.io_failure else "rank 0 could not write a file of the run", EXIT_IO_ERROR
            )
        return stop_reason(
            self.cfg,
            self.counters.step,
            facts,
            time_limit_s,
            self.run_dir,
            self.comm.size,
            self.recent_mean() if self.is_main else None,
        )

    def save(self, checkpoints: Checkpoints | None = None, extra_meta: dict | None = None):
        """Checkpoint the training state (into checkpoints/, or `checkpoints`), with `extra_meta` in its metadata."""
        c = self.counters
        c.recent_returns = list(self.recent)
        meta = {
            "counters": asdict(c),
            "config": to_dict(self.cfg),
            "world_size": self.comm.size,
            "algo": self.cfg.algo.algo,
            "network": self.cfg.model.network,
        }
        if self._live_t0 is not None:  # a checkpoint mid-run: count this process's seconds so far
            meta["counters"]["elapsed_s"] = c.elapsed_s + time.perf_counter() - self._live_t0
        meta.update(extra_meta or {})
        target = checkpoints or self.checkpoints
        assert target is not None  # rank 0's checkpoints/ unless the caller passes its own
        target.save(c.step, jax.tree.map(np.asarray, self.state), meta)

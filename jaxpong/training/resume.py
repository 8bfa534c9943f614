"""The training state a process starts from: fresh, or a run's checkpoint restored by rank 0 (with
--resume-fallback, the newest one that restores cleanly). Either way rank 0's state and counters are
broadcast, so replication starts exact."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.console import log_line
from jaxpong.base.errors import ConfigError
from jaxpong.learn.learner import TrainState, init_state
from jaxpong.store.checkpoint import Checkpoints, ResumeRefused, resume_changes
from jaxpong.training.round import Counters


@dataclass
class Start:
    """Where training starts: the state, the counters, and the checkpoint step resumed from (None: fresh;
    rank 0 only)."""

    state: TrainState
    counters: Counters
    resumed_from: int | None = None


def starting_state(
    cfg: Config, comm, network, optimizer, checkpoints: Checkpoints | None, resume_step: int | None, fallback: bool
) -> Start:
    """Every rank: a fresh state, replaced by rank 0's (restored from checkpoint `resume_step` when given;
    `checkpoints` is rank 0's). A refused or failed restore raises ConfigError on every rank."""
    start = Start(init_state(cfg, network, optimizer, jax.random.PRNGKey(cfg.run.seed)), Counters())
    shared: tuple[TrainState, Counters] | str | None = None
    if comm.rank == 0:
        try:
            if resume_step is not None:
                assert checkpoints is not None, "rank 0 restores from its checkpoints"
                start = restore(checkpoints, resume_step, start.state, cfg, comm.size, fallback)
            shared = (jax.tree.map(np.asarray, start.state), start.counters)
        except ConfigError as err:
            shared = str(err)  # every rank must learn of it, or the others would wait forever
    # Rank 0's state (fresh or restored) is everyone's state: replication starts exact.
    shared = comm.bcast(shared)
    if isinstance(shared, str):
        raise ConfigError(shared)
    host_state, counters = shared
    return Start(jax.tree.map(jnp.asarray, host_state), counters, start.resumed_from)


def restore(checkpoints: Checkpoints, step: int, template, cfg: Config, world_size: int, fallback: bool) -> Start:
    """Restore checkpoint `step`; with `fallback`, the newest one that restores cleanly instead."""
    candidates = [step] + ([s for s in reversed(checkpoints.steps()) if s < step] if fallback else [])
    first_error = None
    compared = False
    for candidate in candidates:
        try:
            if not compared:
                # Before restoring: a changed model would otherwise fail there with a shape error, or
                # (another algorithm or optimizer of the same shapes) restore and train the wrong thing.
                saved = checkpoints.read_meta(candidate).get("config") or {}
                changes = resume_changes(saved, cfg, checkpoints.directory / str(candidate))
                compared = True
                if changes:
                    log_line(
                        f"resume changes {len(changes)} setting(s) of the checkpoint's config: " + ", ".join(changes)
                    )
            state, meta = checkpoints.restore(candidate, template)
            counters = Counters(**meta["counters"])
        except ResumeRefused:
            raise
        except (ConfigError, TypeError, KeyError) as err:
            first_error = first_error or err
            if fallback:
                log_line(f"checkpoint at step {candidate:,} is unusable ({err}); trying an older one")
            continue
        if candidate != step:
            log_line(f"--resume-fallback: resuming from the newest good checkpoint, step {candidate:,}")
        counters.resume_count += 1
        saved_ranks = meta.get("world_size", 1)
        if saved_ranks != world_size:
            log_line(
                f"resuming a run checkpointed with {saved_ranks} rank(s) on {world_size} rank(s); "
                f"counters continue from update {counters.update}, step {counters.step:,}"
            )
        return Start(state, counters, candidate)
    if fallback and len(candidates) > 1:
        raise ConfigError(f"no usable checkpoint in {checkpoints.directory} (newest: {first_error})")
    if "another model shape" in str(first_error):
        raise ConfigError(str(first_error))  # every checkpoint of the run has that shape: no fallback helps
    raise ConfigError(f"{first_error}; use --resume-fallback to resume from the newest good checkpoint")

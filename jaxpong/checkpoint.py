"""Checkpoints with orbax: written atomically (a temporary folder renamed on completion), the last K kept.

A checkpoint is named by the agent step it was taken at and holds the training state (parameters,
optimizer state, RNG key) plus JSON metadata: counters, the resolved config, the world size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from jaxpong.config import ConfigError


def _silence_late_reads() -> None:
    """After a failed restore, tensorstore reads still in flight finish into orbax's already closed event
    loop, and Python reports each as an unraisable 'Event loop is closed' error: a traceback after our
    one-line message. Drop just those (the process is about to report the error and exit)."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import and only some commands need it
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's info/warning chatter is not for our users
    return ocp


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self._keep, self._read_only = keep, read_only
        self._manager = None

    @property
    def manager(self):
        # Opened on first use: importing orbax takes seconds of a run's start-up, and a new run's first
        # save comes minutes later.
        if self._manager is None:
            ocp = _ocp()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, create=not self._read_only, enable_async_checkpointing=False,
                read_only=self._read_only,
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        ocp = _ocp()
        if step in self.manager.all_steps():
            # A checkpoint of this step exists: an unusable one left behind by --resume-fallback, or one
            # written moments ago at the same step. Replace it rather than fail the run at its end.
            self.manager.delete(step)
        host_state = jax.tree.map(np.asarray, state)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def read_meta(self, step: int) -> dict:
        ocp = _ocp()
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many kinds; the user needs the file and what to do
            _silence_late_reads()
            raise ConfigError(f"checkpoint {self.directory / str(step)} cannot be read ({type(err).__name__}); "
                              "it may be truncated or from another version") from None

    def restore(self, step: int, template) -> tuple:
        """(state shaped like `template`, meta). A mismatch (other model or algorithm) is a ConfigError."""
        ocp = _ocp()
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                    meta=ocp.args.JsonRestore()))
        except Exception as err:
            _silence_late_reads()
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} cannot be restored into this model "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); it is truncated, "
                "corrupted, or from another model or algorithm"
            ) from None
        state = out["state"]
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
            if np.shape(got) != np.shape(want):
                raise ConfigError(f"checkpoint {self.directory / str(step)} holds another model shape "
                                  f"({np.shape(got)} where this config needs {np.shape(want)})")
        return jax.tree.map(lambda t, s: np.asarray(s, dtype=np.asarray(t).dtype), template, state), out["meta"]

    def close(self):
        if self._manager is not None:
            self._manager.close()

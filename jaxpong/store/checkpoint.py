"""Checkpoints with orbax: written atomically (a temporary folder renamed on completion), the last K kept.

A checkpoint is named by the agent step it was taken at and holds the training state (parameters,
optimizer state, RNG key) plus JSON metadata: counters, the resolved config, the world size.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from jaxpong.base.errors import ConfigError
from jaxpong.store.rundir import WriteFailed, write_failure_reason


def _event_loop_closed(value) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)


_quiet = False


def _silence_late_reads() -> None:
    """After a failed write or read, tensorstore calls still in flight finish into orbax's already closed
    event loop, and Python reports each as an 'Event loop is closed' error with a traceback, after our
    one-line message. Drop just those, whether they come as unraisable errors or through sys.excepthook
    (installed once, when orbax is first used)."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable_hook(unraisable):
        if not _event_loop_closed(unraisable.exc_value):
            previous_unraisable(unraisable)

    def except_hook(kind, value, tb):
        if not _event_loop_closed(value):
            previous_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import and only some commands need it
    from absl import logging as absl_logging

    # Orbax's chatter is not for our users, nor are its logged tracebacks of a failed write: every failure
    # reaches them as one line (rundir.WriteFailed, ConfigError) that says what failed and what to do.
    absl_logging.set_verbosity(absl_logging.FATAL)
    _silence_late_reads()
    return ocp


# What the parameters and optimizer state in a checkpoint mean. A resume may change anything else (time
# limits, the total-steps target, logging, evaluation, the deadline, ranks and envs, learning rate...),
# and the changes are logged; changing one of these is refused.
DEFINING_FIELDS = (
    ("algo", "algo"),
    ("algo", "optimizer"),
    ("algo", "proximal"),  # ewma keeps a second set of weights in the state
    ("env", "env_id"),
    ("model", "network"),
    ("model", "obs_mode"),
    ("model", "actions"),
    ("model", "hidden_size"),
    ("model", "use_bias"),
    ("model", "value_head"),
    ("model", "bernoulli_head"),
)


class ResumeRefused(ConfigError):
    """A resume that would change what the checkpoint trained: never retried on an older checkpoint."""


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # nan == nan here


def resume_changes(saved: dict, cfg, checkpoint: Path) -> list[str]:
    """Compare a checkpoint's config (`saved`, as to_dict wrote it) with the resumed run's `cfg`.

    Returns 'section.field old -> new' for every changed field that a resume may change; raises
    ResumeRefused naming the checkpoint, the field and both values for one that defines the model.
    Fields unknown to either side (a config of another jaxpong version) are not compared.
    """
    from jaxpong.base.config import to_dict

    now = to_dict(cfg)
    changed = []
    for section, fields in now.items():
        for name, value in fields.items():
            if (section, name) in DEFINING_FIELDS and name not in (saved.get(section) or {}):
                # Saved by a version without the field: it trained with the field's default.
                before = getattr(getattr(type(cfg)(), section), name)
            else:
                before = (saved.get(section) or {}).get(name, value)
            if _same(before, value):
                continue
            if (section, name) in DEFINING_FIELDS:
                raise ResumeRefused(
                    f"--resume: checkpoint {checkpoint} was trained with {section}.{name} = {before!r}, and this run "
                    f"asks for {value!r}; a resumed run keeps what defines its model and optimizer state. Drop that "
                    f"change, or train it as a new run (--run-dir)"
                )
            changed.append(f"{section}.{name} {before!r} -> {value!r}")
    return changed


def _without_none_fields(state) -> dict | None:
    """A dataclass state's fields that are not None, as a dict (None when none is None, or not a dataclass)."""
    if not dataclasses.is_dataclass(state) or isinstance(state, type):
        return None
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    kept = {k: v for k, v in fields.items() if v is not None}
    return kept if len(kept) < len(fields) else None


REPLACING = ".replacing"  # where a checkpoint of a step that already has one is written first
PARTIAL_MARK = ".orbax-checkpoint-tmp"  # in the name of orbax's folder for a save in progress


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self._keep, self._read_only = keep, read_only
        self._manager = None

    def _options(self, keep: int):
        return _ocp().CheckpointManagerOptions(
            max_to_keep=keep, create=not self._read_only, enable_async_checkpointing=False, read_only=self._read_only
        )

    @property
    def manager(self):
        # Opened on first use: importing orbax takes seconds of a run's start-up, and a new run's first
        # save comes minutes later.
        if self._manager is None:
            if not self._read_only:
                self._discard_partial()  # also finishes an interrupted replacement
            self._manager = _ocp().CheckpointManager(self.directory, options=self._options(self._keep))
        return self._manager

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Write checkpoint `step`, keeping the newest `keep`. A failed write (disk full, permissions...)
        removes its partial folder, keeps every complete checkpoint, and raises rundir.WriteFailed."""
        ocp = _ocp()
        host_state = jax.tree.map(np.asarray, state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta))
        try:
            if step in self.manager.all_steps():
                # A checkpoint of this step exists: one written moments ago at the same step, or an unusable
                # one left behind by --resume-fallback. The new one is written completely before the old goes.
                self._replace(step, args)
            else:
                self.manager.save(step, args=args, force=True)
                self.manager.wait_until_finished()
        except Exception as err:  # orbax wraps OS errors in many kinds
            self._reset_after_failure()
            raise WriteFailed("checkpoint", self.directory / str(step), write_failure_reason(err)) from None

    def _replace(self, step: int, args) -> None:
        ocp = _ocp()
        staging = self.directory / REPLACING
        shutil.rmtree(staging, ignore_errors=True)
        writer = ocp.CheckpointManager(staging, options=self._options(1))
        try:
            writer.save(step, args=args, force=True)
            writer.wait_until_finished()
        finally:
            writer.close()
        # Two renames: between them the old copy is in staging under `<step>.old`, and a process that
        # opens these checkpoints next puts it back (_finish_interrupted_replace).
        os.rename(self.directory / str(step), staging / f"{step}.old")
        os.rename(staging / str(step), self.directory / str(step))
        shutil.rmtree(staging)
        self.manager.reload()

    def _finish_interrupted_replace(self) -> None:
        staging = self.directory / REPLACING
        if not staging.is_dir():
            return
        for old in staging.glob("*.old"):
            home = self.directory / old.name[: -len(".old")]
            if not home.exists():
                os.rename(old, home)
        shutil.rmtree(staging, ignore_errors=True)

    def _discard_partial(self) -> None:
        """Remove what a failed or interrupted save left: orbax's temporary folders and our staging."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if PARTIAL_MARK in path.name:
                shutil.rmtree(path, ignore_errors=True)
        self._finish_interrupted_replace()

    def _reset_after_failure(self) -> None:
        try:
            self._discard_partial()
            if self._manager is not None:
                self._manager.close()
        except Exception:  # noqa: BLE001 - cleaning up after a failed write must not hide that failure
            pass
        self._manager = None  # reopened (and so re-listed from disk) on next use

    def newest_complete(self) -> int | None:
        """The newest step that was written completely (None if none), read from the folder."""
        try:
            steps = self.steps()
        except Exception:  # noqa: BLE001 - asked only to report where to resume from
            return None
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict:
        ocp = _ocp()
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many kinds; the user needs the file and what to do
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} cannot be read ({type(err).__name__}); "
                "it may be truncated or from another version"
            ) from None

    def restore(self, step: int, template) -> tuple:
        """(state shaped like `template`, meta). A mismatch (other model or algorithm) is a ConfigError."""
        ocp = _ocp()
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)

        def read(target):
            return self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )

        try:
            try:
                out = read(abstract)
                state = out["state"]
            except Exception:
                # A checkpoint from before a state field that is None here (e.g. TrainState.proximal) was added
                # holds the tree without it: read it as such, then give back the template's type.
                older = _without_none_fields(abstract)
                if older is None:
                    raise
                out = read(older)
                state = abstract.replace(**out["state"])
        except Exception as err:
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} cannot be restored into this model "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); it is truncated, "
                "corrupted, or from another model or algorithm"
            ) from None
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
            if np.shape(got) != np.shape(want):
                raise ConfigError(
                    f"checkpoint {self.directory / str(step)} holds another model shape "
                    f"({np.shape(got)} where this config needs {np.shape(want)})"
                )
        return jax.tree.map(lambda t, s: np.asarray(s, dtype=np.asarray(t).dtype), template, state), out["meta"]

    def close(self):
        if self._manager is not None:
            self._manager.close()

"""The run directory: its name, the checks made before any training starts, and config.yaml."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import yaml

from jaxpong.base.config import Config, to_dict
from jaxpong.base.errors import ConfigError

PACKAGES = (
    "jaxpong",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "envpool",
    "mpi4py",
    "mpi4jax",
    "mpich",
    "numpy",
    "tensorboardX",
)


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.env.env_id}__{cfg.algo.algo}__{cfg.run.seed}__{int(time.time())}"


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


LOCK_NAME = ".lock"


class WriteFailed(Exception):
    """A file of a running training could not be written (disk full, quota, permissions, folder removed).

    The run stops with EXIT_IO_ERROR and one line: what failed, where, why, and the checkpoint to resume from.
    """

    def __init__(self, what: str, path: Path, reason: str):
        super().__init__(f"could not write {what} {path} ({reason})")
        self.what, self.path, self.reason = what, Path(path), reason


def write_failure_reason(err: BaseException) -> str:
    """The operating system's words for a failed write, found anywhere in an exception's chain (orbax
    wraps them, for example as `ValueError: RESOURCE_EXHAUSTED: ... No space left on device`)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    for known in (
        "No space left on device",
        "Disk quota exceeded",
        "Permission denied",
        "Read-only file system",
        "No such file or directory",
    ):
        if known.lower() in text.lower():
            return known
    first = text.splitlines()[0][:160] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


class RunLock:
    """One owner per run directory: an exclusive `flock` on RUN_DIR/.lock, held for the whole run.

    The kernel drops the lock when its process ends, however it ends, so a crash never leaves a stale
    lock behind. The file itself stays (it names the last owner) and is never deleted while held:
    `--overwrite` empties the directory around it. Readers (eval, video, plot, report, export) never
    take it. On network filesystems flock is as reliable as the filesystem's own locking.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ConfigError naming the process that holds it (the directory is created)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"--run-dir {str(self.path.parent)!r} cannot be created ({err.strerror}); choose a writable place"
            ) from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(
                f"--run-dir {str(self.path.parent)!r} is not writable ({err.strerror}); "
                "fix its permissions or choose another place"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"run directory {str(self.path.parent)!r} is in use by {owner} (a training is still "
                "running there); wait for it to end, stop it, or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def prepare_new(run_dir: Path, overwrite: bool) -> None:
    """Make `run_dir` an empty run directory (its lock, held by the caller, kept), or fail with a clear
    message before anything is trained."""
    existing = [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []
    if existing:
        if not overwrite:
            raise ConfigError(
                f"--run-dir {str(run_dir)!r} already holds a run; use --resume {run_dir} to continue it, "
                "--overwrite to replace it, or another --run-dir"
            )
        for path in existing:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"--run-dir {str(run_dir)!r} cannot be created ({err.strerror}); choose a writable place"
        ) from None
    check_writable(run_dir)


def check_writable(run_dir: Path, need_bytes: int = 64 << 20) -> None:
    probe = run_dir / ".write-probe"
    try:
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"--run-dir {str(run_dir)!r} is not writable ({err.strerror}); fix its permissions or free space"
        ) from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise ConfigError(
            f"--run-dir {str(run_dir)!r} has only {free >> 20} MiB free; checkpoints need at least "
            f"{need_bytes >> 20} MiB"
        )


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    here = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_config(run_dir: Path, cfg: Config, world_size: int, extra: dict | None = None) -> None:
    doc = to_dict(cfg)
    doc["_record"] = {
        "preset": cfg.preset_name,
        "world_size": world_size,
        "versions": versions(),
        "git_commit": git_commit(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")

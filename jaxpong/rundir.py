"""The run directory: its name, the checks made before any training starts, and config.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import yaml

from jaxpong.config import Config, ConfigError, to_dict

PACKAGES = ("jaxpong", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "envpool", "mpi4py", "mpi4jax",
            "mpich", "numpy", "tensorboardX")


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.env.env_id}__{cfg.algo.algo}__{cfg.run.seed}__{int(time.time())}"


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def prepare_new(run_dir: Path, overwrite: bool) -> None:
    """Create a fresh run directory, or fail with a clear message before anything is trained."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"--run-dir {str(run_dir)!r} already holds a run; use --resume {run_dir} to continue it, "
                              "--overwrite to replace it, or another --run-dir")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--run-dir {str(run_dir)!r} cannot be created ({err.strerror}); choose a writable place") from None
    check_writable(run_dir)


def check_writable(run_dir: Path, need_bytes: int = 64 << 20) -> None:
    probe = run_dir / ".write-probe"
    try:
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--run-dir {str(run_dir)!r} is not writable ({err.strerror}); fix its permissions or free space") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise ConfigError(f"--run-dir {str(run_dir)!r} has only {free >> 20} MiB free; checkpoints need at least "
                          f"{need_bytes >> 20} MiB")


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
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


def read_config(run_dir: Path) -> dict:
    """The saved config of a run, without its `_record` (for --resume, eval, video...)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a jaxpong run directory (no config.yaml); give the folder a train run wrote")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{str(path)!r} is not valid YAML; the run directory is damaged") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{str(path)!r} does not hold a jaxpong config")
    doc.pop("_record", None)
    return doc

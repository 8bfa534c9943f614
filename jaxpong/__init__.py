"""jaxpong: learn Atari Pong from pixels, from one laptop core to a cluster."""

import time as _time


def _process_start() -> float:
    """Wall-clock time this process started (learning-speed milestones count from here, imports included).
    A rank that `train --ranks N` started counts from that command's start, mpirun's start-up included."""
    import os

    try:
        import psutil

        own = float(psutil.Process().create_time())
    except Exception:  # psutil missing or restricted: the package import is the next best mark
        own = _time.time()
    # Taken, not read, so that nothing this rank starts inherits it; a stale or foreign value is ignored.
    launched = os.environ.pop("JAXPONG_LAUNCH_START", "")
    try:
        return float(launched) if own - 600 < float(launched) <= own else own
    except ValueError:
        return own


PROCESS_START = _process_start()


def _version() -> str:
    """The installed package's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxpong")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

# The Python API (jaxpong/api.py): what `jaxpong train` and `jaxpong eval` run, callable with typed values.
from jaxpong.api import Config, ConfigError, Policy, RunResult, load_policy, train  # noqa: E402

__all__ = ["PROCESS_START", "Config", "ConfigError", "Policy", "RunResult", "__version__", "load_policy", "train"]

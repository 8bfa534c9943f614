"""jaxpong: learn Atari Pong from pixels, from one laptop core to a cluster."""

import time as _time


def _process_start() -> float:
    """Wall-clock time this process started (learning-speed milestones count from here, imports included)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing or restricted: the package import is the next best mark
        return _time.time()


PROCESS_START = _process_start()
__version__ = "0.1.0"

"""When this process started: the clock that time limits and learning-speed milestones count from."""

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

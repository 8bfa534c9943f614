"""A watchdog thread for the collectives MPI cannot time out: a hung peer must end the job, not hang it.

The trainer arms it around each blocking phase (the jitted update with its allreduces) with a time
limit derived from recent round times; if the phase is still running at the limit, the rank says
where it was stuck and aborts the whole MPI job, so the launcher exits non-zero.
"""

from __future__ import annotations

import sys
import threading
import time


class Watchdog:
    def __init__(self, comm, poll_s: float = 0.5):
        self.comm = comm
        self._lock = threading.Lock()
        self._label: str | None = None
        self._limit_at = 0.0
        self._limit_s = 0.0
        if comm.size > 1:
            threading.Thread(target=self._watch, args=(poll_s,), name="jaxpong-watchdog", daemon=True).start()

    def arm(self, label: str, limit_s: float) -> None:
        with self._lock:
            self._label, self._limit_s, self._limit_at = label, limit_s, time.monotonic() + limit_s

    def disarm(self) -> None:
        with self._lock:
            self._label = None

    def _watch(self, poll_s: float) -> None:
        while True:
            time.sleep(poll_s)
            with self._lock:
                label, late = self._label, self._label is not None and time.monotonic() > self._limit_at
            if late:
                print(
                    f"jaxpong: rank {self.comm.rank}: stuck for more than {self._limit_s:.0f} s in {label}: "
                    "a peer rank died or hung. Aborting the MPI job.",
                    file=sys.stderr,
                    flush=True,
                )
                self.comm.abort(1)


def hang_limit(base_s: float, rounds_done: int, slowest_round_s: float, compiles: bool = False) -> float:
    """Seconds one collective may block before the job is declared dead or hung.

    A process's first two rounds compile the policy step and the update (on every rank, at different
    speeds), fresh or resumed alike, and so does a round that meets a new shape (`compiles`): those get
    10 x base_s. Later rounds get base_s, or 3 x the slowest recent round if that is longer.
    """
    if compiles or rounds_done < 2:
        return 10 * base_s
    return max(base_s, 3 * slowest_round_s)

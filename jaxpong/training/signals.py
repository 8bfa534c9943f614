"""SIGTERM and SIGINT during training: a clean stop at the end of the round; a second one exits at once."""

from __future__ import annotations

import os
import signal
import sys

from jaxpong.training.stop import EXIT_PREEMPTED


class SignalFlag:
    """SIGTERM/SIGINT ask for a clean stop at the end of the round; a second one exits at once.

    The handler only sets the flag: printing through sys.stderr from a handler can land while the main
    thread is inside that same buffered stream's write, and CPython then raises "reentrant call". The
    main thread says what it will do (`announce`, once a round); the second signal's last words go out
    with one unbuffered os.write, which is safe there.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._announced = False

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:
            # Second signal: leave now. The last checkpoint on disk is intact (written atomically).
            os.write(2, f"jaxpong: second signal ({signal.Signals(signum).name}): exiting at once\n".encode())
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name

    def announce(self) -> None:
        """Main thread: say once that a signal arrived and what happens next."""
        if self.received is not None and not self._announced:
            self._announced = True
            print(
                f"jaxpong: {self.received} received: finishing this round, then checkpointing and exiting "
                f"with status {EXIT_PREEMPTED} (send it again to exit at once)",
                file=sys.stderr,
                flush=True,
            )

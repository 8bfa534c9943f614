"""The one-line messages jaxpong prints on stderr, each with the time of day."""

import sys
import time


def log_line(message: str) -> None:
    print(f"[jaxpong {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

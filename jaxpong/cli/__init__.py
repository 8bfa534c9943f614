"""The command line: `python -m jaxpong COMMAND` and the `jaxpong` console script."""

from jaxpong.cli.dispatch import main

__all__ = ["main"]

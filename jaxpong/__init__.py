"""jaxpong: learn Atari Pong from pixels, from one laptop core to a cluster."""

from jaxpong.base.clock import PROCESS_START


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

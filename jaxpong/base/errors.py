"""The error every stage raises for bad user input."""


class ConfigError(ValueError):
    """Bad user input: reported as one line and exit status 2, never as a traceback."""

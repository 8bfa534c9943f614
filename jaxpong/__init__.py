"""jaxpong: learn Atari Pong from pixels, from one laptop core to a cluster."""

__version__ = "0.1.0"

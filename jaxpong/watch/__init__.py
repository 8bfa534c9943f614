"""Watching a trained policy: full games (eval), videos, learning curves, loading a saved policy and
exporting it as one file."""

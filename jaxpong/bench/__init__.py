"""Benchmarks of speed: throughput (raw envpool against the trainer), rank scaling and start-up, learning
speed, and one policy step's cost."""

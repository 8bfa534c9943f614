"""The stores of a run: its directory (names, checks, `config.yaml`, the lock), checkpoints, and what rank 0
writes while training (metrics, per-rank records, TensorBoard, W&B)."""

"""The ranks: where each runs (placement, JAX's process settings), the collectives between them, the
per-round exchange's fixed-size records, and the watchdog that ends a job when a collective hangs."""

"""Training: start or resume a run, the run loop around the round, one round (collect -> prepare ->
exchange -> update), stop rules, signals, and what rank 0 does between rounds and at the end."""

"""Scale: the Monte Carlo model of update rounds at many ranks (simulate, its calibration and validation),
the batch study, and the time-to-win prediction built from both."""

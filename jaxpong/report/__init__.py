"""Late senders, seen: `python -m jaxpong report RUN_DIR` reads ranks.jsonl (and metrics.jsonl), draws
RUN_DIR/imbalance.png, writes the per-rank timeline as RUN_DIR/trace.json (Chrome trace events, for
Perfetto), prints a table per rank and a plain-language finding.

What one round of `train` is, on each rank (one line of ranks.jsonl per rank per round):

    start_s     when the round began, in seconds since the common start barrier
    collect_s   playing games until the deadline or a full buffer
    wait_s      the per-round gather: waiting for the last rank to arrive (the late-sender cost)
    compute_s   preparing returns (before the gather) plus the update (gradients, one allreduce per
                optimizer step); where a record also has prepare_s, that is the preparation's part
    eval_s      rank 0 only, rounds with an evaluation or video: between this round and the next

The finding names the persistent late senders (ranks last to arrive far more often than chance, that
wait less than the others) and the slow collectors (ranks that play fewer samples per second than 2/3
of the median rank: without a deadline they are the late senders; under one they are cut and arrive on
time with fewer samples, so only their speed shows them).

The picture depends on the rank count (`--picture auto`):
- up to TIMELINE_MAX_RANKS ranks, the profiler view that showed, in 2016, that a few late games held
  every rank up: one row per rank against wall-clock time, each round's collection, wait and update in
  their own colours (a late rank makes sloped wedges of wait on all the others), above per-rank bars of
  the wait and masked fractions and each rank's collection speed against the median rank's;
- above that, where one row per rank cannot stay legible, two rank x round heatmaps (the wait fraction
  and the masked fraction of every rank in every round) beside each rank's share of rounds it arrived
  last, its wait fraction and its collection speed, the late senders and slow collectors named. Where
  there are more ranks or rounds than pixels, neighbouring ranks and rounds share a cell, and the
  figure says how.

Where the run measured the gradient noise scale (charts/noise_scale), one more line says how many ranks
its critical batch makes useful under the run's batch rules (batch_rule.useful_ranks).

The first round includes compilation and is left out of every number and picture (not of the trace).
ranks.jsonl is read in chunks of lines into one numpy matrix per field (ranks x rounds): a 1,536-rank
run of 300 rounds (92 MB of ranks.jsonl) takes about 10 s of CPU and 210 MB of memory at the peak,
matplotlib included, and gives a 130 MB trace.

Nothing here imports jax or MPI: a report can be made anywhere the run directory can be read.
"""

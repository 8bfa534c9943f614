"""Run under `mpirun -n 2`: one round's update on the training path, 2 ranks against 1 on the same games.

Rank 0 plays one real round of envpool Pong with the default config's 32 games on one process (a
deadline cuts it, so rows are padded) and sends the batch to rank 1. Then:
- one process (LocalComm) runs the trainer's own round steps, `Round._prepare`, `_exchange` and
  `_update`, on all 32 games: the sparse first layer, padded rows and the noise-scale sums included;
- two ranks run the same steps through MPI, each on its 16 games (columns 0-15 and 16-31), with the
  config `batch_rule.apply` gives each of 2 ranks (share_games: 16 games each).
The parameters, the optimizer state, the update's metrics and the round's counts must agree to float
tolerance; otherwise the first place they differ is printed.

Prints one "OK <name>" line per check on rank 0 and exits non-zero on the first mismatch.
Argument: optional `--dense` (the dense update, model.sparse_input false).
"""

import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.base import config as config_lib
from jaxpong.learn import batch_rule
from jaxpong.learn.learner import init_state, make_optimizer
from jaxpong.learn.networks import make_network
from jaxpong.play.rollout import RoundInfo
from jaxpong.ranks.comm import LocalComm, MpiComm
from jaxpong.training.round import Counters, Round
from jaxpong.training.signals import SignalFlag

comm = MpiComm()
assert comm.size == 2, "run with mpirun -n 2"
rank = comm.rank
dense = "--dense" in sys.argv[1:]


def _abort_on_error(kind, value, tb):
    # One rank's error must end both: the other would wait in the next collective for ever.
    traceback.print_exception(kind, value, tb)
    comm.abort(1)


sys.excepthook = _abort_on_error


def fail(msg):
    print(f"FAIL rank {rank}: {msg}", flush=True)
    comm.abort(1)


def one_round(rnd: Round, state, batch):
    """The round's prepare -> exchange -> update on a given batch (what `Round.play` does after collecting)."""
    counters = Counters()
    prepared = rnd._prepare(state, batch)
    info = RoundInfo(
        collect_s=1.0, filled_steps=int(batch.filled.sum()), valid_steps=0, cut_by_deadline=True, env_wait_s=0
    )
    facts, _, _ = rnd._exchange(state, counters, prepared, info, None, False, False)
    new_state, metrics = rnd._update(state, counters, prepared, facts)
    return new_state, metrics, facts, rnd.noise


# A fixed deadline gives both sides the headroom's 80-row buffers (auto is no deadline on one rank).
user = config_lib.build(
    None, {"model": {"sparse_input": not dense}, "dist": {"deadline_s": "0.25", "replication_check_every": 1}}
)
network = make_network(user.model)
optimizer = make_optimizer(user)
state = init_state(user, network, optimizer, jax.random.PRNGKey(3))

# The reference: one process, all 32 games.
one_cfg, _ = batch_rule.apply(user, 1)
reference = None
if rank == 0:
    ref_round = Round(one_cfg, LocalComm(), network, optimizer, Counters(), SignalFlag())
    # Two rounds of play: the first from the games' start, the second (cut by a deadline, so its rows are
    # padded) is the one both sides learn from.
    key = jax.random.PRNGKey(11)
    ref_round.collector.collect(state.params, jax.random.fold_in(key, 0), None)
    batch, info = ref_round.collector.collect(state.params, jax.random.fold_in(key, 1), 0.25)
    if batch.filled.shape[0] != 80:
        fail(f"a deadline round has the headroom's 80 rows, not {batch.filled.shape[0]}")
    padded = 1.0 - batch.filled.mean()
    if not (0.05 < padded < 0.95):
        fail(f"the deadline round should leave padded rows; {padded:.0%} are padding")
    batch = jax.tree.map(np.asarray, batch)
    reference = one_round(ref_round, state, batch)
    print(f"round: {int(batch.filled.sum())} steps in {batch.filled.shape} rows, {padded:.0%} padding", flush=True)
else:
    batch = None
batch = comm.bcast(batch)

# Two ranks, each with its share of the games.
rank_cfg, _ = batch_rule.apply(user, 2)
n = rank_cfg.env.num_envs
assert n == 16, rank_cfg.env
rnd = Round(rank_cfg, comm, network, optimizer, Counters(), SignalFlag())
rnd_ids = rnd.collector.game_ids  # the global ids the trainer gives this rank's games
mine = jax.tree.map(lambda a: a[:, rank * n : (rank + 1) * n] if a.ndim >= 2 and a.shape[0] == 80 else a, batch)
mine = mine.replace(
    bootstrap_features=batch.bootstrap_features[rank * n : (rank + 1) * n],
    game_ids=batch.game_ids[rank * n : (rank + 1) * n],
)
if not (mine.game_ids == rnd_ids).all():
    fail(f"rank {rank} holds games {mine.game_ids}, its collector names {rnd_ids}")
multi = one_round(rnd, state, mine)
# Every rank holds the same parameters afterwards (checked again by the exchange's checksum below).
sums = comm.world.allgather(float(sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(multi[0].params))))
if sums[0] != sums[1]:
    fail(f"ranks hold different parameters after the update: {sums}")
if rank == 0:
    assert reference is not None
    ref_state, ref_metrics, ref_facts, _ = reference
    got_state, got_metrics, got_facts, _ = multi
    for name in ("moments", "filled", "masked"):  # (sparse_length is per rank: its own lists)
        if not np.allclose(ref_facts[name], got_facts[name], rtol=1e-6):
            fail(f"the agreed {name} differ: 1 rank {ref_facts[name]}, 2 ranks {got_facts[name]}")
    print("OK agreed_facts_equal", flush=True)
    paths = jax.tree_util.tree_flatten_with_path((ref_state.params, ref_state.opt_state))[0]
    got = jax.tree.leaves((got_state.params, got_state.opt_state))
    for (path, a), b in zip(paths, got):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not np.allclose(a, b, rtol=1e-4, atol=1e-6):
            worst = np.unravel_index(np.argmax(np.abs(a - b)), a.shape) if a.ndim else ()
            fail(
                f"after one round, {jax.tree_util.keystr(path)} differs: max |1 rank - 2 ranks| "
                f"{np.abs(a - b).max():.3g} at {worst} (scale {np.abs(a).max():.3g})"
            )
    print("OK parameters_and_optimizer_state_equal", flush=True)
    if not np.allclose(ref_metrics, got_metrics, rtol=1e-4, atol=1e-6):
        fail(f"the update's metrics differ: 1 rank {ref_metrics}, 2 ranks {got_metrics}")
    print("OK metrics_equal", flush=True)
    if not np.isfinite(np.asarray(jnp.stack(jax.tree.leaves(got_state.params)[:1]))).all():
        fail("non-finite parameters")
comm.barrier()
sys.exit(0)

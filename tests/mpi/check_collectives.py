"""Run under `mpirun -n 2`: the maths of the masked exchange across real MPI ranks.

Prints one "OK <name>" line per check on rank 0 and exits non-zero on the first mismatch.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.base import config as config_lib
from jaxpong.learn.algorithms.returns import masked_moments, moments_to_mean_std
from jaxpong.learn.learner import init_state, make_optimize, make_optimizer, make_prepare
from jaxpong.learn.networks import make_network
from jaxpong.play.batch import Batch
from jaxpong.ranks.comm import LocalComm, MpiComm
from jaxpong.ranks.exchange import agreed_layout, log_layout, record_row

comm = MpiComm()
assert comm.size == 2, "run with mpirun -n 2"
rank = comm.rank


def ok(name):
    if rank == 0:
        print("OK", name, flush=True)


def fail(msg):
    print(f"FAIL rank {rank}: {msg}", flush=True)
    comm.abort(1)


# 1. Weighted (masked) mean across ranks, by hand, including a rank with zero valid samples.
masked_mean = jax.jit(
    lambda x, m: (lambda t: t[0] / jnp.maximum(t[1], 1.0))(comm.allreduce_sum(jnp.stack([(x * m).sum(), m.sum()])))
)
x = [jnp.array([1.0, 2.0, 3.0]), jnp.array([10.0, 20.0, 30.0])][rank]
for masks, want in (
    ([[1, 1, 0], [0, 0, 0]], (1 + 2) / 2),  # rank 1 joins with weight 0
    ([[1, 1, 0], [1, 0, 0]], (1 + 2 + 10) / 3),
    ([[0, 0, 1], [0, 1, 1]], (3 + 20 + 30) / 3),
):
    got = float(masked_mean(x, jnp.array(masks[rank], jnp.float32)))
    if abs(got - want) > 1e-6:
        fail(f"masked mean {masks}: {got} != {want}")
ok("masked_mean_by_hand")

# 2. Normalisation statistics from summed moments equal those of the concatenated data.
rng = np.random.default_rng(7)
data = rng.normal(size=(2, 50)).astype(np.float32) * [[1.0], [3.0]] + [[0.5], [-2.0]]
mask = rng.random((2, 50)) < [[0.7], [0.3]]
moments = jax.jit(lambda v, m: comm.allreduce_sum(masked_moments(v, m)))(data[rank], mask[rank])
mean, std = moments_to_mean_std(moments)
all_valid = data[mask]
if abs(float(mean) - all_valid.mean()) > 1e-4 or abs(float(std) - all_valid.std()) > 1e-4:
    fail(f"global moments {float(mean)}, {float(std)} != {all_valid.mean()}, {all_valid.std()}")
ok("global_moments")

# 3. One update on 2 ranks == one update on 1 rank with the concatenated batch (pg and ppo with one
#    full-batch minibatch, so sample order cannot matter). Rank 1 has half its samples masked.
for algo, extra in (("pg", {"pg_unscored": "mask"}), ("ppo", {"num_minibatches": 1, "update_epochs": 2})):
    cfg = config_lib.build(
        None,
        {
            "env": {"num_envs": 2},
            "algo": {"algo": algo, "num_steps": 8, **extra},
            "model": {"hidden_size": 16, "obs_mode": "diff64"},
        },
    )  # 64x84 frames below
    net = make_network(cfg.model)
    apply_fn = lambda p, f: net.apply(p, f)
    opt = make_optimizer(cfg)
    state = init_state(cfg, net, opt, jax.random.PRNGKey(0))
    T, N = 8, 2

    def make_batch(seed):
        r = np.random.default_rng(seed)
        filled = np.ones((T, N), bool)
        return Batch(
            features=r.integers(-1, 2, size=(T, N, 64, 84)).astype(np.int8),
            actions=r.integers(0, 2, size=(T, N)).astype(np.int32),
            logprobs=np.full((T, N), np.log(0.5), np.float32),
            values=r.normal(size=(T, N)).astype(np.float32) * 0.1,
            rewards=(r.integers(-1, 2, size=(T, N)) * (r.random((T, N)) < 0.3)).astype(np.float32),
            dones=np.zeros((T, N), bool),
            filled=filled,
            valid=filled & (r.random((T, N)) < (1.0 if seed == 0 else 0.5)),
            bootstrap_features=r.integers(-1, 2, size=(N, 64, 84)).astype(np.int8),
        )

    batches = [make_batch(0), make_batch(1)]
    prepare = make_prepare(cfg, apply_fn)
    mine = jax.tree.map(jnp.asarray, batches[rank])
    targets, moments = prepare(state.params, mine)
    # Global moments through the trainer's own per-round exchange (its agreed record sums them).
    layout = agreed_layout(np.asarray(moments).size)
    reduced, _ = comm.exchange(
        layout.pack({"moments": np.asarray(moments, np.float64), "checksum_max": -np.inf, "checksum_neg_min": -np.inf}),
        layout,
        record_row(log_layout(4), None, []),
        timeout_s=300,  # the other rank may still be compiling on a busy machine: waiting is not what this checks
        label="the test's exchange",
    )
    norm = layout.unpack(reduced)["moments"]
    multi, _, counts = make_optimize(cfg, apply_fn, opt, comm.allreduce_sum)(
        state, mine, targets, jnp.asarray(norm, jnp.float32), 1.0, 1.0
    )
    # The same maths on one process: both ranks' envs side by side as one batch of 2N envs.
    joined = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b], axis=1 if a.ndim >= 2 and a.shape[0] == T else 0), batches[0], batches[1]
    )
    cfg1 = config_lib.build(
        None,
        {
            "env": {"num_envs": 2 * N},
            "algo": {"algo": algo, "num_steps": 8, **extra},
            "model": {"hidden_size": 16, "obs_mode": "diff64"},
        },
    )
    t1, m1 = make_prepare(cfg1, apply_fn)(state.params, joined)
    single, _, counts1 = make_optimize(cfg1, apply_fn, opt, LocalComm().allreduce_sum)(state, joined, t1, m1, 1.0, 1.0)
    if abs(float(counts.sum()) - float(counts1.sum())) > 0.5:
        fail(f"{algo}: global valid count {counts} != single-process {counts1}")
    for a, b in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params)):
        if not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6):
            fail(
                f"{algo}: 2-rank update differs from 1-rank update on concatenated data "
                f"(max diff {np.abs(np.asarray(a) - np.asarray(b)).max()})"
            )
    sums = comm.world.allgather(float(sum(np.asarray(l, np.float64).sum() for l in jax.tree.leaves(multi.params))))
    if sums[0] != sums[1]:
        fail(f"{algo}: ranks hold different parameters after the update: {sums}")
    ok(f"{algo}_two_ranks_equal_one_rank_with_twice_the_data")

comm.barrier()
sys.exit(0)

"""Run under `mpirun -n 2`: the gradient noise scale across two real ranks with unequal valid counts.

Each rank updates with the noise scale measured; the across-ranks sums must equal those computed from
both ranks' own gradient sums (gathered here with mpi4py), and both ranks must hold the same state.
Prints "OK noise_scale_across_two_ranks" on rank 0; exits non-zero on a mismatch.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.base import config as config_lib
from jaxpong.learn import noise_scale as ns
from jaxpong.learn.algorithms import ppo
from jaxpong.learn.learner import init_state, make_optimize, make_optimizer, make_prepare
from jaxpong.learn.networks import make_network
from jaxpong.play.batch import Batch
from jaxpong.ranks.comm import MpiComm

comm = MpiComm()
assert comm.size == 2, "run with mpirun -n 2"
rank = comm.rank


def fail(msg):
    print(f"FAIL rank {rank}: {msg}", flush=True)
    comm.abort(1)


T, N = 8, 2
cfg = config_lib.build(
    None,
    {
        "env": {"num_envs": N},
        "algo": {"algo": "ppo", "num_steps": T, "num_minibatches": 1, "update_epochs": 1},
        "model": {"hidden_size": 16, "obs_mode": "diff64"},
    },
)
net = make_network(cfg.model)
apply_fn = lambda p, f: net.apply(p, f)
opt = make_optimizer(cfg)
state = init_state(cfg, net, opt, jax.random.PRNGKey(0))
r = np.random.default_rng(rank)
filled = np.ones((T, N), bool)
batch = jax.tree.map(
    jnp.asarray,
    Batch(
        features=r.integers(-1, 2, size=(T, N, 64, 84)).astype(np.int8),
        actions=r.integers(0, 2, size=(T, N)).astype(np.int32),
        logprobs=np.full((T, N), np.log(0.5), np.float32),
        values=r.normal(size=(T, N)).astype(np.float32) * 0.1,
        rewards=(r.integers(-1, 2, size=(T, N)) * (r.random((T, N)) < 0.3)).astype(np.float32),
        dones=np.zeros((T, N), bool),
        filled=filled,
        valid=filled & (np.arange(T)[:, None] < (T if rank == 0 else 3)),  # rank 1 cut to 3 of 8 steps
        bootstrap_features=r.integers(-1, 2, size=(N, 64, 84)).astype(np.int8),
    ),
)
targets, moments = make_prepare(cfg, apply_fn)(state.params, batch)
norm = jax.jit(comm.allreduce_sum)(moments)
optimize = make_optimize(cfg, apply_fn, opt, comm.allreduce_sum)
plain, _, _ = optimize(state, batch, targets, norm, 1.0, 1.0)
measured, _, counts, noise = optimize(state, batch, targets, norm, 1.0, 1.0, noise=ns.NoiseScaleState.zeros())

# This rank's own gradient sum over its valid samples, at the starting parameters (one minibatch, one epoch).
flat = {
    k: np.asarray(v).reshape((T * N,) + np.shape(v)[2:])
    for k, v in {
        "features": batch.features,
        "actions": batch.actions,
        "logprobs": batch.logprobs,
        "values": batch.values,
        **{k: v for k, v in targets.items() if k != "masked"},
    }.items()
}
grads, (count, _) = jax.grad(lambda p: ppo.loss_sums(apply_fn, p, flat, norm, cfg), has_aux=True)(state.params)
own = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(grads)])
everyone = comm.world.allgather((own, float(count)))
if [n for _, n in everyone] != [16.0, 6.0]:
    fail(f"valid counts {[n for _, n in everyone]}, expected [16, 6]")
total = sum(s for s, _ in everyone)
want = ns.group_sums(
    jnp.float32(total @ total),
    jnp.float32(sum(s @ s for s, _ in everyone)),
    jnp.float32(22.0),
    jnp.float32(16.0**2 + 6.0**2),
)
for name, got, expected in zip(
    ("signal", "signal_weight", "noise", "noise_weight"), jax.tree.leaves(noise.across_ranks), jax.tree.leaves(want)
):
    if not np.isclose(float(got), float(expected), rtol=1e-4, atol=1e-7):
        fail(f"across-ranks {name} {float(got)} != {float(expected)} from the ranks' own gradient sums")
if float(noise.across_ranks.signal_weight) <= 0 or float(ns.current(noise)["across_ranks"]) != 1.0:
    fail("two ranks with samples gave no across-ranks estimate")
# Measuring changes nothing else, and every rank holds the same noise state.
for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(measured.params)):
    if not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8):
        fail("the measured update moved the parameters differently")
mine = [float(x) for x in jax.tree.leaves(noise)]
if comm.world.allgather(mine)[0] != mine:
    fail("ranks hold different noise-scale states")
if rank == 0:
    now = {k: float(v) for k, v in ns.current(noise).items()}
    print(
        f"OK noise_scale_across_two_ranks (|G|^2 {now['grad_norm_sq']:.4g}, tr(Sigma) {now['grad_noise_trace']:.4g})",
        flush=True,
    )
comm.barrier()
sys.exit(0)

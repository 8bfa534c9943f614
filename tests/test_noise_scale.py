"""The gradient noise scale: the estimators against hand values and against gradients of known mean and
covariance, the unequal-count weighting, the running state, and the update that measures it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpong.base.config import Config
from jaxpong.learn import noise_scale as ns
from jaxpong.learn.algorithms import ppo
from jaxpong.learn.algorithms.returns import masked_moments
from jaxpong.learn.learner import TrainState, make_optimize, minibatch_order
from jaxpong.learn.networks import make_network
from jaxpong.play.batch import Batch

ROOT = Path(__file__).resolve().parent.parent


def sums_of(groups):
    """group_sums' inputs from a list of (gradient sum, count) groups: (|S|^2, A, N, Q)."""
    total = sum(np.asarray(s, np.float64) for s, _ in groups)
    return (
        float(total @ total),
        float(sum(np.dot(s, s) for s, _ in groups)),
        float(sum(n for _, n in groups)),
        float(sum(n * n for _, n in groups)),
    )


@pytest.mark.parametrize("jit", [False, True])
def test_hand_computed_small_case(jit):
    # Two groups of gradient sums s1 = (2, 0) over 1 sample, s2 = (1, 3) over 2 samples; a third without samples.
    # S = (3, 3): |S|^2 = 18, A = 4 + 10 = 14, N = 3, Q = 1 + 4 = 5.
    # |G|^2 = (18 - 14) / (9 - 5) = 1;  tr(Sigma) = (9 * 14 - 5 * 18) / (3 * (9 - 5)) = 36 / 12 = 3.
    big_sq, small_sq, count, count_sq = sums_of([((2, 0), 1), ((1, 3), 2), ((0, 0), 0)])
    assert (big_sq, small_sq, count, count_sq) == (18, 14, 3, 5)
    group_sums = jax.jit(ns.group_sums) if jit else ns.group_sums
    sums = group_sums(jnp.float32(big_sq), jnp.float32(small_sq), jnp.float32(count), jnp.float32(count_sq))
    g2, trace = ns.estimates(sums)
    np.testing.assert_allclose([float(g2), float(trace)], [1.0, 3.0], rtol=1e-6)
    assert float(ns.simple_noise_scale(g2, trace)) == pytest.approx(3.0)
    # The paper's formulas by hand: |g_small|^2 = 5, |g_big|^2 = 2, B_small = 1, B_big = 4
    # -> |G|^2 = (4 * 2 - 1 * 5) / 3 = 1, tr(Sigma) = (5 - 2) / (1 - 1/4) = 4.
    np.testing.assert_allclose(ns.paper_estimates(5.0, 2.0, 1.0, 4.0), (1.0, 4.0))


def test_equal_groups_give_the_papers_formulas():
    rng = np.random.default_rng(0)
    b, ranks = 8, 4
    sums = [rng.normal(size=5) for _ in range(ranks)]
    big_sq, small_sq, count, count_sq = sums_of([(s, b) for s in sums])
    got = ns.estimates(ns.group_sums(big_sq, small_sq, count, count_sq))
    g_small_sq = np.mean([np.dot(s / b, s / b) for s in sums])  # the paper: mean over the small batches
    g_big = sum(sums) / (b * ranks)
    want = ns.paper_estimates(g_small_sq, g_big @ g_big, b, b * ranks)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5)


def test_one_group_or_no_samples_gives_no_estimate():
    # All samples in one group (one rank, or every other rank empty): N^2 = Q, nothing to compare.
    for groups in ([((1.0, 2.0), 4)], [((1.0, 2.0), 4), ((0.0, 0.0), 0)], [((0.0, 0.0), 0)]):
        sums = ns.group_sums(*sums_of(groups))
        assert all(float(x) == 0.0 for x in jax.tree.leaves(sums))
        assert all(np.isnan(float(x)) for x in ns.estimates(sums))


# Per-sample gradients ~ N(G, Sigma) with |G|^2 = 1 and tr(Sigma) = 6: B_simple = 6 samples.
DIM = 6


def known_gradients(seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=DIM)
    mean /= np.linalg.norm(mean)
    root = rng.normal(size=(DIM, DIM))
    cov = root @ root.T
    cov *= 6.0 / np.trace(cov)
    return mean, np.linalg.cholesky(cov)


def masked_rounds(rng, counts, rounds, seed=0):
    """`rounds` draws of per-rank gradient SUMS over fixed buffers, rank k's valid mask holding counts[k]
    samples (as a deadline leaves them; the rest is padding): [rounds, ranks, DIM] sums and [ranks] counts."""
    mean, chol = known_gradients(seed)
    slots = max(counts) + 3
    per_sample = mean + rng.normal(size=(rounds, len(counts), slots, DIM)) @ chol.T
    valid = (np.arange(slots)[None, :] < np.asarray(counts)[:, None]).astype(np.float64)  # [ranks, slots]
    return np.einsum("rkid,ki->rkd", per_sample, valid), valid.sum(1)


def pooled(sums, counts):
    big = sums.sum(1)
    return ns.group_sums(
        jnp.asarray((big * big).sum(-1), jnp.float32),
        jnp.asarray((sums * sums).sum((1, 2)), jnp.float32),
        jnp.float32(counts.sum()),
        jnp.float32((counts * counts).sum()),
    )


@pytest.mark.parametrize("counts", [[8, 8, 8, 8], [1, 7, 0, 20], [2, 30]])
def test_estimates_converge_to_the_known_mean_and_covariance(counts):
    sums, n = masked_rounds(np.random.default_rng(1), counts, rounds=20000)
    g2, trace = (float(x) for x in ns.estimates(pooled(sums, n)))
    # Unbiased, but two very unequal groups give a noisy tr(Sigma): about 3 % standard error here.
    assert g2 == pytest.approx(1.0, rel=0.05)
    assert trace == pytest.approx(6.0, rel=0.1)
    assert float(ns.simple_noise_scale(g2, trace)) == pytest.approx(6.0, rel=0.1)


def test_unequal_counts_need_the_count_weighting():
    """Ranks cut to 1 and 20 samples: the count-weighted estimate is right; averaging each rank's
    |mean gradient|^2 equally with B_small = the mean count (the paper's formula applied naively) is not."""
    counts = [1, 20]
    sums, n = masked_rounds(np.random.default_rng(2), counts, rounds=20000)
    g2, trace = (float(x) for x in ns.estimates(pooled(sums, n)))
    assert g2 == pytest.approx(1.0, rel=0.05) and trace == pytest.approx(6.0, rel=0.1)
    means = sums / n[None, :, None]
    g_small_sq = (means * means).sum(-1).mean()
    big = sums.sum(1) / n.sum()
    naive_g2, naive_trace = ns.paper_estimates(g_small_sq, (big * big).sum(-1).mean(), n.mean(), n.sum())
    assert naive_trace > 1.5 * 6.0 and naive_g2 < 0  # far off: a 1-sample rank's noise counted as a 10.5-sample one's


def test_running_state_smooths_numerator_and_denominator_and_skips_bad_rounds():
    sums, n = masked_rounds(np.random.default_rng(3), [5, 9, 14], rounds=3000)
    state = ns.NoiseScaleState.zeros()
    step = jax.jit(ns.update, static_argnums=5)
    for k in range(0, 3000, 10):  # a round of 10 optimizer steps
        state = step(state, pooled(sums[k : k + 10], n), ns.NoiseSums.zeros(), 10 * n.sum(), 10, 0.99)
    now = {k: float(v) for k, v in ns.current(state).items()}
    assert now["across_ranks"] == 1.0
    assert now["noise_scale"] == pytest.approx(6.0, rel=0.2)
    assert now["batch"] == pytest.approx(28.0)
    # A round whose update was skipped (non-finite gradient) leaves the state alone.
    bad = ns.NoiseSums(*(jnp.float32(np.nan) for _ in range(4)))
    after = step(state, bad, bad, 10 * n.sum(), 10, 0.99)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state), strict=True):
        assert float(a) == float(b)
    # Nothing but the minibatch estimate (one rank): that one is reported.
    one_rank = ns.update(ns.NoiseScaleState.zeros(), ns.NoiseSums.zeros(), pooled(sums[:50], n), 28.0, 1, 0.9)
    assert float(ns.current(one_rank)["across_ranks"]) == 0.0
    assert np.isfinite(float(ns.current(one_rank)["noise_scale"]))
    line = ns.log_metrics(state)
    assert set(line) == {
        "charts/noise_scale",
        "charts/grad_norm_sq",
        "charts/grad_noise_trace",
        "charts/optimizer_batch",
        "charts/noise_scale_across_ranks",
    }
    assert all(isinstance(v, float) for v in line.values())
    assert np.isnan(ns.log_metrics(ns.NoiseScaleState.zeros())["charts/noise_scale"])  # nothing measured yet


# -- the update measures it ------------------------------------------------------------------------
T, N, H, W = 8, 4, 5, 7


def small_setup(epochs=1, minibatches=1, seed=0):
    cfg = Config()
    cfg.model.hidden_size = 8
    cfg.algo.update_epochs, cfg.algo.num_minibatches = epochs, minibatches
    network = make_network(cfg.model)
    rng = np.random.default_rng(seed)
    params = jax.jit(network.init)(jax.random.PRNGKey(seed), jnp.zeros((1, H, W)))
    valid = np.arange(T)[:, None] < np.array([8, 3, 0, 6])[None, :]
    batch = Batch(
        features=rng.integers(-1, 2, size=(T, N, H, W)).astype(np.int8),
        actions=rng.integers(0, 2, size=(T, N)).astype(np.int32),
        logprobs=np.log(rng.uniform(0.3, 0.7, size=(T, N))).astype(np.float32),
        values=rng.normal(size=(T, N)).astype(np.float32),
        rewards=np.zeros((T, N), np.float32),
        dones=np.zeros((T, N), bool),
        filled=valid.copy(),
        valid=valid,
        bootstrap_features=np.zeros((N, H, W), np.int8),
    )
    targets = {
        "advantages": rng.normal(size=(T, N)).astype(np.float32),
        "returns": rng.normal(size=(T, N)).astype(np.float32),
        "valid": valid,
        "masked": np.zeros((T, N), bool),
    }
    norm = masked_moments(jnp.asarray(targets["advantages"]), jnp.asarray(valid))
    optimizer = optax.adam(1e-2)
    state = TrainState(params=params, opt_state=optimizer.init(params), key=jax.random.PRNGKey(7))
    apply_fn = lambda p, x: network.apply(p, x)
    return cfg, apply_fn, optimizer, state, jax.tree.map(jnp.asarray, batch), targets, norm


@pytest.mark.parametrize("epochs,minibatches", [(1, 1), (2, 3)])
def test_measuring_changes_nothing_else(epochs, minibatches):
    cfg, apply_fn, optimizer, state, batch, targets, norm = small_setup(epochs, minibatches)
    optimize = make_optimize(cfg, apply_fn, optimizer, lambda x: x)
    plain = optimize(state, batch, targets, norm, 1.0, 1.0)
    measured = optimize(state, batch, targets, norm, 1.0, 1.0, noise=ns.NoiseScaleState.zeros())
    assert len(plain) == 3 and isinstance(measured[3], ns.NoiseScaleState)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(measured[:3]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)


def minibatch_grad_sums(cfg, apply_fn, state, batch, targets, norm, epochs, minibatches):
    """Each optimizer step's (gradient sum, count) at the starting parameters, in the update's order."""
    samples = {
        "features": batch.features,
        "actions": batch.actions,
        "logprobs": batch.logprobs,
        "values": batch.values,
        **{k: v for k, v in targets.items() if k != "masked"},
    }
    samples = {k: np.asarray(v).reshape((T * N,) + np.shape(v)[2:]) for k, v in samples.items()}
    _, order = minibatch_order(state.key, T, jnp.arange(N), epochs, minibatches)
    grad = jax.jit(jax.grad(lambda p, s: ppo.loss_sums(apply_fn, p, s, norm, cfg), has_aux=True))
    out = []
    for idx in np.asarray(order):
        g, (count, _) = grad(state.params, {k: v[idx] for k, v in samples.items()})
        out.append((np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]), float(count)))
    return out


def test_one_rank_measures_minibatches_against_their_epoch():
    """lr_frac 0 holds the parameters, so every step's gradient can be recomputed here at the start."""
    epochs, minibatches = 2, 2
    cfg, apply_fn, optimizer, state, batch, targets, norm = small_setup(epochs, minibatches)
    optimize = make_optimize(cfg, apply_fn, optimizer, lambda x: x)
    *_, noise = optimize(state, batch, targets, norm, 0.0, 1.0, noise=ns.NoiseScaleState.zeros())
    steps = minibatch_grad_sums(cfg, apply_fn, state, batch, targets, norm, epochs, minibatches)
    per_epoch = np.array([sums_of(steps[e * minibatches : (e + 1) * minibatches]) for e in range(epochs)])
    want = ns.group_sums(*(jnp.asarray(per_epoch[:, i], jnp.float32) for i in range(4)))
    for a, b in zip(jax.tree.leaves(noise.across_minibatches), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-4, atol=1e-6)
    assert float(noise.across_minibatches.signal_weight) > 0
    assert all(float(x) == 0.0 for x in jax.tree.leaves(noise.across_ranks))  # one rank: nothing across ranks
    assert float(noise.samples) == sum(n for _, n in steps) and float(noise.steps) == epochs * minibatches
    assert float(ns.current(noise)["across_ranks"]) == 0.0


def test_the_extra_scalars_travel_in_the_fused_allreduce():
    """Two identical ranks (an allreduce that doubles): no noise between them, and |G|^2 = |mean gradient|^2."""
    cfg, apply_fn, optimizer, state, batch, targets, norm = small_setup()
    optimize = make_optimize(cfg, apply_fn, optimizer, lambda x: 2.0 * x)
    *_, noise = optimize(state, batch, targets, norm, 0.0, 1.0, noise=ns.NoiseScaleState.zeros())
    [(g, n)] = minibatch_grad_sums(cfg, apply_fn, state, batch, targets, norm, 1, 1)
    now = ns.current(noise)
    assert float(now["across_ranks"]) == 1.0
    assert float(now["grad_norm_sq"]) == pytest.approx(float(g @ g) / n**2, rel=1e-4)
    assert abs(float(now["grad_noise_trace"])) < 1e-4 * float(g @ g) / n
    assert float(now["batch"]) == 2 * n


@pytest.mark.slow
def test_two_real_ranks_measure_across_ranks():
    """mpirun -n 2: the state equals the estimate from both ranks' own gradient sums, on both ranks."""
    env_cache = {"JAXPONG_COMPILE_CACHE": str(Path("/tmp") / "jaxpong-test-cache")}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "mpirun"),
            "-n",
            "2",
            sys.executable,
            str(ROOT / "tests" / "mpi" / "check_noise_scale.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env_cache},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK noise_scale_across_two_ranks" in proc.stdout


# -- what it means for ranks (report) ------------------------------------------------------------
def test_useful_ranks_follow_the_batch_rules():
    """The default (32 games shared, 16 at least a rank, 64 steps, 4 minibatches at 32 games, a rank's share
    of a minibatch at least 64 samples): up to 2 ranks share 32 games; from 4 ranks each has 16; the minibatch
    rule keeps 512 samples a step while 16N games give 2N minibatches, up to a rank's 1,024 / 64 = 16; past 8
    ranks a step averages 64N samples, so a critical batch of 2,140 allows N <= 33."""
    from jaxpong.base.config import build
    from jaxpong.learn import batch_rule

    cfg = build("configs/default.yaml", {})
    assert [batch_rule.optimizer_batch(cfg, n) for n in (1, 2, 4, 8, 9, 16, 33, 34)] == [
        512,
        512,
        512,
        512,
        576,
        1024,
        2112,
        2176,
    ]
    assert batch_rule.useful_ranks(cfg, 1, 512.0, 2140.0) == 33
    # Valid samples after deadline masking scale the nominal ones: 2 ranks measured 480 of 512 (x 15/16).
    assert batch_rule.useful_ranks(cfg, 2, 480.0, 2140.0) == 35  # 64N x 15/16 = 60N <= 2,140 -> N <= 35
    assert batch_rule.useful_ranks(cfg, 1, 512.0, 400.0) == 0  # one rank's 512 is already past 400
    # Without the minibatch rule, a step's batch grows with the games: 32 x 64 / 4 = 512 up to 2 ranks,
    # 16N x 64 / 4 = 256N past it, so 2,140 allows 8.
    none = build("configs/default.yaml", {"algo": {"batch_rule": "none"}})
    assert batch_rule.useful_ranks(none, 1, 512.0, 2140.0) == 8


def test_the_useful_ranks_line(tmp_path):
    from jaxpong.base.config import build
    from jaxpong.report.finding import noise_scale_line, useful_ranks_line
    from jaxpong.store import rundir

    cfg = build("configs/default.yaml", {})
    assert useful_ranks_line(2140.0, 512.0, 1, cfg) == (
        "critical batch about 2,140 samples per optimizer step (gradient noise scale); this run's steps "
        "averaged 512: up to about 33 ranks keep their optimizer steps within it under this config's batch "
        "rules (this run: 1)."
    )
    assert "already past it" in useful_ranks_line(90.0, 512.0, 1, cfg)
    assert useful_ranks_line(float("nan"), 512.0, 1, cfg) is None
    assert useful_ranks_line(-4.0, 512.0, 1, cfg) is None
    assert "at least 16,384 ranks" in useful_ranks_line(1e12, 512.0, 1, cfg)
    metrics = [
        {"charts/noise_scale": 1088.0, "charts/optimizer_batch": 512.0, "comm/world_size": 1},
        {"update": 7},
    ]  # the last line without a measurement (nothing measured yet, or dropped as nan)
    assert noise_scale_line(metrics, tmp_path) is None  # no config.yaml: the report goes on without the line
    rundir.write_config(tmp_path, cfg, 1)
    assert "up to about 17 ranks" in noise_scale_line(metrics, tmp_path)  # 64 x 17 = 1,088
    assert noise_scale_line([{"update": 1}], tmp_path) is None
    plain = build("configs/default.yaml", {"algo": {"batch_rule": "none"}, "env": {"share_games": False}})
    assert "up to about 1 rank keeps its optimizer steps within it" in useful_ranks_line(600.0, 512.0, 1, plain)

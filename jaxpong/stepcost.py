"""What one policy step costs, per path, on this CPU: `python -m jaxpong.stepcost [--config FILE]`.

Measures, in microseconds on recorded Pong frames, each way the collector could act on a batch:
- `jit`: the jitted policy step the collector calls (packed outputs, one transfer back), as today;
- `jit-aot`: the same step compiled ahead of time and called through its executable;
- `host`: `host_policy.HostPolicy.step` (NumPy, sparse first layer) plus packing its row;
- `host-dense`: the same with a dense NumPy first layer (to show what the sparse sum saves);
- `xla-rollout`: K steps of envpool's XLA interface and the policy inside one jitted loop (sync envs),
  per agent step, less the raw envpool step measured alongside;
and the raw envpool step itself (send + recv, random actions), the cost the policy step is set against.
Prints a table and, as the last line, one JSON object. Numbers vary with the machine's load: compare
within one run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong import config as config_lib
from jaxpong.envs import EnvIO, PURPOSE_TRAIN, env_seeds, make_env
from jaxpong.host_policy import HostPolicy, SampleNoise
from jaxpong.networks import make_network
from jaxpong.preprocess import PREPROCESSORS, to_float
from jaxpong.rollout import TAIL_BYTES, make_packed_step, make_policy_step, packed_fields, tail_field


def _time_us(fn, calls: int, blocks: int = 5) -> float:
    """Median over `blocks` of the mean time of one call (microseconds)."""
    out = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(out))


def record_frames(cfg, count: int, rows: int) -> np.ndarray:
    """[count, rows, stack, H, W] frames of real play (random up/down), one env per row, sync."""
    env = make_env(cfg, seeds=env_seeds(7, 0, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
    io = EnvIO(env)
    rng = np.random.default_rng(0)
    env.async_reset()
    obs = io.recv()[0]
    frames = []
    ids = np.arange(rows, dtype=np.int32)
    actions = np.asarray(cfg.model.actions, np.int32)
    for _ in range(count + 60):  # skip the serve
        io.send(actions[rng.integers(0, len(actions), rows)].astype(np.int32), ids)
        obs = io.recv()[0]
        frames.append(obs.copy())
    env.close()
    return np.stack(frames[60:])


def raw_env_step_us(cfg, rows: int, seconds: float = 3.0) -> float:
    """One sync envpool step of `rows` games (one thread), send + recv, random actions: microseconds."""
    env = make_env(cfg, seeds=env_seeds(8, 0, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
    io = EnvIO(env)
    rng = np.random.default_rng(1)
    env.async_reset()
    io.recv()
    ids = np.arange(rows, dtype=np.int32)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        io.send(rng.integers(0, 6, rows).astype(np.int32), ids)
        io.recv()
        steps += 1
    took = time.perf_counter() - start
    env.close()
    return took / steps * 1e6


def xla_rollout_us(cfg, network, params, rows: int, steps_per_call: int, seconds: float = 3.0) -> float:
    """Per agent step (all `rows` games) of a jitted while-loop over envpool's XLA step and the policy,
    with the step count a runtime argument (the host would set it each round): microseconds."""
    env = make_env(cfg, seeds=env_seeds(9, 0, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
    handle, _, _, step_env = env.xla()
    obs0 = env.reset()[0]
    preprocess = PREPROCESSORS[cfg.model.obs_mode]
    actions = jnp.asarray(cfg.model.actions, jnp.int32)

    @jax.jit
    def rollout(handle, obs, key, budget):
        def body(carry):
            i, handle, obs, key, total = carry
            logits, _ = network.apply(params, to_float(preprocess(obs)))
            key, sub = jax.random.split(key)
            action = jax.random.categorical(sub, logits)
            handle, (obs, reward, _, _, _) = step_env(handle, actions[action])
            return i + 1, handle, obs, key, total + reward.sum()

        return jax.lax.while_loop(lambda c: c[0] < budget, body, (0, handle, obs, key, jnp.float32(0)))

    key = jax.random.PRNGKey(0)
    out = rollout(handle, obs0, key, steps_per_call)  # compile
    jax.block_until_ready(out)
    handle, obs = out[1], out[2]
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = rollout(handle, obs, key, steps_per_call)
        jax.block_until_ready(out)
        handle, obs = out[1], out[2]
        calls += 1
    took = time.perf_counter() - start
    env.close()
    return took / (calls * steps_per_call) * 1e6


def measure(cfg, rows: int, with_xla: bool = True) -> dict:
    network = make_network(cfg.model)
    policy_step = make_policy_step(lambda p, x: network.apply(p, x), cfg.model.obs_mode)
    packed_step = make_packed_step(policy_step)
    frames = record_frames(cfg, 200, rows)
    feature = PREPROCESSORS[cfg.model.obs_mode](frames[0])
    params = jax.jit(network.init)(jax.random.PRNGKey(0), to_float(jnp.asarray(feature)))
    key = jax.random.PRNGKey(1)
    result = {"rows": rows, "obs_mode": cfg.model.obs_mode, "nonzero_cells_per_row":
              float(np.mean([np.count_nonzero(PREPROCESSORS[cfg.model.obs_mode](f)) for f in frames]) / rows)}
    it = iter(range(10**9))

    def jit_call():
        packed, _ = packed_step(params, frames[next(it) % len(frames)], key)
        packed = np.asarray(packed)
        tail_field(packed, 0)

    jit_call()
    result["jit"] = _time_us(jit_call, 200)

    compiled = packed_step.lower(params, frames[0], key).compile()

    def aot_call():
        packed, _ = compiled(params, frames[next(it) % len(frames)], key)
        tail_field(np.asarray(packed), 0)

    aot_call()
    result["jit-aot"] = _time_us(aot_call, 200)

    host = HostPolicy(cfg, calls_per_round=10**4)
    host.start_round(params, key)
    host.noise = SampleNoise(len(cfg.model.actions), rows, rows, 10**4)  # every call here has `rows` rows
    host.noise.start(key)

    feature_shape = feature.shape[1:]
    buffer = np.zeros((8, rows, feature[0].nbytes + TAIL_BYTES), np.uint8)  # written as the collector writes
    fields = packed_fields(buffer, feature_shape, feature.dtype)
    ids = np.arange(rows)

    def host_call():
        i = next(it)
        features, action, logp, value = host.step(frames[i % len(frames)])
        at = np.full(rows, i % 8)
        fields["features"][at, ids] = features
        fields["action"][at, ids] = action
        fields["logp"][at, ids] = logp
        fields["value"][at, ids] = value

    host_call()
    result["host"] = _time_us(host_call, 1000)

    dense_kernel = host.mlp.kernel
    forward_sparse = host.mlp.hidden

    def dense_hidden(features):
        x = features.reshape(features.shape[0], -1).astype(np.float32)
        h = x @ dense_kernel
        if host.mlp.bias is not None:
            h += host.mlp.bias
        return np.maximum(h, 0.0)

    host.mlp.hidden = dense_hidden
    result["host-dense"] = _time_us(host_call, 300)
    host.mlp.hidden = forward_sparse
    result["env"] = raw_env_step_us(cfg, rows)
    if with_xla:
        total = xla_rollout_us(cfg, network, params, rows, steps_per_call=256)
        result["xla-rollout total"] = total
        result["xla-rollout"] = total - result["env"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpong.stepcost", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", help="config file(s); default: the 2016 setup and the default")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA-interface rollout")
    parser.add_argument("--rows", default="", help="comma-separated rows per call to measure (default: each "
                        "config's batch size), e.g. 1,2,4,8,16 to find where the host step stops paying")
    parser.add_argument("--xla-threads", type=int, default=1, help="XLA's CPU threads, as run.xla_threads (default 1)")
    args = parser.parse_args(argv)
    from jaxpong.cli import setup_jax

    setup_jax(args.xla_threads)  # as `jaxpong train` sets JAX up (before any computation)
    configs = args.config or ["configs/seed_ppg.yaml", "configs/default.yaml"]
    results = []
    for path in configs:
        cfg = config_lib.build(path, {})
        for rows in [int(r) for r in args.rows.split(",") if r] or [cfg.env_batch_size]:
            r = measure(cfg, rows, with_xla=not args.no_xla)
            r["config"] = path
            results.append(r)
            print(f"{path}: {rows} row(s) per call, {r['obs_mode']}, {r['nonzero_cells_per_row']:.1f} nonzero cells per row")
            for name in ("env", "jit", "jit-aot", "host", "host-dense", "xla-rollout"):
                if name in r:
                    label = {"env": "raw envpool step (send + recv)", "xla-rollout": "xla-rollout (per step, less env)"}
                    print(f"  {label.get(name, name):36s} {r[name]:9.1f} us per call")
    print(json.dumps([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

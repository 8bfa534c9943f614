"""What one policy step costs, per path, on this CPU: `python -m jaxpong.stepcost [--config FILE] [--rows 1,16]`.

Measures, in microseconds per call on recorded Pong frames, each way the collector could act on a batch:
- `jit`: the jitted policy step the collector calls (packed outputs, one transfer back);
- `jit-aot`: the same step compiled ahead of time and called through its executable;
- `host`: `host_policy.HostPolicy.step` (NumPy, sparse first layer), its outputs written into a packed
  buffer as the collector writes them;
- `host-dense`: the same step with a dense NumPy first layer (what the sparse sum saves);
- `xla-rollout`: 256 steps of envpool's XLA interface and the policy inside one jitted loop (sync envs)
  with a runtime step budget, per agent step, less the raw envpool step;
and `env`, the raw envpool step itself (send + recv, random actions, one thread), the cost the policy
step is set against. The options are timed in turns (block by block), so that a machine whose load
drifts weighs on all of them alike; each figure is the median of 7 blocks, in wall-clock and in CPU
microseconds (the process's CPU time: on a machine shared with other work, the steadier figure).
Run it pinned to one core (`taskset -c 0`), as a rank of the 2016 setup runs. Prints a table and, as
the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.base import config as config_lib
from jaxpong.learn.networks import make_network
from jaxpong.play.envs import PURPOSE_TRAIN, EnvIO, env_seeds, make_env
from jaxpong.play.host_policy import HostPolicy
from jaxpong.play.preprocess import PREPROCESSORS, to_float
from jaxpong.play.rollout import TAIL_BYTES, make_packed_step, packed_fields, tail_field


def _interleaved_us(options: dict, blocks: int = 7, block_s: float = 0.3) -> dict:
    """Median microseconds per unit of each option, timed in turns: block b of every option runs before
    block b + 1 of any, so that a machine whose load drifts weighs on all options alike.
    `options`: name -> (call, units per call). Returns {name: wall-clock us, name + " cpu": CPU us}: the
    CPU time of this process (all its threads, envpool's and XLA's included), which other programs'
    load does not inflate as it does the wall-clock time."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in options}  # wall, cpu
    for _ in range(blocks):
        for name, (call, units) in options.items():
            count, start, cpu = 0, time.perf_counter(), time.process_time()
            while (elapsed := time.perf_counter() - start) < block_s:
                call()
                count += 1
            times[name][0].append(elapsed / (count * units) * 1e6)
            times[name][1].append((time.process_time() - cpu) / (count * units) * 1e6)
    out = {}
    for name, (wall_us, cpu_us) in times.items():
        out[name], out[name + " cpu"] = float(np.median(wall_us)), float(np.median(cpu_us))
    return out


def record_frames(cfg, count: int, rows: int) -> np.ndarray:
    """[count, rows, stack, H, W] frames of real play (random up/down), one env per row, sync."""
    env = make_env(cfg, seeds=env_seeds(7, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
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


def raw_env_stepper(cfg, rows: int):
    """(one sync envpool step of `rows` games, send + recv with random actions; the env, to close)."""
    env = make_env(cfg, seeds=env_seeds(8, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
    io = EnvIO(env)
    rng = np.random.default_rng(1)
    env.async_reset()
    io.recv()
    ids = np.arange(rows, dtype=np.int32)

    def step():
        io.send(rng.integers(0, 6, rows).astype(np.int32), ids)
        io.recv()

    return step, env


def xla_rollout(cfg, network, params, rows: int, steps_per_call: int):
    """(one call of a jitted while-loop over envpool's XLA step and the policy, `steps_per_call` agent steps
    of all `rows` games, the step count a runtime argument as the host would set it each round; the env)."""
    env = make_env(cfg, seeds=env_seeds(9, 0, PURPOSE_TRAIN, rows), num_envs=rows, batch_size=rows, num_threads=1)
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

    state = {"handle": handle, "obs": obs0, "key": jax.random.PRNGKey(0)}

    def call():
        out = rollout(state["handle"], state["obs"], state["key"], steps_per_call)
        jax.block_until_ready(out)
        state["handle"], state["obs"], state["key"] = out[1], out[2], out[3]

    return call, env


def measure(cfg, rows: int, with_xla: bool = True) -> dict:
    network = make_network(cfg.model)
    packed_step = make_packed_step(lambda p, x: network.apply(p, x), cfg.model.obs_mode)
    frames = record_frames(cfg, 200, rows)
    feature = PREPROCESSORS[cfg.model.obs_mode](frames[0])
    params = jax.jit(network.init)(jax.random.PRNGKey(0), to_float(jnp.asarray(feature)))
    noise = np.asarray(jax.random.gumbel(jax.random.PRNGKey(1), (rows, len(cfg.model.actions))))
    result = {
        "rows": rows,
        "obs_mode": cfg.model.obs_mode,
        "nonzero_cells_per_row": float(
            np.mean([np.count_nonzero(PREPROCESSORS[cfg.model.obs_mode](f)) for f in frames]) / rows
        ),
    }
    it = iter(range(10**9))

    def jit_call():
        packed = np.asarray(packed_step(params, frames[next(it) % len(frames)], noise))
        tail_field(packed, 0)

    jit_call()

    compiled = packed_step.lower(params, frames[0], noise).compile()

    def aot_call():
        packed = compiled(params, frames[next(it) % len(frames)], noise)
        tail_field(np.asarray(packed), 0)

    aot_call()

    host = HostPolicy(cfg)
    host.start_round(params)

    feature_shape = feature.shape[1:]
    buffer = np.zeros((8, rows, feature[0].nbytes + TAIL_BYTES), np.uint8)  # written as the collector writes
    fields = packed_fields(buffer, feature_shape, feature.dtype)
    ids = np.arange(rows)

    def host_call():
        i = next(it)
        features, action, logp, value = host.step(frames[i % len(frames)], noise)
        at = np.full(rows, i % 8)
        fields["features"][at, ids] = features
        fields["action"][at, ids] = action
        fields["logp"][at, ids] = logp
        fields["value"][at, ids] = value

    host_call()
    dense = HostPolicy(cfg)
    dense.start_round(params)

    def dense_hidden(features):  # the first layer as a dense product, for comparison
        h = features.reshape(features.shape[0], -1).astype(np.float32) @ dense.mlp.kernel
        if dense.mlp.bias is not None:
            h += dense.mlp.bias
        return np.maximum(h, 0.0)

    dense.mlp.hidden = dense_hidden  # type: ignore[method-assign]  # this benchmark's dense twin, on purpose

    def dense_call():
        dense.step(frames[next(it) % len(frames)], noise)

    env_step, env = raw_env_stepper(cfg, rows)
    options = {
        "env": (env_step, 1),
        "jit": (jit_call, 1),
        "jit-aot": (aot_call, 1),
        "host": (host_call, 1),
        "host-dense": (dense_call, 1),
    }
    closing = [env]
    if with_xla:
        steps = 256
        rollout_call, rollout_env = xla_rollout(cfg, network, params, rows, steps)
        rollout_call()  # compiles
        options["xla-rollout total"] = (rollout_call, steps)
        closing.append(rollout_env)
    result.update(_interleaved_us(options))
    if with_xla:
        result["xla-rollout"] = result["xla-rollout total"] - result["env"]
        result["xla-rollout cpu"] = result["xla-rollout total cpu"] - result["env cpu"]
    for e in closing:
        e.close()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpong.stepcost", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", help="config file(s); default: the 2016 setup and the default")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA-interface rollout")
    parser.add_argument(
        "--rows",
        default="",
        help="comma-separated rows per call to measure (default: each "
        "config's batch size), e.g. 1,2,4,8,16 to find where the host step stops paying",
    )
    parser.add_argument("--xla-threads", type=int, default=1, help="XLA's CPU threads, as run.xla_threads (default 1)")
    args = parser.parse_args(argv)
    from jaxpong.ranks.jaxsetup import setup_jax

    setup_jax(args.xla_threads)  # as `jaxpong train` sets JAX up (before any computation)
    configs = args.config or ["configs/seed_ppg.yaml", "configs/default.yaml"]
    results = []
    for path in configs:
        cfg = config_lib.build(path, {})
        for rows in [int(r) for r in args.rows.split(",") if r] or [cfg.env_batch_size]:
            r = measure(cfg, rows, with_xla=not args.no_xla)
            r["config"] = path
            results.append(r)
            print(
                f"{path}: {rows} row(s) per call, {r['obs_mode']}, "
                f"{r['nonzero_cells_per_row']:.1f} nonzero cells per row"
            )
            for name in ("env", "jit", "jit-aot", "host", "host-dense", "xla-rollout"):
                if name in r:
                    label = {"env": "raw envpool step (send + recv)", "xla-rollout": "xla-rollout (per step, less env)"}
                    print(
                        f"  {label.get(name, name):36s} {r[name]:9.1f} us per call ({r[name + ' cpu']:.1f} us of CPU)"
                    )
    print(json.dumps([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Collecting one round of play: a host loop over envpool that calls a jitted policy step.

Why a host loop rather than a jitted scan over envpool's XLA interface: a wall-clock deadline needs a
clock between steps, and async envpool (num_envs > batch_size, fast games run ahead) hands back
whichever envs are ready, which a fixed-shape scan cannot follow. The policy step itself is jitted;
per batch the host only copies small arrays into preallocated buffers.

Each env writes its own row of the [T, N] buffers at its own cursor. A round ends, for all envs at
once, when the deadline passes, when sending another step could overflow an env's row, or (deadline
'game') when every env has finished a game this round; in-flight steps are then drained, so every
env ends the round holding an observation it has not acted on yet. That observation is the
bootstrap for the cut trajectory and the first one acted on next round: games never reset between
rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.batch import Batch
from jaxpong.envs import GameScores
from jaxpong.preprocess import PREPROCESSORS, to_float


def make_policy_step(apply_fn, obs_mode: str):
    """(params, frames, key, greedy) -> (features, action index, log-prob, value, next key); jitted."""
    preprocess = PREPROCESSORS[obs_mode]

    @jax.jit
    def policy_step(params, frames, key, greedy=False):
        features = preprocess(frames)
        logits, value = apply_fn(params, to_float(features))
        key, sub = jax.random.split(key)
        sampled = jax.random.categorical(sub, logits)
        action = jnp.where(greedy, jnp.argmax(logits, -1), sampled)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
        return features, action.astype(jnp.int32), logp, value, key

    return policy_step


TAIL_BYTES = 12  # action (int32), log-prob and value (float32) after the features in a packed row
_TAIL = ((0, np.int32), (4, np.float32), (8, np.float32))  # (offset into the tail, dtype) of each of the three


def make_packed_step(policy_step):
    """The policy step with its four per-env outputs packed into one uint8 row per env.

    Why: each device-to-host transfer costs tens of microseconds of Python (about 85 under cProfile) on
    the thread that also feeds envpool; one transfer and one buffer write per batch instead of four are
    a few per cent of a 2-core round.
    Row layout: features bytes | action (int32) | log-prob (float32) | value (float32).
    """

    @jax.jit
    def packed_step(params, frames, key):
        features, action, logp, value, key = policy_step(params, frames, key)
        n = frames.shape[0]
        parts = [features.reshape(n, -1), action[:, None], logp[:, None], value[:, None]]
        as_bytes = [jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(n, -1) for x in parts]
        return jnp.concatenate(as_bytes, axis=1), key

    return packed_step


def tail_field(rows: np.ndarray, index: int) -> np.ndarray:
    """Field `index` of the tail (0 action, 1 log-prob, 2 value) of [..., bytes] packed rows, as a contiguous array."""
    offset, dtype = _TAIL[index]
    start = rows.shape[-1] - TAIL_BYTES + offset
    return rows[..., start:start + 4].copy().view(dtype)[..., 0]


def unpack_rows(rows: np.ndarray, feature_shape: tuple, feature_dtype) -> tuple:
    """[..., bytes] rows from `make_packed_step` -> (features, actions, log-probs, values), each contiguous."""
    lead = rows.shape[:-1]
    size = int(np.prod(feature_shape)) * np.dtype(feature_dtype).itemsize
    if rows.shape[-1] != size + TAIL_BYTES:
        raise ValueError(f"packed rows of {rows.shape[-1]} bytes do not hold {feature_shape} {np.dtype(feature_dtype)} "
                         f"features plus {TAIL_BYTES} bytes of action, log-prob and value")
    features = rows[..., :size].copy().view(feature_dtype).reshape(lead + tuple(feature_shape))
    return (features, *(tail_field(rows, i) for i in range(len(_TAIL))))


@dataclass
class RoundInfo:
    collect_s: float
    filled_steps: int
    valid_steps: int
    cut_by_deadline: bool
    env_wait_s: float  # time blocked in envpool's recv (the env stepping this thread did not overlap)


class Collector:
    """Owns the envs and the rollout buffers of one rank; `collect` plays one round."""

    def __init__(self, env, cfg, policy_step, *, num_steps: int, slow_factor: float = 1.0):
        self.env = env
        self.num_envs = cfg.env.num_envs
        self.num_steps = num_steps
        self.actions = np.asarray(cfg.model.actions, np.int32)
        self.policy_step = policy_step
        self.packed_step = make_packed_step(policy_step)
        self.slow_extra = max(0.0, slow_factor - 1.0)
        self.scores = GameScores(self.num_envs)
        self.total_env_steps = 0
        # Reset through send/recv: in async mode a plain reset() returns only one batch of envs.
        env.async_reset()
        self.pending = None  # frames each env will act on next
        received = 0
        while received < self.num_envs:
            obs, _, _, _, info = env.recv()
            ids = np.asarray(info["env_id"])
            if self.pending is None:
                self.pending = np.zeros((self.num_envs,) + obs.shape[1:], obs.dtype)
            self.pending[ids] = obs
            received += len(ids)
        self.pending_terminal = np.zeros(self.num_envs, bool)
        self._buffers = None

    def _allocate(self, row_bytes: int):
        T, N = self.num_steps, self.num_envs
        self.packed_rows = np.zeros((T, N, row_bytes), np.uint8)  # packed policy outputs, unpacked once per round
        self.rewards = np.zeros((T, N), np.float32)
        self.dones = np.zeros((T, N), bool)
        self.filled = np.zeros((T, N), bool)
        self.valid = np.zeros((T, N), bool)
        self._buffers = True

    def _act(self, params, key, ids: np.ndarray, cursor: np.ndarray, frames: np.ndarray | None = None):
        if frames is None:
            frames = self.pending[ids]
        packed, key = self.packed_step(params, frames, key)
        packed = np.asarray(packed)
        if self._buffers is None:
            self._allocate(packed.shape[1])
        rows = cursor[ids]
        self.packed_rows[rows, ids] = packed
        action = tail_field(packed, 0)
        # envpool resets a finished game on the next step and ignores its action: no signal there.
        self.valid[rows, ids] = ~self.pending_terminal[ids]
        self.env.send(self.actions[action], ids.astype(np.int32))
        return key

    def collect(self, params, key, deadline_s: float | None, until_game_end: bool = False):
        """Play until the deadline (seconds from now; None = none), a full buffer, or (until_game_end)
        every env finishing a game. Returns (Batch of numpy arrays, RoundInfo, next key)."""
        T, N = self.num_steps, self.num_envs
        start = time.perf_counter()
        stop_at = None if deadline_s is None else start + deadline_s
        cursor = np.zeros(N, np.int64)
        if self._buffers is not None:
            self.filled[:] = False
            self.valid[:] = False
        game_ended = np.zeros(N, bool)
        key = self._act(params, key, np.arange(N), cursor)
        in_flight = N
        stopping = False
        cut = False
        env_wait = 0.0
        while in_flight:
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = self.env.recv()
            dt = time.perf_counter() - t0
            env_wait += dt
            if self.slow_extra:
                time.sleep(self.slow_extra * dt)  # fault injection: this rank's games run slower
            ids = np.asarray(info["env_id"])
            in_flight -= len(ids)
            rows = cursor[ids]
            done = terminated | truncated
            self.rewards[rows, ids] = reward
            self.dones[rows, ids] = done
            self.filled[rows, ids] = True
            cursor[ids] += 1
            self.scores.update(ids, np.asarray(info.get("reward", reward)), terminated, truncated)
            self.pending[ids] = obs
            self.pending_terminal[ids] = done
            game_ended[ids] |= done
            if not stopping:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    stopping = cut = True
                elif cursor[ids].max() >= T:
                    stopping = True
                elif until_game_end and game_ended.all():
                    stopping = True
            if not stopping:
                key = self._act(params, key, ids, cursor, frames=obs)  # obs == pending[ids]: skip the copy
                in_flight += len(ids)
        filled = int(cursor.sum())
        self.total_env_steps += filled
        bootstrap = np.asarray(self.policy_step(params, self.pending, key)[0])
        features, actions, logprobs, values = unpack_rows(self.packed_rows, bootstrap.shape[1:], bootstrap.dtype)
        batch = Batch(
            features=features, actions=actions, logprobs=logprobs, values=values,
            rewards=self.rewards, dones=self.dones, filled=self.filled, valid=self.valid & self.filled,
            bootstrap_features=bootstrap,
        )
        info = RoundInfo(collect_s=time.perf_counter() - start, filled_steps=filled,
                         valid_steps=int(batch.valid.sum()), cut_by_deadline=cut, env_wait_s=env_wait)
        return batch, info, key

"""Collecting one round of play: a host loop over envpool that calls a jitted policy step.

Why a host loop rather than a jitted scan over envpool's XLA interface: a wall-clock deadline needs a
clock between steps, and async envpool (num_envs > batch_size, fast games run ahead) hands back
whichever envs are ready, which a fixed-shape scan cannot follow. The policy step itself is jitted;
per batch the host only copies small arrays into preallocated buffers. For small batches of an MLP
(one game per rank) the step runs in NumPy instead (`host_policy.py`, `model.host_policy`): there a
jitted call's fixed cost is as large as the game step, and the NumPy step costs a fraction of it.

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

from jaxpong.play.batch import Batch
from jaxpong.play.envs import EnvIO, GameScores
from jaxpong.play.host_policy import HostPolicy, use_host_policy
from jaxpong.play.keys import action_noise
from jaxpong.play.preprocess import PREPROCESSORS, to_float


def _forward(apply_fn, preprocess, params, frames):
    features = preprocess(frames)
    logits, value = apply_fn(params, to_float(features))
    return features, logits, value


def _log_prob(logits, action):
    return jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]


def make_policy_step(apply_fn, obs_mode: str):
    """(params, frames, key, greedy) -> (features, action index, log-prob, value, next key); jitted. The
    step of evaluation and videos, which draw along one chain of keys."""
    preprocess = PREPROCESSORS[obs_mode]

    @jax.jit
    def policy_step(params, frames, key, greedy=False):
        features, logits, value = _forward(apply_fn, preprocess, params, frames)
        key, sub = jax.random.split(key)
        sampled = jax.random.categorical(sub, logits)
        action = jnp.where(greedy, jnp.argmax(logits, -1), sampled)
        return features, action.astype(jnp.int32), _log_prob(logits, action), value, key

    return policy_step


TAIL_BYTES = 12  # action (int32), log-prob and value (float32) after the features in a packed row
_TAIL = ((0, np.int32), (4, np.float32), (8, np.float32))  # (offset into the tail, dtype) of each of the three


def make_packed_step(apply_fn, obs_mode: str):
    """The collector's step: (params, frames [B, ...], noise [B, A]) -> [B, bytes] packed rows, jitted.

    The action is argmax(logits + noise) for the Gumbel noise of each row's game and row
    (keys.action_noise): the draw jax.random.categorical makes, taken per game so that which rank or
    batch a game is stepped in does not change it.
    Packed: each device-to-host transfer costs tens of microseconds of Python (about 85 under cProfile)
    on the thread that also feeds envpool; one transfer and one buffer write per batch instead of four
    are a few per cent of a 2-core round.
    Row layout: features bytes | action (int32) | log-prob (float32) | value (float32).
    """
    preprocess = PREPROCESSORS[obs_mode]

    @jax.jit
    def packed_step(params, frames, noise):
        features, logits, value = _forward(apply_fn, preprocess, params, frames)
        action = jnp.argmax(logits + noise, -1).astype(jnp.int32)
        n = frames.shape[0]
        parts = [features.reshape(n, -1), action[:, None], _log_prob(logits, action)[:, None], value[:, None]]
        as_bytes = [jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(n, -1) for x in parts]
        return jnp.concatenate(as_bytes, axis=1)

    return packed_step


def packed_fields(rows: np.ndarray, feature_shape: tuple, feature_dtype) -> dict:
    """Named views into [..., bytes] packed rows (`make_packed_step`'s layout): "features", "action", "logp"
    and "value", each [...] (+ feature_shape), for writing a host step's outputs in place."""
    size = int(np.prod(feature_shape)) * np.dtype(feature_dtype).itemsize
    if rows.shape[-1] != size + TAIL_BYTES:
        raise ValueError(
            f"packed rows of {rows.shape[-1]} bytes do not hold {feature_shape} {np.dtype(feature_dtype)} "
            f"features plus {TAIL_BYTES} bytes of action, log-prob and value"
        )
    names = ("features", "action", "logp", "value")
    formats = [(np.dtype(feature_dtype), tuple(feature_shape))] + [dtype for _, dtype in _TAIL]
    offsets = [0] + [size + offset for offset, _ in _TAIL]
    record = rows.view(np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": rows.shape[-1]}))
    return {name: record[..., 0][name] for name in names}


def tail_field(rows: np.ndarray, index: int) -> np.ndarray:
    """Field `index` of the tail (0 action, 1 log-prob, 2 value) of [..., bytes] packed rows, as a contiguous array."""
    offset, dtype = _TAIL[index]
    start = rows.shape[-1] - TAIL_BYTES + offset
    return rows[..., start : start + 4].copy().view(dtype)[..., 0]


def unpack_rows(rows: np.ndarray, feature_shape: tuple, feature_dtype, used: int | None = None) -> tuple:
    """[T, ..., bytes] rows from `make_packed_step` -> (features, actions, log-probs, values), each contiguous.

    `used`: only rows [:used] hold steps; the features of the others come out as zeros without being
    read (a 2016-setup round fills ~1,500 of its 5,120 rows of 6,400-byte frames).
    """
    fields = packed_fields(rows, feature_shape, feature_dtype)
    features = np.zeros(fields["features"].shape, fields["features"].dtype)
    features[:used] = fields["features"][:used]
    return (features, *(np.ascontiguousarray(fields[name]) for name in ("action", "logp", "value")))


@dataclass
class RoundInfo:
    collect_s: float
    filled_steps: int
    valid_steps: int
    cut_by_deadline: bool
    env_wait_s: float  # time blocked in envpool's recv (the env stepping this thread did not overlap)


class SlowDown:
    """Fault injection (`dist.slow_rank`, `dist.slow_factor`): one rank's collection takes `factor` times as
    long, in sync and async envpool alike.

    The rank plays at its natural speed for PHASE_S, then stops sending actions, drains the envs in
    flight, and stalls for (factor - 1) x the time the phase took, drain included. Draining first is what
    makes the factor exact with async envs: envpool keeps stepping the games in flight while this thread
    sleeps, so stalls between batches, with games in flight, slowed a rank only 1.3x for factor 2. A stall
    never runs past the round's deadline. Seen from outside, the rank's steps per second fall by `factor`,
    which is what `simulate` models (every step time of the slow rank times the factor).
    """

    PHASE_S = 0.02  # short against a round (tenths of a second and more), long against one drain

    def __init__(self, factor: float, start: float):
        self.factor = factor
        self.phase_start = start
        self.draining = False
        self.stalled_s = 0.0

    def after_work(self) -> None:
        """Called after each batch is sent: start draining once this phase has run PHASE_S."""
        if self.factor > 1.0 and time.perf_counter() - self.phase_start >= self.PHASE_S:
            self.draining = True

    def stall(self, stop_at: float | None) -> bool:
        """Nothing is in flight: sleep out the phase's share. True when the deadline ended the stall."""
        now = time.perf_counter()
        pause = (self.factor - 1.0) * (now - self.phase_start)
        if stop_at is not None:
            pause = min(pause, max(0.0, stop_at - now))
        time.sleep(pause)
        self.stalled_s += pause
        self.draining = False
        self.phase_start = time.perf_counter()
        return stop_at is not None and self.phase_start >= stop_at

    def finish(self, stop_at: float | None) -> None:
        """The round's last phase (its envs drained by the round's end) gets its stall too."""
        if self.factor > 1.0:
            self.stall(stop_at)


class Collector:
    """Owns the envs and the rollout buffers of one rank; `collect` plays one round.

    The loop between envpool and the policy runs on the thread that feeds envpool, on the cores that
    step the games, so it does per batch only what cannot wait: store rewards and done flags, act,
    send. What can be derived at the end of the round (which rows hold steps, which are valid, the
    scores of finished games) is computed then, once, with whole-array numpy.
    """

    def __init__(self, env, cfg, apply_fn, *, num_steps: int, slow_factor: float = 1.0, first_game: int = 0):
        self.env = env
        # This rank's games among all ranks' (every rank holds num_envs of them, in rank order): their
        # numbers pick their sampling noise (keys.action_noise), as they picked their env seeds.
        self.game_ids = np.arange(first_game, first_game + cfg.env.num_envs, dtype=np.int32)
        self.io = EnvIO(env)
        self.num_envs = cfg.env.num_envs
        self.batch_size = cfg.env_batch_size
        self.num_steps = num_steps
        self.actions = np.asarray(cfg.model.actions, np.int32)
        self.packed_step = make_packed_step(apply_fn, cfg.model.obs_mode)
        # Small batches of an MLP act in NumPy on the host (host_policy.py: the jitted call's fixed cost
        # is as large as a game step there); same outputs from the same noise.
        self.host = HostPolicy(cfg) if use_host_policy(cfg) else None
        # The round's Gumbel noise, [row, env, action]: each game's draws (keys.action_noise).
        self.noise = np.zeros((num_steps, self.num_envs, len(self.actions)), np.float32)
        self.slow_factor = slow_factor
        self.scores = GameScores(self.num_envs)
        self.total_env_steps = 0
        # Reset through send/recv: in async mode a plain reset() returns only one batch of envs.
        env.async_reset()
        pending = None  # frames each env will act on next
        received = 0
        while received < self.num_envs:
            obs, _, _, _, ids, _ = self.io.recv()
            if pending is None:
                pending = np.zeros((self.num_envs,) + obs.shape[1:], obs.dtype)
            pending[ids] = obs
            received += len(ids)
        assert pending is not None  # num_envs >= 1: the loop received at least one batch
        self.pending: np.ndarray = pending
        self.pending_terminal = np.zeros(self.num_envs, bool)
        self._buffers: bool | None = None
        shape = jax.eval_shape(PREPROCESSORS[cfg.model.obs_mode], self.pending)
        self._feature_layout = (tuple(shape.shape[1:]), np.dtype(shape.dtype))  # one env's features

    def lowered_steps(self, params) -> list:
        """The policy steps a round calls, lowered (traced, not compiled): the packed step on every env
        (the round's first action and the bootstrap features) and on one envpool batch. Round compiles
        them first on one rank of a host (comm.host_first); the others then load them from the cache."""
        if self.host is not None:
            return []
        return [
            self.packed_step.lower(params, self.pending[:rows], self.noise[0, :rows])
            for rows in sorted({self.num_envs, self.batch_size})
        ]

    def _allocate(self, row_bytes: int):
        T, N = self.num_steps, self.num_envs
        self.packed_rows = np.zeros((T, N, row_bytes), np.uint8)  # packed policy outputs, unpacked once per round
        self.rewards = np.zeros((T, N), np.float32)
        self.game_rewards = np.zeros((T, N), np.float32)  # envpool's unclipped reward, for the scores
        self.terminated = np.zeros((T, N), bool)
        self.truncated = np.zeros((T, N), bool)
        self._buffers = True

    def _act(self, params, ids: np.ndarray, rows: np.ndarray, frames: np.ndarray) -> None:
        noise = self.noise[rows, ids]  # each game's draw at its own row
        if self.host is not None:
            features, action, logp, value = self.host.step(frames, noise)
            if self._buffers is None:
                self._allocate(features[0].nbytes + TAIL_BYTES)
                self.fields = packed_fields(self.packed_rows, features.shape[1:], features.dtype)
            fields = self.fields
            fields["features"][rows, ids] = features
            fields["action"][rows, ids] = action
            fields["logp"][rows, ids] = logp
            fields["value"][rows, ids] = value
        else:
            packed = np.asarray(self.packed_step(params, frames, noise))
            action = tail_field(packed, 0)
            if self._buffers is None:
                self._allocate(packed.shape[1])
            self.packed_rows[rows, ids] = packed
        self.io.send(self.actions[action], ids)

    def collect(self, params, round_key, deadline_s: float | None, until_game_end: bool = False):
        """Play until the deadline (seconds from now; None = none), a full buffer, or (until_game_end)
        every env finishing a game, drawing actions with the noise of `round_key` (keys.round_key).
        Returns (Batch of numpy arrays, RoundInfo)."""
        T, N = self.num_steps, self.num_envs
        self.noise = action_noise(round_key, self.game_ids, T, len(self.actions))
        start = time.perf_counter()
        stop_at = None if deadline_s is None else start + deadline_s
        cursor = np.zeros(N, np.int64)
        game_ended = np.zeros(N, bool)
        # The round's first step of these envs is a reset: not valid. (Replaced, not changed, at the round's end.)
        first_terminal = self.pending_terminal
        all_ids = np.arange(N, dtype=np.int32)
        if self.host is not None:
            self.host.start_round(params)  # this round's parameters
        self._act(params, all_ids, cursor, self.pending)
        in_flight = N
        stopping = False
        cut = False
        env_wait = 0.0
        slow = SlowDown(self.slow_factor, start)
        held = np.zeros(N, bool)  # envs the slow-down holds back while the pipeline drains
        while in_flight:
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, ids, game_reward = self.io.recv()
            dt = time.perf_counter() - t0
            env_wait += dt
            in_flight -= len(ids)
            rows = cursor[ids]
            self.rewards[rows, ids] = reward
            self.game_rewards[rows, ids] = game_reward
            self.terminated[rows, ids] = terminated
            self.truncated[rows, ids] = truncated
            rows += 1
            cursor[ids] = rows
            self.pending[ids] = obs
            if until_game_end:
                game_ended[ids] |= terminated | truncated
            if not stopping:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    stopping = cut = True
                elif rows.max() >= T:
                    stopping = True
                elif until_game_end and game_ended.all():
                    stopping = True
            if stopping:
                continue
            if slow.draining:
                # Fault injection: hold these envs until the pipeline is empty, then stall the whole rank.
                held[ids] = True
                if in_flight == 0:
                    if slow.stall(stop_at):  # the deadline passed during the stall: the round ends here
                        stopping = cut = True
                        continue
                    ids = np.nonzero(held)[0].astype(np.int32)
                    held[:] = False
                    self._act(params, ids, cursor[ids], self.pending[ids])
                    in_flight += len(ids)
                continue
            self._act(params, ids, rows, obs)  # obs == pending[ids]: no copy
            in_flight += len(ids)
            slow.after_work()
        slow.finish(stop_at)
        filled = np.arange(T)[:, None] < cursor[None, :]
        dones = (self.terminated | self.truncated) & filled
        # envpool resets a finished game on its next step and ignores the action: no signal there.
        after_end = np.concatenate([first_terminal[None], dones[:-1]])
        valid = filled & ~after_end
        # Every env holds at least one step: all were acted on at the start and drained at the end.
        self.pending_terminal = dones[cursor - 1, all_ids]
        for t in range(int(cursor.max())):  # scores in the order the games were played
            live = np.nonzero(filled[t])[0]
            self.scores.update(live, self.game_rewards[t, live], self.terminated[t, live], self.truncated[t, live])
        steps = int(cursor.sum())
        self.total_env_steps += steps
        if self.host is not None:
            bootstrap = self.host.preprocess(self.pending)
        else:  # the features of the packed step on every env (the shape the round's first action compiled)
            packed = np.asarray(self.packed_step(params, self.pending, self.noise[0]))
            bootstrap = packed_fields(packed, *self._feature_layout)["features"].copy()
        features, actions, logprobs, values = unpack_rows(
            self.packed_rows, bootstrap.shape[1:], bootstrap.dtype, used=int(cursor.max())
        )
        # Rows past an env's cursor still hold an earlier round's steps: zero them, so that nothing stale
        # (a log-probability whose ratio overflows, say) reaches the update, even where it is masked.
        padding = ~filled
        for array in (features, actions, logprobs, values):
            array[padding] = 0
        batch = Batch(
            features=features,
            actions=actions,
            logprobs=logprobs,
            values=values,
            rewards=np.where(filled, self.rewards, 0.0).astype(np.float32),
            dones=dones,
            filled=filled,
            valid=valid,
            bootstrap_features=bootstrap,
            game_ids=self.game_ids,
        )
        info = RoundInfo(
            collect_s=time.perf_counter() - start,
            filled_steps=steps,
            valid_steps=int(valid.sum()),
            cut_by_deadline=cut,
            env_wait_s=env_wait,
        )
        return batch, info

"""envpool Pong: creating the games, deriving their seeds, and keeping score of full games."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.sections import ModelConfig
from jaxpong.ranks import placement

# Seed purposes, folded into every env seed so that training, evaluation and videos never share games.
PURPOSE_TRAIN, PURPOSE_EVAL, PURPOSE_VIDEO = 0, 1, 2


def frame_shape(model: ModelConfig) -> tuple[int, int, int]:
    """(stack, height, width) that envpool must deliver for an observation mode."""
    if model.obs_mode == "karpathy80":
        return 2, 210, 160  # the full frame, so the 2016 crop and stride-2 downsampling apply unchanged
    if model.obs_mode in ("diff64", "diff32", "pool32", "pool16"):
        return 2, 84, 84  # previous and current frame: their difference is the input
    if model.obs_mode == "area32":
        return 2, 42, 42  # envpool's area resize does the 2x2 pooling of pool32
    return 4, 84, 84


def env_seeds(seed: int, resume_count: int, purpose: int, num_envs: int, first_game: int = 0) -> list[int]:
    """Seeds of games first_game .. first_game + num_envs - 1 from (run seed, resume counter, purpose):
    distinct streams for each of those, and a game's seed depends on its number, not on which rank
    steps it (rank k of a run holds games k x num_envs onwards: jaxpong/play/keys.py). The 0 is where the rank
    once went, kept so that one process's games keep their seeds."""
    sequence = np.random.SeedSequence([seed, 0, resume_count, purpose])
    state = sequence.generate_state(first_game + num_envs, dtype=np.uint32)[first_game:]  # a prefix-stable stream
    return [int(s) & 0x7FFFFFFF for s in state]


def default_threads(num_envs: int) -> int:
    """envpool threads: one per core this rank is bound to (its share of the host when unbound), at most one per
    game."""
    return max(1, min(num_envs, placement.this_rank_cores()))


def import_envpool():
    """envpool with only its Atari games registered.

    `import envpool` registers every env family it ships (MuJoCo, Jumanji with a matplotlib renderer,
    ...), about 3 s of a run's start-up; Pong needs only the Atari registration. If envpool is
    already imported, or its layout differs from the tested version, this is a plain import.
    """
    import sys
    import types

    if "envpool" in sys.modules:
        return sys.modules["envpool"]
    sys.modules["envpool.entry"] = types.ModuleType("envpool.entry")  # the module that imports every family
    try:
        import envpool
        import envpool.atari.registration  # noqa: F401  (registers Pong-v5)

        envpool.entry = sys.modules["envpool.entry"]
        if "Pong-v5" in envpool.list_all_envs():
            return envpool
    except ImportError:
        pass
    # Fall back to the full import.
    for name in [m for m in sys.modules if m == "envpool" or m.startswith("envpool.")]:
        del sys.modules[name]
    import envpool

    return envpool


def make_env(
    cfg: Config,
    *,
    seeds: list[int],
    num_envs: int | None = None,
    batch_size: int | None = None,
    num_threads: int | None = None,
    rgb: bool = False,
):
    """An envpool Pong-v5 with the configured preset. `rgb=True` gives 210x160 colour frames (videos)."""
    envpool = import_envpool()
    env_cfg, model = cfg.env, cfg.model
    n = num_envs or env_cfg.num_envs
    stack, height, width = frame_shape(model)
    kwargs = dict(
        env_type="gymnasium",
        num_envs=n,
        batch_size=batch_size or (cfg.env_batch_size if num_envs is None else n),
        num_threads=num_threads or env_cfg.num_threads or default_threads(n),
        env_seed=seeds,
        frame_skip=env_cfg.frame_skip,
        repeat_action_probability=env_cfg.repeat_action_probability,
        noop_max=env_cfg.noop_max,
        episodic_life=env_cfg.episodic_life,
        reward_clip=env_cfg.reward_clip,
        max_episode_steps=env_cfg.max_episode_steps,
        stack_num=stack,
        img_height=height,
        img_width=width,
    )
    if rgb:
        kwargs.update(gray_scale=False, stack_num=1, img_height=210, img_width=160)
    return envpool.make(env_cfg.env_id, **kwargs)


class EnvIO:
    """recv/send on an envpool env without its per-call Python conversion, when its layout allows.

    envpool's public recv() turns the C++ state list into a dict tree and its send() rebuilds the
    action dict and re-reads the env's config on every call: about 0.3 ms of Python per batch
    (cProfile, 16-game batches), taken from the 2 cores that step the games. The C++ methods behind
    them (`_recv`, `_send`) take and return flat lists in the order of `_state_keys` and `_action_keys`;
    this class reads those orders once. If they are not what this was tested with (envpool 1.2.5,
    single-player Atari), it uses the public API instead: same results, slower.
    """

    STATE = ("obs", "reward", "done", "trunc", "info:env_id", "info:reward")
    ACTIONS = ["env_id", "players.env_id", "action"]

    def __init__(self, env):
        self.env = env
        keys = list(getattr(env, "_state_keys", []))
        self.fast = (
            all(k in keys for k in self.STATE)
            and list(getattr(env, "_action_keys", [])) == self.ACTIONS
            and hasattr(env, "_recv")
            and hasattr(env, "_send")
            and getattr(env, "config", {}).get("max_num_players", 1) == 1
        )
        if self.fast:
            self.index = [keys.index(k) for k in self.STATE]

    def recv(self):
        """(obs, reward, terminated, truncated, env_id, game reward) of the next ready batch; game reward
        is envpool's info["reward"], unclipped."""
        if self.fast:
            state = self.env._recv()
            obs, reward, done, trunc, env_id, game_reward = (state[i] for i in self.index)
            return obs, reward, done & ~trunc, trunc, env_id, game_reward
        obs, reward, terminated, truncated, info = self.env.recv()
        return obs, reward, terminated, truncated, np.asarray(info["env_id"]), np.asarray(info.get("reward", reward))

    def send(self, actions: np.ndarray, env_id: np.ndarray) -> None:
        """Step the games `env_id` (int32) with `actions` (int32, envpool's action numbers)."""
        if self.fast:
            self.env._send([env_id, env_id, actions])
        else:
            self.env.send(actions, env_id)


@dataclass
class GameScores:
    """Full-game returns per env (first to 21 points), whatever reward shaping is used for learning.

    Rewards come from envpool's `info["reward"]` (the unclipped game reward). A game counts when it
    terminates; a game cut by max_episode_steps is counted separately as truncated.
    """

    num_envs: int
    running: np.ndarray = field(init=False)  # set in __post_init__ (any value passed in was overwritten there)
    lengths: np.ndarray = field(init=False)
    finished: list = field(default_factory=list)  # (return, length) of games finished since last drain
    truncated: int = 0

    def __post_init__(self):
        self.running = np.zeros(self.num_envs, np.float64)
        self.lengths = np.zeros(self.num_envs, np.int64)

    def update(self, env_ids: np.ndarray, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray):
        self.running[env_ids] += rewards
        self.lengths[env_ids] += 1
        ended = terminated | truncated
        if ended.any():
            for i in np.nonzero(ended)[0]:
                e = env_ids[i]
                if terminated[i]:
                    self.finished.append((float(self.running[e]), int(self.lengths[e])))
                else:
                    self.truncated += 1
                self.running[e] = 0.0
                self.lengths[e] = 0

    def drain(self) -> list:
        out, self.finished = self.finished, []
        return out

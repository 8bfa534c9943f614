"""How jaxpong imports envpool: only the Atari family is registered, and Pong still works."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from jaxpong.base.config import Config
from jaxpong.play.envs import PURPOSE_TRAIN, env_seeds, make_env
cfg = Config()
cfg.env.num_envs, cfg.env.batch_size, cfg.model.obs_mode = 2, "0", "diff64"  # sync: both games each step
env = make_env(cfg, seeds=env_seeds(1, 0, PURPOSE_TRAIN, 2))
obs, _ = env.reset()
assert obs.shape == (2, 2, 84, 84), obs.shape
assert "envpool.atari.registration" in sys.modules
skipped = [m for m in ("envpool.jumanji.registration", "envpool.mujoco.dmc.registration") if m in sys.modules]
assert not skipped, skipped
print("ok")
"""


def test_only_the_atari_family_is_imported_and_pong_runs():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_env_io_fast_path_returns_what_the_public_api_returns():
    """EnvIO calls envpool's C++ recv/send directly; on twin games (same seeds, same actions, sync mode so that
    both return the same envs in the same order) everything it returns must equal what envpool's public recv
    returns, through resets."""
    import numpy as np

    from jaxpong.base.config import Config
    from jaxpong.play.envs import PURPOSE_TRAIN, EnvIO, env_seeds, make_env

    cfg = Config()
    cfg.env.num_envs, cfg.env.batch_size, cfg.env.num_threads = 4, "0", 1
    seeds = env_seeds(5, 0, PURPOSE_TRAIN, 4)
    public, twin = make_env(cfg, seeds=seeds), make_env(cfg, seeds=seeds)
    io = EnvIO(twin)
    assert io.fast, "envpool's layout changed: EnvIO fell back to the public API (slower); update EnvIO.STATE"
    public.async_reset()
    twin.async_reset()
    public.recv()
    io.recv()
    rng = np.random.default_rng(0)
    ids = np.arange(4, dtype=np.int32)
    ended = 0
    for _ in range(1500):  # a random player loses a game in about 800 steps: resets happen
        actions = rng.integers(0, 6, size=4).astype(np.int32)
        public.send(actions, ids)
        io.send(actions, ids)
        obs, reward, terminated, truncated, info = public.recv()
        f_obs, f_reward, f_terminated, f_truncated, f_ids, f_game_reward = io.recv()
        assert (obs == f_obs).all() and (reward == f_reward).all()
        assert (terminated == f_terminated).all() and (truncated == f_truncated).all()
        assert (info["env_id"] == f_ids).all() and (info["reward"] == f_game_reward).all()
        ended += int(terminated.sum())
    assert ended >= 2

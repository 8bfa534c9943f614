"""How jaxpong imports envpool: only the Atari family is registered, and Pong still works."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from jaxpong.config import Config
from jaxpong.envs import PURPOSE_TRAIN, env_seeds, make_env
cfg = Config()
cfg.env.num_envs = 2
env = make_env(cfg, seeds=env_seeds(1, 0, 0, PURPOSE_TRAIN, 2))
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

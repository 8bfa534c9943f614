"""Evaluation: full games of Pong (first to 21) played by a policy on fresh envpool envs.

The games are independent of training: the env seeds fold in PURPOSE_EVAL (training uses
PURPOSE_TRAIN), with rank 0 and resume count 0, so the same (seed, number of envs) always gives the
same games, whichever run or file the policy comes from. The envs step synchronously (all together)
and actions are sampled from one key chain, so results are reproducible exactly.

Which games count: each env plays a fixed share of the requested games (env e plays
episodes // E games, plus one for the first episodes % E envs), one after the other. Taking the
first N games to finish instead would favour short games, which in Pong are the lopsided ones.
Only games that end by a player reaching 21 count; a game cut by max_episode_steps is reported as
truncated and not replayed, so an evaluation always ends (after at most share x max_episode_steps
agent steps per env).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from jaxpong.base.config import Config
from jaxpong.play.envs import PURPOSE_EVAL, PURPOSE_VIDEO, default_threads, env_seeds, make_env
from jaxpong.play.keys import STREAM_EVAL, STREAM_VIDEO, stream_root

MAX_EVAL_ENVS = 8


@dataclass
class EvalResult:
    returns: list  # full-game returns, env by env in order of play
    lengths: list  # agent steps of each counted game
    games_env: list  # which env played each counted game
    requested: int
    truncated: int
    greedy: bool
    seed: int
    num_envs: int
    agent_steps: int  # steps taken by all envs, including those idle after their share
    seconds: float

    def summary(self) -> dict:
        """The numbers a user quotes: mean, standard deviation (population), min and max of full-game returns."""
        r = np.asarray(self.returns, np.float64)
        stats = {
            "mean_return": float(r.mean()) if r.size else None,
            "std_return": float(r.std()) if r.size else None,
            "min_return": float(r.min()) if r.size else None,
            "max_return": float(r.max()) if r.size else None,
        }
        return {
            **stats,
            "episodes": len(self.returns),
            "returns": [float(x) for x in self.returns],
            "lengths": [int(x) for x in self.lengths],
            "truncated": self.truncated,
            "requested_episodes": self.requested,
            "greedy": self.greedy,
            "seed": self.seed,
            "num_envs": self.num_envs,
            "seconds": round(self.seconds, 3),
        }


def default_num_envs(episodes: int) -> int:
    return max(1, min(episodes, MAX_EVAL_ENVS))


def play_games(
    cfg: Config,
    params,
    *,
    episodes: int,
    seed: int,
    greedy: bool,
    num_envs: int | None = None,
    policy_step=None,
    purpose: int = PURPOSE_EVAL,
) -> EvalResult:
    """Play `episodes` full games with `params` on `num_envs` (default min(episodes, 8)) fresh envs.

    `policy_step` is a jitted step from rollout.make_policy_step (pass the trainer's to reuse its
    compilation); one is made from the config otherwise.
    """
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    num_envs = min(num_envs or default_num_envs(episodes), episodes)
    if policy_step is None:
        policy_step = make_policy_step_for(cfg)
    actions = np.asarray(cfg.model.actions, np.int32)
    share = np.array([episodes // num_envs + (e < episodes % num_envs) for e in range(num_envs)])
    env = make_env(
        cfg,
        seeds=env_seeds(seed, 0, purpose, num_envs),
        num_envs=num_envs,
        batch_size=num_envs,
        num_threads=default_threads(num_envs),
    )
    # Sampling keys from a stream of their own, apart from training's (jaxpong/play/keys.py).
    key = stream_root(seed, STREAM_VIDEO if purpose == PURPOSE_VIDEO else STREAM_EVAL)
    start = time.perf_counter()
    try:
        obs, _ = env.reset()
        played = np.zeros(num_envs, np.int64)  # games ended (counted or truncated) per env
        running = np.zeros(num_envs, np.float64)
        length = np.zeros(num_envs, np.int64)
        resetting = np.zeros(num_envs, bool)  # the step after a game's end is envpool's reset step
        games: list[list[tuple[float, int]]] = [[] for _ in range(num_envs)]
        truncated = 0
        steps = 0
        max_rounds = int(share.max()) * (cfg.env.max_episode_steps + 1) + 1  # envpool truncates before this
        while (played < share).any() and steps < max_rounds:
            _, action, _, _, key = policy_step(params, obs, key, greedy)
            obs, _, terminated, trunc, info = env.step(actions[np.asarray(action)])
            steps += 1
            counting = (played < share) & ~resetting
            reward = np.asarray(info["reward"], np.float64)  # the game's own reward, whatever clipping learning uses
            running[counting] += reward[counting]
            length[counting] += 1
            ended = terminated | trunc
            for e in np.nonzero(ended & counting)[0]:
                if terminated[e]:
                    games[e].append((float(running[e]), int(length[e])))
                else:
                    truncated += 1
                played[e] += 1
                running[e], length[e] = 0.0, 0
            resetting = ended
    finally:
        env.close()
    order = [(e, r, n) for e in range(num_envs) for r, n in games[e]]
    return EvalResult(
        returns=[r for _, r, _ in order],
        lengths=[n for _, _, n in order],
        games_env=[e for e, _, _ in order],
        requested=episodes,
        truncated=truncated,
        greedy=bool(greedy),
        seed=seed,
        num_envs=num_envs,
        agent_steps=steps * num_envs,
        seconds=time.perf_counter() - start,
    )


def make_policy_step_for(cfg: Config):
    from jaxpong.learn.networks import make_network
    from jaxpong.play.rollout import make_policy_step

    network = make_network(cfg.model)
    return make_policy_step(lambda p, x: network.apply(p, x), cfg.model.obs_mode)


def format_report(result: EvalResult) -> list[str]:
    """Human-readable lines: one per game, then the summary."""
    lines = []
    per_env: dict[int, int] = {}
    for i, (ret, n, e) in enumerate(zip(result.returns, result.lengths, result.games_env), 1):
        per_env[e] = per_env.get(e, 0) + 1
        lines.append(f"game {i:3d}  env {e} game {per_env[e]}  return {ret:+5.0f}  ({_score(ret)})  {n} agent steps")
    s = result.summary()
    mode = "greedy" if result.greedy else "sampled"
    if s["episodes"]:
        lines.append(
            f"{s['episodes']} full games ({mode} actions, seed {result.seed}, {result.num_envs} envs): "
            f"mean {s['mean_return']:+.2f}  std {s['std_return']:.2f}  min {s['min_return']:+.0f}  "
            f"max {s['max_return']:+.0f}  ({result.seconds:.1f} s)"
        )
    else:
        lines.append(
            f"no game finished ({mode} actions, seed {result.seed}): all {result.truncated} were cut at "
            "max_episode_steps"
        )
    if result.truncated:
        lines.append(f"{result.truncated} game(s) reached max_episode_steps without a winner and are not counted")
    return lines


def _score(ret: float) -> str:
    """The final score a full-game return implies: the winner has 21."""
    r = int(round(ret))
    return f"won 21-{21 - r}" if r > 0 else f"lost {21 + r}-21"

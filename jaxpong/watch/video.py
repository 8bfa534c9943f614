"""Videos of a policy playing: one colour frame (210x160, the Atari's own resolution) per agent step.

How the frames match what the policy saw: the policy needs its own observations (grey, resized,
stacked as its obs_mode says) and the video needs colour ones, which one envpool env cannot give at
once. Two envs with the same seed and settings are stepped in lockstep with the same actions: one
configured for the policy, one for colour frames. They run the same emulator from the same seed, so
they play the same game; this is checked at every step by comparing the two consoles' whole RAM
(128 bytes, which also holds the score), and a mismatch stops the recording with an error.

The score: the Atari draws it at the top of the screen (the agent's on the right, in green). The
running score is also read from the console's RAM (Pong keeps the computer's score at byte 13 and the
player's at byte 14, as ALE does) and checked against the rewards. Pong draws a new score one agent
step after the point, so the point that ends a game is never drawn: the final score is reported by
the command instead.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.play.envs import PURPOSE_VIDEO, env_seeds, make_env

FPS = 15  # 60 Hz console / 4 frames per agent step: real-time speed
FORMATS = {".mp4": "mp4", ".gif": "gif"}
GIF_MAX_FPS = 50  # GIF players show frames shorter than 2/100 s far slower (browsers: at 1/10 s)
CLIP_STEPS = 600  # clips recorded during or at the end of training: agent steps at most (40 s at real speed)
RAM_OPPONENT_SCORE, RAM_AGENT_SCORE = 13, 14


def output_format(out: str | Path, fps: float | None = None) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out {str(out)!r}: the video format is chosen by the extension; use .mp4 or .gif")
    if suffix == ".gif" and fps is not None and fps > GIF_MAX_FPS:
        raise ConfigError(
            f"--fps {fps}: a GIF plays at most {GIF_MAX_FPS} frames per second (its frame times are in "
            "hundredths of a second, and players slow shorter ones down); use .mp4 for more"
        )
    return FORMATS[suffix]


def gif_durations(frames: int, fps: float) -> list[int]:
    """Milliseconds per frame for a GIF, whose frame times are whole hundredths of a second: frame k starts
    at k/fps rounded to 1/100 s, so 15 fps alternates 70, 60, 70 ms and plays at exactly 15 fps over every
    three frames (a constant 60 or 70 ms would play at 16.7 or 14.3 fps)."""
    starts = [round(k * 100 / fps) for k in range(frames + 1)]
    return [10 * (b - a) for a, b in zip(starts, starts[1:])]


def play(cfg: Config, params, *, seed: int, greedy: bool, max_steps: int | None = None, policy_step=None):
    """Yield (colour frame [210, 160, 3] uint8, policy frames, (agent score, opponent score)) for the
    opening screen and after each agent step, until the game ends or `max_steps` steps are played."""
    from jaxpong.play.keys import STREAM_VIDEO, stream_root
    from jaxpong.watch.evaluate import make_policy_step_for

    if policy_step is None:
        policy_step = make_policy_step_for(cfg)
    actions = np.asarray(cfg.model.actions, np.int32)
    seeds = env_seeds(seed, 0, PURPOSE_VIDEO, 1)
    policy_env = make_env(cfg, seeds=seeds, num_envs=1, batch_size=1, num_threads=1)
    colour_env = make_env(cfg, seeds=seeds, num_envs=1, batch_size=1, num_threads=1, rgb=True)
    key = stream_root(seed, STREAM_VIDEO)  # a stream of its own (jaxpong/play/keys.py)
    limit = cfg.env.max_episode_steps if max_steps is None else min(max_steps, cfg.env.max_episode_steps)
    try:
        obs, info = policy_env.reset()
        colour, colour_info = colour_env.reset()
        _check_lockstep(info, colour_info, 0)
        score = np.zeros(2, np.int64)  # agent, opponent: from the rewards
        yield _hwc(colour[0]), obs[0], (0, 0)
        for step in range(1, limit + 1):
            _, action, _, _, key = policy_step(params, obs, key, greedy)
            env_action = actions[np.asarray(action)]
            obs, _, terminated, truncated, info = policy_env.step(env_action)
            colour, _, _, _, colour_info = colour_env.step(env_action)
            _check_lockstep(info, colour_info, step)
            reward = float(info["reward"][0])
            score[0 if reward > 0 else 1] += reward != 0
            ram = info["ram"][0]
            if (int(ram[RAM_AGENT_SCORE]), int(ram[RAM_OPPONENT_SCORE])) != (int(score[0]), int(score[1])):
                raise RuntimeError(
                    f"the score in the console's RAM ({ram[RAM_AGENT_SCORE]}-{ram[RAM_OPPONENT_SCORE]}) "
                    f"differs from the rewards ({score[0]}-{score[1]}) at step {step}"
                )
            yield _hwc(colour[0]), obs[0], tuple(int(s) for s in score)
            if terminated[0] or truncated[0]:
                return
    finally:
        policy_env.close()
        colour_env.close()


def _hwc(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(frame, (1, 2, 0)))  # envpool gives [3, 210, 160]


def _check_lockstep(info: dict, colour_info: dict, step: int) -> None:
    if not np.array_equal(info["ram"], colour_info["ram"]) or info["elapsed_step"][0] != colour_info["elapsed_step"][0]:
        raise RuntimeError(
            f"the policy's env and the colour env diverged at agent step {step}; the video would not "
            "show the game the policy played"
        )


def record(
    cfg: Config,
    params,
    out: str | Path,
    *,
    seed: int,
    greedy: bool = False,
    max_steps: int | None = None,
    fps: int = FPS,
    policy_step=None,
) -> dict:
    """Record one game (or its first `max_steps` agent steps) to `out` (.mp4 or .gif).

    Frames: the opening screen plus one per agent step, so frames = steps + 1.
    """
    import imageio.v2 as imageio_v2
    import imageio.v3 as iio

    kind = output_format(out, fps)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a directory; give a file name such as game.mp4")
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)  # the encoder picks the format from the extension
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"")  # fail now, with a clear message, rather than after playing the game
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r} cannot be written ({err.strerror}); choose a writable place") from None
    start = time.perf_counter()
    frames = 0
    played_fps: float = fps
    score = (0, 0)
    game = play(cfg, params, seed=seed, greedy=greedy, max_steps=max_steps, policy_step=policy_step)
    try:
        if kind == "mp4":
            # macro_block_size=1: keep 210x160 as it is (both even, as yuv420p needs) instead of padding to 16.
            writer = imageio_v2.get_writer(
                tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error"
            )
            try:
                with warnings.catch_warnings():
                    # JAX warns on any fork; imageio-ffmpeg forks only to exec ffmpeg at once, which is safe.
                    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                    for frame, _, score in game:  # noqa: B007 - the final score is read after the loop
                        writer.append_data(frame)
                        frames += 1
            finally:
                writer.close()
        else:
            stack = []
            for frame, _, score in game:  # noqa: B007 - the final score is read after the loop
                stack.append(frame)
            frames = len(stack)
            durations = gif_durations(frames, fps)
            iio.imwrite(tmp, np.stack(stack), extension=".gif", duration=durations, loop=0)
            played_fps = round(1000.0 * frames / sum(durations), 3)  # what players show, reported as such
        tmp.replace(out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = err.strerror or str(err).strip().splitlines()[0]
        raise ConfigError(f"--out {str(out)!r} cannot be written ({reason}); choose a writable place") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "out": str(out),
        "format": kind,
        "frames": frames,
        "agent_steps": frames - 1,
        "fps": played_fps,
        "height": 210,
        "width": 160,
        "agent_score": int(score[0]),
        "opponent_score": int(score[1]),
        "greedy": bool(greedy),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }


def clip_during_training(cfg: Config, params, run_dir: Path, step: int, policy_step=None) -> dict:
    """--video-every: a clip of the current policy (sampled actions, as in training) at agent step `step`,
    RUN_DIR/videos/step_<step>.mp4, at most CLIP_STEPS agent steps. Same game each time (the run's seed),
    so clips compare the policy at different steps on one opening."""
    return record(
        cfg,
        params,
        Path(run_dir) / "videos" / f"step_{step}.mp4",
        seed=cfg.run.seed,
        max_steps=CLIP_STEPS,
        policy_step=policy_step,
    )

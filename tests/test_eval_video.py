"""Watching, measuring and sharing a trained policy: eval, video, plot, export, and evaluation during training.

Runs used: the session's `smoke_run` (conftest.py, read-only here) and `eval_run`, a short 2-rank
training run (one rank if mpirun is missing) with --eval-every, --capture-video and the learning curve.
Games of an untrained policy last ~800-1000 agent steps, so evaluations here play 1-3 games on as
many envs in parallel. Commands run in-process through cli.main (one jax import for all of them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest

from conftest import REPO, SMOKE_CONFIG, read_jsonl
from jaxpong.cli.dispatch import main

MPIRUN = Path(sys.executable).parent / "mpirun"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def decode_video(path: Path) -> np.ndarray:
    import imageio.v2 as imageio_v2

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)  # fork + exec of ffmpeg
        reader = imageio_v2.get_reader(path, format="FFMPEG")
        try:
            return np.stack([frame for frame in reader])
        finally:
            reader.close()


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory) -> Path:
    """Training with greedy evaluations every 2 updates, a best checkpoint, a final clip and learning curve:
    under mpirun -n 2, where only rank 0 may evaluate while the other rank waits at the next gather."""
    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    train = [
        sys.executable,
        "-m",
        "jaxpong",
        "train",
        "--config",
        str(SMOKE_CONFIG),
        "--run-dir",
        str(run_dir),
        "--num-envs",
        "4",
        "--num-threads",
        "1",
        "--total-steps",
        "1024",
        "--deadline-s",
        "0",
        "--eval-every",
        "2",
        "--eval-episodes",
        "1",
        "--capture-video",
    ]
    command = [str(MPIRUN), "-n", "2", *train] if MPIRUN.exists() else train
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir / "stderr.txt").write_text(proc.stderr)
    return run_dir


@pytest.fixture(scope="session")
def pg_run(tmp_path_factory) -> Path:
    """A run directory of the 2016 policy gradient (configs/seed_ppg.yaml: karpathy80 frames, Bernoulli head,
    no value head, rmsprop), written as training writes it (orbax checkpoint + config.yaml), untrained.
    The hidden layer is small so that initialising it is quick."""
    import jax

    from jaxpong.base import config as config_lib
    from jaxpong.learn.learner import init_state, make_optimizer
    from jaxpong.learn.networks import make_network
    from jaxpong.store import rundir
    from jaxpong.store.checkpoint import Checkpoints

    run_dir = tmp_path_factory.mktemp("pg") / "run"
    run_dir.mkdir()
    cfg = config_lib.build(str(REPO / "configs" / "seed_ppg.yaml"), {"model": {"hidden_size": 8}})
    state = init_state(cfg, make_network(cfg.model), make_optimizer(cfg), jax.random.PRNGKey(3))
    rundir.write_config(run_dir, cfg, world_size=1)
    Checkpoints(run_dir / "checkpoints", keep=1).save(
        300, state, {"config": config_lib.to_dict(cfg), "counters": {"step": 300}, "world_size": 1}
    )
    return run_dir


def latest_step(run_dir: Path) -> int:
    return max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


# -- eval ------------------------------------------------------------------------------------------


def test_eval_plays_full_games_and_export_gives_the_same_scores(smoke_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", smoke_run, "--episodes", 2)
    assert code == 0, err
    result = last_json(out)
    for key in ("mean_return", "std_return", "min_return", "max_return", "episodes", "returns"):
        assert key in result
    returns = result["returns"]
    assert result["episodes"] == len(returns) == 2 and result["truncated"] == 0
    assert result["num_envs"] == 2 and result["greedy"] is False and result["seed"] == 1
    assert result["checkpoint_step"] == latest_step(smoke_run)  # the latest checkpoint by default
    for r in returns:
        assert -21 <= r <= 21 and r == int(r) and r != 0  # a full game: someone reached 21
    assert result["mean_return"] == pytest.approx(np.mean(returns))
    assert result["std_return"] == pytest.approx(np.std(returns))
    assert (result["min_return"], result["max_return"]) == (min(returns), max(returns))
    assert all(800 // 4 < n < 27000 for n in result["lengths"])
    games = [line for line in out.splitlines() if line.startswith("game ")]
    assert len(games) == 2 and "mean" in out.splitlines()[-2]

    # Export, then evaluate the file: same config and seed, so the same games and the same scores.
    policy_file = tmp_path / "pong.policy"
    code, out, err = run_cli(capsys, "export", smoke_run, "--out", policy_file)
    assert code == 0, err
    exported = last_json(out)
    assert (
        exported["algo"] == "ppo"
        and exported["agent_step"] == latest_step(smoke_run)
        and exported["obs_mode"] == "diff64"
    )
    code, out, err = run_cli(capsys, "eval", policy_file, "--episodes", 2)
    assert code == 0, err
    from_file = last_json(out)
    assert from_file["returns"] == returns and from_file["lengths"] == result["lengths"]

    # Self-describing and pickle-free: plain msgpack, with the format and the config readable as JSON.
    doc = msgpack.unpackb(policy_file.read_bytes(), ext_hook=lambda code, data: msgpack.ExtType(code, data))
    assert doc["format"] == "jaxpong-policy" and doc["format_version"] == 1
    assert json.loads(doc["config"])["model"]["obs_mode"] == "diff64"
    assert isinstance(doc["params"], dict)


def test_pg_runs_evaluate_and_record(pg_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", pg_run, "--episodes", 1, "--greedy")
    assert code == 0, err
    result = last_json(out)
    assert result["algo"] == "pg" and result["episodes"] == 1 and -21 <= result["returns"][0] <= 21
    out_file = tmp_path / "pg.mp4"
    code, out, err = run_cli(capsys, "video", pg_run, "--out", out_file, "--max-steps", 12)
    assert code == 0, err
    assert decode_video(out_file).shape == (13, 210, 160, 3)


# -- evaluation during training (2 ranks), best checkpoint, final clip, learning curve -----------------


def test_eval_every_logs_keeps_the_best_and_only_rank_0_evaluates(eval_run, capsys):
    lines = read_jsonl(eval_run / "metrics.jsonl")
    updates = [l["update"] for l in lines]
    assert updates == sorted(set(updates))  # evaluations join their update's line: one line per update
    evals = [l for l in lines if "eval/mean_return" in l]
    assert [l["update"] for l in evals] == [u for u in updates if u % 2 == 0]
    assert all(-21 <= l["eval/mean_return"] <= 21 and l["eval/episodes"] == 1 for l in evals)
    stderr = (eval_run / "stderr.txt").read_text()
    assert stderr.count("eval at update") == len(evals)  # rank 0 alone evaluated
    tb_events = b"".join(p.read_bytes() for p in (eval_run / "tb").iterdir())
    assert b"eval/mean_return" in tb_events
    ranks = read_jsonl(eval_run / "ranks.jsonl")
    assert {r["rank"] for r in ranks if "eval_s" in r} == {0}  # rank 0's evaluation time is on record

    best_steps = sorted(int(p.name) for p in (eval_run / "checkpoints_best").iterdir() if p.name.isdigit())
    assert len(best_steps) == 1  # keep 1
    best = max(l["eval/mean_return"] for l in evals)
    first_best = next(l for l in evals if l["eval/mean_return"] == best)
    assert best_steps[0] == first_best["step"]
    # The same greedy games, replayed from the best checkpoint by `eval`, give the logged numbers.
    code, out, err = run_cli(capsys, "eval", eval_run, "--checkpoint", "best", "--greedy", "--episodes", 1)
    assert code == 0, err
    result = last_json(out)
    assert result["checkpoint_step"] == best_steps[0]
    assert (result["mean_return"], result["min_return"], result["max_return"]) == (
        first_best["eval/mean_return"],
        first_best["eval/min_return"],
        first_best["eval/max_return"],
    )


def test_training_writes_a_learning_curve_and_a_final_clip(eval_run, smoke_run):
    for run in (eval_run, smoke_run):
        assert (run / "learning_curve.png").read_bytes()[:8] == PNG_MAGIC
    frames = decode_video(eval_run / "videos" / "final.mp4")
    assert frames.shape[1:] == (210, 160, 3) and 2 <= len(frames) <= 601
    assert frames.std() > 10  # a picture, not a blank


# -- video -----------------------------------------------------------------------------------------


def test_video_mp4_has_one_frame_per_agent_step_and_gif_on_request(smoke_run, tmp_path, capsys):
    mp4 = tmp_path / "clips" / "game.mp4"
    code, out, err = run_cli(capsys, "video", smoke_run, "--out", mp4, "--max-steps", 40)
    assert code == 0, err
    info = last_json(out)
    assert info["frames"] == 41 and info["agent_steps"] == 40
    frames = decode_video(mp4)
    assert frames.shape == (41, 210, 160, 3)  # the opening screen + one per agent step, native size, colour
    assert np.ptp(frames[..., 0].astype(int) - frames[..., 1].astype(int)) > 50  # colour, not grey

    import imageio.v3 as iio

    gif = tmp_path / "game.gif"
    code, out, err = run_cli(capsys, "video", smoke_run, "--out", gif, "--max-steps", 20, "--greedy")
    assert code == 0, err
    pictures = iio.imread(gif)
    # GIF merges identical consecutive frames (adding up their durations), so at most steps + 1 remain.
    assert pictures.shape[1:3] == (210, 160) and 2 <= len(pictures) <= 21


def test_video_shows_the_game_the_policy_plays_with_its_score(smoke_run, tmp_path):
    """The colour frames are the policy's game (the same motion as the policy's own grey frames), and the
    score drawn at the top changes exactly one step after the score read from the console changes."""
    from PIL import Image

    from jaxpong.watch import policy as policy_lib
    from jaxpong.watch import video

    loaded = policy_lib.load(smoke_run)
    items = list(video.play(loaded.cfg, loaded.params, seed=1, greedy=False, max_steps=150))
    assert len(items) == 151
    colour = np.stack([frame for frame, _, _ in items])
    seen = np.stack([obs[-1] for _, obs, _ in items]).astype(np.float64)  # the policy's newest 84x84 frame
    scores = [score for _, _, score in items]

    changes = [i for i in range(1, len(scores)) if scores[i] != scores[i - 1]]
    assert changes, "expected a point within 150 steps"
    drawn = [i for i in range(1, len(colour)) if not np.array_equal(colour[i, :24], colour[i - 1, :24])]
    assert drawn == [i + 1 for i in changes if i + 1 < len(colour)]

    def grey84(frame):
        grey = (frame.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.float32)
        return np.asarray(Image.fromarray(grey, mode="F").resize((84, 84), Image.BOX), np.float64)

    motion_colour = np.diff(np.stack([grey84(f) for f in colour]), axis=0)
    motion_seen = np.diff(seen, axis=0)
    moving = [i for i in range(len(motion_seen)) if np.abs(motion_seen[i]).sum() > 0]
    assert len(moving) > 100
    correlations = [np.corrcoef(motion_colour[i].ravel(), motion_seen[i].ravel())[0, 1] for i in moving]
    assert min(correlations) > 0.8, min(correlations)

    # `record` plays the same game (same seed) and reports its final score.
    info = video.record(loaded.cfg, loaded.params, tmp_path / "same.gif", seed=1, max_steps=150)
    assert info["frames"] == 151 and (info["agent_score"], info["opponent_score"]) == scores[-1]


# -- plot ------------------------------------------------------------------------------------------


def test_plot_puts_several_runs_on_one_png(smoke_run, eval_run, tmp_path, capsys):
    out = tmp_path / "curves.png"
    code, stdout, err = run_cli(capsys, "plot", smoke_run, eval_run, "--out", out)
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG_MAGIC
    import imageio.v3 as iio

    height, width = iio.imread(out).shape[:2]
    assert width > 2 * height  # three panels side by side

    from jaxpong.watch.plots import run_labels

    assert run_labels([smoke_run, eval_run]) == [f"{smoke_run.parent.name}/run", f"{eval_run.parent.name}/run"]


def test_plot_at_reports_each_run_at_wall_clock_times(tmp_path, capsys):
    run = tmp_path / "hand"
    run.mkdir()
    lines = [  # process_s, step, trailing mean, 2016 running reward
        {
            "update": 1,
            "step": 100,
            "time_s": 1.0,
            "process_s": 5.0,
            "charts/return_last20": None,
            "charts/window_reward_ema": -1.0,
            "charts/episodes": 0,
        },
        {
            "update": 2,
            "step": 200,
            "time_s": 11.0,
            "process_s": 15.0,
            "charts/return_last20": -20.5,
            "charts/window_reward_ema": -0.9,
            "charts/episodes": 3,
        },
        {
            "update": 3,
            "step": 300,
            "time_s": 21.0,
            "process_s": 25.0,
            "charts/return_last20": -19.0,
            "charts/window_reward_ema": -0.8,
            "charts/episodes": 7,
        },
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    code, stdout, err = run_cli(capsys, "plot", run, "--out", tmp_path / "c.png", "--at", "4,15,24.9,30,200")
    assert code == 0, err
    rows = json.loads(stdout.strip().splitlines()[-1])["snapshots"]
    got = [(r["at_s"], r["step"], r["charts/return_last20"], r["charts/window_reward_ema"]) for r in rows]
    assert got == [
        (4.0, None, None, None),
        (15.0, 200, -20.5, -0.9),
        (24.9, 200, -20.5, -0.9),
        (30.0, 300, -19.0, -0.8),
        (200.0, None, None, None),
    ]  # 200 s: the run had long stopped
    code, _, err = run_cli(capsys, "plot", run, "--out", tmp_path / "c.png", "--at", "soon")
    assert code == 2 and "--at 'soon'" in err


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(smoke_run, tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    no_checkpoints = tmp_path / "fresh"
    no_checkpoints.mkdir()
    shutil.copy(smoke_run / "config.yaml", no_checkpoints / "config.yaml")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n")
    png = smoke_run / "learning_curve.png"
    damaged_run = tmp_path / "damaged_run"
    shutil.copytree(smoke_run, damaged_run)
    for data_file in (damaged_run / "checkpoints" / str(latest_step(smoke_run)) / "state").rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[:100])
    damaged = tmp_path / "damaged.policy"
    assert main(["export", str(smoke_run), "--out", str(damaged)]) == 0
    damaged.write_bytes(damaged.read_bytes()[:5000])
    capsys.readouterr()
    cases = [
        (["eval", tmp_path / "missing"], "does not exist"),
        (["eval", not_a_run], "not a jaxpong run directory"),
        (["eval", no_checkpoints], "has no checkpoint"),
        (["eval", text_file], "not a jaxpong policy file"),
        (["video", png, "--max-steps", 5], "not a jaxpong policy file"),
        (["eval", damaged], "damaged"),
        (["eval", damaged_run], "cannot be restored"),
        (["eval", smoke_run, "--checkpoint", 7], "not among the checkpoints"),
        (["eval", smoke_run, "--checkpoint", "best"], "no best checkpoint"),
        (["eval", smoke_run, "--checkpoint", "soon"], "not accepted"),
        (["eval", smoke_run, "--episodes", 0], "must be >= 1"),
        (["eval", damaged, "--checkpoint", 1024], "applies to run directories"),
        (["video", smoke_run, "--out", tmp_path / "game.avi"], ".mp4 or .gif"),
        (["video", smoke_run, "--out", "/proc/game.mp4"], "cannot be written"),
        (["plot", not_a_run], "no metrics.jsonl"),
        (["plot", smoke_run, "--out", tmp_path / "curve.txt"], "image file"),
        (["export", smoke_run, "--out", tmp_path], "is a directory"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2, (argv, out, err)
        assert len(errors) == 1 and message in errors[0], (argv, err)
        assert "Traceback" not in err and out == "", (argv, err)
    # the damaged checkpoint is read from a copy, but the message names the run's own folder
    code, out, err = run_cli(capsys, "eval", damaged_run)
    assert str(damaged_run / "checkpoints") in err and "jaxpong-read-" not in err, err

"""What a newcomer meets in the first hour: suggestions for misspelt flags and misplaced YAML keys, help
that shows choices and one default, --version, the ETA under a time limit, the printed resume command,
`make train` after Ctrl-C, GIF timing, clips during training, and `plot --at` past a run's end.

Real processes throughout (the CLI, `make`, envpool training); exact expected lines and values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import jaxpong
from conftest import REPO, SMOKE_CONFIG, read_jsonl
from jaxpong.base import config as config_lib
from jaxpong.cli import dispatch as cli
from jaxpong.store.logger import eta_seconds, format_eta
from jaxpong.training import stop


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---- typos: flags, commands, YAML keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["train", "--num-env", "16"],
            "jaxpong train: error: unrecognized arguments: --num-env 16; did you mean --num-envs?",
        ),
        (
            ["train", "--learning-rte=0.1"],
            "jaxpong train: error: unrecognized arguments: --learning-rte=0.1; did you mean --learning-rate?",
        ),
        (
            ["eval", "runs/x", "--episode", "3"],
            "jaxpong eval: error: unrecognized arguments: --episode 3; did you mean --episodes?",
        ),
        (["plot", "runs/x", "--zzz"], "jaxpong plot: error: unrecognized arguments: --zzz; see jaxpong plot --help"),
        (
            ["trian"],
            "jaxpong: error: argument COMMAND: invalid choice: 'trian' (choose from 'train', 'bench', 'eval', "
            "'video', 'plot', 'export', 'report', 'simulate'); did you mean train?",
        ),
        (["train", "--algo", "ppg"], "jaxpong train: error: algo.algo: 'ppg' is not accepted; choose one of ppo, pg"),
    ],
)
def test_misspelt_flags_and_commands_name_the_command_and_the_nearest_option(jaxpong_cli, argv, expected):
    assert one_error_line(*jaxpong_cli(*argv, timeout=60)) == expected


def test_debug_flags_are_hidden_from_help_but_still_work():
    args = cli.build_parser().parse_args(["train", "--debug-nan-at-update", "3", "--debug-nan-count", "2"])
    cfg = config_lib.build(None, config_lib.flags_to_overrides(args))
    assert (cfg.run.debug_nan_at_update, cfg.run.debug_nan_count) == (3, 2)
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--debug-nan" not in help_text


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        (
            "algo:\n  num_envs: 16\n",
            "algo.num_envs is not a field of algo: num_envs belongs under env: (as env.num_envs)",
        ),
        ("env:\n  num_env: 16\n", "unknown key env.num_env; did you mean env.num_envs?"),
        ("run:\n  learning_rte: 0.1\n", "unknown key run.learning_rte; did you mean algo.learning_rate?"),
        ("num_envs: 16\n", "num_envs is a field, not a section; it belongs under env: (as env.num_envs)"),
        (
            "algos:\n  gamma: 0.9\n",
            "unknown section 'algos'; did you mean algo? sections are env, model, algo, dist, run",
        ),
    ],
)
def test_misplaced_and_misspelt_yaml_keys_say_where_they_belong(jaxpong_cli, tmp_path, yaml_text, expected):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml_text)
    line = one_error_line(*jaxpong_cli("train", "--config", path, "--run-dir", tmp_path / "run", timeout=60))
    assert line == f"jaxpong train: error: config file {str(path)!r}: {expected}"
    assert not (tmp_path / "run").exists()


def test_config_given_a_folder_says_so(jaxpong_cli):
    line = one_error_line(*jaxpong_cli("train", "--config", "configs", timeout=60))
    assert line == (
        "jaxpong train: error: config file 'configs' is a folder; give a YAML file in it, such as configs/default.yaml"
    )


def test_a_missing_run_directory_reads_alike_in_train_and_eval(jaxpong_cli, tmp_path):
    missing = tmp_path / "no-such-run"
    train = one_error_line(*jaxpong_cli("train", "--resume", missing, timeout=60))
    evaluate = one_error_line(*jaxpong_cli("eval", missing, timeout=60))
    assert train == (
        f"jaxpong train: error: --resume {str(missing)!r} does not exist (not a jaxpong run directory); "
        "give a run directory (with config.yaml and checkpoints/)"
    )
    assert evaluate == (
        f"jaxpong eval: error: {str(missing)!r} does not exist; give a run directory (with "
        "config.yaml and checkpoints/) or a file written by `jaxpong export`"
    )


# ---- help and --version ------------------------------------------------------------------------------


def help_entries(text: str) -> dict[str, str]:
    """Option -> its whole help entry (argparse wraps long ones onto the next lines)."""
    entries, name = {}, None
    for line in text.splitlines():
        if line.strip().startswith("-"):
            name = line.split()[0].rstrip(",")
            entries[name] = line
        elif name and line.strip():
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_help_shows_choices_and_each_default_once(jaxpong_cli):
    code, out, err = jaxpong_cli("train", "--help")
    assert code == 0, err
    entries = help_entries(out)
    assert entries["--algo"].split()[:2] == ["--algo", "{ppo,pg}"]
    assert entries["--network"].split()[:2] == ["--network", "{mlp,small_cnn,nature_cnn}"]
    assert entries["--optimizer"].split()[:2] == ["--optimizer", "{adam,rmsprop}"]
    # The built-in defaults are configs/default.yaml's, and help shows them.
    assert "[model; default: area32]" in entries["--obs-mode"]
    assert "[env; default: half]" in entries["--batch-size"]
    for command in ("train", "bench", "eval", "video", "plot", "export", "report", "simulate"):
        code, out, err = jaxpong_cli(command, "--help")
        assert code == 0, err
        for option, entry in help_entries(out).items():
            assert "(default: None)" not in entry, (command, option)
    # argparse appends "(default: X)" only where the help text does not state the default itself.
    for command, parser in cli.build_parser().commands.items():
        formatter = parser.formatter_class(command)
        for action in parser._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS):
                continue
            shown = formatter._get_help_string(action)
            if "default" in action.help or action.default in (None, False, argparse.SUPPRESS) or action.required:
                assert shown == action.help, (command, action.option_strings)
            else:
                assert shown == action.help + " (default: %(default)s)", (command, action.option_strings)
    code, out, err = jaxpong_cli("export", "--help")
    out_help = help_entries(out)["--out"]
    assert "required" in out_help and "default" not in out_help


def test_version_comes_from_the_package_metadata(jaxpong_cli):
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    code, out, err = jaxpong_cli("--version", timeout=60)
    assert code == 0 and out.strip() == f"jaxpong {declared}"
    import jaxpong

    assert jaxpong.__version__ == declared


# ---- the ETA, the resume command, `make train` after Ctrl-C --------------------------------------------


def test_eta_is_the_earlier_of_the_step_total_and_the_time_limit():
    # 10M steps at 1,000 steps/s would take 2.8 hours; a 60-s limit of which 20 s have passed leaves 40 s.
    assert eta_seconds(10_000_000, 0, 1000.0, time_limit_s=60, process_s=20) == (40.0, "time limit")
    assert eta_seconds(10_000, 5_000, 1000.0, time_limit_s=60, process_s=20) == (5.0, "total steps")
    assert eta_seconds(10_000, 1_000, 500.0) == (18.0, "total steps")
    assert eta_seconds(10_000, 0, 0.0, time_limit_s=60, process_s=75) == (0.0, "time limit")  # overdue
    seconds, rule = eta_seconds(10_000, 0, 0.0)  # no speed yet, no limit
    assert math.isinf(seconds) and rule == ""
    assert [format_eta(s) for s in (40.0, 119.4, 150.0, math.inf)] == ["40 s", "119 s", "2.5 min", "-"]


def test_resume_command_is_the_one_that_started_the_run(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXPONG_UNDER_MAKE", raising=False)
    monkeypatch.delenv("JAXPONG_LAUNCH_START", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    monkeypatch.setattr(sys, "argv", ["/somewhere/jaxpong/__main__.py", "train"])
    assert stop.resume_command("runs/a b") == ".venv/bin/python -m jaxpong train --resume 'runs/a b'"
    assert stop.resume_command("runs/x", ranks=4) == "mpirun -n 4 .venv/bin/python -m jaxpong train --resume runs/x"
    monkeypatch.setattr(sys, "executable", "/opt/py/bin/python3")
    assert stop.resume_command("runs/x") == "/opt/py/bin/python3 -m jaxpong train --resume runs/x"
    monkeypatch.setattr(sys, "argv", [str(tmp_path / ".venv" / "bin" / "jaxpong"), "train"])  # the console script
    assert stop.resume_command("runs/x") == "jaxpong train --resume runs/x"
    assert stop.resume_command("runs/x", 1, ("--total-steps", "20")) == "jaxpong train --resume runs/x --total-steps 20"
    monkeypatch.setenv("JAXPONG_LAUNCH_START", "1.0")  # the ranks of `train --ranks 4`
    assert stop.resume_command("runs/x", ranks=4) == "jaxpong train --resume runs/x --ranks 4"
    monkeypatch.setenv("JAXPONG_UNDER_MAKE", "1")  # as `make train` sets it
    assert stop.resume_command("runs/x", ranks=4) == "make train RESUME=runs/x RANKS=4"
    monkeypatch.delenv("JAXPONG_LAUNCH_START")
    assert stop.resume_command("runs/x") == "make train RESUME=runs/x"
    assert (
        stop.resume_command("runs/x", 1, ("--target-return", "nan"))
        == "make train RESUME=runs/x ARGS='--target-return nan'"
    )


def test_every_stop_ends_with_the_line_that_says_how_to_go_on(monkeypatch, tmp_path):
    """The last line for each way a run stops (the signal's and the I/O failure's stop lines carry it)."""
    monkeypatch.delenv("JAXPONG_UNDER_MAKE", raising=False)
    monkeypatch.delenv("JAXPONG_LAUNCH_START", raising=False)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "jaxpong"), "train"])
    cfg = jaxpong.Config.default()
    cfg.run.total_steps, cfg.run.target_return = 1_000_000, 20.0

    def last(reason, code=0, ranks=1, mean=None, checkpoint=True):
        return stop.next_line(stop.stop_kind(reason, code), cfg, "runs/x", ranks, mean, checkpoint)

    assert last("reached --time-limit-s 60") == "to continue: jaxpong train --resume runs/x"
    assert last("reached --total-steps 1,000,000") == (
        "to train further: jaxpong train --resume runs/x --total-steps 2000000"
    )
    assert last("reached --target-return 20 (mean of the last 20 games +20.15)", mean=20.15) == (
        "won Pong (the last 20 games averaged +20.15, target +20); the agent is in runs/x: watch it with "
        "`jaxpong eval runs/x` or `jaxpong video runs/x`; to train on: "
        "jaxpong train --resume runs/x --target-return nan"
    )
    assert last("2 consecutive updates had non-finite gradients; ...", code=1, ranks=2) == (
        "to continue: mpirun -n 2 jaxpong train --resume runs/x"
    )
    assert last("signal SIGTERM received; checkpoint written; to continue: ...") is None
    assert last("reached --time-limit-s 60", checkpoint=False) is None  # nothing to continue from
    cfg.run.target_return = 0.0
    assert last("reached --target-return 0", mean=3.5).startswith("reached --target-return 0 (the last 20")
    monkeypatch.setenv("JAXPONG_UNDER_MAKE", "1")
    assert last("reached --total-steps 1,000,000") == (
        "to train further: make train RESUME=runs/x ARGS='--total-steps 2000000'"
    )


def _read_until(proc, pattern: str, timeout: float) -> tuple[str, re.Match | None]:
    """Read the process's merged output until a line matches `pattern` (or it ends, or time runs out)."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        match = re.search(pattern, line)
        if match:
            return seen, match
    return seen, None


ETA_LINE = r"elapsed (\d+)s  eta ([\d.]+) (s|min) \(time limit\)"


def eta_s(match: re.Match) -> float:
    return float(match.group(2)) * (60 if match.group(3) == "min" else 1)


def test_make_train_ctrl_c_stops_cleanly_and_prints_the_command_that_continues(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground group, make included) under `make train`: jaxpong finishes the
    round, checkpoints, prints `make train RESUME=...` and exits 0, so make reports no error (make itself then
    ends by the SIGINT it received, as any interrupted make does). SIGTERM to jaxpong alone ends make with 0.
    The printed command then continues the run."""
    run_dir = tmp_path / "run"
    # -o: the venv is installed; do not let a newer Makefile or pyproject.toml reinstall it here.
    make = ["make", "-s", "-o", ".venv/.installed", f"PY={sys.executable}"]
    limit = 400  # the ETA's clock: 10^8 steps would take hours, the limit ends the run first
    proc = subprocess.Popen(
        [
            *make,
            "train",
            f"CONFIG={SMOKE_CONFIG}",
            f"ARGS=--run-dir {run_dir} --total-steps 100000000 --time-limit-s {limit} --progress-every-s 1 "
            "--tensorboard false --checkpoint-every 1000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "1000"},
    )
    try:
        # Generous waits: on a shared machine start-up alone can take minutes.
        seen, first = _read_until(proc, ETA_LINE, timeout=300)
        assert first, seen
        more, second = _read_until(proc, ETA_LINE, timeout=120)
        assert second, seen + more
        for match in (first, second):
            # The limit counts from the process start, before training's own clock (elapsed) started.
            assert 0 < eta_s(match) <= limit - int(match.group(1)) + 6, match.group(0)  # 6: "min" has 0.1 min steps
        assert eta_s(second) <= eta_s(first)  # equal when both round to the same 0.1 min
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = seen + more + rest
    # make ends by the SIGINT it received too, or (seen once in the full suite, cause not found) with
    # jaxpong's 0; either way it printed no error, which is what a user sees.
    assert proc.returncode in (-signal.SIGINT, 0), output
    assert "make: ***" not in output and "Error" not in output
    assert "jaxpong train: stopped cleanly (status 0 under make train; 75 otherwise)" in output
    stop = re.search(
        r"stopped: signal SIGINT received; checkpoint written; to continue: (.*) \(update (\d+), "
        r"step ([\d,]+),",
        output,
    )
    assert stop, output
    assert stop.group(1) == f"make train RESUME={run_dir}"
    step = int(stop.group(3).replace(",", ""))
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [step]

    # The printed command continues the run; SIGTERM to jaxpong alone (a scheduler's stop) ends make with 0.
    command = shlex.split(stop.group(1))
    proc = subprocess.Popen(
        [*make, *command[1:], "ARGS=--progress-every-s 1 --total-steps 100000000"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen, started = _read_until(proc, r"step [\d,]+  ", timeout=300)
        assert started, seen
        jaxpong_pid = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout)
        os.kill(jaxpong_pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = seen + rest
    assert command[:2] == ["make", "train"] and proc.returncode == 0, output
    assert f"resumed from the checkpoint at step {step:,} (update {stop.group(2)}" in output
    assert "stopped: signal SIGTERM received; checkpoint written; to continue: make train RESUME=" in output


# ---- videos ------------------------------------------------------------------------------------------


def test_gif_frame_times_add_up_to_the_asked_fps():
    from jaxpong.watch.video import gif_durations

    assert gif_durations(6, 15) == [70, 60, 70, 70, 60, 70]  # 1/15 s is not a whole number of 1/100 s
    assert sum(gif_durations(15, 15)) == 1000 and sum(gif_durations(300, 15)) == 20000
    assert gif_durations(4, 50) == [20, 20, 20, 20]
    assert gif_durations(3, 10) == [100, 100, 100]


def test_a_gif_plays_at_the_fps_it_reports(smoke_run, tmp_path, jaxpong_cli):
    from PIL import Image

    gif = tmp_path / "clip.gif"
    code, out, err = jaxpong_cli("video", smoke_run, "--out", gif, "--max-steps", 29, "--seed", 3)
    assert code == 0, err
    info = json.loads(out.strip().splitlines()[-1])
    assert (info["frames"], info["fps"]) == (30, 15.0)
    assert "30 frames (29 agent steps, 2.0 s at 15 fps)" in err
    with Image.open(gif) as image:  # identical consecutive frames are merged, their times added
        total_ms = 0
        for index in range(image.n_frames):
            image.seek(index)
            total_ms += image.info["duration"]
    assert total_ms == 2000
    line = one_error_line(*jaxpong_cli("video", smoke_run, "--out", tmp_path / "fast.gif", "--fps", 60))
    assert line == (
        "jaxpong video: error: --fps 60: a GIF plays at most 50 frames per second (its frame times are in "
        "hundredths of a second, and players slow shorter ones down); use .mp4 for more"
    )


def test_video_every_records_clips_between_rounds(jaxpong_cli, tmp_path):
    import imageio.v2 as imageio_v2

    run_dir = tmp_path / "run"
    # Games cut at 120 agent steps: every clip ends there, and the run's reset steps are left out of its steps.
    code, out, err = jaxpong_cli(
        "train",
        "--config",
        SMOKE_CONFIG,
        "--run-dir",
        run_dir,
        "--total-steps",
        1000,
        "--video-every",
        2,
        "--max-episode-steps",
        120,
        "--tensorboard",
        "false",
        timeout=300,
    )
    assert code == 0, err
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [l["update"] for l in lines] == [1, 2, 3, 4]
    # Rank 0 recorded after updates 2 and 4, each clip named by the agent step it shows.
    names = [f"step_{lines[1]['step']}.mp4", f"step_{lines[3]['step']}.mp4"]
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == sorted(names)
    for update, name in zip((2, 4), names):
        reader = imageio_v2.get_reader(run_dir / "videos" / name, format="FFMPEG")
        frames = np.stack([frame for frame in reader])  # list(reader) would ask its length: inf
        reader.close()
        assert frames.shape == (121, 210, 160, 3)  # the opening screen + 120 agent steps
        assert f"video at update {update}: {run_dir / 'videos' / name} (120 agent steps, score " in err
    records = read_jsonl(run_dir / "ranks.jsonl")
    assert [r["update"] for r in records if "eval_s" in r] == [2, 4]
    assert all(r["eval_s"] > 0 for r in records if "eval_s" in r)


def test_a_clip_due_widens_the_next_hang_limit_like_an_evaluation():
    from jaxpong.training.between_rounds import eval_allowance_s

    cfg = config_lib.build(None, {"run": {"video_every": 3}, "dist": {"hang_timeout_s": 20}})
    for update, allowance in ((2, 0.0), (3, 450.0), (6, 450.0), (7, 0.0)):
        assert eval_allowance_s(cfg, update, last_eval_s=150.0) == allowance, update
    assert eval_allowance_s(cfg, 3, last_eval_s=1.0) == 200.0  # at least 10x the hang timeout


# ---- plot --at past a run's end; the 2016 column only for pg ------------------------------------------


def fake_run(path: Path, algo: str, ends_s: float) -> Path:
    """A run directory as train writes it, as far as `plot` reads it: config.yaml and metrics.jsonl."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"algo:\n  algo: {algo}\n")
    rows = [
        {
            "update": u,
            "step": 1000 * u,
            "time_s": 10.0 * u,
            "process_s": 10.0 * u + 5,
            "charts/SPS": 100.0,
            "charts/episodes": u,
            "charts/return_last20": -21.0 + u,
            "charts/window_reward_ema": -0.5 + 0.1 * u,
        }
        for u in range(1, int((ends_s - 5) / 10) + 1)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plot_at_past_the_end_says_it_shows_the_final_state(jaxpong_cli, tmp_path):
    ppo = fake_run(tmp_path / "ppo_run", "ppo", ends_s=65)  # last line at process_s 65
    code, out, err = jaxpong_cli("plot", ppo, "--out", tmp_path / "c.png", "--at", "30,90", timeout=120)
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["snapshots"]
    assert [(r["at_s"], r["step"], r["after_end"], r["ended_s"]) for r in rows] == [
        (30.0, 2000, False, 65.0),
        (90.0, 6000, True, 65.0),
    ]
    assert "90 (ended at 65)" in out
    assert "note: ppo_run ended at 65 s; rows after that show its final state" in out
    assert "2016 running reward" not in out  # a ppo run: the 2016 criterion is not shown

    pg = fake_run(tmp_path / "pg_run", "pg", ends_s=65)
    code, out, err = jaxpong_cli("plot", ppo, pg, "--out", tmp_path / "d.png", "--at", "30", timeout=120)
    assert code == 0, err
    assert "2016 running reward/window" in out
    table = [l for l in out.splitlines() if "_run" in l and "│" in l]
    assert [cell.strip() for cell in table[0].split("│")[1:-1]] == ["ppo_run", "30", "2,000", "-19.00", "-", "2"]
    assert [cell.strip() for cell in table[1].split("│")[1:-1]] == ["pg_run", "30", "2,000", "-19.00", "-0.30", "2"]

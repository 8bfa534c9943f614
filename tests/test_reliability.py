"""Reliability, round two: one owner per run directory, failed writes, refused resumes, the compile
allowance of a resumed process, independent random streams, safe checkpoint replacement, and a signal
handler that only sets a flag. Real processes, a real full filesystem and real orbax wherever the
behaviour lives there."""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from conftest import REPO, SMOKE_CONFIG, logged_updates, read_jsonl, run_jaxpong, start_logged, wait_for
from jaxpong.base.config import Config, to_dict
from jaxpong.learn.learner import minibatch_order
from jaxpong.play import keys
from jaxpong.ranks.watchdog import hang_limit
from jaxpong.store.checkpoint import DEFINING_FIELDS, Checkpoints, ResumeRefused, resume_changes
from jaxpong.store.rundir import LOCK_NAME, RunLock, WriteFailed, prepare_new

TRAIN = [sys.executable, "-m", "jaxpong", "train", "--config", str(SMOKE_CONFIG)]
MPIRUN = Path(sys.executable).parent / "mpirun"


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


# -- one owner per run directory ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_training_on_a_live_run_dir_is_refused_and_the_first_finishes(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "first.log"
    first = start_logged(
        [*TRAIN, "--run-dir", run_dir, "--total-steps", "10000000", "--time-limit-s", "40", "--checkpoint-every", "2"],
        log,
    )
    try:
        wait_for(lambda: logged_updates(run_dir) >= 2, first, "2 updates")
        owner = f"PID {first.pid} on host {socket.gethostname()}"
        for flags in (
            ["--config", SMOKE_CONFIG, "--run-dir", run_dir, "--overwrite"],
            ["--resume", run_dir],
            ["--config", SMOKE_CONFIG, "--run-dir", run_dir],
        ):
            code, out, err = run_jaxpong("train", *flags, timeout=120)
            assert code == 2, err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and owner in lines[0] and "is in use" in lines[0], err
            assert first.poll() is None  # still training, its files untouched
        assert first.wait(timeout=120) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    text = log.read_text()
    assert "Traceback" not in text and "reached --time-limit-s 40" in text
    updates = [r["update"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert updates == list(range(1, len(updates) + 1))  # one unbroken run, nothing written twice
    assert _checkpoint_steps(run_dir)[-1] == read_jsonl(run_dir / "metrics.jsonl")[-1]["step"]
    # The lock went with the process: the directory can be taken (and, with --overwrite, replaced) again.
    RunLock(run_dir).acquire().release()


def test_run_lock_is_exclusive_and_names_its_owner(tmp_path):
    held = RunLock(tmp_path / "run").acquire()
    with pytest.raises(Exception) as refused:
        RunLock(tmp_path / "run").acquire()  # another open file description: flock refuses it
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in str(refused.value)
    held.release()
    RunLock(tmp_path / "run").acquire().release()


def test_overwrite_empties_the_run_dir_around_its_lock(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir).acquire()
    (run_dir / "checkpoints" / "8").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("x: 1\n")
    with pytest.raises(Exception, match="already holds a run"):
        prepare_new(run_dir, overwrite=False)
    prepare_new(run_dir, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
    with pytest.raises(Exception, match="in use"):
        RunLock(run_dir).acquire()  # still held across the overwrite
    lock.release()


# -- a full disk in the middle of a run ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An 80 MiB tmpfs: a real 'No space left on device' in seconds."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def test_a_full_disk_ends_the_run_with_one_line_and_loses_nothing(small_disk, tmp_path):
    """Two ranks: rank 0's failed write stops both (at the next exchange)."""
    run_dir = small_disk / "run"
    log = tmp_path / "full.log"
    proc = start_logged(
        [
            str(MPIRUN),
            "-n",
            "2",
            *TRAIN,
            "--run-dir",
            run_dir,
            "--num-envs",
            "4",
            "--num-threads",
            "1",
            "--total-steps",
            "10000000",
            "--time-limit-s",
            "600",
            "--checkpoint-every",
            "2",
        ],
        log,
    )
    try:
        wait_for(lambda: len(_checkpoint_steps(run_dir)) >= 1 and logged_updates(run_dir) >= 3, proc, "a checkpoint")
        filler = _fill(small_disk)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 74, text
    for noise in ("Traceback", "RESOURCE_EXHAUSTED", "ERROR:absl", "Exception"):
        assert noise not in text, text
    stopped = [line for line in text.splitlines() if "stopped: could not write" in line]
    assert len(stopped) == 1, text
    line = stopped[0]
    assert "No space left on device" in line and str(run_dir) in line
    steps = _checkpoint_steps(run_dir)
    assert steps and f"the newest good checkpoint is step {steps[-1]:,}" in line
    # The command that continues it, as it was started (mpirun around python -m jaxpong).
    assert "resume with: mpirun -n 2 " in line and f"-m jaxpong train --resume {run_dir}" in line
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.isdigit()]
    assert leftovers == [], leftovers  # no partial checkpoint folder left behind

    # Space freed: the run resumes from the kept checkpoint and finishes.
    filler.unlink()
    code, out, err = run_jaxpong("train", "--resume", run_dir, "--total-steps", steps[-1] + 300, timeout=180)
    assert code == 0, err
    assert f"resumed from the checkpoint at step {steps[-1]:,}" in err


def test_write_failed_names_the_operating_systems_reason():
    from jaxpong.store.rundir import write_failure_reason

    assert write_failure_reason(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    wrapped = ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device [source locations...]")
    assert write_failure_reason(wrapped) == "No space left on device"
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied")
        except PermissionError as inner:
            raise RuntimeError("orbax failed") from inner
    except RuntimeError as outer:
        assert write_failure_reason(outer) == "Permission denied"
    assert (
        str(WriteFailed("metrics", Path("/r/metrics.jsonl"), "Disk quota exceeded"))
        == "could not write metrics /r/metrics.jsonl (Disk quota exceeded)"
    )


# -- resumes that would change what is being trained --------------------------------------------------

REFUSED = [
    ("--algo", "pg", "algo.algo = 'ppo'", "'pg'"),
    ("--optimizer", "rmsprop", "algo.optimizer = 'adam'", "'rmsprop'"),
    ("--network", "small_cnn --obs-mode stack84", "model.network = 'mlp'", "'small_cnn'"),
    ("--obs-mode", "diff32", "model.obs_mode = 'diff64'", "'diff32'"),
    ("--actions", "0,2,3", "model.actions = [2, 3]", "[0, 2, 3]"),
    ("--hidden-size", "64", "model.hidden_size = 200", "64"),
    ("--use-bias", "false", "model.use_bias = True", "False"),
]


@pytest.mark.parametrize("flag,value,before,after", REFUSED, ids=[r[0] for r in REFUSED])
def test_resume_refuses_a_changed_model_field(smoke_run, tmp_path, flag, value, before, after):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    code, out, err = run_jaxpong("train", "--resume", run_dir, flag, *value.split(), timeout=120)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    newest = _checkpoint_steps(run_dir)[-1]
    assert f"checkpoint {run_dir / 'checkpoints' / str(newest)} was trained with {before}" in lines[0]
    assert f"asks for {after}" in lines[0]
    assert "--resume-fallback" not in lines[0]


def test_resume_changes_lists_allowed_changes_and_refuses_every_defining_field():
    saved = to_dict(Config())
    cfg = Config()
    cfg.algo.num_steps, cfg.run.time_limit_s, cfg.env.num_envs = 32, 60.0, 4
    assert resume_changes(saved, cfg, Path("ck/8")) == [
        "env.num_envs 32 -> 4",
        "algo.num_steps 64 -> 32",
        "run.time_limit_s 0.0 -> 60.0",
    ]
    assert resume_changes(saved, Config(), Path("ck/8")) == []
    never = Config()
    never.run.target_return = float("nan")
    assert resume_changes(to_dict(never), never, Path("ck/8")) == []  # a nan target_return equals itself
    for section, name in DEFINING_FIELDS:
        cfg = Config()
        old = getattr(getattr(cfg, section), name)
        setattr(
            getattr(cfg, section),
            name,
            [0]
            if isinstance(old, list)
            else (not old if isinstance(old, bool) else old * 2 if isinstance(old, int) else "other"),
        )
        with pytest.raises(ResumeRefused, match=rf"ck/8 was trained with {section}\.{name} = "):
            resume_changes(saved, cfg, Path("ck/8"))
    older = {k: dict(v) for k, v in saved.items()}
    del older["model"]["sparse_input"]  # a field an older version did not write: not compared
    assert resume_changes(older, Config(), Path("ck/8")) == []


def test_resume_logs_the_fields_it_changes(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    yaml_file = tmp_path / "changed.yaml"
    yaml_file.write_text("algo:\n  num_steps: 16\n  update_epochs: 1\n")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    steps = saved["run"]["total_steps"]
    code, out, err = run_jaxpong(
        "train", "--resume", run_dir, "--config", yaml_file, "--total-steps", steps + 300, timeout=300
    )
    assert code == 0, err
    assert (
        f"resume changes 3 setting(s) of the checkpoint's config: algo.num_steps {saved['algo']['num_steps']} -> 16, "
        f"algo.update_epochs {saved['algo']['update_epochs']} -> 1, run.total_steps {steps} -> {steps + 300}"
    ) in err


# -- the compile allowance of a resumed process -------------------------------------------------------


def test_hang_limit_gives_every_process_its_compile_allowance():
    assert hang_limit(30.0, rounds_done=0, slowest_round_s=0.0) == 300.0
    assert hang_limit(30.0, rounds_done=1, slowest_round_s=50.0) == 300.0
    assert hang_limit(30.0, rounds_done=2, slowest_round_s=5.0) == 30.0
    assert hang_limit(30.0, rounds_done=2, slowest_round_s=20.0) == 60.0
    assert hang_limit(30.0, rounds_done=7, slowest_round_s=1.0, compiles=True) == 300.0


@pytest.mark.slow
def test_a_resumed_multi_rank_run_gets_the_compile_allowance(tmp_path):
    """2 ranks, the dense update (it compiles for seconds: ~10 s here without a compile cache) and
    --hang-timeout-s 3: the fresh run and its resume both finish. A resumed process used to get 3 s for
    its first, compiling, update, and aborted there."""
    run_dir = tmp_path / "run"
    flags = [
        "--sparse-input",
        "false",
        "--num-envs",
        "4",
        "--num-steps",
        "16",
        "--num-threads",
        "1",
        "--hang-timeout-s",
        "3",
        "--tensorboard",
        "false",
    ]
    env = {**os.environ, "JAXPONG_COMPILE_CACHE": "off"}
    fresh = subprocess.run(
        [str(MPIRUN), "-n", "2", *TRAIN, *flags, "--run-dir", str(run_dir), "--total-steps", "256"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    resumed = subprocess.run(
        [str(MPIRUN), "-n", "2", *TRAIN[:4], "--resume", str(run_dir), *flags, "--total-steps", "512"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stuck for more than" not in resumed.stderr
    assert "reached --total-steps 512" in resumed.stderr
    first_round = [r for r in read_jsonl(run_dir / "ranks.jsonl") if r["update"] == 3]
    assert len(first_round) == 2 and max(r["compute_s"] for r in first_round) > 3  # it did compile for longer


# -- independent random streams ---------------------------------------------------------------------


def _key_id(key) -> tuple:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _chain(key, rounds: int) -> list:
    """A key and what a consumer that splits (next, sub) each use derives from it: both halves, `rounds` deep."""
    out = []
    for _ in range(rounds):
        key, sub = jax.random.split(key)
        out += [key, sub]
    return out


def test_random_streams_never_share_a_key():
    seed, epochs, ranks, resumes = 7, 4, 16, 3
    root = jax.random.PRNGKey(seed)
    init_key, update_key = jax.random.split(root)
    # Parameters and the update's chain are what they always were for a seed.
    assert _key_id(init_key) == _key_id(keys.stream_root(seed, keys.STREAM_INIT))
    assert _key_id(update_key) == _key_id(keys.stream_root(seed, keys.STREAM_UPDATE))
    used = {"init": [init_key], "update": []}
    key = update_key
    for _ in range(6):  # six rounds of the update: the state's key, its permutation key, the epochs' keys
        next_key, _ = minibatch_order(key, 64, np.arange(1), epochs, 2)
        carried, perm = jax.random.split(key)
        assert _key_id(next_key) == _key_id(carried)  # the learner derives its keys as modelled here
        used["update"] += [key, perm, *jax.random.split(perm, epochs)]
        key = next_key
    # Sampling: per resume, round, game (numbered across ranks) and row (keys.action_noise's path).
    used["sampling"] = []
    for c in range(resumes):
        root = keys.sampling_root(seed, c)
        used["sampling"].append(root)
        for u in range(3):
            round_key = keys.round_key(root, u)
            used["sampling"].append(round_key)
            for g in range(ranks):
                game_key = jax.random.fold_in(round_key, g)
                used["sampling"] += [game_key, *(jax.random.fold_in(game_key, r) for r in range(4))]
    used["eval"] = [keys.stream_root(seed, keys.STREAM_EVAL), *_chain(keys.stream_root(seed, keys.STREAM_EVAL), 3)]
    used["video"] = [keys.stream_root(seed, keys.STREAM_VIDEO), *_chain(keys.stream_root(seed, keys.STREAM_VIDEO), 3)]
    owner: dict = {}
    for stream, ks in used.items():
        for k in ks:
            first = owner.setdefault(_key_id(k), stream)
            assert first == stream, f"a {stream} key is also a {first} key"
    assert len(owner) == sum(len(set(map(_key_id, ks))) for ks in used.values())


# -- a checkpoint replaced only once its replacement is complete ----------------------------------------


def _state(value: float) -> dict:
    return {"w": np.full((3, 4), value, np.float32), "count": np.asarray(int(value), np.int32)}


def test_replacing_a_step_keeps_the_old_copy_until_the_new_one_is_complete(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    ckpts = Checkpoints(tmp_path / "checkpoints", keep=2)
    ckpts.save(8, _state(1.0), {"n": 1})
    ckpts.save(8, _state(2.0), {"n": 2})  # a replacement that completes
    state, meta = ckpts.restore(8, _state(0.0))
    assert meta == {"n": 2} and float(state["w"][0, 0]) == 2.0
    assert sorted(p.name for p in ckpts.directory.iterdir()) == ["8"]

    def fail(self, *args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: write failed: No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", fail)
    with pytest.raises(WriteFailed, match=r"could not write checkpoint .*/8 \(No space left on device\)"):
        ckpts.save(8, _state(3.0), {"n": 3})
    monkeypatch.undo()
    reopened = Checkpoints(tmp_path / "checkpoints", keep=2)
    state, meta = reopened.restore(8, _state(0.0))
    assert meta == {"n": 2} and float(state["w"][0, 0]) == 2.0  # the only copy of step 8 survived
    assert sorted(p.name for p in reopened.directory.iterdir()) == ["8"]


def test_a_replacement_interrupted_between_its_renames_is_undone(tmp_path):
    folder = tmp_path / "checkpoints"
    Checkpoints(folder, keep=2).save(8, _state(1.0), {"n": 1})
    staging = folder / ".replacing"
    staging.mkdir()
    os.rename(folder / "8", staging / "8.old")  # killed after the first rename of a replacement
    reopened = Checkpoints(folder, keep=2)
    assert reopened.steps() == [8]
    assert reopened.restore(8, _state(0.0))[1] == {"n": 1}
    assert not staging.exists()


# -- the signal handler -------------------------------------------------------------------------------


def test_signal_handler_only_sets_the_flag_and_the_main_thread_announces_it(monkeypatch):
    from jaxpong.training.signals import SignalFlag

    flag = SignalFlag()
    written = io.StringIO()
    monkeypatch.setattr(sys, "stderr", written)
    flag._handle(signal.SIGTERM, None)
    assert flag.received == "SIGTERM" and written.getvalue() == ""  # nothing printed from inside the handler
    flag.announce()
    flag.announce()
    assert written.getvalue().count("SIGTERM received: finishing this round") == 1


def test_resume_of_a_checkpoint_without_a_defining_field_compares_it_with_its_default(tmp_path):
    """A checkpoint's config from before algo.proximal existed trained with its default (behaviour): resuming
    it with --proximal ewma is refused with the field named, and the default passes."""
    from jaxpong.base.config import Config, to_dict
    from jaxpong.store.checkpoint import ResumeRefused, resume_changes

    saved = to_dict(Config())
    del saved["algo"]["proximal"]
    ewma = Config()
    ewma.algo.proximal = "ewma"
    with pytest.raises(ResumeRefused, match="algo.proximal = 'behaviour', and this run asks for 'ewma'"):
        resume_changes(saved, ewma, tmp_path)
    assert resume_changes(saved, Config(), tmp_path) == []

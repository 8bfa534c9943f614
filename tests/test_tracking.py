"""W&B tracking (`train --track`) in offline mode: what the W&B run holds is read back from the files it
writes locally (RUN_DIR/wandb/offline-run-*/run-<id>.wandb, parsed by hand) and compared with the run's
own metrics.jsonl and config.yaml; a resumed run continues the same W&B run; and without wandb, `--track`
is one line and exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2  # wandb is in the test extra: these tests run, never skip

from conftest import REPO, SMOKE_CONFIG, read_jsonl, run_jaxpong
from jaxpong.store import tracking
from jaxpong.store.logger import RunLogger


def offline_env(tmp: Path) -> dict:
    """Offline, and W&B's own settings and caches in a folder of the test, not the user's home."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_API_KEY": "",
    }


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log: a 7-byte header (':W&B', magic 0xBEE1, version), then
    LevelDB-log framing (32 KiB blocks; each chunk: crc32, length, type (1 full, 2 first, 3 middle,
    4 last)) around protobuf `Record`s."""
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), path
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def offline_run(path: Path) -> dict:
    """One offline W&B run directory: its run id, config, history rows and media files."""
    (log,) = path.glob("run-*.wandb")
    run_id, config, history = None, {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            history.append(row)
    config.pop("_wandb", None)
    media = sorted(
        p.relative_to(path / "files" / "media").as_posix() for p in (path / "files" / "media").rglob("*") if p.is_file()
    )
    return {"id": run_id, "config": config, "history": history, "media": media}


def nan_to_none(value):
    """W&B stores a config's NaN (run.target_return: nan, say) as JSON null."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def offline_runs(run_dir: Path) -> list[dict]:
    return [offline_run(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def assert_same_scalars(history: list[dict], lines: list[dict]) -> None:
    """Each metrics.jsonl line is one W&B history row holding exactly its scalars, under the same names."""
    rows = [
        {k: v for k, v in row.items() if not k.startswith("_")}
        for row in history
        if not any(k.startswith("media/") for k in row)
    ]
    assert len(rows) == len(lines)
    for row, line in zip(rows, lines, strict=True):
        assert row == tracking.scalars(line)
        assert {k for k in line if k.startswith(("charts/", "losses/"))} <= row.keys()


@pytest.mark.slow
def test_track_offline_mirrors_metrics_config_media_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    env = offline_env(tmp_path)
    code, _, err = run_jaxpong(
        "train",
        "--config",
        SMOKE_CONFIG,
        "--total-steps",
        1024,
        "--run-dir",
        run_dir,
        "--track",
        "--wandb-project",
        "jaxpong-test",
        "--wandb-group",
        "seeds-a",
        "--capture-video",
        env=env,
    )
    assert code == 0, err[-3000:]
    run_id = (run_dir / tracking.RUN_ID_FILE).read_text().strip()
    assert f"W&B run {run_id}" in err
    (first,) = offline_runs(run_dir)
    assert first["id"] == run_id
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [line["update"] for line in lines] == [1, 2, 3, 4]
    assert_same_scalars(first["history"], lines)
    # The resolved config exactly as config.yaml holds it, its _record (versions, world size) included.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert first["config"] == nan_to_none(saved)
    assert first["config"]["run"]["wandb_group"] == "seeds-a" and first["config"]["run"]["track"] is True
    assert first["config"]["_record"]["world_size"] == 1
    # The end-of-run learning curve and final video, logged as media after the last metrics line.
    assert [p.split("/")[0] for p in first["media"]] == ["images", "videos"], first["media"]
    assert first["media"][0].endswith(".png") and first["media"][1].endswith(".mp4")
    last = first["history"][-1]
    assert last["media/learning_curve/_type"] == "image-file" and last["media/final_video/_type"] == "video-file"
    assert last["step"] == lines[-1]["step"]  # plotted at the run's last step

    # Resume: the same W&B run id continues (W&B merges the two offline parts on `wandb sync`).
    code, _, err = run_jaxpong("train", "--resume", run_dir, "--total-steps", 1280, "--capture-video", "false", env=env)
    assert code == 0, err[-3000:]
    assert (run_dir / tracking.RUN_ID_FILE).read_text().strip() == run_id
    again, resumed = offline_runs(run_dir)
    assert again == first and resumed["id"] == run_id
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [line["update"] for line in lines] == [1, 2, 3, 4, 5]
    assert_same_scalars(resumed["history"], lines[4:])
    assert resumed["config"]["_record"]["resume_count"] == 1
    # This process drew a new learning curve but no video: only the curve is logged (no stale video).
    assert [p.split("/")[0] for p in resumed["media"]] == ["images"]


def test_track_without_wandb_is_one_line_and_exit_2(tmp_path):
    """With wandb not importable (as without the extra), --track stops before anything is created."""
    run_dir = tmp_path / "run"
    script = (
        "import sys; sys.modules['wandb'] = None; from jaxpong.cli import main; "
        f"sys.exit(main(['train', '--config', {str(SMOKE_CONFIG)!r}, '--run-dir', {str(run_dir)!r}, '--track']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **offline_env(tmp_path)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "jaxpong train: error: --track needs Weights & Biases, which is not installed; install it with: "
        "pip install 'jaxpong[wandb]'"
    ]
    assert not run_dir.exists()


def _logger_with_config(run_dir: Path, track: bool) -> RunLogger:
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"run": {"track": track, "wandb_project": "p"}}))
    return RunLogger(run_dir, tensorboard=False)


def test_saved_tracking_without_wandb_trains_on_and_says_so(tmp_path, monkeypatch, capsys):
    """A resumed tracked run on a machine without wandb: one line, metrics.jsonl still written."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = _logger_with_config(tmp_path / "run", track=True)
    logger.log({"update": 1, "step": 8, "charts/SPS": 10.0})
    logger.log({"update": 2, "step": 16, "charts/SPS": 11.0})
    logger.close()
    assert logger.tracker is None
    assert [line["update"] for line in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "pip install 'jaxpong[wandb]'; training goes on without W&B" in said[0]


def test_a_wandb_failure_is_one_line_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    logger = _logger_with_config(tmp_path / "run", track=True)
    logger.log({"update": 1, "step": 8})
    logger.log({"update": 2, "step": 16})
    logger.close()
    assert logger.tracker is None and not (tmp_path / "run" / "wandb").exists()
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1
    assert said[0].endswith(
        "W&B tracking is off for this run (UsageError: No API key configured. Use `wandb login` "
        "to log in.); metrics.jsonl and TensorBoard are unaffected"
    )


def test_untracked_run_never_imports_wandb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import would raise
    logger = _logger_with_config(tmp_path / "run", track=False)
    logger.log({"update": 1, "step": 8})
    logger.close()
    assert logger.tracker is None and not (tmp_path / "run" / tracking.RUN_ID_FILE).exists()


def test_scalars_are_the_finite_numbers_of_a_line():
    line = {
        "update": 3,
        "step": 768,
        "charts/SPS": 12.5,
        "losses/approx_kl": float("nan"),
        "note": "x",
        "flag": True,
        "charts/episodic_return": float("inf"),
        "comm/world_size": 1,
    }
    assert tracking.scalars(line) == {"update": 3, "step": 768, "charts/SPS": 12.5, "comm/world_size": 1}


def test_run_id_is_made_once_and_kept(tmp_path):
    first = tracking.run_id(tmp_path)
    assert len(first) == 8 and first.isalnum() and first == first.lower()
    assert tracking.run_id(tmp_path) == first
    assert (tmp_path / tracking.RUN_ID_FILE).read_text().strip() == first

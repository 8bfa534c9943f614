"""The configuration and the command line: precedence, help, and every bad input as one line with exit status 2.

None of these start training: errors must be reported before jax or envpool are even imported.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import nan_equal
from jaxpong.base import config as config_lib
from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.cli import dispatch as cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build_from_argv(argv):
    args = cli.build_parser().parse_args(argv)
    return config_lib.build(args.config, config_lib.flags_to_overrides(args))


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  num_envs: 8\nalgo:\n  num_steps: 32\n  gamma: 0.9\nrun:\n  tensorboard: false\n")
    cfg = build_from_argv(["train", "--config", str(path), "--num-envs", "16", "--tensorboard", "true"])
    assert cfg.env.num_envs == 16  # YAML 8, flag 16: the flag wins
    assert cfg.run.tensorboard is True  # YAML false, flag true
    assert cfg.algo.num_steps == 32 and cfg.algo.gamma == 0.9  # YAML over the defaults (64, 0.99)
    assert cfg.algo.learning_rate == Config().algo.learning_rate == 1e-3  # untouched default
    cfg = build_from_argv(["train", "--config", str(path)])
    assert cfg.env.num_envs == 8 and cfg.run.tensorboard is False
    cfg = build_from_argv(["train"])
    assert config_lib.to_dict(cfg).keys() == config_lib.to_dict(Config()).keys()
    assert cfg.env.num_envs == 32 and cfg.algo.num_steps == 64


def test_saved_config_is_a_base_under_yaml_and_flags(tmp_path):
    """--resume: defaults < the run's saved config < YAML < flags."""
    saved = config_lib.to_dict(Config())
    saved["env"]["num_envs"] = 4
    saved["algo"]["num_steps"] = 16
    cfg = config_lib.build(None, {"algo": {"num_steps": "8"}}, base=saved)
    assert cfg.env.num_envs == 4 and cfg.algo.num_steps == 8


def test_values_are_coerced_to_the_field_types():
    cfg = config_lib.build(
        None,
        {
            "run": {"total_steps": "1e6", "target_return": "nan", "capture_video": "yes"},
            "model": {"actions": "0,2,3"},
            "algo": {"gamma": "0.5"},
        },
    )
    assert cfg.run.total_steps == 1_000_000 and isinstance(cfg.run.total_steps, int)
    assert math.isnan(cfg.run.target_return)
    assert cfg.run.capture_video is True
    assert cfg.model.actions == [0, 2, 3]
    assert cfg.algo.gamma == 0.5


def test_field_names_are_unique_across_sections():
    names = [f.name for _, f, _ in config_lib.all_fields()]
    dupes = [n for n, k in Counter(names).items() if k > 1]
    assert not dupes, f"fields in more than one section cannot each be a flag: {dupes}"
    assert len(names) == sum(len(dataclasses.fields(t)) for t in config_lib._SECTION_TYPES.values())


def test_every_field_has_help_and_a_valid_default():
    for section, f, _ in config_lib.all_fields():
        assert f.metadata["help"].strip(), f"{section}.{f.name} has no help text"
    config_lib.validate(Config())  # the defaults themselves are a valid config


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"algo": {"algo": "ppo"}, "model": {"value_head": False}}, "model.value_head"),
        ({"model": {"actions": [2, 2]}}, "model.actions"),
        ({"model": {"actions": [7]}}, "model.actions"),
        ({"env": {"num_envs": 8, "batch_size": 3}}, "env.batch_size"),
        ({"dist": {"deadline_s": "game"}}, "dist.deadline_s"),
        ({"dist": {"deadline_s": "-1"}}, "dist.deadline_s"),
        ({"model": {"network": "nature_cnn"}}, "model.obs_mode"),
        ({"algo": {"learning_rate": 0}}, "algo.learning_rate"),
        ({"algo": {"gamma": 1.5}}, "algo.gamma"),
        ({"model": {"obs_mode": "rgb"}}, "model.obs_mode"),
        ({"algo": {"mirror_augment": True}, "model": {"actions": [0, 2]}}, "algo.mirror_augment"),
        (
            {"algo": {"mirror_augment": True}, "model": {"network": "small_cnn", "obs_mode": "stack84"}},
            "algo.mirror_augment",
        ),
    ],
)
def test_relations_between_fields_are_checked(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_lib.build(None, overrides)


# ---- the real command line ---------------------------------------------------------------------


def test_top_level_help_lists_the_commands(jaxpong_cli):
    code, out, err = jaxpong_cli("--help")
    assert code == 0
    assert "train" in out and "bench" in out
    code, out, err = jaxpong_cli()  # no command: the help, and a usage error status
    assert code == 2 and "train" in out


def test_train_help_lists_every_field_with_its_default(jaxpong_cli):
    code, out, err = jaxpong_cli("train", "--help")
    assert code == 0, err
    # One entry per option: its line, plus the help text argparse moves to the next line for long names.
    entries: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        if line.strip().startswith("-"):
            name = line.split()[0].rstrip(",")
            assert name not in entries, f"{name} listed twice"
            entries[name] = line
        elif name and line.strip():
            entries[name] += " " + line.strip()
        else:
            name = None
    for section, f, _ in config_lib.all_fields():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        flag = config_lib.flag_name(f.name)
        if f.metadata["hidden"]:  # testing aids (--debug-nan-*): settable, but not in user help
            assert flag not in out
            continue
        assert flag in entries, f"{flag} not listed in train --help"
        assert f"[{section}; default: {shown}]" in entries[flag], entries[flag]
        # No second, contradicting default (argparse's "(default: None)" for flags that default to unset).
        assert "(default: None)" not in entries[flag], entries[flag]


BAD_YAML = {
    "missing": None,
    "unparsable": "env:\n  num_envs: [8\n",
    "unknown_section": "envs:\n  num_envs: 8\n",
    "unknown_key": "env:\n  num_env: 8\n",
    "not_a_bool": "run:\n  tensorboard: sometimes\n",
    "not_an_int": "algo:\n  num_steps: 3.5\n",
    "top_level_list": "- 1\n- 2\n",
}


@pytest.mark.parametrize(
    "case, flags, named",
    [
        ("missing", [], "missing.yaml"),
        ("unparsable", [], "unparsable.yaml"),
        ("unknown_section", [], "envs"),
        ("unknown_key", [], "env.num_env"),
        ("not_a_bool", [], "run.tensorboard"),
        ("not_an_int", [], "algo.num_steps"),
        ("top_level_list", [], "top_level_list.yaml"),
        (None, ["--num-envs", "abc"], "env.num_envs"),
        (None, ["--num-envs", "0"], "env.num_envs"),
        (None, ["--batch-size", "64", "--num-envs", "32"], "env.batch_size"),
        (None, ["--deadline-s", "bogus"], "dist.deadline_s"),
        (None, ["--use-bias", "maybe"], "model.use_bias"),
        (None, ["--learning-rate", "fast"], "algo.learning_rate"),
        (None, ["--network", "resnet"], "model.network"),
        (None, ["--resume", "NOT_A_RUN"], "NOT_A_RUN"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(jaxpong_cli, tmp_path, case, flags, named):
    args = ["train", "--run-dir", tmp_path / "run"]
    if case is not None:
        path = tmp_path / f"{case}.yaml"
        if BAD_YAML[case] is not None:
            path.write_text(BAD_YAML[case])
        args += ["--config", path]
    if "--resume" in flags:
        args = ["train"]
        flags = ["--resume", tmp_path / "NOT_A_RUN"]
        (tmp_path / "NOT_A_RUN").mkdir()
    code, out, err = jaxpong_cli(*args, *flags, timeout=60)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert named in lines[0], lines[0]
    assert lines[0].startswith("jaxpong train: error: ")
    assert not (tmp_path / "run").exists()  # stopped before any run directory was made


def test_unknown_flag_is_a_usage_error(jaxpong_cli):
    code, out, err = jaxpong_cli("train", "--num-envz", "3", timeout=60)
    assert code == 2 and "Traceback" not in out + err
    assert "--num-envz" in err


def test_existing_run_dir_is_refused_without_overwrite(jaxpong_cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    code, out, err = jaxpong_cli("train", "--config", "configs/smoke.yaml", "--run-dir", run, timeout=120)
    assert code == 2 and "Traceback" not in out + err
    lines = [l for l in err.splitlines() if "error" in l]
    assert len(lines) == 1 and str(run) in lines[0] and "--overwrite" in lines[0]
    assert (run / "something").read_text() == "x"


def test_shipped_configs_are_valid():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) >= 20  # default, smoke, seed_ppg and the search candidates
    for path in files:
        cfg = config_lib.build(str(path), {})
        assert yaml.safe_load(path.read_text()), path  # non-empty
        assert cfg.env.env_id == "Pong-v5" and cfg.algo.algo in ("ppo", "pg"), path
    smoke = config_lib.build(str(CONFIGS / "smoke.yaml"), {})
    assert (smoke.env.num_envs, smoke.algo.num_steps, smoke.run.total_steps) == (8, 32, 8192)
    default = config_lib.build(str(CONFIGS / "default.yaml"), {})
    assert (default.model.obs_mode, default.algo.point_episodes, default.env_batch_size) == ("area32", True, 16)
    # What `make train` runs is what `train` runs without --config: the built-in defaults.
    assert nan_equal(config_lib.to_dict(default), config_lib.to_dict(Config()))

"""The Python API (jaxpong.Config, jaxpong.train, jaxpong.load_policy): the README's example run as written,
its results against the run's own files and the `eval` command, and bad input as the command line's
one-line messages.

The example trains in this process (a tiny run; JAX's compile cache is the session's, see conftest.py);
a second training in the same process resumes it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import jaxpong
from conftest import REPO, nan_equal, read_jsonl
from jaxpong.cli.dispatch import main


def readme_example() -> str:
    """The first Python block of the README's "From Python" section, as written there."""
    section = (REPO / "README.md").read_text().split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    """The README's example, executed as written in a fresh folder; its variables (paths made absolute)."""
    folder = tmp_path_factory.mktemp("from_python")
    here = os.getcwd()
    os.chdir(folder)
    try:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(readme_example(), "README.md: From Python", "exec"), namespace)
    finally:
        os.chdir(here)
    namespace["run_dir"] = folder / namespace["result"].run_dir
    return namespace


def cli_error(capsys, *argv) -> str:
    """The one line the command line prints for bad input (without its "jaxpong CMD: error: " prefix)."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0].split(": error: ", 1)[1]


def api_error(call) -> str:
    with pytest.raises(jaxpong.ConfigError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# -- the README's example -------------------------------------------------------------------------------


def test_readme_example_is_short_and_runs_as_written(example):
    code = [line for line in readme_example().splitlines() if line.strip()]
    assert len(code) < 10, code
    result, report, policy = example["result"], example["report"], example["policy"]
    assert result.ok and result.exit_status == 0 and result.reason == "reached --total-steps 2,048"
    assert result.agent_steps >= 2048 and result.updates >= 1
    assert example["run_dir"].is_dir() and (example["run_dir"] / "checkpoints" / str(result.agent_steps)).is_dir()
    assert policy.step == result.agent_steps  # the latest checkpoint: the run's end
    assert report["requested_episodes"] == 2 and report["episodes"] + report["truncated"] == 2
    assert example["observations"].shape == (4, *policy.observation_shape)


def test_run_result_is_the_runs_last_metrics_line(example):
    result = example["result"]
    last = read_jsonl(example["run_dir"] / "metrics.jsonl")[-1]
    assert result.updates == last["update"]
    assert result.agent_steps == last["step"]
    assert result.games == last["charts/episodes"]
    assert result.return_last20 == last.get("charts/return_last20")  # None: no game finished yet
    assert result.run_dir.name == "from-python"


def test_act_gives_valid_envpool_actions_for_make_envs_observations(example):
    policy = example["policy"]
    env = policy.make_env(num_envs=3, seed=5)
    try:
        observations, _ = env.reset()
        assert observations.shape == (3, *policy.observation_shape) and observations.dtype == np.uint8
        for _ in range(5):
            actions = policy.act(observations)
            assert actions.shape == (3,) and actions.dtype == np.int32
            assert set(actions.tolist()) <= set(policy.actions)
            observations, rewards, terminated, truncated, info = env.step(actions)
            assert np.array_equal(info["env_id"], np.arange(3))
        greedy = policy.act(observations, greedy=True)
        assert np.array_equal(greedy, policy.act(observations, greedy=True))  # greedy: no sampling
    finally:
        env.close()
    # Anything else is one line, before JAX sees it.
    assert "not a batch of this policy's frames" in api_error(lambda: policy.act(observations[:, :1]))
    assert "uint8" in api_error(lambda: policy.act(observations.astype(np.float32)))
    assert api_error(lambda: policy.make_env(num_envs=0)) == "--num-envs: 0 must be >= 1"


def test_play_gives_evals_report_with_the_games_asked_for(example, capsys):
    policy, run_dir = example["policy"], example["run_dir"]
    report = policy.play(episodes=3, seed=2, num_envs=2, greedy=True)
    assert report["requested_episodes"] == 3 and report["episodes"] + report["truncated"] == 3
    assert len(report["returns"]) == len(report["lengths"]) == report["episodes"]
    assert all(-21 <= r <= 21 and r != 0 for r in report["returns"])  # full games: someone reached 21
    assert report["checkpoint_step"] == example["result"].agent_steps and report["num_envs"] == 2
    # `eval` with the same arguments plays the same games and prints the same report as its last line.
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "3", "--seed", "2", "--num-envs", "2", "--greedy"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed.keys() == report.keys()
    timing_and_path = ("seconds", "source")  # the example loaded its policy by a relative path
    assert {k: v for k, v in printed.items() if k not in timing_and_path} == {
        k: v for k, v in report.items() if k not in timing_and_path
    }
    assert Path(printed["source"]) == run_dir.parents[1] / report["source"]
    assert api_error(lambda: policy.play(episodes=0)) == cli_error(capsys, "eval", run_dir, "--episodes", 0)
    assert api_error(lambda: policy.play(seed=-1)) == cli_error(capsys, "eval", run_dir, "--seed", -1)


def test_a_second_training_in_the_same_process_resumes_the_first(example):
    first, run_dir = example["result"], example["run_dir"]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    config = jaxpong.Config.from_run(run_dir, total_steps=first.agent_steps + 512)
    assert config.env.num_envs == 8 and config.run.total_steps == first.agent_steps + 512
    second = jaxpong.train(config, run_dir=run_dir, resume=True)
    assert second.ok and second.reason == f"reached --total-steps {first.agent_steps + 512:,}"
    assert second.agent_steps >= first.agent_steps + 512 and second.updates > first.updates
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert (second.updates, second.agent_steps, second.games) == (last["update"], last["step"], last["charts/episodes"])
    # The run's Ctrl-C handling and its frozen objects end with it.
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert gc.get_freeze_count() == 0
    assert jaxpong.load_policy(run_dir).step == second.agent_steps


def test_a_calls_time_limit_counts_from_the_call_not_the_process(example, tmp_path):
    """Two trainings in one process with a pause between: the second, started when the process is already
    older than its time limit, still trains for its own budget (counted from process start it would stop
    after its first round), then stops on the time limit."""
    import time

    from jaxpong import PROCESS_START

    limit = 20.0  # longer than a first round with its compiles, on a busy 2-core machine too
    time.sleep(max(0.0, limit + 1.0 - (time.time() - PROCESS_START)))  # the pause: the process is past the limit
    config = jaxpong.Config.from_yaml(REPO / "configs" / "smoke.yaml", total_steps=10**9, time_limit_s=limit)
    start = time.time()
    result = jaxpong.train(config, run_dir=tmp_path / "second")
    took = time.time() - start
    assert result.ok and result.reason == f"reached --time-limit-s {limit:g}"
    assert result.updates > 1
    assert took >= limit  # it trained until its own budget ran out
    # The clock a call is given (the command line gives its process start) is the one it stops on.
    early = jaxpong.train(config, run_dir=tmp_path / "third", clock_start=time.time() - 2 * limit)
    assert early.ok and early.updates == 1


# -- bad input: the command line's one line ---------------------------------------------------------------

BAD_VALUES = [
    (["--num-envs", "0"], {"num_envs": 0}),
    (["--batch-size", "64", "--num-envs", "32"], {"batch_size": 64, "num_envs": 32}),
    (["--deadline-s", "bogus"], {"deadline_s": "bogus"}),
    (["--network", "resnet"], {"network": "resnet"}),
    (["--learning-rate", "0"], {"algo": {"learning_rate": 0}}),
    (["--value-head", "false"], {"value_head": False}),
    (["--num-envs", "abc"], {"num_envs": "abc"}),
    (["--use-bias", "maybe"], {"model": {"use_bias": "maybe"}}),
]


@pytest.mark.parametrize("flags, keywords", BAD_VALUES, ids=[" ".join(f) for f, _ in BAD_VALUES])
def test_config_errors_are_the_command_lines(capsys, tmp_path, flags, keywords):
    expected = cli_error(capsys, "train", "--run-dir", tmp_path / "run", *flags)
    # A value of the wrong type says where it came from: here a keyword argument, there the command line.
    expected = expected.replace("(command line)", "(keyword argument)")
    assert api_error(lambda: jaxpong.Config.default(**keywords)) == expected
    yaml_file = tmp_path / "base.yaml"
    yaml_file.write_text("env:\n  num_envs: 8\n")
    assert api_error(lambda: jaxpong.Config.from_yaml(yaml_file, **keywords)) == expected
    assert not (tmp_path / "run").exists()


def test_config_files_and_mappings_fail_as_on_the_command_line(capsys, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("algo:\n  num_envs: 8\n")
    expected = cli_error(capsys, "train", "--config", bad, "--run-dir", tmp_path / "run")
    assert "num_envs belongs under env:" in expected
    assert api_error(lambda: jaxpong.Config.from_yaml(bad)) == expected
    assert api_error(lambda: jaxpong.Config.from_yaml(tmp_path / "missing.yaml")) == cli_error(
        capsys, "train", "--config", tmp_path / "missing.yaml", "--run-dir", tmp_path / "run"
    )
    assert "num_envs belongs under env:" in api_error(lambda: jaxpong.Config.from_dict({"algo": {"num_envs": 8}}))
    assert "did you mean num_envs?" in api_error(lambda: jaxpong.Config.default(num_env=8))
    assert "a section takes a mapping" in api_error(lambda: jaxpong.Config.default(env=8))


def test_config_from_yaml_dict_and_keywords_agree(tmp_path):
    smoke = REPO / "configs" / "smoke.yaml"
    from_yaml = jaxpong.Config.from_yaml(smoke, total_steps=512, env={"num_envs": 4})
    assert from_yaml.run.total_steps == 512 and from_yaml.env.num_envs == 4 and from_yaml.model.obs_mode == "diff64"
    assert nan_equal(jaxpong.Config.from_dict(from_yaml.to_dict()).to_dict(), from_yaml.to_dict())
    default_yaml = jaxpong.Config.from_yaml(REPO / "configs" / "default.yaml")
    assert nan_equal(jaxpong.Config.default().to_dict(), default_yaml.to_dict())
    assert jaxpong.Config.default(num_envs="16").env.num_envs == 16  # coerced as a flag's text is


def test_train_and_load_policy_refuse_bad_input_in_one_line(example, capsys, tmp_path):
    run_dir = example["run_dir"]
    # An existing run without overwrite: the same line as `train --run-dir`.
    config = jaxpong.Config.from_run(run_dir)
    assert api_error(lambda: jaxpong.train(config, run_dir=run_dir)) == cli_error(capsys, "train", "--run-dir", run_dir)
    assert "needs run_dir" in api_error(lambda: jaxpong.train(resume=True))
    assert "must be a jaxpong.Config" in api_error(lambda: jaxpong.train({"env": {}}, run_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    for source, checkpoint in [(tmp_path / "nothing", "latest"), (run_dir, 7), (run_dir, "best"), (run_dir, "soon")]:
        assert api_error(lambda: jaxpong.load_policy(source, checkpoint)) == cli_error(
            capsys, "eval", source, "--checkpoint", checkpoint
        )


def test_the_api_names_stay_the_api_after_every_module_is_imported():
    """A subpackage named like an API function would replace it on the package once imported
    (`import jaxpong.x.y` binds jaxpong.x): every module imported, the API names are still the API's."""
    import importlib
    import pkgutil

    import jaxpong

    for module in pkgutil.walk_packages(jaxpong.__path__, "jaxpong."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    for name in ("train", "load_policy", "Config", "ConfigError", "Policy", "RunResult"):
        assert getattr(jaxpong, name) is getattr(importlib.import_module("jaxpong.api"), name), name

"""The experiment configuration: one typed value, built as defaults < YAML file < command-line flags.

Every field (jaxpong/base/sections.py) carries a one-line help text (it becomes `train --help`) and, where
it has one, its range. Field names are unique across sections, so each is also a flag: `num_envs` ->
`--num-envs`.
How a run is launched (run directory, resume, number of ranks) is not part of this value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from jaxpong.base.errors import ConfigError
from jaxpong.base.sections import AlgoConfig, DistConfig, EnvConfig, ModelConfig, RunConfig


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # Derived values, computed from the fields; not settable.
    @property
    def env_batch_size(self) -> int:
        return parse_batch_size(self.env.batch_size, self.env.num_envs)

    @property
    def is_async(self) -> bool:
        return self.env_batch_size < self.env.num_envs

    @property
    def deadline(self) -> float | str:
        """'auto', 'game', or seconds (0.0 = none)."""
        return parse_deadline(self.dist.deadline_s)

    # -- built from Python (jaxpong.Config): the command line's rules and messages -------------------------
    # Overrides are keyword arguments: field names as the flags spell them (num_envs=8 for --num-envs 8)
    # and/or whole sections (env={"num_envs": 8}). Bad values raise ConfigError with the command line's message.

    @classmethod
    def default(cls, **overrides: Any) -> Config:
        """The built-in defaults (configs/default.yaml's values) < `overrides`; validated."""
        return build(None, keyword_overrides(overrides), origin=KEYWORDS)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Config:
        """Defaults < the YAML file `path` (as `train --config`) < `overrides`; validated."""
        return build(os.fspath(path), keyword_overrides(overrides), origin=KEYWORDS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> Config:
        """Defaults < `data`, nested by section as in a YAML file ({"env": {"num_envs": 8}}) < `overrides`."""
        return build(None, keyword_overrides(overrides), mapping=data, origin=KEYWORDS)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], **overrides: Any) -> Config:
        """The saved config of the run in `run_dir` < `overrides` (what `train --resume RUN_DIR` flags do)."""
        return build(None, keyword_overrides(overrides), base=read_config(Path(run_dir)), origin=KEYWORDS)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config nested by section, as config.yaml holds it (Config.from_dict takes it back)."""
        return to_dict(self)

    @property
    def preset_name(self) -> str:
        """A name for the game settings, recorded with every run."""
        diffs = [
            f"{f.name}={getattr(self.env, f.name)}"
            for f in dataclasses.fields(EnvConfig)
            if f.name in _PRESET_FIELDS and getattr(self.env, f.name) != f.default
        ]
        return "envpool-Pong-v5-defaults" + ("" if not diffs else " + " + ", ".join(diffs))


_PRESET_FIELDS = (
    "frame_skip",
    "repeat_action_probability",
    "noop_max",
    "episodic_life",
    "reward_clip",
    "max_episode_steps",
)
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_TYPES = {"env": EnvConfig, "model": ModelConfig, "algo": AlgoConfig, "dist": DistConfig, "run": RunConfig}


def parse_batch_size(value: Any, num_envs: int) -> int:
    """env.batch_size as envpool's batch: 'half', 0 (sync) or N dividing num_envs."""
    text = str(value).strip().lower()
    if text == "half":
        # Async pays off only with two halves; one game, or an odd count, runs sync.
        return num_envs // 2 if num_envs % 2 == 0 else num_envs
    try:
        size = int(text)
    except ValueError:
        raise ConfigError(
            f"env.batch_size: {value!r} is not accepted; use half, 0 (sync) or a number of games dividing num_envs"
        ) from None
    if size < 0:
        raise ConfigError(f"env.batch_size: {value!r} must be >= 0 (0 = sync)")
    if size > num_envs:
        raise ConfigError(
            f"env.batch_size: {size} is larger than env.num_envs ({num_envs}); use at most num_envs (0 = sync)"
        )
    if size and num_envs % size:
        raise ConfigError(f"env.batch_size: {size} must divide env.num_envs ({num_envs})")
    return size or num_envs


def parse_deadline(value: Any) -> float | str:
    text = str(value).strip().lower()
    if text in ("auto", "game"):
        return text
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(
            f"dist.deadline_s: {value!r} is not accepted; use auto, game, 0 (none) or a number of seconds"
        ) from None
    if not seconds >= 0 or math.isinf(seconds):
        raise ConfigError(f"dist.deadline_s: {value!r} must be >= 0 (0 = no deadline)")
    return seconds


def all_fields():
    """(section, field, type) for every settable field, in order."""
    for section, cls in _SECTION_TYPES.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield section, f, hints[f.name]


def _coerce(section: str, f: dataclasses.Field, typ, value: Any, origin: str):
    where = f"{section}.{f.name}"
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: {value!r} ({origin}) is not a boolean; use true or false")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: {value!r} ({origin}) is not an integer")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} ({origin}) is not an integer") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} ({origin}) is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} ({origin}) is not a number") from None
    if typ is list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} ({origin}) is not a list; use for example 2,3")
        try:
            return [int(v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} ({origin}) must be a list of integers") from None
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: {value!r} ({origin}) is not a single value")
        return str(value)
    raise AssertionError(f"unhandled type {typ} for {where}")


def _check_field(section: str, f: dataclasses.Field, value: Any):
    meta = f.metadata
    where = f"{section}.{f.name}"
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: {value!r} is not accepted; choose one of {', '.join(map(str, meta['choices']))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value <= lo)):
            rel = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{where}: {value} is out of range; it must be {rel} {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: {value} is out of range; it must be <= {hi}")


# Pong's actions under a top-to-bottom mirror: up (2 RIGHT, 4 RIGHTFIRE) and down (3 LEFT, 5 LEFTFIRE) swap.
MIRROR_ACTION = {0: 0, 1: 1, 2: 3, 3: 2, 4: 5, 5: 4}


def validate(cfg: Config) -> Config:
    """Check every field and the relations between them; raise ConfigError naming the field."""
    for section, f, _ in all_fields():
        _check_field(section, f, getattr(getattr(cfg, section), f.name))
    env, algo, model = cfg.env, cfg.algo, cfg.model
    parse_batch_size(env.batch_size, env.num_envs)
    if not model.actions or any(a < 0 or a > 5 for a in model.actions) or len(set(model.actions)) != len(model.actions):
        raise ConfigError(f"model.actions: {model.actions} must be distinct Pong action ids in 0..5 (2 = up, 3 = down)")
    if algo.algo == "ppo":
        if not model.value_head:
            raise ConfigError("model.value_head: ppo needs a value head; set --value-head true")
        if algo.num_minibatches > algo.num_steps * env.num_envs:
            raise ConfigError(
                f"algo.num_minibatches: {algo.num_minibatches} is larger than the batch (num_steps x num_envs = "
                f"{algo.num_steps * env.num_envs}); use at most that"
            )
    if algo.mirror_augment:
        mirrored = sorted(MIRROR_ACTION[a] for a in model.actions)
        if mirrored != sorted(model.actions):
            raise ConfigError(
                f"algo.mirror_augment: the actions {model.actions} are not closed under swapping up "
                "and down (2<->3, 4<->5); use e.g. [2, 3] or [0, 2, 3], or turn it off"
            )
        if model.obs_mode == "stack84":
            raise ConfigError(
                "algo.mirror_augment: needs a cropped playfield input (diff64, pool32, ...), not stack84, "
                "whose frames include the score"
            )
    deadline = parse_deadline(cfg.dist.deadline_s)
    if deadline == "game" and algo.algo != "pg":
        raise ConfigError("dist.deadline_s: 'game' is only for --algo pg (the 2016 per-game synchronisation)")
    if model.bernoulli_head and len(model.actions) != 2:
        raise ConfigError(f"model.bernoulli_head: needs exactly two actions, got {model.actions}")
    if model.host_policy == "on" and model.network != "mlp":
        raise ConfigError(f"model.host_policy: 'on' is for the mlp network, not {model.network}; use auto or off")
    if model.network != "mlp" and model.obs_mode != "stack84":
        raise ConfigError(f"model.obs_mode: the {model.network} network needs obs_mode stack84")
    if model.network == "mlp" and model.obs_mode == "stack84":
        raise ConfigError(
            "model.obs_mode: the mlp network takes diff64, diff32, pool32, pool16, area32 or karpathy80 "
            "(stack84 is for the CNNs)"
        )
    return cfg


def from_dict(data: dict, origin: str, base: Config | None = None) -> Config:
    """Overlay a nested mapping (as in a YAML file) onto `base`."""
    cfg = base if base is not None else Config()
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections ({', '.join(_SECTION_TYPES)})")
    for section, values in data.items():
        if section not in _SECTION_TYPES:
            raise ConfigError(f"{origin}: {_unknown_section_hint(section)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping of field: value")
        cls = _SECTION_TYPES[section]
        hints = get_type_hints(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        obj = getattr(cfg, section)
        for key, value in values.items():
            if key not in by_name:
                raise ConfigError(f"{origin}: {_unknown_key_hint(section, key)}")
            setattr(obj, key, _coerce(section, by_name[key], hints[key], value, origin))
    return cfg


def _section_of(name: str) -> str | None:
    return next((section for section, f, _ in all_fields() if f.name == name), None)


def _unknown_section_hint(name) -> str:
    home = _section_of(str(name))
    if home:
        return f"{name} is a field, not a section; it belongs under {home}: (as {home}.{name})"
    close = difflib.get_close_matches(str(name), list(_SECTION_TYPES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown section {name!r}; {hint}sections are {', '.join(_SECTION_TYPES)}"


def _unknown_key_hint(section: str, key) -> str:
    """A misplaced field names its section; a misspelt one its nearest field; else the section's fields."""
    home = _section_of(str(key))
    if home:
        return f"{section}.{key} is not a field of {section}: {key} belongs under {home}: (as {home}.{key})"
    names = [f"{s}.{f.name}" for s, f, _ in all_fields()]
    own = [f.name for f in dataclasses.fields(_SECTION_TYPES[section])]
    close = difflib.get_close_matches(str(key), own, n=1, cutoff=0.6)
    if close:
        return f"unknown key {section}.{key}; did you mean {section}.{close[0]}?"
    close = difflib.get_close_matches(str(key), [n.split(".")[1] for n in names], n=1, cutoff=0.75)
    if close:
        return f"unknown key {section}.{key}; did you mean {_section_of(close[0])}.{close[0]}?"
    return f"unknown key {section}.{key}; {section} has {', '.join(own)}"


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a folder; give a YAML file in it, such as configs/default.yaml")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; give a YAML file such as configs/default.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{at}; fix its syntax") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({err.__class__.__name__})") from None
    return data if data is not None else {}


def read_config(run_dir: Path) -> dict:
    """The saved config of a run, without its `_record` (for --resume, eval, video...)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{str(run_dir)!r} is not a jaxpong run directory (no config.yaml); give the folder a train run wrote"
        )
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{str(path)!r} is not valid YAML; the run directory is damaged") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{str(path)!r} does not hold a jaxpong config")
    doc.pop("_record", None)
    env = doc.get("env")
    if isinstance(env, dict) and "num_envs" in env and "share_games" not in env:
        env["share_games"] = False  # written before env.share_games existed: every rank stepped num_envs games
    return doc


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _metavar(f: dataclasses.Field, typ) -> str:
    if f.metadata.get("choices"):
        return "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    return typ.__name__.upper() if typ is not list else "IDS"


# A boolean flag alone means true (`--capture-video`); `--capture-video false` works too.
_BOOL_FLAG: dict[str, Any] = {"nargs": "?", "const": "true"}


def add_config_flags(parser: argparse.ArgumentParser):
    """One flag per field. Flags are absent unless typed (SUPPRESS), so only what the user typed overrides
    the YAML, and help shows the field's real default rather than argparse's "(default: None)"."""
    for section, f, typ in all_fields():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        parser.add_argument(
            flag_name(f.name),
            dest=f"cfg__{section}__{f.name}",
            default=argparse.SUPPRESS,
            metavar=_metavar(f, typ),
            help=argparse.SUPPRESS if f.metadata["hidden"] else f"{f.metadata['help']} [{section}; default: {shown}]",
            **(_BOOL_FLAG if typ is bool else {}),
        )


def flags_to_overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            out.setdefault(section, {})[name] = value
    return out


KEYWORDS = "keyword argument"  # where Python's overrides come from, in messages (the command line's say "command line")


def keyword_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Python's overrides as the sections `build` takes: `num_envs=8` -> {"env": {"num_envs": 8}}, the
    flags' names without dashes; a section's name takes a mapping of its fields (`env={"num_envs": 8}`)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if key in _SECTION_TYPES:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{key}={value!r} ({KEYWORDS}): a section takes a mapping of field: value, "
                    f"e.g. {key}={{{next(iter(_fields_of(key)))!r}: ...}}"
                )
            out.setdefault(key, {}).update(value)
            continue
        section = _section_of(key)
        if section is None:
            names = [f.name for _, f, _ in all_fields()] + list(_SECTION_TYPES)
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "the names are the flags' (num_envs for --num-envs)"
            raise ConfigError(f"unknown config field {key!r} ({KEYWORDS}); {hint}")
        out.setdefault(section, {})[key] = value
    return out


def _fields_of(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_SECTION_TYPES[section])]


def build(
    config_path: str | None,
    overrides: dict,
    base: dict | None = None,
    *,
    mapping: Mapping[str, Any] | None = None,
    origin: str = "command line",
) -> Config:
    """defaults < base (a saved run's config, for --resume) < YAML file (or `mapping`, a YAML file's content
    given from Python) < flags (or keyword arguments: `origin` names them in messages); then validated."""
    cfg = Config()
    if base:
        cfg = from_dict(base, "the saved run config", cfg)
    file_data: Any = load_yaml(config_path) if config_path else {}
    if config_path:
        cfg = from_dict(file_data, f"config file {config_path!r}", cfg)
    elif mapping is not None:
        file_data = dict(mapping) if isinstance(mapping, Mapping) else mapping
        cfg = from_dict(file_data, "config mapping", cfg)
    cfg = from_dict(overrides, origin, cfg)
    validate(cfg)
    if cfg.run.track and (_sets_track(file_data) or _sets_track(overrides)):
        # Asked for now, so wandb must be here. A saved run's tracking (--resume, eval) does not ask: where wandb
        # is missing, training goes on without it and says so.
        require_wandb()
    return cfg


def _sets_track(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("run"), dict) and "track" in data["run"]


INSTALL_HINT = "pip install 'jaxpong[wandb]'"


def require_wandb() -> None:
    """Raise ConfigError (one line, exit status 2) when wandb cannot be imported."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--track needs Weights & Biases, which is not installed; install it with: {INSTALL_HINT}"
        ) from None

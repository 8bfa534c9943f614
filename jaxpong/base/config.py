"""The experiment configuration: one typed value, built as defaults < YAML file < command-line flags.

Every field carries a one-line help text (it becomes `train --help`) and, where it has one, its range.
Field names are unique across sections, so each is also a flag: `num_envs` -> `--num-envs`.
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


def _f(default, help: str, *, choices=None, min=None, max=None, min_exclusive=False, hidden=False):
    # hidden: settable (YAML and flag) but left out of --help, for testing aids
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "hidden": hidden}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EnvConfig:
    """envpool Pong; the defaults are envpool's Pong-v5 defaults."""

    env_id: str = _f("Pong-v5", "envpool task id", choices=["Pong-v5"])
    num_envs: int = _f(
        32,
        "games stepped in parallel: by this process, or with share_games by all ranks together (each rank "
        "steps its share)",
        min=1,
    )
    share_games: bool = _f(
        True,
        "with several ranks, divide the num_envs games among them (rounded up), so the global batch and its "
        "learning stay those of one rank while the steps/s grows; no rank gets fewer than min_rank_games, so "
        "past num_envs / min_rank_games ranks the global batch grows and batch_rule follows it; false = every "
        "rank steps num_envs games",
    )
    min_rank_games: int = _f(
        16,
        "share_games never gives a rank fewer games than this (one core's envpool thread and policy step "
        "stay busy with 16; with 8 they ran at half the steps/s of 32)",
        min=1,
    )
    batch_size: str = _f(
        "half",
        "games the policy acts on per step: half = num_envs / 2 (async: the policy acts on one half while envpool "
        "steps the other; sync when num_envs is odd), 0 = num_envs (sync), or N dividing num_envs (async)",
    )
    num_threads: int = _f(
        0,
        "envpool worker threads; 0 = one per core this rank is bound to (an equal share of "
        "the host when ranks are not bound)",
        min=0,
    )
    frame_skip: int = _f(4, "emulator frames per agent step (max-pooled over the last two)", min=1)
    repeat_action_probability: float = _f(
        0.0, "sticky-action probability (0.25 is the 'sticky' benchmark setting)", min=0.0, max=1.0
    )
    noop_max: int = _f(30, "random no-op steps at the start of each game", min=0)
    episodic_life: bool = _f(False, "end a learning episode at each lost life (Pong has none; kept for the record)")
    reward_clip: bool = _f(False, "clip rewards to {-1,0,1} for learning (Pong's rewards already are)")
    max_episode_steps: int = _f(27000, "agent steps after which a game is truncated", min=1)


@dataclass
class ModelConfig:
    network: str = _f("mlp", "policy network", choices=["mlp", "small_cnn", "nature_cnn"])
    obs_mode: str = _f(
        "area32",
        "input: diff64 = binarised difference of the 64x84 playfield of envpool's 84x84 frames; "
        "diff32 = diff64 summed over 2x2 blocks (32x42); pool32 / pool16 = the binary frames max-pooled over "
        "2x2 / 4x4 blocks before the difference (32x42 / 16x21); area32 = pool32's input from envpool's 42x42 "
        "area-resized frames (the pooling done in envpool's threads); karpathy80 = the 2016 80x80 difference frame "
        "from 210x160 frames; stack84 = 4 stacked 84x84 frames",
        choices=["diff64", "diff32", "pool32", "pool16", "area32", "karpathy80", "stack84"],
    )
    actions: list = _f([2, 3], "envpool action ids the policy chooses from (2 = up, 3 = down, 0 = no-op)")
    hidden_size: int = _f(200, "units in the MLP's hidden layer (or the CNN's dense layer)", min=1)
    use_bias: bool = _f(True, "biases in the network's layers (the 2016 MLP had none)")
    value_head: bool = _f(True, "add a value head (needed by ppo; the 2016 pg policy has none)")
    bernoulli_head: bool = _f(False, "two actions from one logit: P(first action) = sigmoid(z) (the 2016 head)")
    sparse_input: bool = _f(
        True,
        "mlp: the update computes the first layer from the nonzero cells of each sample only (a difference frame is "
        "almost all zeros; same maths to float rounding, the update ~2.5x faster on a CPU); false = dense products. "
        "Not used with mirror_augment",
    )
    host_policy: str = _f(
        "auto",
        "mlp: where the collector computes the policy step: on = in NumPy on the host (sparse first layer; no "
        "jitted call per step), off = the jitted step, auto = on when every policy call has at most 8 rows "
        "(num_envs and batch_size <= 8, e.g. one game per rank), where the jitted call's fixed cost is as large as "
        "a game step (docs/seed_speed.md). Same actions, log-probabilities and sampling keys either way",
        choices=["auto", "on", "off"],
    )


@dataclass
class AlgoConfig:
    algo: str = _f("ppo", "learning algorithm", choices=["ppo", "pg"])
    num_steps: int = _f(
        64, "buffer length per env per round (steps collected before each update, unless cut by the deadline)", min=1
    )
    gamma: float = _f(0.99, "discount factor", min=0.0, max=1.0)
    learning_rate: float = _f(1e-3, "optimizer learning rate", min=0.0, min_exclusive=True)
    optimizer: str = _f("adam", "optax optimizer", choices=["adam", "rmsprop"])
    adam_eps: float = _f(1e-5, "epsilon of adam", min=0.0, min_exclusive=True)
    rmsprop_decay: float = _f(0.99, "decay of rmsprop's squared-gradient average", min=0.0, max=1.0)
    rmsprop_eps: float = _f(1e-5, "epsilon of rmsprop", min=0.0, min_exclusive=True)
    anneal_lr: bool = _f(True, "anneal the learning rate linearly (to --anneal-floor x lr over --anneal-steps)")
    anneal_steps: int = _f(
        0,
        "valid agent steps over which the learning rate anneals (0 = --total-steps); after them it stays at the floor",
        min=0,
    )
    anneal_floor: float = _f(0.0, "fraction of the learning rate left at the end of the anneal", min=0.0, max=1.0)
    max_grad_norm: float = _f(0.5, "clip the global gradient norm to this (0 = no clipping)", min=0.0)
    gae_lambda: float = _f(0.95, "ppo: GAE lambda", min=0.0, max=1.0)
    update_epochs: int = _f(4, "ppo: passes over each round's batch", min=1)
    num_minibatches: int = _f(4, "ppo: minibatches per epoch (at reference_games global games; see batch_rule)", min=1)
    batch_rule: str = _f(
        "minibatch",
        "ppo: how the update follows a global batch (num_envs x ranks) of k x reference_games games: minibatch = "
        "k x num_minibatches per epoch, so the minibatch size and the optimizer steps per sample stay as at "
        "reference_games (until a rank's share of a minibatch would fall below min_rank_minibatch); steps = the "
        "round shortens to num_steps / sqrt(k) (no shorter than min_num_steps) and the minibatches follow its "
        "samples, so a round holds sqrt(k), not k, times the reference's samples; sqrt_lr = the same "
        "num_minibatches, each k times larger, with learning_rate x sqrt(k); none = the same num_minibatches, "
        "larger minibatches",
        choices=["minibatch", "steps", "sqrt_lr", "none"],
    )
    min_num_steps: int = _f(16, "ppo: batch_rule steps never shortens a round below this many steps", min=1)
    reference_games: int = _f(32, "ppo: the global game count at which num_minibatches applies as given", min=1)
    min_rank_minibatch: int = _f(
        64, "ppo: batch_rule minibatch keeps each rank's share of a minibatch at least this many samples", min=1
    )
    clip_coef: float = _f(0.1, "ppo: surrogate clipping coefficient", min=0.0)
    proximal: str = _f(
        "behaviour",
        "ppo: the policy the clip is measured against: behaviour = the one that played the round; ewma = an "
        "exponential moving average of the weights over the last ewma_age optimizer steps (PPO-EWMA, Hilton et "
        "al. 2022), with the behaviour policy corrected for by an importance weight capped at ratio_cap",
        choices=["behaviour", "ewma"],
    )
    ewma_age: float = _f(
        8.0, "ppo, proximal ewma: the moving average's mean age in optimizer steps (decay 1 - 1/age)", min=1.0
    )
    ratio_cap: float = _f(
        2.0, "ppo, proximal ewma: cap on the importance weight proximal / behaviour probability", min=1.0
    )
    target_kl: float = _f(
        0.0,
        "ppo: adapt the learning rate to the KL to the behaviour policy over the last quarter of each round's "
        "optimizer steps (charts/approx_kl_late): above 2x this, the next round's rate / 1.5; below half, x 1.5; "
        "within 0.1x to 10x learning_rate. 0 = off",
        min=0.0,
    )
    clip_vloss: bool = _f(True, "ppo: clip the value loss like the policy")
    ent_coef: float = _f(0.01, "ppo: entropy bonus coefficient", min=0.0)
    vf_coef: float = _f(0.5, "ppo: value loss coefficient", min=0.0)
    point_episodes: bool = _f(
        True,
        "ppo: end GAE and value targets at every point scored, as the 2016 returns did; rewards and games "
        "are unchanged (a Pong point is independent of the ones before it)",
    )
    mirror_augment: bool = _f(
        False,
        "also learn from every sample mirrored top to bottom with up and down swapped (Pong's "
        "playfield is vertically symmetric); doubles the update's work",
    )
    norm_adv: bool = _f(True, "ppo: normalise advantages over the round's valid samples (all ranks)")
    pg_unscored: str = _f(
        "mask",
        "pg: steps after the last point scored in a round: mask = no gradient (counted as masked); "
        "zero = return 0 (the 2016 behaviour)",
        choices=["mask", "zero"],
    )
    pg_standardize: bool = _f(True, "pg: standardise returns over the round's valid samples (all ranks)")


@dataclass
class DistConfig:
    deadline_s: str = _f(
        "auto",
        "collection deadline per round: auto (from the lower-median rank's fill time), SECONDS, "
        "0 (none: a fixed number of steps), or game (pg: until each env finishes a game)",
    )
    deadline_margin: float = _f(0.02, "auto deadline = lower-median fill time x (1 + this)", min=0.0)
    buffer_headroom: float = _f(
        0.25,
        "with a deadline (auto or SECONDS), each env's buffer holds num_steps x (1 + this), so ranks faster "
        "than the typical one keep collecting until the deadline instead of idling",
        min=0.0,
    )
    slow_rank: int = _f(-1, "fault injection: this rank steps its envs slower by sleeping (-1 = none)", min=-1)
    slow_factor: float = _f(
        1.0,
        "fault injection: the slow rank collects this many times slower (it drains its "
        "envs every 20 ms and stalls for the rest), with sync and async envs",
        min=1.0,
    )
    hang_timeout_s: float = _f(
        30.0,
        "abort the job when a rank waits longer than this (or 3x the slowest recent round) for its peers "
        "in one collective; the first round, which compiles, gets 10x",
        min=1.0,
    )
    replication_check_every: int = _f(
        50, "compare a parameter checksum across ranks every N updates (0 = never)", min=0
    )


@dataclass
class RunConfig:
    seed: int = _f(1, "run seed: parameters, env seeds (with rank folded in) and sampling", min=0)
    total_steps: int = _f(10_000_000, "stop after this many valid agent steps (all ranks, whole run)", min=1)
    time_limit_s: float = _f(
        0.0,
        "stop after this many wall-clock seconds since this process started, start-up "
        "included (0 = none); after --resume it counts only the resumed process",
        min=0.0,
    )
    target_return: float = _f(
        20.0,
        "stop once the mean of the last 20 full games >= this; the default +20 stops when Pong is won (games "
        "of 21 points won by 20 on average), with total_steps as the ceiling (nan = never, train to total_steps)",
    )
    log_every: int = _f(1, "write a metrics line every N updates", min=1)
    noise_scale_decay: float = _f(
        0.95,
        "the gradient noise scale (charts/noise_scale) is smoothed over rounds: each round, past sums are "
        "weighted by this (0 = this round alone)",
        min=0.0,
        max=1.0,
    )
    checkpoint_every: int = _f(100, "save a checkpoint every N updates (and always at the end)", min=1)
    keep_checkpoints: int = _f(3, "checkpoints to keep", min=1)
    eval_every: int = _f(0, "play greedy eval games every N updates (0 = never)", min=0)
    eval_episodes: int = _f(4, "full games per evaluation", min=1)
    capture_video: bool = _f(False, "record a short video of the final policy into the run directory")
    video_every: int = _f(
        0, "record a short video (RUN_DIR/videos/step_<STEP>.mp4) every N updates, between rounds (0 = never)", min=0
    )
    tensorboard: bool = _f(True, "write TensorBoard event files")
    track: bool = _f(
        False,
        "also log every metrics.jsonl scalar, the resolved config, the learning curve and the final "
        "video to Weights & Biases (rank 0; needs pip install 'jaxpong[wandb]'; WANDB_MODE=offline "
        "keeps it in RUN_DIR/wandb/); a resumed run continues the same W&B run",
    )
    wandb_project: str = _f("jaxpong", "W&B project of a --track run")
    wandb_entity: str = _f("", "W&B entity (user or team) of a --track run; empty = your default entity")
    wandb_group: str = _f("", "W&B group of a --track run, e.g. one per set of seeds; empty = none")
    progress: str = _f(
        "auto",
        "progress display: auto (bar on a terminal, log lines otherwise), bar, log, off",
        choices=["auto", "bar", "log", "off"],
    )
    progress_every_s: float = _f(10.0, "seconds between plain progress lines", min=0.0, min_exclusive=True)
    max_bad_updates: int = _f(10, "stop with an error after this many consecutive non-finite updates", min=1)
    xla_threads: int = _f(
        0,
        "CPU threads for XLA's intra-op work (0 = one per core this rank is bound to, or XLA's default "
        "when it has the whole host)",
        min=0,
    )
    jax_platform: str = _f(
        "auto",
        "where JAX runs the policy and the update: auto (the CPU for the mlp network, a GPU for the "
        "CNNs where there is one), cpu, gpu",
        choices=["auto", "cpu", "gpu"],
    )
    debug_nan_at_update: int = _f(
        -1, "testing: make the loss NaN from this update on (-1 = never)", min=-1, hidden=True
    )
    debug_nan_count: int = _f(1, "testing: for how many consecutive updates the loss is NaN", min=1, hidden=True)


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

"""The configuration's five sections (env, model, algo, dist, run): every field with its default, its range or
choices, and the one line of help that `train --help` shows for its flag. jaxpong/base/config.py builds,
checks and reads them as one Config."""

from __future__ import annotations

from dataclasses import dataclass, field


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
        "al. 2022), with the behaviour policy corrected for by an importance weight capped at ratio_cap; auto = "
        "ewma where the global games are at least ewma_from_scale x reference_games, behaviour below (the "
        "moving average is kept at every scale, so a resume at another rank count can switch)",
        choices=["behaviour", "ewma", "auto"],
    )
    ewma_from_scale: float = _f(
        8.0,
        "ppo, proximal auto: the multiple of reference_games from which the clip is measured against the moving "
        "average (below it the minibatch rule alone holds: docs/batch_scaling.md)",
        min=0.0,
    )
    ewma_age: float = _f(
        8.0, "ppo, proximal ewma or auto: the moving average's mean age in optimizer steps (decay 1 - 1/age)", min=1.0
    )
    ratio_cap: float = _f(
        2.0, "ppo, proximal ewma or auto: cap on the importance weight proximal / behaviour probability", min=1.0
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

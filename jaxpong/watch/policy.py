"""A trained policy, loaded from a run directory's checkpoint or from an exported policy file.

`eval`, `video` and `export` all start here: `load(source, checkpoint)` gives the validated config
and the network parameters, whatever wrote them (ppo or pg, one rank or many: parameters are
replicated, and only rank 0 checkpoints). The Python API (`jaxpong.load_policy`) hands out the same
`Policy`: games configured as in training (`make_env`), actions for their observations (`act`), and
the `eval` command's games and report (`play`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxpong.base import config as config_lib
from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from jaxpong.watch.evaluate import EvalResult

BEST_DIR = "checkpoints_best"  # the best in-training evaluation, kept beside checkpoints/ (see between_rounds.py)


@dataclass
class Policy:
    """A saved policy: its config (`cfg`, the one it was trained under), its network parameters, where it
    came from and the agent step of its checkpoint."""

    cfg: Config
    params: Any  # the network's parameter tree (numpy arrays)
    source: str  # where it came from, for messages and for the export's description
    step: int | None = None  # the agent step of the checkpoint, when known
    meta: dict = field(default_factory=dict)
    # The jitted policy step and act()'s sampling key, made at the first use.
    _policy_step: Any = field(default=None, init=False, repr=False, compare=False)
    _key: Any = field(default=None, init=False, repr=False, compare=False)

    def describe(self) -> str:
        m = self.cfg.model
        at = f" at agent step {self.step:,}" if self.step is not None else ""
        return f"{self.cfg.algo.algo} policy ({m.network} on {m.obs_mode}) from {self.source}{at}"

    @property
    def actions(self) -> list[int]:
        """The envpool action ids this policy chooses from (2 = up, 3 = down, 0 = no-op)."""
        return list(self.cfg.model.actions)

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        """One observation as `make_env`'s games deliver it: (stacked frames, height, width), uint8."""
        from jaxpong.play.envs import frame_shape

        return frame_shape(self.cfg.model)

    def make_env(self, num_envs: int = 1, *, seed: int | None = None) -> Any:
        """`num_envs` envpool Pong games (gymnasium API: reset(), step(actions)), configured as in training
        (the run's preset and frames), stepped together. Their seeds fold in `seed` (default: the run's) and
        the evaluation purpose, so with the same seed and count they are the games `play` and `eval` play."""
        from jaxpong.play.envs import PURPOSE_EVAL, default_threads, env_seeds, make_env

        check_count("num_envs", num_envs)
        seed = check_seed(self.cfg.run.seed if seed is None else seed)
        return make_env(
            self.cfg,
            seeds=env_seeds(seed, 0, PURPOSE_EVAL, num_envs),
            num_envs=num_envs,
            batch_size=num_envs,
            num_threads=default_threads(num_envs),
        )

    def act(self, observations: npt.ArrayLike, *, greedy: bool = False) -> np.ndarray:
        """envpool actions (int32, one per game) for a batch of observations from `make_env`'s games,
        [games, stacked frames, height, width] uint8. Sampled from the policy (its own key stream, started
        from the run's seed), or with `greedy` the most probable action."""
        import numpy as np

        frames = np.asarray(observations)
        want = self.observation_shape
        if frames.ndim != 4 or tuple(frames.shape[1:]) != want or frames.shape[0] < 1:
            raise ConfigError(
                f"observations of shape {frames.shape} are not a batch of this policy's frames; give "
                f"[games, {', '.join(map(str, want))}] uint8, as the games of make_env() deliver them"
            )
        if frames.dtype != np.uint8:
            raise ConfigError(
                f"observations of dtype {frames.dtype} are not frames; give uint8, as the games of "
                "make_env() deliver them"
            )
        step = self.policy_step()
        if self._key is None:
            from jaxpong.play.keys import STREAM_EVAL, stream_root

            self._key = stream_root(self.cfg.run.seed, STREAM_EVAL)
        _, index, _, _, self._key = step(self.params, frames, self._key, bool(greedy))
        return np.asarray(self.cfg.model.actions, np.int32)[np.asarray(index)]

    def play(
        self, episodes: int = 10, *, seed: int | None = None, greedy: bool = False, num_envs: int | None = None
    ) -> dict[str, Any]:
        """Play `episodes` full games (first to 21) on fresh games, as `jaxpong eval` does, and return its
        report (the JSON object of its last line): mean_return, std_return, min_return, max_return, episodes,
        returns, lengths, truncated, seed, greedy, num_envs, checkpoint_step, source, algo..."""
        return self.report(self.play_games(episodes, seed=seed, greedy=greedy, num_envs=num_envs))

    def play_games(
        self, episodes: int, *, seed: int | None = None, greedy: bool = False, num_envs: int | None = None
    ) -> EvalResult:
        """The games of `play`, game by game (jaxpong.watch.evaluate.EvalResult)."""
        from jaxpong.watch.evaluate import play_games

        check_count("episodes", episodes)
        if num_envs is not None:
            check_count("num_envs", num_envs)
        seed = check_seed(self.cfg.run.seed if seed is None else seed)
        return play_games(
            self.cfg,
            self.params,
            episodes=episodes,
            seed=seed,
            greedy=greedy,
            num_envs=num_envs,
            policy_step=self.policy_step(),
        )

    def report(self, result: EvalResult) -> dict[str, Any]:
        """`eval`'s report of `result`: its summary, with where the policy came from."""
        return {**result.summary(), "source": self.source, "checkpoint_step": self.step, "algo": self.cfg.algo.algo}

    def policy_step(self) -> Any:
        """The jitted step (params, frames, key, greedy) -> (features, action index, log-prob, value, key)."""
        if self._policy_step is None:
            from jaxpong.watch.evaluate import make_policy_step_for

            self._policy_step = make_policy_step_for(self.cfg)
        return self._policy_step


def check_count(name: str, value: Any) -> None:
    """A count such as episodes or num_envs must be >= 1 (the command line's check and words)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--{name.replace('_', '-')}: {value} must be >= 1")


def check_seed(seed: Any) -> int:
    """A game seed must be in 0..2**31 - 1 (the command line's check and words)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ConfigError(f"--seed: {seed} must be in 0..{2**31 - 1}")
    return seed


def load(source: str | Path, checkpoint: str | None = None) -> Policy:
    """From a run directory (checkpoint: an agent step, 'latest' (default) or 'best') or an exported file."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(
            f"{str(path)!r} does not exist; give a run directory (with config.yaml and checkpoints/) "
            "or a file written by `jaxpong export`"
        )
    if path.is_dir():
        with _quiet_orbax():
            return _from_run_dir(path, checkpoint)
    if checkpoint not in (None, "latest"):
        raise ConfigError(
            f"--checkpoint applies to run directories; {str(path)!r} is an exported policy file, "
            "which holds one set of parameters"
        )
    return _from_file(path)


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a warning for each read-only checkpoint folder it opens: noise for a read-only command."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


# How often a reader of a live run takes the newest checkpoint again after the run rotated the one it read
# away; each retry means the writer saved (and rotated) while this reader read, so a few always suffice.
READ_ATTEMPTS = 8


def checkpoint_steps(directory: Path) -> list[int]:
    """Agent steps of the checkpoints saved in `directory` ([] if none)."""
    if not directory.is_dir():
        return []
    from jaxpong.store.checkpoint import Checkpoints

    changed: OSError | None = None
    for _ in range(READ_ATTEMPTS):
        try:
            return Checkpoints(directory, read_only=True).steps()
        except (FileNotFoundError, NotADirectoryError) as err:
            # A live run removed or replaced a checkpoint while orbax listed the folder: list again.
            changed = err
            time.sleep(0.05)
        except Exception as err:  # orbax raises several kinds for a folder that is not its own
            raise ConfigError(
                f"{str(directory)!r} cannot be read as a checkpoint folder ({type(err).__name__})"
            ) from None
    if isinstance(changed, NotADirectoryError):  # the same every time: not a folder that moved, a wrong one
        raise ConfigError(f"{str(directory)!r} cannot be read as a checkpoint folder (NotADirectoryError)")
    raise ConfigError(f"{str(directory)!r} changed {READ_ATTEMPTS} times while it was listed; try again")


def _choose_step(run_dir: Path, checkpoint: str | None) -> tuple[Path, int]:
    choice = "latest" if checkpoint is None else str(checkpoint).strip().lower()
    if choice == "best":
        directory = run_dir / BEST_DIR
        steps = checkpoint_steps(directory)
        if not steps:
            raise ConfigError(
                f"{str(run_dir)!r} has no best checkpoint (no {BEST_DIR}/<step>/); it is written by "
                "training with --eval-every N; use --checkpoint latest or a step"
            )
        return directory, steps[-1]
    directory = run_dir / "checkpoints"
    steps = checkpoint_steps(directory)
    if not steps:
        raise ConfigError(
            f"{str(run_dir)!r} has no checkpoint (no checkpoints/<step>/); train it first, or give "
            "another run directory"
        )
    if choice == "latest":
        return directory, steps[-1]
    try:
        step = int(choice.replace(",", "").replace("_", ""))
    except ValueError:
        raise ConfigError(
            f"--checkpoint {checkpoint!r} is not accepted; give an agent step ({_listing(steps)}), latest or best"
        ) from None
    if step not in steps:
        raise ConfigError(f"--checkpoint {step} is not among the checkpoints of {str(run_dir)!r}: {_listing(steps)}")
    return directory, step


def _listing(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[-8:]))
    return ("..., " if len(steps) > 8 else "") + shown


def _build_config(doc: Any, origin: str) -> Config:
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin} holds no config mapping")
    doc = {k: v for k, v in doc.items() if not k.startswith("_")}
    return config_lib.build(None, {}, base=doc)


def _network_template(cfg: Config):
    """Zeros shaped like the training state of `cfg`: shapes come from jax.eval_shape, so nothing is
    initialised or compiled (a real initialisation of a large layer takes seconds on a CPU)."""
    import jax
    import numpy as np

    from jaxpong.learn.learner import init_state, make_optimizer
    from jaxpong.learn.networks import make_network

    network = make_network(cfg.model)
    shapes = jax.eval_shape(lambda key: init_state(cfg, network, make_optimizer(cfg), key), jax.random.PRNGKey(0))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _from_run_dir(run_dir: Path, checkpoint: str | None) -> Policy:
    """The policy of a run directory's checkpoint. A run that is still training rotates its checkpoints (it
    keeps the newest keep_checkpoints, the best one is replaced by a better one), possibly while this reads
    one: a copy that fails because its checkpoint went away (or was replaced) takes the newest one again,
    and only a checkpoint that was copied whole and cannot be read is reported as unreadable. The writer
    never waits for readers."""

    saved = config_lib.read_config(run_dir)  # a clear error when this is not a run directory
    moving = str(checkpoint if checkpoint is not None else "latest").strip().lower() in ("latest", "best")
    for attempt in range(READ_ATTEMPTS):
        directory, step = _choose_step(run_dir, checkpoint)
        source = directory / str(step)
        with tempfile.TemporaryDirectory(prefix="jaxpong-read-", ignore_cleanup_errors=True) as tmp:
            whole = _copy_whole(source, Path(tmp) / str(step))
            if whole is not None:
                try:
                    return dataclasses.replace(_read_checkpoint(Path(tmp), step, saved), source=str(source))
                except ConfigError as err:
                    if _identity(source) == whole:  # still there, unchanged: the checkpoint is the problem
                        raise ConfigError(str(err).replace(tmp, str(directory))) from None
                    # else the writer was removing it while it was copied: take the newest again
        if not moving:
            raise ConfigError(
                f"--checkpoint {step}: the run removed that checkpoint while it was read (it keeps only its "
                f"newest ones while it trains); give a newer one: {_listing(checkpoint_steps(directory))}"
            )
        time.sleep(0.05 * (attempt + 1))
    raise ConfigError(
        f"{str(run_dir)!r} replaced its newest checkpoint {READ_ATTEMPTS} times while it was read; try again, "
        "or checkpoint less often (--checkpoint-every)"
    )


def _copy_whole(source: Path, copy: Path) -> tuple | None:
    """Copy a checkpoint to read it from the copy: the writer can then race only the copy (milliseconds), not
    orbax's read (seconds on a busy machine, longer than a round). Checkpoints appear by an atomic rename and
    never change after, so a copy is whole when the source's identity is the same after it as before: that
    identity is returned; None when the writer moved or removed the source meanwhile. A copy that fails
    with nothing moved (no space, no permission) is a ConfigError."""
    before = _identity(source)
    try:
        shutil.copytree(source, copy)
    except OSError as err:
        if before is not None and _identity(source) == before:
            raise ConfigError(
                f"checkpoint {source} could not be copied to read it ({type(err).__name__}: "
                f"{getattr(err, 'strerror', None) or err}); check the space and permissions of "
                f"{tempfile.gettempdir()} (or set TMPDIR)"
            ) from None
        return None
    return before if before is not None and _identity(source) == before else None


def _identity(path: Path) -> tuple | None:
    """(inode, change time) of a checkpoint folder and of every folder below it, None when it is gone: a
    replaced folder differs, and so does one being removed, at any depth (removing a file changes its
    folder). Checkpoints are never changed in place, so files need no look of their own."""
    try:
        if not path.is_dir():
            return None
        folders = [path, *sorted(p for p in path.rglob("*") if p.is_dir())]
        return tuple((str(p.relative_to(path)), p.stat().st_ino, p.stat().st_ctime_ns) for p in folders)
    except OSError:
        return None


def _read_checkpoint(directory: Path, step: int, saved: dict) -> Policy:
    from jaxpong.store.checkpoint import Checkpoints

    checkpoints = Checkpoints(directory, read_only=True)
    meta = checkpoints.read_meta(step)
    # The checkpoint's own config is the one its parameters were trained under (config.yaml is rewritten
    # on --resume); config.yaml is the fallback for checkpoints without one.
    doc = meta.get("config") if isinstance(meta, dict) and meta.get("config") else saved
    cfg = _build_config(doc, f"checkpoint {directory / str(step)}")
    state, meta = checkpoints.restore(step, _network_template(cfg))
    return Policy(cfg=cfg, params=state.params, source=str(directory / str(step)), step=step, meta=meta)


def _from_file(path: Path) -> Policy:
    import jax
    import numpy as np

    from jaxpong.watch.export import read_policy_file

    config_doc, params, description = read_policy_file(path)
    cfg = _build_config(config_doc, f"policy file {str(path)!r}")
    template = _network_template(cfg).params
    want = jax.tree_util.tree_structure(template)
    got = jax.tree_util.tree_structure(params)
    if want != got:  # type: ignore[operator]  # PyTreeDef compares by value; its stub says otherwise
        raise ConfigError(
            f"policy file {str(path)!r} holds parameters of another network than its config describes; export it again"
        )
    for have, need in zip(jax.tree.leaves(params), jax.tree.leaves(template)):
        if np.shape(have) != np.shape(need):
            raise ConfigError(
                f"policy file {str(path)!r} holds a parameter of shape {np.shape(have)} where its "
                f"config needs {np.shape(need)}; export it again"
            )
    params = jax.tree.map(lambda p, t: np.asarray(p, dtype=np.asarray(t).dtype), params, template)
    return Policy(cfg=cfg, params=params, source=str(path), step=description.get("agent_step"), meta=description)

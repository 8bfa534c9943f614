"""The MLP policy step in NumPy, for small batches: the per-step path of one game per rank.

Why: every agent step of the collector is one policy call. A jitted call has a fixed cost of
hundreds of microseconds on a CPU (dispatch, argument handling, the transfer back), whatever its
size; with one game per rank (the 2016 setup) that is as large as the game step itself. The MLP's
forward pass on a difference frame is small work: the frame is almost all zeros, so the first layer
is the sum of the kernel rows of its nonzero cells (a few dozen of 6,400). In NumPy on the host it
costs tens of microseconds. The measured per-step costs of the options are in docs/seed_speed.md.

Same maths as the jitted step (`rollout.make_policy_step`):
- the features come from the same `preprocess` functions, run on NumPy arrays (bit for bit);
- the logits, log-probabilities and value are the same products and sums in another order (equal to
  float rounding; tested);
- the action is drawn exactly as the jitted step draws it: `jax.random.categorical(sub, logits)` is
  `argmax(logits + gumbel(sub, logits.shape))`, with `key, sub = split(key)` once per call. At the
  start of a round `SampleNoise` draws, in one jitted call, the Gumbel noise of the calls the round
  can make along that same chain of keys; call i then adds noise i on the host. The same key gives
  the same actions (up to a logit within float rounding of a tie) and the same next key as the
  jitted step, so a run does not depend on which path acted.

The parameters are copied from the training state at the start of every round (`HostMLP.load`),
so the host path always acts with the parameters the jitted step would have been given.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpong.config import Config
from jaxpong.preprocess import PREPROCESSORS

# model.host_policy: auto uses the host path for an MLP when a policy call has at most this many rows.
# Measured (docs/seed_speed.md): at 1 row the host step costs a small fraction of the jitted call; at
# 16 rows (the default's async batches) ... see AUTO_MAX_ROWS's note there.
AUTO_MAX_ROWS = 8
# Policy calls' noise drawn at a time (about 1.7 us a call on a 2-core CPU): a deadline round of the 2016
# setup makes ~1,500 of its buffer's 5,120 possible calls, so drawing them all up front would waste most.
NOISE_CHUNK = 512


def use_host_policy(cfg: Config) -> bool:
    """Whether the collector acts with the NumPy step: model.host_policy on, or auto with an MLP whose
    policy calls have at most AUTO_MAX_ROWS rows (the first call of a round has num_envs rows)."""
    choice = cfg.model.host_policy
    if choice == "off" or cfg.model.network != "mlp":
        return False
    return choice == "on" or max(cfg.env.num_envs, cfg.env_batch_size) <= AUTO_MAX_ROWS


class HostMLP:
    """NumPy copy of `networks.MLP`'s parameters and its forward pass on compact features."""

    def __init__(self, cfg: Config):
        model = cfg.model
        if model.network != "mlp":
            raise ValueError(f"the host policy step is for the mlp network, not {model.network}")
        self.preprocess = PREPROCESSORS[model.obs_mode]
        self.bernoulli = model.bernoulli_head
        self.value_head = model.value_head
        self.use_bias = model.use_bias
        self.loaded = None  # the parameter tree last copied from

    def load(self, params) -> None:
        """Copy the network's parameters (a copy: the trainer may reuse the device buffers)."""
        if params is self.loaded:
            return
        tree = params["params"]
        layer, heads = tree["Dense_0"], tree["heads"]

        def copy(x):
            return np.array(x, dtype=np.float32, copy=True)

        self.kernel = copy(layer["kernel"])  # [D, H]
        self.bias = copy(layer["bias"]) if self.use_bias else None
        policy = heads["Dense_0"]
        self.head_kernel = copy(policy["kernel"])  # [H, 1] (bernoulli) or [H, A]
        self.head_bias = copy(policy["bias"]) if self.use_bias else None
        if self.value_head:
            value = heads["Dense_1"]
            self.value_kernel, self.value_bias = copy(value["kernel"])[:, 0], copy(value["bias"])[0]
        self.loaded = params

    def hidden(self, features: np.ndarray) -> np.ndarray:
        """[B, ...] compact features -> [B, H] float32 hidden activations (ReLU).

        The first layer from the nonzero cells only: each row sums the kernel rows its cells select,
        times their values (the same sum as the dense product, without the zero terms).
        """
        batch, width = features.shape[0], self.kernel.shape[0]
        flat = features.reshape(-1)
        cells = np.flatnonzero(flat != 0)  # sorted, row by row (of a bool array: 4x faster than of the int8 one)
        vals = flat[cells].astype(np.float32)
        if batch == 1:
            h = (vals @ self.kernel[cells])[None]
        else:
            rows, cols = np.divmod(cells, width)
            # One row of `weights` per sample, holding its cells' values: a [B, K] x [K, H] product.
            weights = np.zeros((batch, len(cells)), np.float32)
            weights[rows, np.arange(len(cells))] = vals
            h = weights @ self.kernel[cols]
        if self.bias is not None:
            h += self.bias
        return np.maximum(h, 0.0, out=h)

    def forward(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, ...] compact features -> (logits [B, A], value [B]), float32, as `networks.MLP` gives them."""
        h = self.hidden(features)
        out = h @ self.head_kernel
        if self.head_bias is not None:
            out += self.head_bias
        if self.bernoulli:  # the 2016 head: logits [z, 0]
            logits = np.zeros((len(out), 2), np.float32)
            logits[:, :1] = out
        else:
            logits = out
        if self.value_head:
            value = h @ self.value_kernel + self.value_bias
        else:
            value = np.zeros(len(h), np.float32)
        return logits, value


@functools.partial(jax.jit, static_argnames=("first_rows", "rows", "calls", "num_actions"))
def _noise_chain(key, first_rows: int, rows: int, calls: int, num_actions: int):
    """The Gumbel noise `jax.random.categorical` adds in `calls` successive policy steps from `key`.

    Step i splits its key into (next key, sub) and draws gumbel(sub, (rows_i, A)); the first step has
    `first_rows` rows, the others `rows`. Returns (first noise [first_rows, A], noise [calls - 1, rows, A],
    keys [calls, ...]: keys[i] is the key after i + 1 steps).
    """
    key, sub = jax.random.split(key)
    first = jax.random.gumbel(sub, (first_rows, num_actions), jnp.float32)

    def one(k, _):
        k, s = jax.random.split(k)
        return k, (k, jax.random.gumbel(s, (rows, num_actions), jnp.float32))

    _, (keys, noise) = jax.lax.scan(one, key, None, length=calls - 1)
    return first, noise, jnp.concatenate([key[None], keys])


class SampleNoise:
    """A round's sampling noise, drawn along the jitted step's chain of keys (see the module note).

    `take(rows)` gives the next call's noise; `key()` the key after the calls taken so far, which is
    the key the jitted step would have returned. A round that makes more calls than were drawn draws
    another chunk, from the key it has reached.
    """

    def __init__(self, num_actions: int, first_rows: int, rows: int, calls: int):
        self.num_actions, self.first_rows, self.rows, self.calls = num_actions, first_rows, rows, max(2, calls)

    def start(self, key) -> None:
        self._draw(key, self.first_rows)

    def _draw(self, key, first_rows: int) -> None:
        first, noise, self.keys = _noise_chain(key, first_rows, self.rows, self.calls, self.num_actions)
        self.first, self.noise = np.asarray(first), np.asarray(noise)
        self.start_key = key
        self.taken = 0

    def take(self, rows: int) -> np.ndarray:
        """The noise of the next policy call, which has `rows` rows."""
        if self.taken == self.calls:
            self._draw(self.key(), self.rows)
        i = self.taken
        out = self.first if i == 0 else self.noise[i - 1]
        if rows != out.shape[0]:
            raise ValueError(f"policy call {i} of the round has {rows} rows; its noise was drawn for {out.shape[0]}")
        self.taken += 1
        return out

    def key(self):
        """The key after the calls taken (the start key when none were)."""
        return self.start_key if self.taken == 0 else self.keys[self.taken - 1]


class HostPolicy:
    """The collector's per-step policy on the host: features, action, log-prob and value of a batch."""

    def __init__(self, cfg: Config, calls_per_round: int):
        self.mlp = HostMLP(cfg)
        self.preprocess = self.mlp.preprocess
        n, b = cfg.env.num_envs, cfg.env_batch_size
        self.noise = SampleNoise(len(cfg.model.actions), n, b, min(calls_per_round, NOISE_CHUNK))
        self._rows = np.arange(b)

    def start_round(self, params, key) -> None:
        self.mlp.load(params)
        self.noise.start(key)

    def step(self, frames: np.ndarray):
        """[B, stack, H, W] uint8 frames -> (features, action [B] int32, log-prob [B] float32, value [B] float32)."""
        features = self.preprocess(frames)
        return (features, *self.act(features))

    def act(self, features: np.ndarray):
        """[B, ...] compact features -> (action [B] int32, log-prob [B] float32, value [B] float32), drawing
        the next call's noise. Written for few NumPy calls: at one row each call's own overhead is most
        of the cost."""
        n = len(features)
        logits, value = self.mlp.forward(features)
        action = (logits + self.noise.take(n)).argmax(axis=1)  # jax.random.categorical's Gumbel-max
        # jax.nn.log_softmax, (x - max) - log(sum(exp(x - max))), at the taken action only
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted[self._row_index(n), action] - np.log(np.exp(shifted).sum(axis=1))
        return action.astype(np.int32), logp, value

    def _row_index(self, n: int) -> np.ndarray:
        if len(self._rows) != n:
            self._rows = np.arange(n)
        return self._rows

    def key(self):
        return self.noise.key()

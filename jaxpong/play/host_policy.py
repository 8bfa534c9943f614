"""The MLP policy step in NumPy, for small batches: the per-step path of one game per rank.

Why: every agent step of the collector is one policy call. A jitted call has a fixed cost of
hundreds of microseconds on a CPU (dispatch, argument handling, the transfer back), whatever its
size; with one game per rank (the 2016 setup) that is as large as the game step itself. The MLP's
forward pass on a difference frame is small work: the frame is almost all zeros, so the first layer
is the sum of the kernel rows of its nonzero cells (a few dozen of 6,400). In NumPy on the host it
costs tens of microseconds. The measured per-step costs of the options are in docs/seed_speed.md.

Same maths as the collector's jitted step (`rollout.make_packed_step`):
- the features come from the same `preprocess` functions, run on NumPy arrays (bit for bit);
- the logits, log-probabilities and value are the same products and sums in another order (equal to
  float rounding; tested);
- the action is argmax(logits + noise) for the same Gumbel noise, the round's draw for each game and
  row (keys.action_noise), as the jitted step takes it: the same actions (up to a logit within float
  rounding of a tie).

The parameters are copied from the training state at the start of every round (`HostMLP.load`),
so the host path always acts with the parameters the jitted step would have been given.
"""

from __future__ import annotations

import numpy as np

from jaxpong.base.config import Config
from jaxpong.play.preprocess import PREPROCESSORS

# model.host_policy: auto uses the host path for an MLP when a policy call has at most this many rows.
# Measured (docs/seed_speed.md): at 1 row the host step costs a small fraction of the jitted call; at
# 16 rows (the default's async batches) ... see AUTO_MAX_ROWS's note there.
AUTO_MAX_ROWS = 8


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


class HostPolicy:
    """The collector's per-step policy on the host: features, action, log-prob and value of a batch."""

    def __init__(self, cfg: Config):
        self.mlp = HostMLP(cfg)
        self.preprocess = self.mlp.preprocess
        self._rows = np.arange(cfg.env_batch_size)

    def start_round(self, params) -> None:
        self.mlp.load(params)

    def step(self, frames: np.ndarray, noise: np.ndarray):
        """[B, stack, H, W] uint8 frames and [B, A] Gumbel noise -> (features, action [B] int32, log-prob [B]
        float32, value [B] float32)."""
        features = self.preprocess(frames)
        return (features, *self.act(features, noise))

    def act(self, features: np.ndarray, noise: np.ndarray):
        """[B, ...] compact features and [B, A] noise -> (action [B] int32, log-prob [B] float32, value [B]
        float32). Written for few NumPy calls: at one row each call's own overhead is most of the cost."""
        n = len(features)
        logits, value = self.mlp.forward(features)
        action = (logits + noise).argmax(axis=1)  # jax.random.categorical's Gumbel-max
        # jax.nn.log_softmax, (x - max) - log(sum(exp(x - max))), at the taken action only
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted[self._row_index(n), action] - np.log(np.exp(shifted).sum(axis=1))
        return action.astype(np.int32), logp, value

    def _row_index(self, n: int) -> np.ndarray:
        if len(self._rows) != n:
            self._rows = np.arange(n)
        return self._rows

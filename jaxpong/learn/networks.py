"""Policy (and value) networks. Each maps float features [B, ...] to (logits [B, A], value [B])."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxpong.base.sections import ModelConfig
from jaxpong.play import sparse


def _dense(features, scale, use_bias=True):
    return nn.Dense(
        features, use_bias=use_bias, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros
    )


class Heads(nn.Module):
    """Policy logits and (optionally) a value from a torso's features."""

    num_actions: int
    use_bias: bool
    value_head: bool
    bernoulli_head: bool

    @nn.compact
    def __call__(self, h):
        if self.bernoulli_head:
            # The 2016 head: one logit z, P(first action) = sigmoid(z), written as logits [z, 0].
            z = _dense(1, 0.01, self.use_bias)(h)
            logits = jnp.concatenate([z, jnp.zeros_like(z)], axis=-1)
        else:
            logits = _dense(self.num_actions, 0.01, self.use_bias)(h)
        value = _dense(1, 1.0, True)(h)[..., 0] if self.value_head else jnp.zeros(h.shape[:-1], h.dtype)
        return logits, value


class InputLayer(nn.Module):
    """nn.Dense's maths and parameters (kernel [D, H], bias), also for an input given as `sparse.SparseBatch`.

    Initialised as `_dense(features, sqrt(2))` would be (orthogonal kernel, zero bias); keep the two alike.
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        is_sparse = isinstance(x, sparse.SparseBatch)
        width = x.width if is_sparse else x.shape[-1]
        kernel = self.param("kernel", nn.initializers.orthogonal(np.sqrt(2)), (width, self.features), jnp.float32)
        y = sparse.matmul(x, kernel) if is_sparse else jnp.dot(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


class MLP(nn.Module):
    """Karpathy's policy: flattened difference frame -> hidden ReLU layer -> heads.

    The input is a float array [B, ...] or, for the mostly-zero difference frames in the update, a
    `sparse.SparseBatch` of the flattened frames' nonzero cells (same parameters, same outputs to
    float rounding).
    """

    hidden_size: int
    heads: Heads
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        if not isinstance(x, sparse.SparseBatch):
            x = x.reshape(x.shape[0], -1)
        # Named as the nn.Dense it replaced, so checkpoints and exported policies keep their layout.
        h = nn.relu(InputLayer(self.hidden_size, self.use_bias, name="Dense_0")(x))
        return self.heads(h)


class SmallCNN(nn.Module):
    """Two convolutions (16 and 32 channels): several times cheaper than the Nature CNN on a CPU."""

    hidden_size: int
    heads: Heads

    @nn.compact
    def __call__(self, x):
        x = jnp.transpose(x, (0, 2, 3, 1))  # [B, C, H, W] -> NHWC
        x = nn.relu(nn.Conv(16, (8, 8), (4, 4), padding="VALID", kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        x = nn.relu(nn.Conv(32, (4, 4), (2, 2), padding="VALID", kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        h = nn.relu(_dense(self.hidden_size, np.sqrt(2))(x.reshape(x.shape[0], -1)))
        return self.heads(h)


class NatureCNN(nn.Module):
    """The DQN / PPO Atari network (Mnih et al. 2015): 32-64-64 convolutions, 512 units."""

    hidden_size: int
    heads: Heads

    @nn.compact
    def __call__(self, x):
        x = jnp.transpose(x, (0, 2, 3, 1))
        init = nn.initializers.orthogonal(np.sqrt(2))
        x = nn.relu(nn.Conv(32, (8, 8), (4, 4), padding="VALID", kernel_init=init)(x))
        x = nn.relu(nn.Conv(64, (4, 4), (2, 2), padding="VALID", kernel_init=init)(x))
        x = nn.relu(nn.Conv(64, (3, 3), (1, 1), padding="VALID", kernel_init=init)(x))
        h = nn.relu(_dense(self.hidden_size, np.sqrt(2))(x.reshape(x.shape[0], -1)))
        return self.heads(h)


def make_network(model: ModelConfig) -> nn.Module:
    heads = Heads(
        num_actions=len(model.actions),
        use_bias=model.use_bias,
        value_head=model.value_head,
        bernoulli_head=model.bernoulli_head,
    )
    if model.network == "mlp":
        return MLP(hidden_size=model.hidden_size, heads=heads, use_bias=model.use_bias)
    if model.network == "small_cnn":
        return SmallCNN(hidden_size=model.hidden_size, heads=heads)
    return NatureCNN(hidden_size=model.hidden_size, heads=heads)

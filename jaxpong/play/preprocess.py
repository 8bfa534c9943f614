"""Frames from envpool -> network inputs. Pure jnp functions, used inside the jitted policy step.

Each mode returns a compact dtype (int8 or uint8) so rollout buffers stay small; `to_float` makes
the network input from it.

How these differ from the 2016 original (gym Pong-v0, 210x160 RGB): envpool converts to grey,
max-pools the last two of the 4 skipped frames, and skips a fixed 4 frames (Pong-v0 skipped 2-4 at
random, with sticky actions 0.25). The background (RGB 144,72,17) is grey level 87 here; the 2016
code erased R-channel values 144 and 109 and set everything else to 1. Erasing grey 87 and 0 (the
few black HUD pixels) gives the same binary picture of paddles and ball.
"""

from __future__ import annotations

import functools
import operator

import jax.numpy as jnp

from jaxpong.play.sparse import SparseBatch

BACKGROUND_GREY = 87  # Pong's brown background after envpool's RGB->grey conversion


def _lit(frames):
    """True where a pixel is neither the background nor black: paddles, ball, walls."""
    return (frames != BACKGROUND_GREY) & (frames != 0)


def _binarise(frames):
    return _lit(frames).astype(jnp.int8)


def karpathy80(frames):
    """[..., 2, 210, 160] uint8 (previous, current) -> [..., 80, 80] int8 in {-1, 0, 1}.

    Crop rows 35..194 (the playfield), keep every second row and column, erase the background,
    binarise, and subtract the previous frame from the current one.
    """
    cropped = frames[..., 35:195:2, ::2]
    binary = _binarise(cropped)
    return binary[..., 1, :, :] - binary[..., 0, :, :]


def diff64(frames):
    """[..., 2, 84, 84] uint8 -> [..., 64, 84] int8: the same idea on envpool's 84x84 frames.

    Rows 14..77 of the 84-row frame are the playfield (rows 35..194 of 210, scaled by 0.4).
    """
    binary = _binarise(frames[..., 14:78, :])
    return binary[..., 1, :, :] - binary[..., 0, :, :]


def diff32(frames):
    """[..., 2, 84, 84] uint8 -> [..., 32, 42] int8: diff64 summed over 2x2 blocks (values -4..4).

    A quarter of the inputs, so a quarter of the first layer's work; the ball (about 2x2 pixels at
    this scale) still shows in at least one block.
    """
    d = diff64(frames)
    blocks = d.reshape(d.shape[:-2] + (32, 2, 42, 2))
    return blocks.sum(axis=(-3, -1), dtype=jnp.int8)


def _pooled_diff(frames, k: int):
    """Binarise the 64x84 playfield, max-pool each frame over k x k blocks, then take the difference.

    Pooling the binary frames before the difference keeps the ball: a block is 1 wherever any of its
    pixels is lit, and the difference only cancels when the ball stays inside one block between two
    agent steps.
    """
    lit = _lit(frames[..., 14:78, :])
    # An OR over the k*k strided slices: XLA fuses it into one pass. A reshape-and-max of the same
    # blocks ran 4x slower on CPU (1 ms for 16 frames, most of the policy step).
    pooled = functools.reduce(operator.or_, (lit[..., i::k, j::k] for i in range(k) for j in range(k)))
    pooled = pooled.astype(jnp.int8)
    return pooled[..., 1, :, :] - pooled[..., 0, :, :]


def pool32(frames):
    """[..., 2, 84, 84] uint8 -> [..., 32, 42] int8 in {-1, 0, 1}: 2x2 max-pooled binary frames, differenced.

    A quarter of diff64's inputs, so about a quarter of the MLP's work per sample.
    """
    return _pooled_diff(frames, 2)


def pool16(frames):
    """[..., 2, 84, 84] uint8 -> [..., 16, 21] int8: the same with 4x4 blocks (a paddle spans 1-2 rows)."""
    return _pooled_diff(frames, 4)


def area32(frames):
    """[..., 2, 42, 42] uint8 -> [..., 32, 42] int8 in {-1, 0, 1}: pool32's input, with envpool doing the pooling.

    envpool resizes each 210x160 frame to 42x42 by area averaging in its C++ threads; rows 7..38 are
    the playfield (rows 35..194 of 210, five source rows per row). A block that holds any paddle or
    ball pixel averages to a grey other than the background's, so binarising it gives pool32's 2x2
    max-pooled picture (measured: 40 cells of 3.2 million differed over 600 steps of 4 games). The
    policy step then only compares and subtracts a quarter of the pixels: it is the trainer's own CPU
    work per step, taken from the cores that step the games.
    """
    binary = _binarise(frames[..., 7:39, :])
    return binary[..., 1, :, :] - binary[..., 0, :, :]


def stack84(frames):
    """[..., 4, 84, 84] uint8 -> unchanged (the CNN scales it)."""
    return frames


PREPROCESSORS = {
    "karpathy80": karpathy80,
    "diff64": diff64,
    "diff32": diff32,
    "pool32": pool32,
    "pool16": pool16,
    "area32": area32,
    "stack84": stack84,
}


def to_float(features):
    """Compact stored features -> float32 network input (uint8 frames are scaled to [0, 1]; a sparse
    batch keeps its cells and gets float values)."""
    if isinstance(features, SparseBatch):
        return features.replace(vals=features.vals.astype(jnp.float32))
    if features.dtype == jnp.uint8:
        return features.astype(jnp.float32) / 255.0
    return features.astype(jnp.float32)

"""Frames -> network inputs (jaxpong.play.preprocess) on synthetic frames with known answers, and on real envpool
frames."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpong.base.config import Config
from jaxpong.play import preprocess
from jaxpong.play.envs import PURPOSE_TRAIN, env_seeds, make_env

BG, PADDLE, BALL = 87, 147, 236


def full_frames():
    """(previous, current) 210x160 frames. Rows 35, 37, ..., 193 and even columns are what karpathy80 keeps."""
    prev = np.full((210, 160), BG, np.uint8)
    cur = np.full((210, 160), BG, np.uint8)
    prev[0:12, :] = 0  # black HUD pixels above the playfield
    cur[0:12, :] = 0
    prev[20, 30] = cur[20, 31] = BALL  # score digits region (row < 35): cropped away
    # A paddle moving down by 2 rows: rows 51..65 -> 53..67, columns 140..143.
    prev[51:66, 140:144] = PADDLE
    cur[53:68, 140:144] = PADDLE
    # The ball moves from rows 100-101, cols 80-81 to rows 104-105, cols 84-85.
    prev[100:102, 80:82] = BALL
    cur[104:106, 84:86] = BALL
    # A black pixel inside the playfield, on a kept row and column, in the current frame only: erased like the
    # background.
    cur[61, 20] = 0
    # Objects the stride skips: an even row, and an odd column.
    cur[70, 60] = BALL
    cur[71, 61] = BALL
    # Rows 195+ (below the playfield) are cropped.
    cur[195, 10] = BALL
    return np.stack([prev, cur])


def karpathy_expected():
    out = np.zeros((80, 80), np.int8)
    # paddle columns 140, 142 -> 70, 71; prev rows 51..65 -> 8..15, cur rows 53..67 -> 9..16
    out[8, 70:72] = -1
    out[16, 70:72] = 1
    # ball: prev row 101 -> 33, col 80 -> 40; cur row 105 -> 35, col 84 -> 42
    out[33, 40] = -1
    out[35, 42] = 1
    return out


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_karpathy80_on_a_synthetic_frame(jitted):
    fn = jax.jit(preprocess.karpathy80) if jitted else preprocess.karpathy80
    frames = full_frames()
    out = np.asarray(fn(jnp.asarray(frames)))
    assert out.shape == (80, 80) and out.dtype == np.int8
    np.testing.assert_array_equal(out, karpathy_expected())
    # A batch of three: [3, 2, 210, 160] -> [3, 80, 80]; swapping the frames flips the sign.
    batch = np.stack([frames, frames[::-1], np.stack([frames[1], frames[1]])])
    out = np.asarray(fn(jnp.asarray(batch)))
    assert out.shape == (3, 80, 80)
    np.testing.assert_array_equal(out[0], karpathy_expected())
    np.testing.assert_array_equal(out[1], -karpathy_expected())
    np.testing.assert_array_equal(out[2], np.zeros((80, 80)))


def small_frames():
    """(previous, current) 84x84 frames; rows 14..77 are the playfield diff64 keeps, all 84 columns."""
    prev = np.full((84, 84), BG, np.uint8)
    cur = np.full((84, 84), BG, np.uint8)
    prev[20:28, 75] = cur[20:28, 75] = PADDLE  # a still paddle: no difference
    prev[30, 40] = BALL
    cur[32, 42] = BALL
    cur[50, 10] = 0  # black: erased
    cur[40, 5] = 89  # an anti-aliased edge grey: counts as an object
    cur[13, 3] = BALL  # just above the playfield: cropped
    cur[14, 4] = BALL  # first playfield row -> output row 0
    cur[77, 6] = BALL  # last playfield row -> output row 63
    cur[78, 7] = BALL  # just below: cropped
    return np.stack([prev, cur])


# What small_frames() changes inside the playfield: (playfield row, column, current minus previous).
SMALL_CHANGES = [
    (30 - 14, 40, -1),  # the ball left row 16, column 40
    (32 - 14, 42, 1),  # and arrived at row 18, column 42
    (40 - 14, 5, 1),  # the edge grey
    (0, 4, 1),
    (63, 6, 1),
]


def small_expected(k: int) -> np.ndarray:
    """SMALL_CHANGES at k x k block scale: each change lands in its block; changes in one block add."""
    want = np.zeros((64 // k, 84 // k), np.int8)
    for row, col, value in SMALL_CHANGES:
        want[row // k, col // k] += value
    return want


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_diff64_on_a_synthetic_frame(jitted):
    fn = jax.jit(preprocess.diff64) if jitted else preprocess.diff64
    out = np.asarray(fn(jnp.asarray(small_frames()[None])))
    assert out.shape == (1, 64, 84) and out.dtype == np.int8
    np.testing.assert_array_equal(out[0], small_expected(1))


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_diff32_sums_diff64_over_2x2_blocks(jitted):
    fn = jax.jit(preprocess.diff32) if jitted else preprocess.diff32
    out = np.asarray(fn(jnp.asarray(small_frames()[None])))
    assert out.shape == (1, 32, 42) and out.dtype == np.int8
    np.testing.assert_array_equal(out[0], small_expected(2))
    # Two changes in one block add up.
    frames = np.full((1, 2, 84, 84), BG, np.uint8)
    frames[0, 1, 14, 0] = frames[0, 1, 15, 1] = BALL
    assert int(np.asarray(fn(jnp.asarray(frames)))[0, 0, 0]) == 2


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_pool32_and_pool16_pool_binary_frames_before_the_difference(jitted):
    pool32 = jax.jit(preprocess.pool32) if jitted else preprocess.pool32
    out = np.asarray(pool32(jnp.asarray(small_frames()[None])))
    assert out.shape == (1, 32, 42) and out.dtype == np.int8
    np.testing.assert_array_equal(out[0], small_expected(2))  # the still paddle (8 rows in 4 blocks) gives nothing

    # Max-pooling, not summing: two lit pixels in one block make a 1, and a ball that stays in its
    # block between the two frames cancels.
    frames = np.full((1, 2, 84, 84), BG, np.uint8)
    frames[0, 1, 14, 0] = frames[0, 1, 15, 1] = BALL
    frames[0, 0, 20, 10] = frames[0, 1, 21, 11] = BALL  # playfield rows 6-7, columns 10-11: one block
    got = np.asarray(pool32(jnp.asarray(frames)))[0]
    assert got[0, 0] == 1 and got[3, 5] == 0 and np.count_nonzero(got) == 1

    pool16 = jax.jit(preprocess.pool16) if jitted else preprocess.pool16
    out16 = np.asarray(pool16(jnp.asarray(small_frames()[None])))
    assert out16.shape == (1, 16, 21) and out16.dtype == np.int8
    # The ball moved from (16, 40) to (18, 42), both in block (4, 10): at this scale it cancels.
    assert small_expected(4)[4, 10] == 0
    np.testing.assert_array_equal(out16[0], small_expected(4))


def test_stack84_and_to_float():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 4, 84, 84)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(preprocess.stack84(jnp.asarray(frames))), frames)
    f = np.asarray(preprocess.to_float(jnp.asarray(np.array([0, 51, 255], np.uint8))))
    np.testing.assert_allclose(f, [0.0, 0.2, 1.0], rtol=1e-6)  # uint8 frames are scaled to [0, 1]
    d = np.asarray(preprocess.to_float(jnp.asarray(np.array([-1, 0, 1], np.int8))))
    assert d.dtype == np.float32 and d.tolist() == [-1.0, 0.0, 1.0]  # differences are kept as they are


@pytest.mark.parametrize("obs_mode, out_shape", [("diff64", (64, 84)), ("karpathy80", (80, 80))])
def test_real_pong_frames(obs_mode, out_shape):
    """On envpool's own frames: the static background is erased, and moving objects show up after some steps."""
    cfg = Config()
    cfg.model.obs_mode = obs_mode
    cfg.env.num_envs, cfg.env.batch_size = 2, "0"  # sync: both games each step
    env = make_env(cfg, seeds=env_seeds(1, 0, PURPOSE_TRAIN, 2), num_threads=1)
    try:
        obs, _ = env.reset()
        fn = jax.jit(preprocess.PREPROCESSORS[obs_mode])
        current = obs[:, -1]
        same = np.asarray(fn(jnp.asarray(np.stack([current, current], axis=1))))
        assert same.shape == (2,) + out_shape
        assert not same.any()  # identical frames: nothing moves, nothing shows
        # Against a frame of pure background, only the objects (paddles, ball, walls' edges) remain: a few percent.
        blank = np.full_like(current, BG)
        objects = np.asarray(fn(jnp.asarray(np.stack([blank, current], axis=1))))
        assert set(np.unique(objects)) <= {0, 1}
        assert 0 < objects.mean() < 0.1
        moved = np.zeros(2, bool)
        for step in range(80):
            obs, *_ = env.step(np.full(2, 2 + step // 20 % 2, np.int32))  # up, then down, ...
            moved |= np.asarray(fn(jnp.asarray(obs))).reshape(2, -1).any(-1)
        assert moved.all()
    finally:
        env.close()


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_area32_crops_binarises_and_differences_42x42_frames(jitted):
    """Rows 7..38 of the 42-row frame are the playfield; any grey but the background's (or black) is lit."""
    fn = jax.jit(preprocess.area32) if jitted else preprocess.area32
    frames = np.full((1, 2, 42, 42), BG, np.uint8)
    frames[0, :, 0:7, :] = 236  # the score and top wall: cropped away
    frames[0, 0, 7, 3] = 90  # a block the ball barely touched (area-averaged grey) in the previous frame
    frames[0, 1, 38, 41] = 0  # black is background too
    frames[0, 1, 20, 10] = 147  # ball arrives
    frames[0, :, 30, 40] = 125  # a paddle that did not move
    out = np.asarray(fn(jnp.asarray(frames)))
    assert out.shape == (1, 32, 42) and out.dtype == np.int8
    want = np.zeros((32, 42), np.int8)
    want[0, 3], want[13, 10] = -1, 1
    np.testing.assert_array_equal(out[0], want)


def test_area32_matches_pool32_on_real_pong_frames():
    """envpool's 42x42 area resize, binarised, is pool32's 2x2 max-pooling of its 84x84 frames: same games
    and actions at both sizes, compared cell by cell (measured when written: 40 of 3.2 million cells differ)."""
    from jaxpong.play.envs import import_envpool

    envpool = import_envpool()
    make = lambda h: envpool.make(
        "Pong-v5",
        env_type="gymnasium",
        num_envs=4,
        batch_size=4,
        num_threads=1,
        stack_num=2,
        img_height=h,
        img_width=h,
        env_seed=[11, 12, 13, 14],
    )
    big, small = make(84), make(42)
    obs_big, _ = big.reset()
    obs_small, _ = small.reset()
    rng = np.random.default_rng(0)
    differ = cells = moving = 0
    for _ in range(300):
        a = np.asarray(preprocess.pool32(jnp.asarray(obs_big)))
        b = np.asarray(preprocess.area32(jnp.asarray(obs_small)))
        differ += int((a != b).sum())
        cells += a.size
        moving += int((a != 0).sum())
        actions = rng.integers(0, 6, 4).astype(np.int32)
        obs_big, *_ = big.step(actions)
        obs_small, *_ = small.step(actions)
    big.close()
    small.close()
    assert moving > 1000  # the games moved: the comparison is not between empty inputs
    assert differ <= 1e-4 * cells, f"{differ} of {cells} cells differ"

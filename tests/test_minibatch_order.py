"""The update's minibatch order: stratified by game, and the same minibatches however the games are split
over ranks (the order exactness of N ranks against one process rests on; tests/mpi/check_training_path.py
checks the whole round)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpong.learn.learner import minibatch_order, order_group


def _order(T, game_ids, epochs, minibatches, copies=1, key=5):
    _, order = minibatch_order(jax.random.PRNGKey(key), T, np.asarray(game_ids), epochs, minibatches, copies)
    return np.asarray(order)


def test_order_group_by_hand():
    assert order_group(64, 16, 4) == 1  # 64 rows split 4 ways: every game on its own
    assert order_group(80, 16, 4) == 1
    assert order_group(64, 16, 128) == 2  # 2 games x 64 rows = 128: one sample each per minibatch
    assert order_group(80, 16, 128) == 8  # gcd(128, 80) = 16 -> 8 games x 80 rows = 640 = 5 x 128
    assert order_group(64, 3, 128) == 3  # 3 games cannot form pairs: all of a rank's games are one group


@pytest.mark.parametrize("copies", [1, 2])
def test_each_epoch_is_a_permutation_with_an_equal_share_of_every_game(copies):
    T, N, epochs, M = 8, 4, 3, 4
    order = _order(T, np.arange(N), epochs, M, copies)
    size = copies * T * N
    assert order.shape == (epochs * M, size // M)
    game = np.arange(size) % N  # index c*T*N + t*N + e -> game e
    for epoch in order.reshape(epochs, M, -1):
        assert sorted(epoch.ravel().tolist()) == list(range(size))  # every sample once an epoch
        for minibatch in epoch:
            assert np.bincount(game[minibatch], minlength=N).tolist() == [copies * T // M] * N
    assert not (order[:M] == order[M : 2 * M]).all()  # epochs draw afresh


@pytest.mark.parametrize("T, M", [(8, 4), (80, 4), (4, 8)], ids=["rows_split", "headroom_rows", "pairs_of_games"])
def test_ranks_holding_blocks_of_games_draw_one_process_minibatches(T, M):
    """One process with games 0-7 against 2 ranks (0-3, 4-7) and 4 ranks (pairs): minibatch by minibatch the
    ranks' samples, mapped to the process's indices, are exactly the process's."""
    N, epochs = 8, 2
    whole = _order(T, np.arange(N), epochs, M)
    for ranks in (2, 4):
        n = N // ranks
        parts = []
        for r in range(ranks):
            local = _order(T, np.arange(r * n, (r + 1) * n), epochs, M)
            t, e = np.divmod(local, n)
            parts.append(t * N + r * n + e)  # the rank's sample (t, e) is the process's (t, r * n + e)
        for i in range(epochs * M):
            assert sorted(np.concatenate([p[i] for p in parts]).tolist()) == sorted(whole[i].tolist())


def test_one_minibatch_one_epoch_is_every_sample_in_order():
    assert _order(4, np.arange(3), 1, 1).tolist() == [list(range(12))]


def test_games_a_rank_cannot_group_still_give_equal_minibatches():
    """3 games of 4 rows into 8 minibatches: no pairing works, the rank's 12 samples are one group, 1 sample
    a minibatch and 4 sit out."""
    order = _order(4, np.arange(3), 1, 8)
    assert order.shape == (8, 1) and len(set(order.ravel().tolist())) == 8

"""The shared queue of past embeddings: FIFO order and wrap-around, keys of every rank gathered before the enqueue,
and its state through a checkpoint (weights-only load, another length)."""
from __future__ import annotations

import io

import torch

from workbench.methods import queue as queue_mod
from workbench.methods.queue import Queue


def _keys(*values: float) -> torch.Tensor:
    """[1, k, 2] keys whose first coordinate is the given value (easy to read back)."""
    return torch.tensor([[[v, 0.0] for v in values]])


def test_queue_is_fifo_and_wraps_round():
    q = Queue(1, 5, 2)
    assert q._fill == 0 and not q.full and q.rows.abs().sum() == 0
    q.push(_keys(1, 2, 3))
    assert q.rows[0, :, 0].tolist() == [1, 2, 3, 0, 0] and (q._ptr, q._fill) == (3, 3) and not q.full
    q.push(_keys(4, 5, 6, 7).requires_grad_(True))  # 4, 5 fill the end; 6, 7 replace the oldest (1, 2)
    assert q.rows[0, :, 0].tolist() == [6, 7, 3, 4, 5] and (q._ptr, q._fill) == (2, 5) and q.full
    assert not q.rows.requires_grad  # stored detached
    assert q.newest_first()[0, :, 0].tolist() == [7, 6, 5, 4, 3]
    assert (int(q.ptr), int(q.fill)) == (2, 5)  # the buffers a checkpoint carries follow
    q.push(_keys(*range(10, 17)))  # more keys than rows: the newest 5 stay, still in FIFO order
    assert q.newest_first()[0, :, 0].tolist() == [16, 15, 14, 13, 12]


def test_two_heads_and_a_partial_push():
    q = Queue(2, 3, 2)
    q.push(torch.cat([_keys(1, 2), _keys(-1, -2)]))
    q.push(_keys(3))  # one head only: the second keeps its rows
    assert q.rows[:, :, 0].tolist() == [[1, 2, 3], [-1, -2, 0]]


def test_a_shared_queue_enqueues_every_ranks_keys_in_rank_order(monkeypatch):
    """Rank 0 of two: the gather returns [this rank's keys; rank 1's]; every rank's queue gets both."""
    other = _keys(-1, -2).transpose(0, 1)  # rank 1's keys as the gather sees them, [k, heads, d]
    monkeypatch.setattr(queue_mod, "gather", lambda x: torch.cat([x, other]))
    shared, local = Queue(1, 6, 2, shared=True), Queue(1, 6, 2)
    shared.push(_keys(1, 2))
    local.push(_keys(1, 2))
    assert shared.rows[0, :, 0].tolist() == [1, 2, -1, -2, 0, 0] and shared._fill == 4
    assert local.rows[0, :, 0].tolist() == [1, 2, 0, 0, 0, 0]


def test_random_init_starts_full_of_unit_vectors():
    torch.manual_seed(0)
    q = Queue(1, 8, 4, random_init=True)
    assert q.full and torch.allclose(q.rows.norm(dim=-1), torch.ones(1, 8))


def test_queue_state_survives_a_checkpoint_round_trip():
    q = Queue(1, 5, 2)
    q.push(_keys(1, 2, 3, 4))
    q.push(_keys(5, 6))  # wrapped: pointer 1
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    buffer.seek(0)
    loaded = Queue(1, 5, 2)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert (loaded._ptr, loaded._fill) == (1, 5)
    for queue in (q, loaded):  # the next key lands where it would have without the round trip
        queue.push(_keys(7))
    torch.testing.assert_close(loaded.rows, q.rows)
    assert loaded.newest_first()[0, :, 0].tolist() == [7, 6, 5, 4, 3]


def test_a_saved_queue_of_another_length_keeps_its_newest_rows():
    q = Queue(1, 5, 2)
    q.push(_keys(1, 2, 3, 4, 5, 6, 7))
    shorter, longer = Queue(1, 3, 2), Queue(1, 8, 2)
    shorter.load_state_dict(q.state_dict())
    longer.load_state_dict(q.state_dict())
    assert shorter.newest_first()[0, :, 0].tolist() == [7, 6, 5] and shorter.full
    assert longer.newest_first()[0, :, 0].tolist() == [7, 6, 5, 4, 3] and longer._fill == 5 and not longer.full
    longer.push(_keys(8))
    assert longer.newest_first()[0, :, 0].tolist() == [8, 7, 6, 5, 4, 3]

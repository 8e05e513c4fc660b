import numpy as np
import pytest
import torch

import batching


def stream(n):
    return np.arange(n, dtype=np.uint16)


def test_random_windows_shapes_and_shift_by_one():
    tokens = stream(1000)
    batches = batching.RandomWindows(tokens, batch_size=16, block_size=8, seed=0)
    x, y = next(batches)
    assert x.shape == y.shape == (16, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # the target is the input shifted by one
    assert torch.equal(y, x + 1)  # and, in this counting stream, the very next token
    assert int(x.min()) >= 0 and int(y.max()) <= 999


def test_random_windows_reach_both_ends_of_the_stream():
    batches = batching.RandomWindows(stream(10), batch_size=200, block_size=4, seed=0)
    x, y = next(batches)
    starts = set(x[:, 0].tolist())
    assert starts == set(range(6))  # every start from 0 to N - block_size - 1, nothing past the end
    assert int(y.max()) == 9


def test_random_windows_resume_from_state():
    a = batching.RandomWindows(stream(500), 4, 8, seed=3)
    next(a)
    state = a.state()
    expected = [next(a) for _ in range(3)]
    b = batching.RandomWindows(stream(500), 4, 8, seed=99)
    b.load_state(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(b) for _ in range(3))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_streams_exact_layout():
    # 25 tokens, 3 streams of (25 - 1) // 3 = 8 tokens, 2 batches of 4 per epoch
    batches = batching.Streams(stream(25), batch_size=3, block_size=4)
    assert batches.batches_per_epoch == 2 and batches.is_epoch_start
    x, y = next(batches)
    assert x.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert y.tolist() == [[1, 2, 3, 4], [9, 10, 11, 12], [17, 18, 19, 20]]
    assert not batches.is_epoch_start
    x, y = next(batches)
    assert x.tolist() == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23]]
    assert y.tolist() == [[5, 6, 7, 8], [13, 14, 15, 16], [21, 22, 23, 24]]
    assert batches.is_epoch_start
    x, _ = next(batches)
    assert x[:, 0].tolist() == [0, 8, 16]  # a new epoch starts the streams over


def test_streams_row_continues_row():
    tokens = np.random.default_rng(0).integers(0, 60000, size=5000).astype(np.uint16)
    batches = batching.Streams(tokens, batch_size=7, block_size=9)
    previous = next(batches)
    for _ in range(batches.batches_per_epoch - 1):
        x, y = next(batches)
        # row r of batch k+1 continues row r of batch k: its first input is batch k's last target
        assert torch.equal(x[:, 0], previous[1][:, -1])
        assert torch.equal(x[:, 1:], y[:, :-1])
        previous = (x, y)


def test_streams_state_round_trip():
    a = batching.Streams(stream(400), 4, 5)
    for _ in range(7):
        next(a)
    b = batching.Streams(stream(400), 4, 5)
    b.load_state(a.state())
    assert torch.equal(next(a)[0], next(b)[0])


def test_too_short_splits_are_refused():
    with pytest.raises(ValueError, match='too short'):
        batching.RandomWindows(stream(8), 2, block_size=8, seed=0)
    with pytest.raises(ValueError, match='too short'):
        batching.Streams(stream(30), batch_size=8, block_size=4)


def test_make_batches_picks_by_model_type():
    assert isinstance(batching.make_batches('gpt', stream(100), 2, 4, 0), batching.RandomWindows)
    assert isinstance(batching.make_batches('lstm', stream(100), 2, 4, 0), batching.Streams)


def test_processes_share_out_the_single_process_windows_by_micro_step():
    single = batching.RandomWindows(stream(1000), 4, 8, seed=5)
    expected = [next(single)[0] for _ in range(6)]
    shares = [batching.RandomWindows(stream(1000), 4, 8, seed=5, rank=r, world_size=3) for r in range(3)]
    taken = [[next(share)[0] for _ in range(2)] for share in shares]
    # process r takes batches r, r + 3 of the single process's six
    assert all(torch.equal(taken[r][m], expected[r + 3 * m]) for r in range(3) for m in range(2))
    # and every process's sampler is where the single process's is: any of them resumes in any number
    assert shares[0].state() == shares[2].state() == single.state()


def test_processes_share_out_the_single_process_streams_by_row():
    single = batching.Streams(stream(401), 4, 5)
    shares = [batching.Streams(stream(401), 4, 5, rank=r, world_size=2) for r in range(2)]
    assert shares[0].rows == slice(0, 2) and shares[1].rows == slice(2, 4)
    for _ in range(single.batches_per_epoch + 1):  # into a second epoch
        x, y = next(single)
        parts = [next(share) for share in shares]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # process 0's rows, then process 1's
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert shares[1].is_epoch_start == single.is_epoch_start and shares[1].state() == single.state()
    with pytest.raises(ValueError, match='batch_size 4 streams cannot be shared evenly by 3 processes'):
        batching.Streams(stream(401), 4, 5, rank=0, world_size=3)

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
import torch

from slm import batching
from slm.batching import IGNORE_INDEX as I


PAD = 3
SPECIAL_IDS = {'unk': 0, 'bos': 1, 'eos': 2, 'pad': PAD}  # the char and word tokenizers' ids
HELLO_WORLD = [8, 5, 12, 12, 15, 23, 15, 18, 12, 4]  # "helloworld", a = 1


def stream(n):
    return np.arange(n, dtype=np.uint16)


def documents(*docs, special_ids=SPECIAL_IDS):
    """batching.Documents over the given token lists laid end to end, as prepare.py writes a split."""
    tokens = np.array([t for doc in docs for t in doc], dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(doc) for doc in docs])])
    return batching.Documents.from_split(tokens, offsets, special_ids)


def rows(t):
    return t.tolist()


def same_batch(one, other):
    """Two Batches with equal tensors (or None in both) field by field, the weights aside."""
    return all((t1 is None and t2 is None) or torch.equal(t1, t2) for t1, t2 in zip(one[:4], other[:4]))


# ---------------------------------------------------------------------------------------------------------
# random, sliding, strided

def test_random_windows_shapes_and_shift_by_one():
    tokens = stream(1000)
    batches = batching.RandomWindows(tokens, batch_size=16, block_size=8, seed=0)
    x, y, doc_ids, positions = next(batches)[:4]
    assert x.shape == y.shape == (16, 8) and x.dtype == torch.int64
    assert doc_ids is None and positions is None  # one causal sequence per row
    assert torch.equal(x[:, 1:], y[:, :-1])  # the target is the input shifted by one
    assert torch.equal(y, x + 1)  # and, in this counting stream, the very next token
    assert int(x.min()) >= 0 and int(y.max()) <= 999


def test_random_windows_reach_both_ends_of_the_stream():
    batches = batching.RandomWindows(stream(10), batch_size=200, block_size=4, seed=0)
    x, y = next(batches)[:2]
    starts = set(x[:, 0].tolist())
    assert starts == set(range(6))  # every start from 0 to N - block_size - 1, nothing past the end
    assert int(y.max()) == 9


def test_sliding_hello_world():
    windows = batching.TokenWindows(np.array(HELLO_WORLD, dtype=np.uint16), block_size=4, stride=1)
    assert len(windows) == 6  # N - block_size
    first = windows[0]
    assert first[:-1].tolist() == [8, 5, 12, 12] and first[1:].tolist() == [5, 12, 12, 15]
    assert [windows[i].tolist() for i in range(6)] == [HELLO_WORLD[i:i + 5] for i in range(6)]
    assert windows[5].tolist() == [23, 15, 18, 12, 4]  # the last window ends at the last token
    with pytest.raises(IndexError):
        windows[6]


def test_strided_hello_world():
    windows = batching.TokenWindows(np.array(HELLO_WORLD, dtype=np.uint16), block_size=4, stride=4)
    assert len(windows) == 2  # (N - 1) // block_size
    assert [windows[i].tolist() for i in range(2)] == [[8, 5, 12, 12, 15], [15, 23, 15, 18, 12]]


@pytest.mark.parametrize('windowing, batch_size, starts', [('sliding', 2, range(6)), ('strided', 1, [0, 4])])
def test_window_loader_gives_every_window_once_per_epoch(windowing, batch_size, starts):
    docs = documents(HELLO_WORLD, special_ids={})
    batches = batching.make_batches(windowing, 'gpt', docs, batch_size, block_size=4, seed=0)
    assert isinstance(batches, batching.WindowLoader)
    assert batches.batches_per_epoch == len(starts) // batch_size
    epochs = []
    for _ in range(2):
        drawn = [next(batches) for _ in range(batches.batches_per_epoch)]
        windows = [x + y[-1:] for b in drawn for x, y in zip(rows(b.x), rows(b.y))]
        assert sorted(windows) == sorted(HELLO_WORLD[i:i + 5] for i in starts)
        epochs.append(windows)
    assert windowing == 'strided' or epochs[0] != epochs[1]  # each epoch in its own order


# ---------------------------------------------------------------------------------------------------------
# lines: windows inside documents, three padding variants

# documents of lengths 1, 3 and 10: no pair, 2 pairs, 9 pairs
LINE_DOCS = ([1], [20, 21, 22], list(range(30, 40)))
P = PAD
FULL = [(list(range(30 + s, 34 + s)), list(range(31 + s, 35 + s))) for s in range(6)]  # doc 3's full windows
LINES_EXPECTED = {
    'lines_left': [  # from a window holding only the first token, left-padded, to the last full window
        ([P, P, P, 20], [I, I, I, 21]), ([P, P, 20, 21], [I, I, 21, 22]),
        ([P, P, P, 30], [I, I, I, 31]), ([P, P, 30, 31], [I, I, 31, 32]), ([P, 30, 31, 32], [I, 31, 32, 33]),
        *FULL],
    'lines_slide': [  # the same, then on past the end, right-padded, until only the last token remains
        ([P, P, P, 20], [I, I, I, 21]), ([P, P, 20, 21], [I, I, 21, 22]), ([P, 20, 21, P], [I, 21, 22, I]),
        ([20, 21, P, P], [21, 22, I, I]), ([21, P, P, P], [22, I, I, I]),
        ([P, P, P, 30], [I, I, I, 31]), ([P, P, 30, 31], [I, I, 31, 32]), ([P, 30, 31, 32], [I, 31, 32, 33]),
        *FULL,
        ([36, 37, 38, P], [37, 38, 39, I]), ([37, 38, P, P], [38, 39, I, I]), ([38, P, P, P], [39, I, I, I])],
    'lines_full': [  # full windows only; the short document gives one right-padded window
        ([20, 21, P, P], [21, 22, I, I]),
        *FULL],
}


@pytest.mark.parametrize('windowing', list(LINES_EXPECTED))
def test_lines_exact_windows(windowing):
    batches = batching.make_batches(windowing, 'gpt', documents(*LINE_DOCS), batch_size=4, block_size=4, seed=0)
    expected = LINES_EXPECTED[windowing]
    assert batches.n_windows == len(expected)
    batch = batches.windows(np.arange(batches.n_windows))
    assert list(zip(rows(batch.x), rows(batch.y))) == expected
    # padding is its own segment and the document's positions start at its first token
    is_real = [[int(t != P) for t in x] for x, _ in expected]
    assert rows(batch.doc_ids) == is_real
    assert rows(batch.positions) == rows(torch.from_numpy(batching.segment_positions(np.array(is_real))))
    real = sum(t != I for _, y in expected for t in y)
    assert batches.target_fraction == real / (len(expected) * 4)


def test_lines_positions_and_segments_of_a_window_padded_on_both_sides():
    batches = batching.make_batches('lines_slide', 'gpt', documents(*LINE_DOCS), 1, 4, seed=0)
    batch = batches.windows(np.array([2]))
    assert rows(batch.x) == [[P, 20, 21, P]]
    assert rows(batch.doc_ids) == [[0, 1, 1, 0]] and rows(batch.positions) == [[0, 0, 1, 0]]


def brute_force_windows(docs, block_size, variant, pad):
    """Every window of a lines variant, enumerated from its definition, one document and window at a time."""
    T, out = block_size, []
    for doc in docs:
        n_pairs = len(doc) - 1  # pair i: input doc[i], target doc[i + 1]
        if n_pairs <= 0:
            continue
        if variant == 'left':  # one window ending at each pair, left-padded while the document is shorter
            spans = [range(end - T + 1, end + 1) for end in range(n_pairs)]
        elif variant == 'slide':  # every window of the document padded with T - 1 pads on both sides
            spans = [range(start, start + T) for start in range(1 - T, n_pairs)]
        elif variant == 'full':
            spans = [range(start, start + T) for start in range(n_pairs - T + 1)] or [range(T)]
        else:  # chunks: every pair once
            spans = [range(start, start + T) for start in range(0, n_pairs, T)]
        for span in spans:
            out.append(([doc[i] if 0 <= i < n_pairs else pad for i in span],
                        [doc[i + 1] if 0 <= i < n_pairs else I for i in span]))
    return out


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 14), min_size=1, max_size=8), block_size=st.integers(1, 6),
       variant=st.sampled_from(['left', 'slide', 'full', 'chunks']), batch_size=st.integers(1, 5))
def test_lines_binary_search_agrees_with_brute_force(lengths, block_size, variant, batch_size):
    docs = [list(range(100 * d + 10, 100 * d + 10 + n)) for d, n in enumerate(lengths)]
    expected = brute_force_windows(docs, block_size, variant, PAD)
    if not expected:
        with pytest.raises(ValueError, match='nothing to learn'):
            batching.LineWindows(documents(*docs), batch_size, block_size, variant, seed=0)
        return
    batches = batching.LineWindows(documents(*docs), batch_size, block_size, variant, seed=0,
                                   order='sequential')
    assert batches.n_windows == len(expected)
    drawn = [next(batches) for _ in range(batches.batches_per_epoch)]  # in order, batch by batch
    assert [(x, y) for b in drawn for x, y in zip(rows(b.x), rows(b.y))] == expected
    real = sum(t != I for _, y in expected for t in y)
    assert batches.target_fraction == pytest.approx(real / (len(expected) * block_size))


def test_evaluation_windows_score_every_pair_once():
    docs = documents(*LINE_DOCS)
    batches = batching.evaluation_windows(docs, batch_size=3, block_size=4)  # 4 windows: 1 + 3 chunks
    drawn = [next(batches) for _ in range(batches.batches_per_epoch)]
    targets = [t for b in drawn for t in b.y.flatten().tolist() if t != I]
    assert targets == [21, 22, *range(31, 40)] and len(targets) == docs.pairs.sum()
    assert rows(drawn[-1].x) == [[38, P, P, P]]  # the last, smaller batch: document 3's third chunk


def test_bpe_documents_start_at_the_end_of_text_before_them():
    eot = 50256  # GPT-2: documents are t1 .. tn <|endoftext|>, with no start token
    docs = documents([5, 6, eot], [7, eot], [8, 9, eot], special_ids={'unk': None, 'bos': eot, 'eos': eot,
                                                                        'pad': None})
    assert docs.starts.tolist() == [0, 2, 4] and docs.ends.tolist() == [3, 5, 8]
    assert docs.pad_id == eot  # no pad token: padding reads end-of-text, masked out of attention anyway
    batch = batching.LineWindows(docs, 1, 3, 'full', seed=0).windows(np.arange(3))
    assert rows(batch.x) == [[5, 6, eot], [eot, 7, eot], [eot, 8, 9]]  # the second: one pair, then padding
    assert rows(batch.y) == [[6, eot, I], [7, eot, I], [8, 9, eot]]


# ---------------------------------------------------------------------------------------------------------
# packed

PACKED_DOCS = ([1, 10, 11, 2], [1, 20, 2], [1, 30, 31, 32, 2])


@pytest.mark.parametrize('model_type', ['gpt', 'lstm'])
def test_packed_exact_windows(model_type):
    batches = batching.make_batches('packed', model_type, documents(*PACKED_DOCS), batch_size=1, block_size=4,
                                    seed=2)
    assert batches.batches_per_epoch == 2  # 12 tokens: one row of 11 inputs, two windows of 4
    assert batches.epoch_order(0)[0].tolist() == [2, 0, 1]  # the seed's shuffle: C, A, B
    x, y, doc_ids, positions = next(batches)[:4]
    assert rows(x) == [[1, 30, 31, 32]] and rows(y) == [[30, 31, 32, 2]]
    assert rows(doc_ids) == [[0, 0, 0, 0]] and rows(positions) == [[0, 1, 2, 3]]
    x, y, doc_ids, positions = next(batches)[:4]
    assert rows(x) == [[2, 1, 10, 11]]
    assert rows(y) == [[I, 10, 11, 2]]  # </s> -> <s> crosses into the next document: not a target
    assert rows(doc_ids) == [[0, 1, 1, 1]]
    # positions restart at A's <s>; the window's first token is C's fifth: 0 for the GPT, which sees only it
    # of C, and 4 for the LSTM, whose state carries C's first four tokens in from the previous batch
    assert rows(positions) == ([[0, 0, 1, 2]] if model_type == 'gpt' else [[4, 0, 1, 2]])
    assert batches.is_epoch_start
    assert batches.epoch_order(1)[0].tolist() == [0, 2, 1]  # a new shuffle for the next epoch
    x, *_ = next(batches)
    assert rows(x) == [[1, 10, 11, 2]]
    assert batches.target_fraction == 9 / 12


def test_packed_epoch_is_every_document_once():
    docs = [list(range(100 * d, 100 * d + n)) for d, n in enumerate([5, 3, 9, 2, 7, 4, 6, 8])]
    batches = batching.PackedStreams(documents(*docs), batch_size=1, block_size=5, seed=0)
    laid = np.concatenate([next(batches).x.flatten().numpy() for _ in range(batches.batches_per_epoch)])
    order = batches.epoch_order(0)[0]
    expected = np.concatenate([docs[d] for d in order])
    assert sorted(order) == list(range(8)) and np.array_equal(laid, expected[:len(laid)])
    assert len(laid) == 40  # (44 - 1) // 5 windows of 5: no padding anywhere


# ---------------------------------------------------------------------------------------------------------
# streams

def test_streams_exact_layout():
    # 25 tokens, 3 streams of (25 - 1) // 3 = 8 tokens, 2 batches of 4 per epoch
    batches = batching.Streams(stream(25), batch_size=3, block_size=4)
    assert batches.batches_per_epoch == 2 and batches.is_epoch_start
    x, y = next(batches)[:2]
    assert x.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert y.tolist() == [[1, 2, 3, 4], [9, 10, 11, 12], [17, 18, 19, 20]]
    assert not batches.is_epoch_start
    x, y = next(batches)[:2]
    assert x.tolist() == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23]]
    assert y.tolist() == [[5, 6, 7, 8], [13, 14, 15, 16], [21, 22, 23, 24]]
    assert batches.is_epoch_start
    x, *_ = next(batches)
    assert x[:, 0].tolist() == [0, 8, 16]  # a new epoch starts the streams over


def test_streams_row_continues_row():
    tokens = np.random.default_rng(0).integers(0, 60000, size=5000).astype(np.uint16)
    batches = batching.Streams(tokens, batch_size=7, block_size=9)
    previous = next(batches)
    for _ in range(batches.batches_per_epoch - 1):
        x, y = next(batches)[:2]
        # row r of batch k+1 continues row r of batch k: its first input is batch k's last target
        assert torch.equal(x[:, 0], previous.y[:, -1])
        assert torch.equal(x[:, 1:], y[:, :-1])
        previous = batching.Batch(x, y)


# ---------------------------------------------------------------------------------------------------------
# every strategy: resumable, and refused on a split too small for it

@pytest.mark.parametrize('windowing', batching.WINDOWINGS)
def test_every_windowing_resumes_from_its_state(windowing):
    rng = np.random.default_rng(0)
    docs = [rng.integers(4, 500, size=n).tolist() for n in rng.integers(2, 30, size=60)]

    def source():
        return batching.make_batches(windowing, 'gpt', documents(*docs), batch_size=4, block_size=8, seed=5)
    a = source()
    for _ in range(5):
        next(a)
    state = a.state()
    expected = [next(a) for _ in range(2 * getattr(a, 'batches_per_epoch', 3))]  # across an epoch's end
    b = source()
    next(b)  # a different position, overwritten by load_state
    b.load_state(state)
    assert all(same_batch(one, next(b)) and one.weight == 1 for one in expected)


def test_window_loader_resumes_with_worker_processes():
    docs = documents(list(range(4, 400)), special_ids={})
    a = batching.make_batches('sliding', 'gpt', docs, 8, 4, seed=1, num_workers=2)
    for _ in range(3):
        next(a)  # the workers have fetched batches ahead of this position
    expected = [next(a).x for _ in range(3)]
    b = batching.make_batches('sliding', 'gpt', docs, 8, 4, seed=1, num_workers=2)
    b.load_state({'position': 3})
    assert all(torch.equal(e, next(b).x) for e in expected)


def test_too_short_splits_are_refused():
    with pytest.raises(ValueError, match='too short'):
        batching.RandomWindows(stream(8), 2, block_size=8, seed=0)
    with pytest.raises(ValueError, match='too short'):
        batching.Streams(stream(30), batch_size=8, block_size=4)
    with pytest.raises(ValueError, match='fewer than batch_size'):
        batching.make_batches('strided', 'gpt', documents(HELLO_WORLD), batch_size=3, block_size=4, seed=0)
    with pytest.raises(ValueError, match='nothing to learn'):
        batching.make_batches('lines_left', 'gpt', documents([1], [2]), batch_size=3, block_size=4, seed=0)


def test_make_batches_picks_by_windowing_and_model_type():
    docs = documents(list(range(4, 104)))
    assert isinstance(batching.make_batches('auto', 'gpt', docs, 2, 4, 0), batching.RandomWindows)
    assert isinstance(batching.make_batches('auto', 'lstm', docs, 2, 4, 0), batching.Streams)
    assert isinstance(batching.make_batches('packed', 'lstm', docs, 2, 4, 0), batching.PackedStreams)
    assert isinstance(batching.make_batches('lines_full', 'lstm', docs, 2, 4, 0), batching.LineWindows)
    with pytest.raises(ValueError, match='unknown windowing'):
        batching.make_batches('diagonal', 'gpt', docs, 2, 4, 0)


# ---------------------------------------------------------------------------------------------------------
# several processes (torchrun): together they take exactly the single process's batches

@pytest.mark.parametrize('windowing', batching.WINDOWINGS)
def test_processes_share_out_the_single_process_batches(windowing):
    rng = np.random.default_rng(1)
    docs = documents(*(rng.integers(4, 500, size=n).tolist() for n in rng.integers(2, 30, size=40)))

    def source(rank=0, world_size=1):
        return batching.make_batches(windowing, 'gpt', docs, 4, 8, seed=5, rank=rank, world_size=world_size)
    single = source()
    shares = [source(r, 2) for r in range(2)]
    n = 2 * getattr(single, 'batches_per_epoch', 3) + 2  # into a third epoch
    expected = [next(single) for _ in range(n)]
    if batching.shares_rows(windowing, 'gpt'):  # every process every batch, on its block of rows
        assert [s.rows for s in shares] == [slice(0, 2), slice(2, 4)]
        taken = [[next(s) for s in shares] for _ in range(n)]
        parts = [batching.Batch(*(None if t[0] is None else torch.cat(t) for t in zip(*(part[:4] for part in batch))))
                 for batch in taken]
        assert shares[1].is_epoch_start == single.is_epoch_start
        for (a, b), whole in zip(taken, expected):  # weights that make the mean of the processes' means exact
            counts = [int((part.y != I).sum()) for part in (a, b)]
            assert [a.weight, b.weight] == [c * 2 / sum(counts) for c in counts] and whole.weight == 1
    else:  # process r takes batches r, r + 2, r + 4, ...
        taken = [[next(s) for _ in range(n // 2)] for s in shares]
        parts = [taken[g % 2][g // 2] for g in range(n)]
    assert all(same_batch(one, other) for one, other in zip(expected, parts))
    # and every process's source is where the single process's is: any of them resumes in any number
    assert shares[0].state().keys() == single.state().keys()
    assert all(str(s.state()) == str(single.state()) for s in shares)


def test_rows_that_cannot_be_shared_evenly_are_refused():
    with pytest.raises(ValueError, match='batch_size 4 streams cannot be shared evenly by 3 processes'):
        batching.Streams(stream(401), 4, 5, rank=0, world_size=3)


@pytest.mark.parametrize('model_type', ['gpt', 'lstm'])
def test_keeps_to_documents_says_what_each_batch_source_does(model_type):
    docs = documents(*[list(range(100 * d, 100 * d + n)) for d, n in enumerate([5, 3, 9, 2, 7, 4, 6, 8])])
    for windowing in ('auto', *batching.WINDOWINGS):
        batches = batching.make_batches(windowing, model_type, docs, batch_size=2, block_size=4, seed=0)
        assert type(batches) is batching.BATCH_SOURCES[batching.resolve_windowing(windowing, model_type)]
        assert batching.keeps_to_documents(windowing, model_type) == batches.keeps_to_documents, windowing
    assert [w for w in batching.WINDOWINGS if batching.keeps_to_documents(w, model_type)] == [
        'lines_left', 'lines_slide', 'lines_full', 'packed']

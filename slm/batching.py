"""(input, target) batches cut from a prepared split: the one place train.py, bench.py and ablate.py get them.

How the windows are cut changes what the model learns; `--windowing` picks the strategy:

    random       block_size windows at uniformly random starts over the whole token stream (the GPT default)
    sliding      every window, stride 1, as a torch Dataset read through a DataLoader, shuffled each epoch
    strided      non-overlapping windows, stride block_size, the same way
    lines_left   windows that never cross a document boundary: from a window holding only a document's first
                 token, left-padded, sliding one token at a time to its last full window
    lines_slide  the same, then on past the end, right-padded, until only the last token remains
    lines_full   full windows only; a document shorter than the window gives one right-padded window
    packed       documents shuffled and laid end to end with no padding; attention stays inside each
                 document and positions restart at its first token (for the LSTM, its state does)
    streams      batch_size contiguous streams for truncated backpropagation through time (the LSTM default)

Every source yields Batch(x, y, doc_ids, positions) and keeps its place in a plain-value state(), so that a
resumed run draws exactly the batches the uninterrupted run would have drawn.

In a run of world_size processes (torchrun), process `rank` takes its share of the batches the single process
would take, so that together they train on exactly those batches, and the state() is the same in every
process: a checkpoint of either resumes in any number of processes. The sources whose rows continue from batch
to batch (streams, packed: is_contiguous) are shared out by row, since a row's batches must follow each other
through one process that carries its LSTM state; the others by whole batch (micro-step): process r takes
batches r, r + W, r + 2W, ... of the single process's sequence (W = world_size).
"""
import dataclasses
import typing

import numpy as np
import torch


IGNORE_INDEX = -100  # a target the loss skips: padding, and a pair whose input and target lie in two documents
LINES = {'lines_left': 'left', 'lines_slide': 'slide', 'lines_full': 'full'}
WINDOWINGS = ('random', 'sliding', 'strided', *LINES, 'packed', 'streams')


class Batch(typing.NamedTuple):
    x: torch.Tensor                        # (B, T) input ids
    y: torch.Tensor                        # (B, T) target ids, IGNORE_INDEX where nothing is to be learned
    doc_ids: torch.Tensor | None = None    # (B, T) segment of each position: attention stays inside one
    positions: torch.Tensor | None = None  # (B, T) position ids, 0 at the first token of each segment
    # When processes share a batch by rows, their rows may hold different numbers of targets: each process's mean
    # loss times its weight (its targets x processes / the whole batch's targets) averages, over the processes,
    # to the single process's mean over the whole batch, as DDP averages the gradients. 1 for a whole batch.
    weight: float = 1.0


def to_device(batch, device):
    """Move a CPU batch to device; on CUDA through pinned memory so the copy overlaps compute."""
    if torch.device(device).type == 'cuda':
        return batch._replace(**{k: t.pin_memory().to(device, non_blocking=True) for k, t in tensors(batch)})
    return batch._replace(**{k: t.to(device) for k, t in tensors(batch)})


def tensors(batch):
    """(name, tensor) of the fields of a Batch that hold tensors."""
    return [(k, t) for k, t in batch._asdict().items() if isinstance(t, torch.Tensor)]


def default_windowing(model_type):
    return 'streams' if model_type == 'lstm' else 'random'


def resolve_windowing(windowing, model_type):
    """The strategy a --windowing setting means for model_type: itself, or for auto the model's default."""
    return default_windowing(model_type) if windowing == 'auto' else windowing


def keeps_to_documents(windowing, model_type):
    """Whether a windowing reads every document apart from the others, from its own start and never past its end
    (its batch source's keeps_to_documents): a model trained so generates a fresh document after an end."""
    return BATCH_SOURCES[resolve_windowing(windowing, model_type)].keeps_to_documents


def shares_rows(windowing, model_type):
    """Whether processes share a windowing's batches by row (contiguous rows) rather than by whole batch."""
    return resolve_windowing(windowing, model_type) in ('streams', 'packed')


def process_rows(batch_size, rank, world_size):
    """The rows of every batch that process rank of world_size takes: a contiguous block of them."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} streams cannot be shared evenly by {world_size} processes")
    rows_per_process = batch_size // world_size
    return slice(rank * rows_per_process, (rank + 1) * rows_per_process)


def draw(rng, high, batch_size, rank, world_size):
    """Process rank's batch_size integers below high of the world_size batches the single process draws next:
    the other processes' draws only advance the generator, as they do there."""
    return [rng.integers(0, high, size=batch_size) for _ in range(world_size)][rank]


@dataclasses.dataclass
class Documents:
    """A split's tokens and where each document's span lies in them: the pairs inside a span are its targets.

    Our char and word documents are <s> t1 .. tn </s>, and a span is the document. GPT-2 BPE documents are
    t1 .. tn <|endoftext|> with no start token, so a span also takes the end-of-text before it (the previous
    document's) as its first token: t1 is learned as what follows an end-of-text, as sample.py prompts it.
    The first document has no end-of-text before it, so its t1 is never a target.
    """
    tokens: np.ndarray   # (N,) token ids, usually a memmap
    starts: np.ndarray   # (D,) index of each span's first token
    ends: np.ndarray     # (D,) one past its last token
    pad_id: int          # input id of padding: the tokenizer's pad, else its end-of-text (attention skips it)

    @classmethod
    def from_split(cls, tokens, offsets, special_ids):
        """From storage.open_split's (tokens, offsets) and the tokenizer meta's special_ids."""
        offsets = np.asarray(offsets, dtype=np.int64)
        starts, ends = offsets[:-1].copy(), offsets[1:].copy()
        bos, eos, pad = (special_ids.get(k) for k in ('bos', 'eos', 'pad'))
        if eos is not None and bos in (None, eos):
            starts[1:] -= 1
        pad_id = pad if pad is not None else eos if eos is not None else 0
        return cls(tokens, starts, ends, pad_id)

    @property
    def pairs(self):
        """(D,) number of (input, target) pairs in each document's span."""
        return np.maximum(self.ends - self.starts - 1, 0)


def segment_positions(doc_ids):
    """(B, T) numpy: the position of each token counted from the first token of its run of equal doc_ids."""
    columns = np.arange(doc_ids.shape[1])
    is_start = np.ones(doc_ids.shape, dtype=bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return columns - np.maximum.accumulate(np.where(is_start, columns, 0), axis=1)


class RandomWindows:
    """batch_size windows at uniformly random starts; the target is the input shifted by one.

        tokens  t0 t1 t2 t3 t4 t5 t6 ...      start s, block_size 4:
        x       t[s]   t[s+1] t[s+2] t[s+3]
        y       t[s+1] t[s+2] t[s+3] t[s+4]
    """
    is_contiguous = False       # rows do not continue the previous batch's rows
    keeps_to_documents = False  # windows may span documents, and the token after </s> is a target
    target_fraction = 1.0       # expected share of positions with a target to learn

    def __init__(self, tokens, batch_size, block_size, seed, rank=0, world_size=1):
        if len(tokens) <= block_size:
            raise ValueError(f"{len(tokens)} tokens are too short for block_size {block_size}")
        # Every window of block_size + 1 tokens as a view: no copy until a batch picks its rows.
        self.windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self):
        starts = draw(self.rng, len(self.windows), self.batch_size, self.rank, self.world_size)
        rows = torch.from_numpy(self.windows[starts].astype(np.int64))  # (B, T + 1)
        return Batch(rows[:, :-1], rows[:, 1:])

    def state(self):
        return {'rng': self.rng.bit_generator.state}

    def load_state(self, state):
        self.rng.bit_generator.state = state['rng']


class TokenWindows(torch.utils.data.Dataset):
    """Window i is tokens[i * stride : i * stride + block_size + 1], sliced from the memmap when asked for.

    stride 1 gives every window (sliding, len = N - block_size); stride block_size gives non-overlapping ones
    (strided, len = (N - 1) // block_size). Nothing is precomputed: a window is a slice and a copy of T + 1 ids.
    """

    def __init__(self, tokens, block_size, stride):
        self.tokens, self.block_size, self.stride = tokens, block_size, stride
        self.length = max(0, (len(tokens) - 1 - block_size) // stride + 1)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        """(T + 1,) int64 tensor: the window's input followed by its last target."""
        if not 0 <= i < self.length:
            raise IndexError(f"window {i} of {self.length}")
        start = i * self.stride
        return torch.from_numpy(np.asarray(self.tokens[start:start + self.block_size + 1], dtype=np.int64))


def epoch_generator(seed, epoch):
    """A torch generator seeded from (seed, epoch) alone."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


class EpochBatches(torch.utils.data.Sampler):
    """The window indices of batches start, start + step, start + 2 step, ... for ever (a batch sampler): batch g
    is the (g mod batches_per_epoch)-th batch_size slice of epoch g // batches_per_epoch's order, a permutation
    of the windows drawn from (seed, epoch) alone, so that a resumed run, or another process, rebuilds it. The
    last windows of an epoch that do not fill a batch are dropped. torch.randperm holds 8 bytes per window."""

    def __init__(self, n, batch_size, seed, start=0, step=1):
        self.n, self.batch_size, self.seed, self.start, self.step = n, batch_size, seed, start, step
        self.batches_per_epoch = n // batch_size

    def __iter__(self):
        epoch, order, g = None, None, self.start
        while True:
            if g // self.batches_per_epoch != epoch:
                epoch = g // self.batches_per_epoch
                order = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))
            b = g % self.batches_per_epoch
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            g += self.step


class WindowLoader:
    """Batches of a TokenWindows dataset through a torch DataLoader (shuffled each epoch, drop_last, optional
    worker processes and pinned memory). Its state is the number of batches the single process has drawn: on
    resume the DataLoader restarts at that batch of the same epoch's order, and what its workers had fetched
    ahead is dropped."""
    is_contiguous = keeps_to_documents = False
    target_fraction = 1.0

    def __init__(self, dataset, batch_size, seed, rank=0, world_size=1, num_workers=0, pin_memory=False):
        self.batches_per_epoch = len(dataset) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(dataset)} windows are fewer than batch_size {batch_size}")
        self.dataset, self.batch_size, self.seed, self.rank, self.world_size = \
            dataset, batch_size, seed, rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.position, self.iterator = 0, None

    def __iter__(self):
        return self

    def __next__(self):
        if self.iterator is None:
            batches = EpochBatches(len(self.dataset), self.batch_size, self.seed, start=self.position + self.rank,
                                   step=self.world_size)
            # A DataLoader draws its workers' base seed from its generator when it starts, by default from the
            # global torch RNG that dropout draws from too: a resumed run starts one more time than a straight one.
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                                 pin_memory=self.pin_memory,
                                                 generator=torch.Generator().manual_seed(self.seed))
            self.iterator = iter(loader)
        rows = next(self.iterator)  # (B, T + 1)
        self.position += self.world_size
        return Batch(rows[:, :-1], rows[:, 1:])

    def state(self):
        return {'position': self.position}

    def load_state(self, state):
        self.position, self.iterator = state['position'], None


class LineWindows:
    """Windows inside one document each, padded where the document does not fill them; no window is stored.

    A document with P (input, target) pairs p0 .. p(P-1) (pair i: input token i, target token i + 1) has its
    windows at starts s = first + k * stride, k = 0 .. count - 1; the window holds pairs s .. s + T - 1, and a
    pair outside 0 .. P-1 is padding (input pad_id, target IGNORE_INDEX). With T = 4 and a document
    <s> a b c </s> (P = 4; p0 = <s>->a), `_` padding:

        left   (first 1-T, count P):        ___<s>  __<s>a  _<s>ab  <s>abc
        slide  (first 1-T, count P+T-1):    the four above, then  abc_  bc__  c___
        full   (first 0, count max(P-T+1, 1)):   <s>abc   (a short document: <s>ab_ and so on)
        chunks (first 0, stride T, count ceil(P/T)): every pair exactly once (evaluation)
        overlap (first 0, stride S <= T, count 1 + ceil(max(P-T, 0)/S)): overlapping windows, each scoring
                only its last S pairs (the first window all of its own): every pair once, each after at least
                T - S pairs of context where the document has them (evaluation's sliding-window score)

    (targets: ___a  __ab  _abc  abc</s> ...). Window j is found with np.searchsorted in the cumulative window
    counts: O(log documents) time, O(documents) memory. doc_ids mark the document's positions 1 and padding 0,
    and positions restart at the document's first token, so attention (and the LSTM's state) never reads the
    padding: a left-padded window computes what the document's own first tokens would.
    """
    is_contiguous, keeps_to_documents = False, True

    def __init__(self, documents, batch_size, block_size, variant, seed, order='random', rank=0, world_size=1,
                 stride=None):
        T, P, S = block_size, documents.pairs, stride or block_size
        first, stride, count = {
            'left': (1 - T, 1, P),
            'slide': (1 - T, 1, P + T - 1),
            'full': (0, 1, np.maximum(P - T + 1, 1)),
            'chunks': (0, T, -(-P // T)),
            'overlap': (0, S, 1 + -(-np.maximum(P - T, 0) // S)),
        }[variant]
        self.count = np.where(P > 0, count, 0)  # (D,) windows of each document
        self.first_window = np.concatenate([[0], np.cumsum(self.count)])  # (D + 1,)
        self.n_windows = int(self.first_window[-1])
        if self.n_windows == 0:
            raise ValueError("no document has two tokens: nothing to learn from")
        self.documents, self.block_size, self.variant = documents, block_size, variant
        self.first, self.stride, self.pairs = first, stride, P
        self.batch_size, self.order, self.rank, self.world_size = batch_size, order, rank, world_size
        self.batches_per_epoch = -(-self.n_windows // batch_size)
        self.rng, self.position = np.random.default_rng(seed), 0

    @property
    def target_fraction(self):
        """Expected share of a window's positions that hold a real pair (the rest is padding)."""
        T, P = self.block_size, self.pairs[self.count > 0]
        real = {'left': np.where(P <= T, P * (P + 1) // 2, T * (T + 1) // 2 + (P - T) * T),  # sum of min(T, P-i)
                'slide': P * T, 'full': np.where(P >= T, (P - T + 1) * T, P), 'chunks': P,
                'overlap': P}[self.variant]  # overlap: the pairs scored
        return float(real.sum()) / (self.n_windows * T)

    def __iter__(self):
        return self

    def __next__(self):
        """Random order: batch_size windows drawn uniformly. Sequential: the next windows in document order."""
        if self.order == 'random':
            ids = draw(self.rng, self.n_windows, self.batch_size, self.rank, self.world_size)
        else:
            start = ((self.position + self.rank) % self.batches_per_epoch) * self.batch_size
            ids = np.arange(start, min(start + self.batch_size, self.n_windows))
        self.position += self.world_size  # batches the single process has drawn
        return self.windows(ids)

    def windows(self, ids):
        """The Batch of windows ids (B,): every gather vectorized over the batch."""
        doc = self.document_of(ids)                                                       # (B,)
        k = ids - self.first_window[doc]                                                  # (B,) its window
        start = self.first + k * self.stride                                              # (B,) first pair
        pair = start[:, None] + np.arange(self.block_size)                               # (B, T)
        n_pairs = self.pairs[doc][:, None]
        is_real = (pair >= 0) & (pair < n_pairs)
        source = self.documents.starts[doc][:, None] + np.clip(pair, 0, n_pairs - 1)   # (B, T) token index
        tokens = self.documents.tokens
        # int64 before np.where: IGNORE_INDEX does not fit the split's unsigned dtype
        x = np.where(is_real, tokens[source].astype(np.int64), self.documents.pad_id)
        is_scored = is_real
        if self.variant == 'overlap':  # after the first window, the pairs before its last S were scored before
            is_scored = is_real & ((k[:, None] == 0) | (np.arange(self.block_size) >= self.block_size - self.stride))
        y = np.where(is_scored, tokens[source + 1].astype(np.int64), IGNORE_INDEX)
        doc_ids = is_real.astype(np.int64)
        return Batch(*map(torch.from_numpy, (x, y, doc_ids, segment_positions(doc_ids))))

    def document_of(self, ids):
        """(B,) the document of each window of ids (B,)."""
        return np.searchsorted(self.first_window, ids, side='right') - 1

    def state(self):
        return {'rng': self.rng.bit_generator.state, 'position': self.position}

    def load_state(self, state):
        self.rng.bit_generator.state, self.position = state['rng'], state['position']


class Streams:
    """LSTM batches for truncated backpropagation through time (TBPTT).

    The split is cut into batch_size contiguous streams, one per batch row; consecutive batches continue
    each row where the last one stopped, so the hidden state can be carried from batch to batch.
    With tokens a b c ... x, batch_size 4 and block_size 2:

        row 0:  a b | c d | e f        batch k = columns [k*T, (k+1)*T) of every row;
        row 1:  g h | i j | k l        the target is the same slice one token later
        row 2:  m n | o p | q r        (row 0's last target is g).
        row 3:  s t | u v | w x

    `is_epoch_start` tells the trainer to reset the hidden state: row r of the first batch does not
    continue row r of the last.

    Among world_size processes, each carries a contiguous block of the rows through every batch: with
    batch_size 4 and 2 processes, process 0 has rows 0-1 and process 1 rows 2-3 above (`rows`).
    """
    is_contiguous, keeps_to_documents = True, False
    target_fraction = 1.0

    def __init__(self, tokens, batch_size, block_size, rank=0, world_size=1):
        self.stream_len = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = self.stream_len // block_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(tokens)} tokens are too short for batch_size {batch_size}"
                             f" streams of block_size {block_size}")
        self.rows = process_rows(batch_size, rank, world_size)  # this process's streams
        n = batch_size * self.stream_len
        self.x = np.asarray(tokens[:n]).reshape(batch_size, self.stream_len)[self.rows]       # (rows, stream_len)
        self.y = np.asarray(tokens[1:n + 1]).reshape(batch_size, self.stream_len)[self.rows]  # (rows, stream_len)
        self.block_size = block_size
        self.position = 0  # batches drawn so far

    @property
    def is_epoch_start(self):
        """True when the next batch starts the streams from their beginning."""
        return self.position % self.batches_per_epoch == 0

    def __iter__(self):
        return self

    def __next__(self):
        """x, y: (B, T) int64 CPU tensors continuing the previous batch row by row."""
        start = (self.position % self.batches_per_epoch) * self.block_size
        self.position += 1
        cols = slice(start, start + self.block_size)
        return Batch(torch.from_numpy(self.x[:, cols].astype(np.int64)),
                     torch.from_numpy(self.y[:, cols].astype(np.int64)))

    def state(self):
        return {'position': self.position}

    def load_state(self, state):
        self.position = state['position']


class PackedStreams(Streams):
    """Documents in a new random order each epoch, laid end to end and cut into rows as Streams cuts the split,
    with no padding. A target in another document than its input (after a document's last token) is ignored;
    doc_ids number the documents, so the GPT attends within one only; positions restart at 0 at each document.

        epoch order:  [d7 ......][d2 ...][d9 .........][d4 ....] ...  cut into batch_size rows, then into T columns
        one window:   ...d2 ends | d9 begins...     doc_ids 2 2 2 9 9 9   positions 4 5 6 0 1 2

    For the GPT (relative_positions) a window's first tokens count from 0 even inside a document, because
    that is all of the document the window shows. For the LSTM, which carries its state from batch to batch,
    positions count from the document's real start, so 0 marks exactly where its state must start afresh.
    The order is drawn from (seed, epoch) and laid out lazily: only the cumulative lengths are kept.
    """
    keeps_to_documents = True

    def __init__(self, documents, batch_size, block_size, seed, relative_positions=True, rank=0, world_size=1):
        self.documents, self.seed, self.relative_positions = documents, seed, relative_positions
        self.lengths = documents.ends - documents.starts
        n = int(self.lengths.sum())
        self.stream_len = (n - 1) // batch_size
        self.batches_per_epoch = self.stream_len // block_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} tokens are too short for batch_size {batch_size} streams of block_size"
                             f" {block_size}")
        self.rows = process_rows(batch_size, rank, world_size)  # this process's rows (see Streams)
        self.batch_size, self.world_size = batch_size, world_size
        self.block_size, self.position, self.epoch = block_size, 0, None
        self.target_fraction = float(documents.pairs.sum()) / n

    def epoch_order(self, epoch):
        """The documents of an epoch in the order they are laid out, and where each begins in the layout."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
        return order, np.concatenate([[0], np.cumsum(self.lengths[order])])

    def __next__(self):
        epoch, k = divmod(self.position, self.batches_per_epoch)
        if self.epoch != epoch:
            self.epoch, (self.order, self.layout_starts) = epoch, self.epoch_order(epoch)
        self.position += 1
        T = self.block_size
        at = (np.arange(self.batch_size) * self.stream_len)[:, None] + k * T + np.arange(T + 1)  # (B, T + 1)
        every_slot = np.searchsorted(self.layout_starts, at, side='right') - 1  # (B, T + 1) document slot
        every_target = every_slot[:, 1:] == every_slot[:, :-1]  # input and target in one document
        slot, is_target, at = every_slot[self.rows], every_target[self.rows], at[self.rows]  # this process's rows
        offset = at - self.layout_starts[slot]                                            # position in document
        tokens = self.documents.tokens[self.documents.starts[self.order[slot]] + offset].astype(np.int64)
        doc_ids = slot[:, :-1]
        y = np.where(is_target, tokens[:, 1:], IGNORE_INDEX)
        positions = segment_positions(doc_ids) if self.relative_positions else offset[:, :-1]
        weight = float(is_target.sum() * self.world_size / every_target.sum()) if self.world_size > 1 else 1.0
        return Batch(*map(torch.from_numpy, (tokens[:, :-1], y, doc_ids, positions)), weight=weight)


# the class of each windowing's batch source, as make_batches makes them
BATCH_SOURCES = {'random': RandomWindows, 'sliding': WindowLoader, 'strided': WindowLoader,
                 **dict.fromkeys(LINES, LineWindows), 'packed': PackedStreams, 'streams': Streams}


def make_batches(windowing, model_type, documents, batch_size, block_size, seed, rank=0, world_size=1,
                 num_workers=0, pin_memory=False):
    """The batch source of a windowing strategy ('auto': random for the GPT, streams for the LSTM), or process
    rank's share of it in a run of world_size processes. Raises ValueError when the split is too small for it."""
    if windowing == 'auto':
        windowing = default_windowing(model_type)
    tokens, share = documents.tokens, {'rank': rank, 'world_size': world_size}
    if windowing == 'random':
        return RandomWindows(tokens, batch_size, block_size, seed, **share)
    if windowing in ('sliding', 'strided'):
        dataset = TokenWindows(tokens, block_size, stride=1 if windowing == 'sliding' else block_size)
        return WindowLoader(dataset, batch_size, seed, **share, num_workers=num_workers, pin_memory=pin_memory)
    if windowing in LINES:
        return LineWindows(documents, batch_size, block_size, LINES[windowing], seed, **share)
    if windowing == 'packed':
        return PackedStreams(documents, batch_size, block_size, seed, relative_positions=model_type != 'lstm',
                             **share)
    if windowing == 'streams':
        return Streams(tokens, batch_size, block_size, **share)
    raise ValueError(f"unknown windowing {windowing!r}; known: auto, {', '.join(WINDOWINGS)}")


def evaluation_windows(documents, batch_size, block_size):
    """Every real target of every document exactly once, in order: each document cut into block_size chunks
    (right-padded), so a target's context is its own document's tokens before it in its chunk. The same
    windows whatever a model was trained with: ablate.py compares runs on them."""
    return LineWindows(documents, batch_size, block_size, 'chunks', seed=0, order='sequential')


def sliding_windows(documents, batch_size, block_size, stride):
    """Every real target of every document exactly once, in order, each after at least block_size - stride
    tokens of its document before it where it has them: windows stride tokens apart, each scoring its last stride
    targets (LineWindows' overlap variant)."""
    return LineWindows(documents, batch_size, block_size, 'overlap', seed=0, order='sequential', stride=stride)


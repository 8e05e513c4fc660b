"""(input, target) batches cut from a prepared split: the one place train.py (and bench.py) get batches from.

Both kinds keep their position in a plain-value state() so that a resumed run draws exactly the batches
the uninterrupted run would have drawn.
"""
import numpy as np
import torch


def to_device(x, y, device):
    """Move a CPU batch to device; on CUDA through pinned memory so the copy overlaps compute."""
    if torch.device(device).type == 'cuda':
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class RandomWindows:
    """GPT batches: batch_size windows at uniformly random starts; the target is the input shifted by one.

        tokens  t0 t1 t2 t3 t4 t5 t6 ...      start s, block_size 4:
        x       t[s]   t[s+1] t[s+2] t[s+3]
        y       t[s+1] t[s+2] t[s+3] t[s+4]
    """

    def __init__(self, tokens, batch_size, block_size, seed):
        if len(tokens) <= block_size:
            raise ValueError(f"split of {len(tokens)} tokens is too short for block_size {block_size}")
        # Every window of block_size + 1 tokens as a view: no copy until a batch picks its rows.
        self.windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self):
        """x, y: (B, T) int64 CPU tensors."""
        starts = self.rng.integers(0, len(self.windows), size=self.batch_size)
        rows = torch.from_numpy(self.windows[starts].astype(np.int64))  # (B, T + 1)
        return rows[:, :-1], rows[:, 1:]

    def state(self):
        return {'rng': self.rng.bit_generator.state}

    def load_state(self, state):
        self.rng.bit_generator.state = state['rng']


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
    """

    def __init__(self, tokens, batch_size, block_size):
        self.stream_len = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = self.stream_len // block_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"split of {len(tokens)} tokens is too short for batch_size {batch_size}"
                             f" streams of block_size {block_size}")
        n = batch_size * self.stream_len
        self.x = np.asarray(tokens[:n]).reshape(batch_size, self.stream_len)       # (B, stream_len)
        self.y = np.asarray(tokens[1:n + 1]).reshape(batch_size, self.stream_len)  # (B, stream_len)
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
        return (torch.from_numpy(self.x[:, cols].astype(np.int64)),
                torch.from_numpy(self.y[:, cols].astype(np.int64)))

    def state(self):
        return {'position': self.position}

    def load_state(self, state):
        self.position = state['position']


def make_batches(model_type, tokens, batch_size, block_size, seed):
    """The batch source a model type trains on: random windows for the GPT, TBPTT streams for the LSTM."""
    if model_type == 'lstm':
        return Streams(tokens, batch_size, block_size)
    return RandomWindows(tokens, batch_size, block_size, seed)

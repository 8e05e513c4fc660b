"""(input, target) batches cut from a prepared split: the one place train.py (and bench.py) get batches from.

Both kinds keep their position in a plain-value state() so that a resumed run draws exactly the batches
the uninterrupted run would have drawn.

In a run of world_size processes (torchrun), process `rank` takes its share of the batches the single process
would take, so that together they train on exactly those batches, and the state() is the same in every
process: a checkpoint of either resumes in any number of processes. The GPT's windows are shared out by
micro-step (RandomWindows), the LSTM's streams by row (Streams), since a stream's batches must follow each
other through one process that carries its hidden state.
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

    Among world_size processes, every process draws the single process's sequence of batches (the same seed)
    and keeps every world_size-th: process r takes batches r, r + W, r + 2W, ... (W = world_size).
    """

    def __init__(self, tokens, batch_size, block_size, seed, rank=0, world_size=1):
        if len(tokens) <= block_size:
            raise ValueError(f"split of {len(tokens)} tokens is too short for block_size {block_size}")
        # Every window of block_size + 1 tokens as a view: no copy until a batch picks its rows.
        self.windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        return self

    def __next__(self):
        """x, y: (B, T) int64 CPU tensors."""
        draws = [self.rng.integers(0, len(self.windows), size=self.batch_size) for _ in range(self.world_size)]
        starts = draws[self.rank]  # the other processes' draws only advance the generator, as they do there
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

    Among world_size processes, each carries a contiguous block of the rows through every batch: with
    batch_size 4 and 2 processes, process 0 has rows 0-1 and process 1 rows 2-3 above (`rows`).
    """

    def __init__(self, tokens, batch_size, block_size, rank=0, world_size=1):
        self.stream_len = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = self.stream_len // block_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"split of {len(tokens)} tokens is too short for batch_size {batch_size}"
                             f" streams of block_size {block_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} streams cannot be shared evenly by {world_size} processes")
        rows_per_process = batch_size // world_size
        self.rows = slice(rank * rows_per_process, (rank + 1) * rows_per_process)  # this process's streams
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
        return (torch.from_numpy(self.x[:, cols].astype(np.int64)),
                torch.from_numpy(self.y[:, cols].astype(np.int64)))

    def state(self):
        return {'position': self.position}

    def load_state(self, state):
        self.position = state['position']


def make_batches(model_type, tokens, batch_size, block_size, seed, rank=0, world_size=1):
    """The batch source a model type trains on: random windows for the GPT, TBPTT streams for the LSTM
    (process rank's share of them in a run of world_size processes)."""
    if model_type == 'lstm':
        return Streams(tokens, batch_size, block_size, rank, world_size)
    return RandomWindows(tokens, batch_size, block_size, seed, rank, world_size)

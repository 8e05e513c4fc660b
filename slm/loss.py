"""The loss of a batch of windows: next-token cross-entropy over its real targets, in micro-batches of rows when
a whole batch's logits and activations would not fit in memory (--max_memory), with the LSTM's state carried
from batch to batch; and the mean loss over many batches that evaluation reports.

A batch of B rows cut into micro-batches of at most R rows, each run forward and backward before the next:

    rows 0 .. R-1      -> loss sum / targets of the whole batch -> backward   (its graph freed)
    rows R .. 2R-1     -> loss sum / targets of the whole batch -> backward
    ...                                                            the gradients add up to the batch's mean's

so one micro-batch's logits (R x T x vocab_size floats) and activations are in memory at a time, and the step
is the one the whole batch would have taken (to float rounding).
"""
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from slm import batching, distributed, perf, runtime
from slm.distributed import unwrap


def lm_loss(logits, targets, ignore_index, reduction='mean'):
    """Next-token cross-entropy in nats over the targets that are not ignore_index: their mean, or their sum."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index,
                           reduction=reduction)


def forward_loss(model, x, y, positions, doc_ids, hidden, ignore_index, is_recurrent, total):
    """A batch's loss under the model (its fields as in batching.Batch): the mean over the real targets or
    (total) their sum, and the LSTM's state after it (None for a GPT). It is the part of a step that --compile
    compiles: for a GPT in one process, one graph, in which the cast of the logits to float32, the log-softmax
    and its gradient fuse into a few passes, where eager runs one pass per operation over batch x block x vocab
    floats (docs/training-speed.md). torch splits it where it cannot trace: at nn.LSTM, and at DDP's hooks
    (the model and the loss then compile apart)."""
    if is_recurrent:
        logits, hidden = model(x, hidden, positions=positions)
    else:
        logits = model(x, positions=positions, doc_ids=doc_ids)
    return lm_loss(logits, y, ignore_index, reduction='sum' if total else 'mean'), hidden


def detach_hidden(hidden):
    """Cut the graph at a TBPTT boundary: keep the LSTM state's values, drop their history."""
    return tuple(h.detach() for h in hidden)


def row_chunks(batch_size, rows_per_chunk):
    """The row slices that cut a batch into micro-batches of at most rows_per_chunk rows."""
    return [slice(a, min(a + rows_per_chunk, batch_size)) for a in range(0, batch_size, rows_per_chunk)]


class BatchLoss:
    """Calling it runs the model on the next batch of one batch source and returns the mean loss over the
    batch's real targets; target_count holds how many there were (a device tensor: reading it waits), and
    weight the batch's weight in a training step (batching.Batch.weight).

    A batch whose logits and activations would not fit in memory runs in micro-batches of rows_per_chunk rows
    (see runtime.rows_per_chunk): each chunk's loss is its sum over its targets divided by the whole batch's
    target count, so the chunks' losses (and gradients) add up to the batch's mean. Given backward, calling it
    runs backward on each chunk's loss as soon as it is computed, so that one chunk's graph is held at a time,
    and returns the loss detached. On a DistributedDataParallel model, gradients are averaged over the processes
    in the backward pass of the last chunk only, and only when sync is set (see train_step).

    For the LSTM it carries the hidden state from batch to batch of a contiguous source (streams, packed):
    detached between batches, reset to zeros where the source starts its streams over. With any other source
    every batch starts from zeros, and there is no state to carry (hidden stays None).

    compiled: run forward_loss under torch.compile (see runtime.compiled); strict_compile: a failure to compile
    is raised, not run eagerly after a warning.
    """

    def __init__(self, model, batches, device, dtype, ignore_index, hidden=None, rows_per_chunk=None,
                 compiled=False, strict_compile=False):
        self.model, self.batches = model, batches
        self.forward_loss = runtime.compiled(forward_loss, strict_compile) if compiled else forward_loss
        self.device, self.dtype, self.ignore_index = device, dtype, ignore_index
        self.is_recurrent = unwrap(model).args.model_type == 'lstm'
        self.hidden, self.target_count, self.weight = hidden, None, 1.0
        self.rows_per_chunk, self.sync = rows_per_chunk, True

    def __call__(self, backward=None):
        is_fresh = self.hidden is None or self.batches.is_epoch_start
        batch = batching.to_device(next(self.batches), self.device)
        rows = batch.x.shape[0]
        hidden = self.hidden
        if self.is_recurrent and is_fresh:
            hidden = unwrap(self.model).init_hidden(rows, self.device)
        self.target_count, self.weight = (batch.y != self.ignore_index).sum(), batch.weight
        chunks = row_chunks(rows, self.rows_per_chunk or rows)
        if len(chunks) == 1:  # the whole batch at once: its mean loss, as computed before chunking existed
            loss, hidden = self._forward(batch, hidden, is_last=True)
            if backward:
                backward(loss)
                loss = loss.detach()
        else:
            total, pieces = torch.zeros((), device=batch.x.device), []
            for i, part in enumerate(chunks):
                chunk = batch._replace(**{k: t[part] for k, t in batching.tensors(batch)})
                chunk_hidden = tuple(h[:, part] for h in hidden) if hidden is not None else None
                loss, chunk_hidden = self._forward(chunk, chunk_hidden, is_last=i == len(chunks) - 1, total=True)
                loss = loss / self.target_count
                if backward:
                    backward(loss)
                    loss = loss.detach()
                total = total + loss
                pieces.append(chunk_hidden)
            loss = total
            hidden = tuple(torch.cat(h, dim=1) for h in zip(*pieces)) if self.is_recurrent else None
        if self.is_recurrent:
            self.hidden = detach_hidden(hidden) if self.batches.is_contiguous else None
        return loss

    def _forward(self, batch, hidden, is_last, total=False):
        """The loss of one (micro-)batch, its mean or (total) its sum, and the LSTM state after it."""
        if isinstance(self.model, DistributedDataParallel):
            # Average the gradients over the processes in one backward pass per optimizer step: the last chunk's
            # of its last micro-step. DDP's no_sync() context manager does this by setting this flag for its
            # block (DDP reads it in forward); setting it here keeps one line for both cases instead of two.
            self.model.require_backward_grad_sync = self.sync and is_last
        with runtime.autocast(self.device, self.dtype):
            return self.forward_loss(self.model, batch.x, batch.y, batch.positions, batch.doc_ids, hidden,
                                     self.ignore_index, self.is_recurrent, total)


def micro_batch_rows(args, cfg, device, dtype, rows):
    """(rows per micro-batch, bytes a row needs, the budget in bytes) for batches of rows rows of the model
    args describes, under --max_memory (see BatchLoss and runtime.memory_budget)."""
    bytes_per_row = perf.training_bytes_per_token(args, dtype.itemsize) * cfg.block_size
    budget = runtime.memory_budget(cfg.max_memory, device)
    return runtime.rows_per_chunk(rows, bytes_per_row, budget), bytes_per_row, budget


@torch.no_grad()
def mean_loss(model, batches, n, device, dtype, ignore_index, world=None, rows_per_chunk=None, name='eval'):
    """Loss per real target token over the single process's next n batches of batches (batches with more
    padding weigh less), in micro-batches of at most rows_per_chunk rows, with a progress bar named name. In
    a run of several processes each runs its share of them (every batch on its rows, or batches rank,
    rank + size, ...; see batching.py), and every process gets the whole figure."""
    world = world or distributed.World()
    batch_loss = BatchLoss(model, batches, device, dtype, ignore_index, rows_per_chunk=rows_per_chunk)
    mine = n if batches.is_contiguous else len(range(world.rank, n, world.size))
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    model.eval()
    for _ in tqdm(range(mine), desc=name, unit='batch', leave=False, dynamic_ncols=True,
                  disable=None if world.is_main and mine > 1 else True):  # None: off where stderr is no terminal
        loss = batch_loss()
        total, count = total + loss * batch_loss.target_count, count + batch_loss.target_count
    model.train()
    return (world.sum(total) / world.sum(count)).item()

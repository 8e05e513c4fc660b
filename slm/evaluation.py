"""How good a model is on held-out text: two numbers under two names, and one conversion to bits per character.

    estimate_loss   during training (train.py's val_loss in metrics.jsonl and the checkpoints): the mean loss of
                    the same eval_tokens of a split's windows every time, cut as training cuts them; cheap, and
                    comparable between the evaluations of one run, or of runs that cut windows alike
    held_out_loss   after training (ablate.py's score): every real target of every held-out document scored once,
                    each document read from its start; comparable across windowings, runs and data sizes
    bits_per_unit   nats per target as bits per character (or per note): a figure that tokenizers do not change
"""
import math

import torch

from slm import batching, storage
from slm import tokenizer as tok
from slm.loss import mean_loss


EVAL_SEED = 0  # the same val windows for every run, whatever its training seed, so runs compare


def eval_batches(cfg):
    """How many batches an evaluation of eval_tokens runs: whole batches, at least one."""
    return max(1, -(-cfg.eval_tokens // (cfg.batch_size * cfg.block_size)))


def estimate_loss(model, batches, cfg, device, dtype, world=None, rows_per_chunk=None, name='eval'):
    """Loss per real target over the first eval_batches(cfg) batches of batches (seeded by EVAL_SEED: the same
    ones every time), at most one epoch; in a run of several processes each gets the single process's figure."""
    n = min(eval_batches(cfg), getattr(batches, 'batches_per_epoch', eval_batches(cfg)))
    return mean_loss(model, batches, n, device, dtype, batching.IGNORE_INDEX, world, rows_per_chunk, name)


def text_unit(split_counts):
    """What bits are counted per for a split's counts in meta.json: 'char' (text), 'note' (music), else 'token'."""
    return next((u for u in ('char', 'note') if split_counts.get(u + 's')), 'token')


def bits_per_unit(nats_per_target, targets, units):
    """Nats per target over `targets` targets as bits per unit (character, note) of the `units` they cover."""
    return nats_per_target / math.log(2) * targets / units


def held_out(data_dir, n_documents=0):
    """(documents, characters in them): data_dir's val split, or its first n_documents (0 = all)."""
    meta = storage.load_meta(data_dir)
    tokens, offsets = storage.open_split(data_dir, 'val', meta)
    n = len(offsets) - 1 if n_documents <= 0 else min(n_documents, len(offsets) - 1)
    if n == len(offsets) - 1:
        chars = meta['splits']['val']['chars']
    else:  # as prepare.py counts them: each document's text, and one for the boundary its end token stands for
        t = tok.from_meta(meta['tokenizer'])
        body = slice(1, -1) if t.bos_id != t.eos_id else slice(None, -1)
        chars = sum(len(t.decode(tokens[offsets[i]:offsets[i + 1]][body].tolist())) + 1 for i in range(n))
    documents = batching.Documents.from_split(tokens, offsets[:n + 1], meta['tokenizer']['special_ids'])
    return documents, chars


def held_out_loss(model, documents, batch_size, device):
    """Nats per real target of model on every target of documents once, in float32 whatever the model trained
    in (runs that trained in different dtypes are scored alike)."""
    windows = batching.evaluation_windows(documents, batch_size, model.args.block_size)
    return mean_loss(model, windows, windows.batches_per_epoch, device, torch.float32, batching.IGNORE_INDEX)

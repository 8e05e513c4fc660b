"""How good a model is on held-out text: three numbers under three names, and one conversion to bits per
character.

    estimate_loss   during training (train.py's val_loss in metrics.jsonl and the checkpoints): the mean loss of
                    the same eval_tokens of a split's windows every time, cut as training cuts them; cheap, and
                    comparable between the evaluations of one run, or of runs that cut windows alike
    held_out_loss   after training (ablate.py's score, evaluate.py's chunked score): every real target of every
                    held-out document scored once, each document cut into block_size chunks read from their
                    start; comparable across windowings, runs and data sizes
    sliding score   evaluate.py's (score over batching.sliding_windows): every target once as well, each after at
                    least block_size - stride tokens of its document where it has them, as a reader of a long
                    text sees the model; lower than the chunked score wherever documents outrun block_size
    bits_per_unit   nats per target as bits per character (or per note): a figure that tokenizers do not change

score() keeps more than the mean: the loss of each document (for a bootstrap interval over documents), of each
position in the window (how much context the model uses), and the model's calibration at a grid of temperatures.
"""
import dataclasses
import math

import numpy as np
import torch
from tqdm import tqdm

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
        chars = meta['splits']['val'][text_unit(meta['splits']['val']) + 's']  # or notes
    else:
        chars = int(document_units(tokens, offsets[:n + 1], tok.from_meta(meta['tokenizer'])).sum())
    documents = batching.Documents.from_split(tokens, offsets[:n + 1], meta['tokenizer']['special_ids'])
    return documents, chars


def document_units(tokens, offsets, tokenizer):
    """(D,) the units of each document of a split's (tokens, offsets), as prepare.py counts them: a text's
    characters and one for the boundary its end token stands for; a piece's notes (its NOTE_ON events)."""
    documents = (tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
    if tokenizer.unit == 'note':
        return np.array([np.count_nonzero((d >= tokenizer.note_on) & (d < tokenizer.note_off)) for d in documents])
    body = slice(1, -1) if tokenizer.bos_id != tokenizer.eos_id else slice(None, -1)
    return np.array([len(tokenizer.decode(d[body].tolist())) + 1 for d in documents], dtype=np.int64)


def held_out_loss(model, documents, batch_size, device):
    """Nats per real target of model on every target of documents once, in float32 whatever the model trained
    in (runs that trained in different dtypes are scored alike)."""
    windows = batching.evaluation_windows(documents, batch_size, model.args.block_size)
    return mean_loss(model, windows, windows.batches_per_epoch, device, torch.float32, batching.IGNORE_INDEX)


TEMPERATURES = tuple(np.geomspace(0.5, 2.0, 25).round(4))  # the grid a fitted temperature is chosen from: 1.0 and
#                               steps of 6% from half to twice it
CALIBRATION_BINS = 15  # equal-width bins of the predicted probability in a reliability diagram
CALIBRATION_TARGETS = 32_768  # about how many targets, spread over the split, the temperatures other than 1 are
#                               measured on: a softmax over the vocabulary per target and temperature is most of
#                               a word-level score's cost, and one number is fitted well on far fewer targets


@dataclasses.dataclass
class Score:
    """What score() found over a split's windows, summed per document, per position in the window and per
    temperature. nats: -log p(target), natural log."""
    document_nats: np.ndarray     # (D,) the nats of each document's targets
    document_targets: np.ndarray  # (D,) how many targets each document has
    column_nats: np.ndarray       # (T,) the nats of the targets at each position of their window
    column_targets: np.ndarray    # (T,)
    temperatures: tuple           # K temperatures the logits were divided by, 1.0 among them
    temperature_nats: np.ndarray  # (K,) the nats of the temperature sample's targets at each temperature
    temperature_targets: int      # how many targets the temperature sample has (every batch's, or every k-th's)
    # (K, 3, CALIBRATION_BINS): per temperature and bin of the top token's probability, the targets in it, the sum
    # of that probability over them, and how many of them the top token was; at temperature 1 of every target,
    # at the others of the temperature sample's
    calibration: np.ndarray

    @property
    def targets(self):
        return int(self.document_targets.sum())

    @property
    def nats_per_target(self):
        return float(self.document_nats.sum() / self.targets)

    def best_temperature(self):
        """The temperature of the grid with the lowest loss: the model's probabilities fitted, as a whole."""
        return self.temperatures[int(np.argmin(self.temperature_nats))]

    def nats_at(self, temperature):
        """Nats per target of the temperature sample with the logits divided by temperature."""
        return float(self.temperature_nats[self.temperatures.index(temperature)] / self.temperature_targets)

    def calibration_at(self, temperature):
        """(confidence, accuracy, share) per bin at temperature (bins with no target: nan, nan, 0) and the
        expected calibration error: the mean over targets of |accuracy - confidence| of their bin."""
        count, confidence, correct = self.calibration[self.temperatures.index(temperature)]
        with np.errstate(invalid='ignore', divide='ignore'):
            mean_confidence, accuracy = confidence / count, correct / count
        share = count / count.sum()
        return mean_confidence, accuracy, share, float(np.nansum(share * np.abs(accuracy - mean_confidence)))


def logits_of(model, batch):
    """The model's logits (B, T, V) for a Batch's inputs, every row read from its start (an LSTM from zeros)."""
    if model.args.model_type == 'lstm':
        return model(batch.x, model.init_hidden(batch.x.size(0), batch.x.device), positions=batch.positions)[0]
    return model(batch.x, positions=batch.positions, doc_ids=batch.doc_ids)


@torch.no_grad()
def score(model, windows, device, temperatures=(1.0,), name='score', calibration_targets=CALIBRATION_TARGETS):
    """Score every target of windows (batching.evaluation_windows or sliding_windows) in float32, and with the
    logits divided by each of temperatures, on every batch or on evenly spaced batches of about
    calibration_targets targets in all, for calibration: a Score."""
    assert 1.0 in temperatures, "the loss is the loss at temperature 1"
    D, T, K = len(windows.documents.starts), windows.block_size, len(temperatures)
    result = Score(np.zeros(D), np.zeros(D, np.int64), np.zeros(T), np.zeros(T, np.int64), tuple(temperatures),
                   np.zeros(K), 0, np.zeros((K, 3, CALIBRATION_BINS)))
    was_training = model.training
    model.eval()
    starts = range(0, windows.n_windows, windows.batch_size)
    every = max(1, math.ceil(windows.n_windows * T / calibration_targets))  # in batches, on at most B * T targets each
    one = temperatures.index(1.0)
    for b, start in enumerate(tqdm(starts, desc=name, unit='batch', leave=False, dynamic_ncols=True, disable=None)):
        ids = np.arange(start, min(start + windows.batch_size, windows.n_windows))
        batch = batching.to_device(windows.windows(ids), device)
        is_target = batch.y != batching.IGNORE_INDEX                     # (B, T)
        rows, columns = (t.cpu().numpy() for t in is_target.nonzero(as_tuple=True))  # (N,) each, row-major
        logits = logits_of(model, batch)[is_target].float()             # (N, V)
        target_logits = logits.gather(1, batch.y[is_target][:, None])[:, 0]
        top_logits, top = logits.max(-1)
        is_top = (top == batch.y[is_target]).double()
        in_sample = b % every == 0
        result.temperature_targets += len(rows) if in_sample else 0
        for k, t in enumerate(temperatures):
            if k != one and not in_sample:
                continue
            normalizer = torch.logsumexp(logits / t, dim=-1)            # log p(i) = logit(i) / t - normalizer
            nats = (normalizer - target_logits / t).double()
            confidence = (top_logits / t - normalizer).exp().double()   # the top token's probability
            if in_sample:
                result.temperature_nats[k] += nats.sum().item()
            where = (confidence * CALIBRATION_BINS).long().clamp(max=CALIBRATION_BINS - 1)
            for i, values in enumerate((torch.ones_like(confidence), confidence, is_top)):
                result.calibration[k, i] += torch.bincount(where, values, CALIBRATION_BINS).cpu().numpy()
            if k == one:
                nats = nats.cpu().numpy()
                document = windows.document_of(ids)[rows]
                result.document_nats += np.bincount(document, nats, D)
                result.document_targets += np.bincount(document, minlength=D)
                result.column_nats += np.bincount(columns, nats, T)
                result.column_targets += np.bincount(columns, minlength=T)
    model.train(was_training)
    return result


def bootstrap_interval(numerators, denominators, resamples=1000, level=0.95, seed=0):
    """The level interval of sum(numerators) / sum(denominators) when the documents (entries) are drawn again
    with replacement, resamples times: how much the score owes to which documents happened to be held out."""
    rng, D = np.random.default_rng(seed), len(numerators)
    per_draw = max(1, 4_000_000 // D)  # draws at a time: a few million indices in memory
    ratios = []
    for n in [per_draw] * (resamples // per_draw) + [resamples % per_draw]:
        drawn = rng.integers(0, D, size=(n, D))
        ratios.append(numerators[drawn].sum(1) / denominators[drawn].sum(1))
    low, high = np.percentile(np.concatenate(ratios), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


@torch.no_grad()
def surprisal(model, ids):
    """The bits of each token of ids (T,) after the ones before it, (T - 1,): -log2 p(ids[i] | ids[:i]) for
    i >= 1, read in one pass (a GPT's ids fit in block_size)."""
    x = torch.as_tensor(ids, device=next(model.parameters()).device)[None]
    batch = batching.Batch(x[:, :-1], x[:, 1:])
    log_probs = torch.log_softmax(logits_of(model, batch).float(), dim=-1)[0]  # (T - 1, V)
    return (-log_probs.gather(1, x[0, 1:, None])[:, 0] / math.log(2)).tolist()

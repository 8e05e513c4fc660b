"""evaluate.py's report card: its options, and everything it measures of one trained checkpoint, as one json-able
dict (evaluate() runs it for evaluate.py and for ablate.py's best run against its worst).

    held_out      the exact score (every held-out target once; evaluation.py), chunked and sliding, with 95%
                  intervals over documents
    by_position   the chunked score at each position of the window: how much context the model uses
    calibration   the top token's probability against how often it is right, at temperature 1 and at the
                  temperature that fits best
    samples       drawn with a fixed seed: how surprising each token is to the model itself
    memorization  the share of the samples' n-grams that occur verbatim in the training split, beside the same
                  share for held-out text: a model that copies its corpus shows far above that baseline
    fluency       proxies that need no judge (words the corpus knows, repetition, sentence length; for music,
                  pitch and interval statistics and the share of notes in key), samples beside held-out text

Every measure but the samples' needs the prepared data directory the checkpoint names; where it is gone, the
others are still measured and data_problem says why the rest is missing. slm/report_page.py writes the card.
"""
import dataclasses
import os
import sys
import time

import numpy as np
import torch

import configurator
from configurator import UserError, option
from slm import batching, checkpoint, evaluation, fluency, generation, memorization, report_page, runtime, storage
from slm import tokenizer as tok


NGRAMS = {'char': (16, 32, 64), 'note': (8, 16, 32)}  # the n-gram lengths memorization is counted at, per unit


@dataclasses.dataclass
class EvaluateConfig:
    out_dir: str = 'out'          # the run to evaluate: its best.pt, else ckpt.pt; the report goes to out_dir/report
    checkpoint: str = ''          # a checkpoint file instead of out_dir's (the report still goes to out_dir/report)
    compare: str = ''             # another run's out_dir: both in one report, out_dir/report-vs-OTHER, with the
    #                               differences
    data_dir: str = ''            # the prepared data to score on ('': the one the checkpoint was trained on)
    documents: int = option(0, low=0)  # held-out documents scored (0: all of them)
    stride: int | None = None     # the sliding score's windows lie stride tokens apart, so each target has at least
    #                               block_size - stride tokens of context (None: block_size // 2)
    batch_size: int = option(32, low=1)  # windows per forward pass while scoring
    bootstrap: int = option(1000, low=10)  # resamples of the documents for the 95% intervals
    num_samples: int = option(10, low=1)  # samples drawn (memorization, fluency, surprisal)
    sample_tokens: int = option(500, low=1)  # tokens in each sample
    temperature: float = option(1.0, low=0, low_open=True)  # of the samples: 1.0 draws from the model as it is
    top_k: int = option(0, low=0)  # of the samples: 0 = no truncation
    seed: int = 1337              # the samples' and the bootstrap's
    device: str = option('auto', choices=runtime.DEVICES)  # auto: cuda if present, else mps, else cpu
    threads: int = option(0, low=0)  # CPU threads (0: one per core)


def check(cfg):
    """One-line errors for options that cannot work, before the checkpoint is scored."""
    configurator.check(cfg)
    if cfg.stride is not None and cfg.stride < 1:
        raise UserError(f"--stride={cfg.stride}: the sliding windows must lie at least 1 token apart; give a stride"
                        f" from 1 to the model's block_size")
    if cfg.compare and os.path.abspath(cfg.compare) == os.path.abspath(cfg.out_dir):
        raise UserError(f"--compare={cfg.compare} is the run being evaluated: compare with another out_dir")


def check_stride(cfg, block_size):
    if cfg.stride is not None and cfg.stride > block_size:
        raise UserError(f"--stride={cfg.stride} is more than the model's block_size {block_size}: give a stride from 1"
                        f" to {block_size}")


def report_folder(cfg):
    """out_dir/report, or with --compare out_dir/report-vs-OTHER (a run's own report stays as it was)."""
    other = os.path.basename(os.path.normpath(cfg.compare))
    return os.path.join(cfg.out_dir, f'report-vs-{other}' if cfg.compare else 'report')


def evaluate(cfg, out=sys.stdout):
    """Write the report of cfg.out_dir's checkpoint (and cfg.compare's); return (report.md's path, the cards)."""
    check(cfg)
    device = runtime.resolve_device(cfg.device)
    runs = [load(cfg, out_dir, device) for out_dir in [cfg.out_dir] + ([cfg.compare] if cfg.compare else [])]
    for _, _, _, model, _ in runs:  # every checkpoint and option checked before minutes of measuring
        check_stride(cfg, model.args.block_size)
    cards = [report_card(cfg, loaded, device) for loaded in runs]
    path = report_page.write(cards, report_folder(cfg))
    out.write(report_page.table(cards) + f'\n\nwrote {path}\n')
    problems = [f"{card['model']['out_dir']}: {card['data_problem']}" for card in cards if card['data_problem']]
    if problems:
        raise UserError(f"{'; '.join(problems)} (the report holds the measures that need no data)")
    return path, cards


def load(cfg, out_dir, device):
    """(out_dir, checkpoint path, checkpoint, model on device in eval mode, tokenizer) of a run's out_dir."""
    path = checkpoint.path_to_read(out_dir, cfg.checkpoint if out_dir == cfg.out_dir else '')
    ckpt = checkpoint.load(path)
    model = checkpoint.restore_model(ckpt).to(device).eval()
    return out_dir, path, ckpt, model, tok.from_meta(ckpt['tokenizer'])


def data_problem(data_dir, tokenizer_meta):
    """Why data_dir cannot be scored against (one line), or None: it must be prepared, whole, with the checkpoint's
    tokenizer."""
    if not data_dir:
        return "the checkpoint names no data directory: give one with --data_dir=DIR"
    try:
        meta = storage.load_meta(data_dir)
    except UserError as error:
        return str(error)
    if meta['tokenizer'] != tokenizer_meta:
        return (f"{data_dir} holds another tokenizer's tokens than the checkpoint's: give the data directory it was"
                f" trained on with --data_dir=DIR")
    return None


def report_card(cfg, loaded, device):
    """The measures of a run's checkpoint, loaded as load() returns it, with cfg's settings: a dict (see the
    module docstring)."""
    out_dir, path, ckpt, model, tokenizer = loaded
    args = model.args
    data_dir = cfg.data_dir or ckpt.get('config', {}).get('data_dir', '')
    card = {'model': {'out_dir': out_dir, 'checkpoint': path, 'model_type': args.model_type,
                      'parameters': sum(p.numel() for p in model.parameters()),
                      'shape': f"{args.n_layer} x {args.n_embd}", 'block_size': args.block_size,
                      'iterations': ckpt.get('iter_num'), 'tokenizer': tokenizer.kind,
                      'vocab_size': tokenizer.vocab_size, 'unit': tokenizer.unit, 'data_dir': data_dir},
            'seconds': {}}
    problem = data_problem(data_dir, ckpt['tokenizer'])
    card['data_problem'] = problem
    timed(card, 'samples', lambda: samples(model, tokenizer, cfg, device, generation.document_ends(ckpt, tokenizer)))
    passages, vocabulary = None, None
    if problem is None:
        meta = storage.load_meta(data_dir)
        timed(card, 'held_out', lambda: held_out(model, tokenizer, data_dir, meta, cfg, device, card))
        passages = memorization.held_out_passages(data_dir, meta, tokenizer, cfg.num_samples,
                                                  median_units(tokenizer, card['samples']), cfg.seed)
        vocabulary = set() if tokenizer.unit == 'char' else None
        timed(card, 'memorization', lambda: memorized(tokenizer, data_dir, meta, card['samples'], passages,
                                                      vocabulary))
    timed(card, 'fluency', lambda: fluent(tokenizer, card['samples'], passages, vocabulary))
    return card


def timed(card, name, measure):
    """card[name] = measure(), and the seconds it took in card['seconds']."""
    start = time.perf_counter()
    card[name] = measure()
    card['seconds'][name] = round(time.perf_counter() - start, 2)


def held_out(model, tokenizer, data_dir, meta, cfg, device, card):
    """The chunked and sliding scores of the val split (cfg.documents of it; 0: all), with their intervals; and
    into card, the chunked score by position and the calibration."""
    documents, units = evaluation.held_out(data_dir, cfg.documents)
    tokens, offsets = storage.open_split(data_dir, 'val', meta)
    document_units = evaluation.document_units(tokens, offsets[:len(documents.starts) + 1], tokenizer)
    block_size = model.args.block_size
    stride = cfg.stride or max(1, block_size // 2)
    chunked = evaluation.score(model, batching.evaluation_windows(documents, cfg.batch_size, block_size), device,
                               evaluation.TEMPERATURES, name='chunked')
    sliding = evaluation.score(model, batching.sliding_windows(documents, cfg.batch_size, block_size, stride),
                               device, name='sliding')
    card['by_position'] = {'bits_per_token': list(bits(chunked.column_nats / np.maximum(chunked.column_targets, 1))),
                           'targets': chunked.column_targets.tolist()}
    card['calibration'] = calibration(chunked)
    result = {'documents': len(documents.starts), 'targets': chunked.targets, 'units': units,
              'unit': tokenizer.unit, 'stride': stride,
              'document_lengths': summary(documents.pairs + 1)}
    for name, s in (('chunked', chunked), ('sliding', sliding)):
        per_token = evaluation.bootstrap_interval(s.document_nats, s.document_targets, cfg.bootstrap, seed=cfg.seed)
        per_unit = evaluation.bootstrap_interval(s.document_nats, document_units, cfg.bootstrap, seed=cfg.seed)
        result[name] = {'nats_per_token': s.nats_per_target, 'bits_per_token': s.nats_per_target / np.log(2),
                        'bits_per_unit': evaluation.bits_per_unit(s.nats_per_target, s.targets, units),
                        'nats_per_token_95': list(per_token), 'bits_per_unit_95': list(bits(per_unit))}
    return result


def bits(nats):
    """Nats (a number or an array of them) in bits."""
    return np.asarray(nats) / np.log(2)


def summary(lengths):
    """Median, mean and maximum of a few numbers, json-able."""
    return {'median': float(np.median(lengths)), 'mean': float(np.mean(lengths)), 'max': int(np.max(lengths))}


def calibration(score):
    """The reliability diagram and expected calibration error at temperature 1 (of every target) and at the best
    of the grid (of the temperature sample), and the nats per token of the temperature sample at both."""
    result = {'sample_targets': score.temperature_targets}
    for name, t in (('raw', 1.0), ('fitted', score.best_temperature())):
        confidence, accuracy, share, ece = score.calibration_at(t)
        targets = int(score.calibration[score.temperatures.index(t), 0].sum())
        result[name] = {'temperature': float(t), 'ece': ece, 'targets': targets,
                        'nats_per_token': score.nats_at(t),
                        'confidence': nan_to_none(confidence), 'accuracy': nan_to_none(accuracy),
                        'share': share.tolist()}
    return result


def nan_to_none(values):
    """A list of floats with None for nan: JSON has no nan."""
    return [None if np.isnan(v) else float(v) for v in values]


def samples(model, tokenizer, cfg, device, new_document=None):
    """cfg.num_samples samples of cfg.sample_tokens tokens from the document start, drawn with cfg.seed at
    cfg.temperature: their ids (the start token first), text, and the bits of each token of the first
    block_size under the model (what it was drawn with). new_document: generate's, for a model trained with
    documents kept apart; the bits are then of each sample's first document, the context it was drawn in."""
    start = generation.prompt_ids(tokenizer, '')
    ids = torch.tensor([start] * cfg.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    drawn = [token.tolist() for token in generation.generate(model, ids, cfg.sample_tokens,
                                                             temperature=cfg.temperature, top_k=cfg.top_k,
                                                             generator=generator, new_document=new_document)]
    rows = [start + [step[row] for step in drawn] for row in range(cfg.num_samples)]
    window = model.args.block_size if model.args.model_type == 'gpt' else len(rows[0])

    def shown(row):  # the tokens drawn in one context: the first window, or with new_document up to the first end
        ends = row.index(new_document[0], 1) + 1 if new_document is not None and new_document[0] in row[1:] else None
        return min(window, ends or window)

    surprisals = [evaluation.surprisal(model, row[:shown(row)]) for row in rows]
    return {'count': cfg.num_samples, 'tokens': cfg.sample_tokens, 'temperature': cfg.temperature,
            'top_k': cfg.top_k, 'seed': cfg.seed, 'ids': rows, 'texts': [tokenizer.decode(row) for row in rows],
            'surprisal_bits': surprisals,
            'token_texts': [[tokenizer.decode([i]) for i in row[1:shown(row)]] for row in rows],
            'bits_per_token': [float(np.mean(s)) for s in surprisals]}


def median_units(tokenizer, drawn):
    """The median length of the samples in units: the held-out passages' length."""
    return int(np.median([len(memorization.units_of(tokenizer, row)) for row in drawn['ids']]))


def memorized(tokenizer, data_dir, meta, drawn, passages, vocabulary=None):
    """The share of the samples' n-grams found verbatim in the training split, and of the held-out passages of
    the same length (the baseline), at each n of NGRAMS; and what the scan of the training split cost. The scan
    adds the words of the training text to vocabulary, if given (fluency's, so that the split is read once)."""
    ns = NGRAMS[tokenizer.unit]
    queries = [memorization.units_of(tokenizer, row) for row in drawn['ids']]
    chunks = memorization.corpus_chunks(data_dir, 'train', meta, tokenizer)
    if vocabulary is not None:
        chunks = (words_into(vocabulary, units) for units in chunks)
    stats = {}
    samples, held = memorization.shares_in_corpus([queries, passages], chunks, ns, stats)
    return {'n': list(ns), 'unit': tokenizer.unit, 'length': len(passages[0]) if passages else 0,
            'samples': [samples[n] for n in ns], 'held_out': [held[n] for n in ns], **stats}


def words_into(vocabulary, units):
    """units (code points), after adding their text's words to vocabulary."""
    vocabulary.update(fluency.words(memorization.unit_text(units)))
    return units


def fluent(tokenizer, drawn, passages=None, vocabulary=None):
    """The fluency proxies of the samples, and of the held-out passages beside them where there are some."""
    if tokenizer.unit == 'note':
        pieces = [memorization.units_of(tokenizer, row) for row in drawn['ids']]
        if not passages:
            return {'samples': {'in_key': fluency.share_in_key(pieces)}}
        return {'samples': fluency.music_fluency(pieces, passages),
                'held_out': {'in_key': fluency.share_in_key(passages)}}
    result = {'samples': fluency.text_fluency(drawn['texts'], vocabulary)}
    if passages:
        result['held_out'] = fluency.text_fluency([memorization.unit_text(p) for p in passages], vocabulary)
    return result

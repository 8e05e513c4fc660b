"""Generation from a trained model: prompts to ids, the next token from logits (temperature, top-k, top-p), the
GPT's window past block_size over a KV cache, batched samples streamed as text, the next-token table, music out.
SampleConfig holds the settings sample.py, serve.py and bench.py share; how the window slides is in sample.py's
docstring.
"""
import dataclasses
import functools
import math
import os
import sys

import torch
from tqdm import tqdm

from configurator import UserError, option
from model import KVCache
from slm import batching, decode, music, runtime
from slm import tokenizer as tok


SEPARATOR = '\n' + '-' * 40 + '\n'  # printed after every sample
TEXT_OUTPUTS = ('.txt', '.md')  # --out extensions that get the text
MUSIC_OUTPUTS = ('.mid', '.midi', '.png')  # --out extensions that write music rather than text
# two options' errors, worded together as they were before each field declared its own
COUNTS = '{arg}: --num_samples and --max_new_tokens must be positive (--max_new_tokens=0 only with --show_probs)'
OFF_OR_MORE = '{arg}: --top_k and --show_probs must be 0 (off) or positive'
GREEDY = '{arg} is negative: use 0 for greedy, or a positive value'


@dataclasses.dataclass
class SampleConfig:
    out_dir: str = 'out'          # where train.py wrote its checkpoints
    checkpoint: str = ''          # a checkpoint file ('' = out_dir/best.pt, else out_dir/ckpt.pt)
    start: str = ''               # the prompt, or FILE:path to read it from a file
    num_samples: int = option(1, low=1, error=COUNTS)  # samples drawn together, in one batch
    max_new_tokens: int = option(200, low=0, error=COUNTS)  # tokens per sample (0: only print --show_probs's table)
    temperature: float = option(0.8, low=0, error=GREEDY)  # 0 = greedy (the most likely token); < 1 sharpens
    #                               the distribution, > 1 widens it
    top_k: int = option(0, low=0, error=OFF_OR_MORE)  # sample only among the k most likely tokens (0 = all)
    top_p: float = option(1.0, low=0, high=1, low_open=True)  # nucleus: only among the fewest most likely tokens
    #                               whose probabilities reach it
    stop_at_eos: bool = False     # end a sample at the end-of-document token (</s>; GPT-2 BPE: end of text)
    show_probs: int = option(0, low=0, error=OFF_OR_MORE)  # first print the N most likely tokens to follow the
    #                               prompt, with their probabilities
    kv_cache: bool = True         # GPT: keep earlier keys and values (False: recompute them; same output, slower)
    decode: str = option('eager', choices=('eager', *decode.STEPS))  # GPT with kv_cache: how a token steps.
    #                               eager: GPT.forward. compile: decode.py's step under torch.compile (seconds
    #                               before the first token, then faster). aot: compiled ahead of time by
    #                               AOTInductor (longer to make, fastest; docs/generation.md)
    context_shift: float = option(0.25, low=0, high=1, high_open=True)  # GPT past block_size: share of the full
    #                               window dropped before it is re-read
    seed: int = option(1337, low=0, high=2**32 - 1)  # same seed and num_samples, same samples
    device: str = option('auto', choices=runtime.DEVICES)  # auto: cuda if present, else mps, else cpu
    threads: int = option(0, low=0)  # CPU threads torch uses (0 = one per physical core; 1 when sharing them)
    out: str = option('', extensions=(*TEXT_OUTPUTS, *MUSIC_OUTPUTS))  # also write the samples to this file, in
    #                               order ('' = no): the text, or music as MIDI or as a piano roll (.png)
    tempo: int = option(100, low=1)  # .mid output: quarter notes per minute
    program: int = option(0, low=0, high=127)  # .mid output: General MIDI instrument (0 piano, 19 church organ,
    #                               52 choir)


def read_prompt(start):
    if not start.startswith('FILE:'):
        return start
    try:
        with open(start[5:], encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the prompt file {start[5:]}: {error}")


def sample_start(tokenizer, prompt):
    """The text a sample begins with: the prompt, or for music its events as decode writes them (each ends in a
    space), so that the sample follows on."""
    return tokenizer.decode(tokenizer.encode(prompt)) if tokenizer.kind == 'midi' else prompt


def prompt_ids(tokenizer, text):
    """The document-start id (<s>; GPT-2 BPE: <|endoftext|>) and the prompt's ids after it.

    Warns once if the prompt has characters the vocabulary lacks (BPE has none: it spells any byte)."""
    ids = tokenizer.encode(text)
    if tokenizer.unk_id is not None and tokenizer.unk_id in ids:
        missing = sorted({c for c in text if tokenizer.encode(c) == [tokenizer.unk_id]})
        print(f"warning: the prompt has characters the vocabulary lacks ({''.join(missing)!r});"
              f" they read as {tok.SPECIALS[tokenizer.unk_id]}", file=sys.stderr)
    if tokenizer.bos_id is None:
        if not ids:
            raise UserError("the prompt is empty and this tokenizer has no start-of-document token to begin"
                            " from: give one with --start=TEXT")
        return ids
    return [tokenizer.bos_id, *ids]


# ---------------------------------------------------------------------------------------------------------
# the next token: from logits to a choice
# ---------------------------------------------------------------------------------------------------------

def sampling_probs(logits, temperature, top_k=0, top_p=1.0):
    """The distribution the next token is drawn from, (B, V), given the model's logits (B, V).

    temperature 0 puts all the mass on the most likely token. top_k keeps the k most likely tokens; top_p
    then keeps the fewest most likely tokens whose probability reaches top_p (a token is kept when the
    tokens more likely than it hold less than top_p), and the kept probabilities are renormalized.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # of the tokens more likely than each
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, mass_before >= top_p)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def next_token(logits, temperature, top_k=0, top_p=1.0, generator=None):
    """One id per row, (B, 1), drawn from logits (B, V); temperature 0 takes the most likely (greedy)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    # Token i wins the race probs_i / E_i, E_i ~ Exponential(1), with probability probs_i: torch.multinomial's own
    # way of drawing one sample (the same draws from the same generator), without its checks of the
    # probabilities, which cost more than the draw at one token per step
    return (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------
# what the model has read: the context, and the logits of the token that follows it
# ---------------------------------------------------------------------------------------------------------

class GPTContext:
    """The window of at most block_size tokens a GPT conditions on, and the logits of the token after it.

    With use_cache the window's keys and values are kept in a KVCache, so a new token costs one position;
    without, the model reads the whole window again for every token. Both see the same windows (see W(n) in
    the module docstring): when the window is full, the oldest int(context_shift * block_size) tokens go.

    how (sample.py --decode) picks what steps a token and re-reads a full window: GPT.forward, or a decode.py
    step, which makes what it compiles before the first token (length, of the prompt and the new tokens
    together, says whether the window will ever be re-read).
    """

    def __init__(self, model, ids, use_cache=True, context_shift=0.25, how='eager', length=None):
        self.model, self.block_size = model, model.args.block_size
        self.step = decode.step_for(how) if how != 'eager' and use_cache else None  # else GPT.forward
        self.keep = self.block_size - int(context_shift * self.block_size)  # tokens re-read when it is full
        self.cache = KVCache(model.args) if use_cache else None
        self.window = ids[:, -self.block_size:]  # (B, W)
        self.logits = self._read()
        if self.step is not None:  # make what it compiles now, before the first token, not in the middle
            will_reread = length is None or length > self.block_size
            self.step.prepare(model, self.window[:, :1], self.keep if will_reread else None, self.cache)

    def _read(self, is_reread=False):
        """Logits after the whole window, read from position 0. is_reread: the window of keep tokens that a full
        one leaves, the same shape every time, which a decode.py step may read its own way."""
        if self.cache is not None:
            self.cache.reset()
        if is_reread and self.step is not None:
            return self.step.read(self.model, self.window, self.cache)
        return self.model(self.window, self.cache)[:, -1]

    def append(self, token):
        """Add token (B, 1) to the window and compute the logits of the token after it."""
        if self.window.size(1) == self.block_size:  # full: keep the last `keep` tokens, the new one included
            self.window = torch.cat([self.window[:, self.block_size - self.keep + 1:], token], dim=1)
            self.logits = self._read(is_reread=True)
        else:
            self.window = torch.cat([self.window, token], dim=1)
            if self.step is not None:
                self.logits = self.step(self.model, token, self.cache)
            else:
                self.logits = self.model(token, self.cache)[:, -1] if self.cache is not None else self._read()


class LSTMContext:
    """What an LSTM has read is its hidden state: each token is one step from it, whatever came before."""

    def __init__(self, model, ids):
        self.model = model
        logits, self.hidden = model(ids, model.init_hidden(ids.size(0), ids.device))
        self.logits = logits[:, -1]

    def append(self, token):
        logits, self.hidden = self.model(token, self.hidden)
        self.logits = logits[:, -1]


class DocumentContexts:
    """The contexts of rows that each start a fresh document after a document's end, as a model trained with
    documents kept apart (windowing packed or lines_*) read every one: from its own start token, never after
    the end of another. One context per row; a row that draws the end id goes on from [start] alone. .logits
    and .append as one context of all the rows, so the draws from them are those of a batch."""

    def __init__(self, read, ids, end, start):
        self.read, self.end, self.start = read, end, start
        self.rows = [read(row[None]) for row in ids]
        self.logits = torch.cat([row.logits for row in self.rows])

    def append(self, token):
        for i, (row_token, is_end) in enumerate(zip(token.split(1), (token[:, 0] == self.end).tolist())):
            if is_end:
                self.rows[i] = self.read(torch.full_like(row_token, self.start))
            else:
                self.rows[i].append(row_token)  # (1, 1)
        self.logits = torch.cat([row.logits for row in self.rows])


def read_context(model, ids, use_cache=True, context_shift=0.25, how='eager', length=None, new_document=None):
    """The model's context after reading ids (B, T): .logits (B, V) of the next token, .append(token (B, 1)).
    new_document: (end id, start id) for a model trained with documents kept apart (document_ends): a row that
    draws the end id goes on in a fresh document from the start id."""
    if new_document is not None:
        read = functools.partial(read_context, model, use_cache=use_cache, context_shift=context_shift, how=how,
                                 length=length)
        return DocumentContexts(read, ids, *new_document)
    if model.args.model_type == 'lstm':
        return LSTMContext(model, ids)
    return GPTContext(model, ids, use_cache, context_shift, how, length)


def current_document(ids, new_document):
    """ids (a list, the start id first) as a model trained with documents kept apart reads them: from the start id,
    the tokens after the last end id (the end id at 0, GPT-2 BPE's start, is no end), whether or not a start id
    follows it; ids as they are without new_document."""
    if new_document is None:
        return ids
    end, start = new_document
    last_end = max((i for i, token in enumerate(ids) if token == end and i), default=None)
    if last_end is None:
        return ids
    after = ids[last_end + 1:]
    if after[:1] == [start]:
        after = after[1:]
    return [start, *after]


def document_ends(checkpoint, tokenizer):
    """(end id, start id) for generate's new_document when the checkpoint's model was trained with documents kept
    apart (--windowing=packed or lines_*): it read each from its own start, and never what follows an end, nor a
    document after another (docs/generation.md: such a context costs it). None for a model whose windows ran on
    from one document into the next, which reads what follows an end as it was trained."""
    config = checkpoint.get('config', {})
    if tokenizer.eos_id is None or tokenizer.bos_id is None or not batching.keeps_to_documents(
            config.get('windowing', 'auto'), checkpoint['model_args']['model_type']):
        return None
    return tokenizer.eos_id, tokenizer.bos_id


@torch.inference_mode()  # no autograd bookkeeping at all: tensors made here never need gradients
def generate(model, ids, max_new_tokens, *, temperature=1.0, top_k=0, top_p=1.0, generator=None,
             use_cache=True, context_shift=0.25, how='eager', new_document=None):
    """Yield max_new_tokens times the next token of every row of ids (B, T), as a (B,) tensor of ids.

    The rows are generated together, one forward pass per token for the whole batch. how: with the cache, a GPT
    steps one token by GPT.forward ('eager') or by decode.py's step compiled ('compile', 'aot'): the same tokens,
    less overhead per token. new_document (document_ends): after the end id a row goes on in a fresh document
    (its start id is not yielded: it is not drawn, and reads as nothing); each row then steps on its own.
    """
    context = read_context(model, ids, use_cache, context_shift, how, length=ids.size(1) + max_new_tokens,
                           new_document=new_document)
    for step in range(max_new_tokens):
        if step:
            context.append(token)
        token = next_token(context.logits, temperature, top_k, top_p, generator)  # (B, 1)
        yield token[:, 0]


# ---------------------------------------------------------------------------------------------------------
# tables and output: what sample.py prints and writes
# ---------------------------------------------------------------------------------------------------------

def token_label(tokenizer, i):
    """How a token reads in a table: a special by its name, any other as its text in quotes."""
    if isinstance(tokenizer, (tok.VocabTokenizer, tok.LearnedBPETokenizer)) and i < len(tok.SPECIALS):
        return tok.SPECIALS[i]
    return repr(tokenizer.decode([i]))


@torch.inference_mode()
def next_token_rows(model, ids, n, cfg, token=None):
    """The n most likely tokens to follow ids (1, T), the likeliest first, each as (rank, id, probability and
    log-probability under the model, probability of being drawn at cfg's temperature, top_k and top_p); and the
    row of token (an id) after them when it is not among those n."""
    logits = read_context(model, ids, cfg.kv_cache, cfg.context_shift).logits  # (1, V)
    log_probs = torch.log_softmax(logits.float(), dim=-1)[0]
    drawn = sampling_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p)[0]
    top = torch.topk(log_probs, min(n, log_probs.numel()))
    rows = [(rank, i, math.exp(log_p), log_p, drawn[i].item())
            for rank, (i, log_p) in enumerate(zip(top.indices.tolist(), top.values.tolist()), 1)]
    if token is not None and token not in top.indices.tolist():
        rank = int((log_probs > log_probs[token]).sum()) + 1  # ties rank as the best of them
        rows.append((rank, token, math.exp(log_probs[token].item()), log_probs[token].item(), drawn[token].item()))
    return rows


def probability_table(model, tokenizer, ids, n, cfg):
    """next_token_rows as the lines of a table, with each token's label."""
    rows = next_token_rows(model, ids, n, cfg)
    labels = [token_label(tokenizer, row[1]) for row in rows]
    width = max(len('token'), *map(len, labels))
    lines = [f"next token: the {len(labels)} most likely of {model.args.vocab_size:,}"
             f" (drawn: at temperature {cfg.temperature:g}, top_k {cfg.top_k}, top_p {cfg.top_p:g})",
             f"rank  {'token':<{width}}      id  probability  log-prob   drawn"]
    for label, (rank, i, p, log_p, drawn) in zip(labels, rows):
        lines.append(f"{rank:>4}  {label:<{width}}  {i:>6}  {p:>11.4f}  {log_p:>8.4f}  {drawn:>6.4f}")
    return lines


def write_music(tokenizer, samples, cfg):
    """Each sample's ids (the prompt's included) as the notes they play: a .mid file, or a piano roll (.png)."""
    stem, ext = os.path.splitext(cfg.out)
    paths = [cfg.out] if len(samples) == 1 else [f'{stem}-{i}{ext}' for i in range(1, len(samples) + 1)]
    for ids, path in zip(samples, paths):
        notes = tokenizer.to_notes(ids)
        if ext.lower() == '.png':
            music.plot_piano_roll(notes, path, tokenizer.steps_per_quarter, title=os.path.basename(path))
        else:
            music.write_midi(notes, path, tokenizer.steps_per_quarter, cfg.tempo, cfg.program)
        quarters = max((n.onset + n.duration for n in notes), default=0) / tokenizer.steps_per_quarter
        print(f"wrote {path}: {len(notes)} notes, {quarters:g} quarter notes", file=sys.stderr)


def generate_as(model, ids, cfg, new_document=None):
    """generate with cfg's settings (a SampleConfig's fields), its random draws seeded by cfg.seed."""
    generator = torch.Generator(device=ids.device).manual_seed(cfg.seed)
    return generate(model, ids, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                    generator=generator, use_cache=cfg.kv_cache, context_shift=cfg.context_shift,
                    how=cfg.decode, new_document=new_document)


def draw(model, tokenizer, prompt, ids, cfg, out, new_document=None):
    """Generate from every row of ids (B, T) at once; print as the module docstring says. Returns the texts and
    each row's new token ids (up to its end-of-document token with --stop_at_eos)."""
    tokens = generate_as(model, ids, cfg, new_document)
    is_streamed = len(ids) == 1
    new, samples = [[] for _ in ids], [None] * len(ids)
    shown, decode_next = 0, tokenizer.stream_decoder()  # characters of the streamed sample's new text written
    if is_streamed:
        out.write(prompt)
    with tqdm(tokens, total=cfg.max_new_tokens, unit='token', leave=False, disable=is_streamed) as progress:
        for step, row_tokens in enumerate(progress, 1):
            for row, token in enumerate(row_tokens.tolist()):
                if samples[row] is not None:
                    continue  # stopped at end of document already: the batch goes on for the others
                is_end = cfg.stop_at_eos and token == tokenizer.eos_id
                if not is_end:
                    new[row].append(token)
                if is_end or step == cfg.max_new_tokens:
                    samples[row] = prompt + tokenizer.decode(new[row])
                    out.write((samples[row][len(prompt) + shown:] if is_streamed else samples[row]) + SEPARATOR)
                elif is_streamed:  # the new token's text only: the cost per token stays flat however long
                    text = decode_next(token)
                    out.write(text)
                    shown += len(text)
            out.flush()
            if all(s is not None for s in samples):
                break
    return samples, new

"""Generate text from a trained checkpoint; the model and tokenizer both come from the checkpoint alone.

    python sample.py --out_dir=out-akjv --start="In the beginning" --num_samples=3 --max_new_tokens=200
    python sample.py --checkpoint=out-akjv/ckpt.pt --start=FILE:prompt.txt --temperature=0.6 --top_p=0.9
    python sample.py --out_dir=out-akjv --start="And God said" --show_probs=10 --max_new_tokens=0
    python sample.py --out_dir=out-bach --out=sample.mid --stop_at_eos=True   # music: MIDI (.png: a piano roll)

The GPT reads the prompt once into a KV cache (model.KVCache), then one token per step. A token's keys and
values depend on where it sits in the window (its learned position; with rotary positions, its rotation) and,
from the second layer on, on every token before it in the window, so the window cannot slide under the cache
one token at a time: dropping the oldest token changes what every other token holds, whatever the positions.
When the window of block_size tokens is full, the oldest s = int(context_shift * block_size) tokens are
dropped and the rest are read again in one pass, from position 0 as a plain forward pass reads them; then tokens
are added one at a time until it is full again. After n tokens (the start token and the prompt included)
the model therefore sees the last W(n) of them:

    W(n) = n                                                  while n <= block_size
    W(n) = block_size - s + (n - block_size - 1) mod (s + 1)  after: block_size - s ... block_size, in turn

A re-read costs about block_size - s positions and is shared by the s + 1 tokens that follow, so the cost per
token stays flat however long the output. --kv_cache=False runs the model over the whole window W(n) at every
token instead: the same output (the tests compare them token for token), at the cost of a cache-less sampler.
--context_shift=0 slides the window one token at a time as nanoGPT's sampler does (W = block_size), which
re-reads it at every token. The LSTM carries its hidden state from token to token: O(1) per token already.

All --num_samples samples are drawn together, one batch row each; a model trained with documents kept apart
(packed or line windows) starts a fresh document after each end of one, its window restarted at the start token,
and its rows step one at a time (docs/generation.md). A single sample streams to stdout token by
token; with several, each is printed whole as it completes (at the end-of-document token with --stop_at_eos,
else after max_new_tokens), so ones that stop early come first.

A model trained on music (the midi tokenizer) prints its events as text (NOTE_ON_60 TIME_SHIFT_4 ...);
--out=FILE.mid writes the notes they play as a MIDI file, --out=FILE.png draws them as a piano roll (several
samples: FILE-1.mid, FILE-2.mid, ...); --out=FILE.txt (or .md) gets the text.
"""
import os
import sys

import torch

import configurator
from configurator import UserError, parse, run
from slm import checkpoint, runtime, storage
from slm import tokenizer as tok
from slm.generation import (MUSIC_OUTPUTS, SEPARATOR, SampleConfig, document_ends, draw, probability_table,
                            prompt_ids, read_prompt, sample_start, write_music)


def check(cfg):
    """One-line errors for options that cannot work, before anything is loaded."""
    configurator.check(cfg)
    if not (cfg.max_new_tokens or cfg.show_probs):
        raise UserError("--max_new_tokens=0 only with --show_probs: give one of them a positive value")
    if cfg.out and not os.path.isdir(os.path.dirname(os.path.abspath(cfg.out))):
        raise UserError(f"--out={cfg.out}: its directory does not exist; create it or write elsewhere")
    if cfg.out and os.path.isdir(cfg.out):
        raise UserError(f"--out={cfg.out} is a directory: give a file name, e.g."
                        f" {os.path.join(cfg.out, 'sample.txt')}")
    if cfg.out and not os.access(os.path.dirname(os.path.abspath(cfg.out)), os.W_OK):
        raise UserError(f"--out={cfg.out}: its directory is not writable; write elsewhere")


def sample(cfg, out=sys.stdout):
    """Write cfg.num_samples samples to out (see the module docstring); return them, in order, as strings."""
    check(cfg)
    device = runtime.resolve_device(cfg.device)
    ckpt = checkpoint.load(checkpoint.path_to_read(cfg.out_dir, cfg.checkpoint))
    model = checkpoint.restore_model(ckpt).to(device).eval()
    tokenizer = tok.from_meta(ckpt['tokenizer'])
    is_music_out = os.path.splitext(cfg.out)[1].lower() in MUSIC_OUTPUTS
    if is_music_out and tokenizer.kind != 'midi':
        raise UserError(f"--out={cfg.out} writes music, but this checkpoint's tokenizer is {tokenizer.kind}:"
                        f" sample a model trained on a music corpus (data/bach), or write text (.txt)")
    prompt = sample_start(tokenizer, read_prompt(cfg.start))
    ids = prompt_ids(tokenizer, prompt)
    block_size = model.args.block_size
    if model.args.model_type == 'gpt' and len(ids) > block_size:
        print(f"warning: the prompt is {len(ids)} tokens, more than block_size {block_size}: the model sees"
              f" its last {block_size}", file=sys.stderr)
        ids = ids[-block_size:]
    ids = torch.tensor([ids], device=device)
    if cfg.show_probs:
        out.write('\n'.join(probability_table(model, tokenizer, ids, cfg.show_probs, cfg)) + '\n\n')
    if not cfg.max_new_tokens:
        return []
    samples, new = draw(model, tokenizer, prompt, ids.repeat(cfg.num_samples, 1), cfg, out,
                        document_ends(ckpt, tokenizer))
    try:
        if is_music_out:
            write_music(tokenizer, [ids[0].tolist() + tokens for tokens in new], cfg)
        elif cfg.out:
            with storage.atomic_write(cfg.out) as f:
                f.write(''.join(text + SEPARATOR for text in samples).encode('utf-8'))
    except OSError as error:  # a full disk, say (the samples were printed all the same)
        raise UserError(f"cannot write --out={cfg.out}: {error.strerror}; free some space or write elsewhere")
    return samples


def main(argv=None):
    cfg = parse(SampleConfig, argv)
    torch.set_num_threads(runtime.resolve_threads(cfg.threads))  # for the whole process: its entry point
    return sample(cfg)


if __name__ == '__main__':
    run(main)

"""Generate text from a trained checkpoint; the model and tokenizer both come from the checkpoint alone.

    python sample.py --out_dir=out-akjv --start="In the beginning" --num_samples=3 --max_new_tokens=200
    python sample.py --checkpoint=out-akjv/ckpt.pt --start=FILE:prompt.txt --temperature=0.6 --top_k=40
"""
import dataclasses
import os
import sys

import torch

import checkpoint
import tokenizer as tok
from configurator import UserError, parse, run
from train import resolve_device


@dataclasses.dataclass
class SampleConfig:
    out_dir: str = 'out'          # where train.py wrote its checkpoints
    checkpoint: str = ''          # a checkpoint file ('' = out_dir/best.pt, else out_dir/ckpt.pt)
    start: str = ''               # the prompt, or FILE:path to read it from a file
    num_samples: int = 1          # how many samples to draw
    max_new_tokens: int = 200     # tokens generated per sample
    temperature: float = 0.8      # < 1 sharpens the distribution, > 1 flattens it
    top_k: int = 0                # sample only among the k most likely tokens (0 = all)
    stop_at_eos: bool = False     # end a sample at the end-of-document token (GPT-2 BPE: one story per sample)
    seed: int = 1337              # same seed, same samples
    device: str = 'auto'          # auto | cpu | cuda | mps


def checkpoint_path(cfg):
    if cfg.checkpoint:
        return cfg.checkpoint
    best = os.path.join(cfg.out_dir, 'best.pt')
    return best if os.path.exists(best) else os.path.join(cfg.out_dir, 'ckpt.pt')


def read_prompt(start):
    if not start.startswith('FILE:'):
        return start
    try:
        with open(start[5:], encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the prompt file {start[5:]}: {error}")


def prompt_ids(tokenizer, text):
    """The document-start id (<s>; GPT-2 BPE: <|endoftext|>) and the prompt's ids after it.

    Warns once if the prompt has characters the vocabulary lacks (BPE has none: it spells any byte)."""
    ids = tokenizer.encode(text)
    if tokenizer.unk_id is not None and tokenizer.unk_id in ids:
        missing = sorted({c for c in text if tokenizer.encode(c) == [tokenizer.unk_id]})
        print(f"warning: the prompt has characters the vocabulary lacks ({''.join(missing)!r});"
              f" they read as {tok.SPECIALS[tokenizer.unk_id]}", file=sys.stderr)
    return [tokenizer.bos_id, *ids]


def next_token(logits, temperature, top_k, generator):
    """Draw one id per row from logits (B, V) at the given temperature among the top_k most likely."""
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(model, ids, max_new_tokens, temperature, top_k, generator):
    """Yield max_new_tokens ids following ids (1, T). The GPT sees at most block_size tokens of context;
    the LSTM reads the prompt once and then carries its hidden state from token to token."""
    if model.args.model_type == 'lstm':
        logits, hidden = model(ids, model.init_hidden(1, ids.device))
        for _ in range(max_new_tokens):
            token = next_token(logits[:, -1], temperature, top_k, generator)
            yield token.item()
            logits, hidden = model(token, hidden)
    else:
        for _ in range(max_new_tokens):
            logits = model(ids[:, -model.args.block_size:])
            token = next_token(logits[:, -1], temperature, top_k, generator)
            yield token.item()
            ids = torch.cat([ids, token], dim=1)


def sample(cfg, out=sys.stdout):
    """Write cfg.num_samples samples to out as they are generated; return them as a list of strings."""
    if cfg.temperature <= 0:
        raise UserError(f"--temperature={cfg.temperature} must be positive")
    if cfg.max_new_tokens <= 0 or cfg.num_samples <= 0:
        raise UserError("--max_new_tokens and --num_samples must be positive")
    device = resolve_device(cfg.device)
    ckpt = checkpoint.load(checkpoint_path(cfg))
    model = checkpoint.restore_model(ckpt).to(device).eval()
    tokenizer = tok.from_meta(ckpt['tokenizer'])
    prompt = read_prompt(cfg.start)
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    samples = []
    for _ in range(cfg.num_samples):
        out.write(prompt)
        new, shown = [], ''
        for token in generate(model, ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator):
            if cfg.stop_at_eos and token == tokenizer.eos_id:
                break
            new.append(token)
            text = tokenizer.decode(new)
            if not text.endswith('\ufffd'):  # a byte-level token may end inside a character: wait for the rest
                out.write(text[len(shown):])
                out.flush()
                shown = text
        samples.append(prompt + tokenizer.decode(new))
        out.write('\n' + '-' * 40 + '\n')
    return samples


def main(argv=None):
    return sample(parse(SampleConfig, argv))


if __name__ == '__main__':
    run(main)

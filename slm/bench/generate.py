"""bench.py's sections on generation: sampling tokens/s, generation.generate's KV cache against recomputing, and
sample.py's streaming loop at a short and a long length."""
import dataclasses
import functools
import io
import statistics
import time

import numpy as np
import torch

import configurator
from model import build_model
from slm import decode, generation, perf
from slm import tokenizer as tok
from slm.bench.harness import Job, section
from slm.generation import generate


PROMPT_TOKENS = 16  # the first tokens of the data are the prompt


@section('sample', f'sampling: generation.generate after a {PROMPT_TOKENS}-token prompt, float32, median of --repeats',
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('new_tokens', 'new tokens', '{}'),
          ('tokens_per_s', 'tokens/s', '{:,.1f}'), ('ms_per_token', 'ms/token', '{:.2f}'),
          ('peak_memory_mb', 'peak MB', '{:,.0f}')])
def plan_sample(ctx):
    cfg = ctx.cfg

    def job(model_type, device):
        torch.manual_seed(cfg.seed)
        model = build_model(ctx.model_args(model_type)).to(device).eval()
        prompt_len = min(PROMPT_TOKENS, cfg.block_size - 1)
        prompt = torch.from_numpy(np.asarray(ctx.tokens[:prompt_len], dtype=np.int64))[None].to(device)

        def draw(n):
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            for _ in generate(model, prompt, n, temperature=1.0, top_k=0, generator=generator):
                pass

        draw(cfg.warmup)
        seconds = perf.median_seconds(lambda: draw(cfg.sample_tokens), device, cfg.repeats)
        return {'model': model_type, 'device': device, 'prompt_tokens': prompt_len,
                'new_tokens': cfg.sample_tokens, 'tokens_per_s': cfg.sample_tokens / seconds,
                'ms_per_token': seconds / cfg.sample_tokens * 1e3}

    return [Job(f"sample {model_type} {device}", device, None, functools.partial(job, model_type, device))
            for device in ctx.devices for model_type in ctx.models]


def generate_args(ctx):
    """The GPT the generation sections time: --generate_shape, whatever the shape of the training sections."""
    n_layer, n_head, n_embd, block_size = ctx.cfg.generate_shape
    return dataclasses.replace(ctx.model_args('gpt'), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                               block_size=block_size)


def decodes(cfg):
    """The compiled steps --generate_decodes asks for, in order."""
    return [] if cfg.generate_decodes == 'none' else configurator.listed(cfg.generate_decodes)


def conclude_generate(rows, ctx):
    """The cache's speed-up at each output length, and how tokens/s changes from the shortest output to the
    longest."""
    lines = []
    for device in ctx.devices:
        runs = sorted((r for r in rows if r['device'] == device), key=lambda r: r['new_tokens'])
        for r in runs:
            lines.append(f"{device} gpt {r['shape']}: {r['new_tokens']} new tokens with the KV cache at"
                         f" {r['cached_tokens_per_s']:,.0f} tokens/s, {r['speedup']:.1f}x recomputing the window"
                         f" at every token ({r['recompute_tokens_per_s']:,.0f} tokens/s)"
                         + ''.join(f"; {how} {r[f'{how}_tokens_per_s']:,.0f} tokens/s ({r[f'{how}_ms_per_token']:.3f}"
                                   f" ms/token, {r[f'{how}_speedup']:.2f}x eager, made in {r[f'{how}_first_s']:.1f} s)"
                                   for how in decode.STEPS if f'{how}_speedup' in r)
                         + ('' if r['same_tokens'] else '; WARNING: the modes generated different tokens'))
        if len(runs) > 1:
            first, last = runs[0], runs[-1]
            change = {f'{mode}_{rate}': last[f'{mode}_{rate}'] / first[f'{mode}_{rate}']
                      for mode in ('cached', 'recompute') for rate in ('tokens_per_s', 'second_half_tokens_per_s')}
            lines.append(f"{device} gpt {first['shape']}: from {first['new_tokens']} to {last['new_tokens']} new"
                         f" tokens the cached tokens/s changes {change['cached_tokens_per_s']:.2f}x overall and"
                         f" {change['cached_second_half_tokens_per_s']:.2f}x over each output's second half"
                         f" (recomputing: {change['recompute_tokens_per_s']:.2f}x and"
                         f" {change['recompute_second_half_tokens_per_s']:.2f}x)")
    return [], lines


DECODE_COLUMNS = [(f'{how}_{key}', f'{how} {header}', fmt) for how in decode.STEPS
                  for key, header, fmt in (('tokens_per_s', 'tokens/s', '{:,.1f}'),
                                           ('ms_per_token', 'ms/token', '{:.3f}'), ('first_s', 'first s', '{:.1f}'))]


@section('generate', f'generation: generation.generate with the KV cache (eager GPT.forward, then decode.py\'s step'
         f' compiled as --generate_decodes) against recomputing the window at every token (the same windows and'
         f' tokens), greedy, after a {PROMPT_TOKENS}-token prompt, median of --generate_repeats alternating runs;'
         f' recomputing over at most --generate_recompute_tokens; first s: the first run, compilation included',
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('shape', 'shape', '{}'),
          ('block_size', 'block', '{}'), ('new_tokens', 'new tokens', '{:,}'),
          ('recompute_tokens_per_s', 'recompute tokens/s', '{:,.1f}'),
          ('cached_tokens_per_s', 'cached tokens/s', '{:,.1f}'), ('cached_ms_per_token', 'cached ms/token', '{:.3f}'),
          ('speedup', 'speed-up', '{:.2f}x'), *DECODE_COLUMNS,
          ('cached_second_half_tokens_per_s', 'cached 2nd half', '{:,.1f}'),
          ('recompute_second_half_tokens_per_s', 'recompute 2nd half', '{:,.1f}'),
          ('peak_memory_mb', 'peak MB', '{:,.0f}')],
         conclude=conclude_generate)
def plan_generate(ctx):
    cfg = ctx.cfg
    args = generate_args(ctx)
    n_layer, n_embd, block_size = args.n_layer, args.n_embd, args.block_size

    def job(device, new_tokens):
        torch.manual_seed(cfg.seed)
        model = build_model(args).to(device).eval()
        prompt_len = min(PROMPT_TOKENS, block_size)
        prompt = torch.from_numpy(np.asarray(ctx.tokens[:prompt_len], dtype=np.int64))[None].to(device)
        lengths = {'recompute': min(new_tokens, cfg.generate_recompute_tokens)}
        modes = {'cached': dict(how='eager'), 'recompute': dict(use_cache=False),
                 **{how: dict(how=how) for how in decodes(cfg)}}

        def timed_run(mode):
            """(seconds, seconds of the second half, the tokens) of one greedy generation. The device is
            synchronized at the ends and halfway: the second half's rate is the steady cost per token."""
            n = lengths.get(mode, new_tokens)
            tokens, half = [], n // 2
            perf.synchronize(device)
            start = time.perf_counter()
            for token in generate(model, prompt, n, temperature=0, **modes[mode]):
                tokens.append(token)
                if len(tokens) == half:
                    perf.synchronize(device)
                    halfway = time.perf_counter()
            perf.synchronize(device)
            end = time.perf_counter()
            return end - start, end - halfway, torch.stack(tokens).tolist()

        first = {}
        for mode in modes:  # the first runs, untimed but for the compiled steps' first seconds (made then: a
            start = time.perf_counter()  # second token, so that compile has stepped one)
            for _ in generate(model, prompt, max(cfg.warmup, 2), temperature=0, **modes[mode]):
                pass
            first[mode] = time.perf_counter() - start
        # alternating, so that other work on the machine slows every mode alike
        runs = {mode: [] for mode in modes}
        for _ in range(cfg.generate_repeats):
            for mode in runs:
                runs[mode].append(timed_run(mode))
        recompute_n = lengths['recompute']
        row = {'model': 'gpt', 'device': device, 'shape': f'{n_layer}x{n_embd}', 'block_size': block_size,
               'prompt_tokens': prompt_len, 'new_tokens': new_tokens, 'recompute_tokens': recompute_n,
               'repeats': cfg.generate_repeats,
               'same_tokens': len({str(tokens[:recompute_n]) for mode in runs for _, _, tokens in runs[mode]}) == 1
               and len({str(tokens) for mode in runs if mode != 'recompute' for _, _, tokens in runs[mode]}) == 1}
        for mode, timings in runs.items():
            n = lengths.get(mode, new_tokens)
            seconds = statistics.median(t for t, _, _ in timings)
            row.update({f'{mode}_s': seconds, f'{mode}_tokens_per_s': n / seconds,
                        f'{mode}_ms_per_token': seconds / n * 1e3,
                        f'{mode}_second_half_tokens_per_s': (n - n // 2) / statistics.median(t for _, t, _ in timings)})
        for how in decode.STEPS:
            if how in runs:
                row[f'{how}_first_s'] = first[how]
                row[f'{how}_speedup'] = row[f'{how}_tokens_per_s'] / row['cached_tokens_per_s']
            else:  # not asked for: an empty cell
                row.update({f'{how}_{key}': None for key in ('tokens_per_s', 'ms_per_token', 'first_s')})
        row['speedup'] = row['cached_tokens_per_s'] / row['recompute_tokens_per_s']
        return row

    return [Job(f"generate {device} {n} tokens", device, None, functools.partial(job, device, n))
            for device in ctx.devices for n in cfg.generate_tokens]


def conclude_stream(rows, ctx):
    """Whether streaming costs the same per token however long the sample (linear) or more (quadratic)."""
    lines = []
    for device in ctx.devices:
        runs = sorted((r for r in rows if r['device'] == device), key=lambda r: r['new_tokens'])
        if len(runs) > 1:
            first, last = runs[0], runs[-1]
            ratio = last['tokens_per_s'] / first['tokens_per_s']
            lines.append(f"{device} gpt {first['shape']}: sample.py --decode={first['decode']} streams"
                         f" {first['new_tokens']:,} new tokens at {first['tokens_per_s']:,.0f} tokens/s and"
                         f" {last['new_tokens']:,} at {last['tokens_per_s']:,.0f} ({ratio:.2f}x): its cost per token"
                         f" {'stays flat' if ratio > 0.7 else 'grows'} with the length")
    return [], lines


@section('stream', "streaming: sample.py's own loop (generation.draw: generation, decoding each token, writing the"
         " text) for one sample, KV cache stepped as --stream_decode, temperature 1, median of --generate_repeats",
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('shape', 'shape', '{}'), ('decode', 'decode', '{}'),
          ('new_tokens', 'new tokens', '{:,}'), ('tokens_per_s', 'tokens/s', '{:,.1f}'),
          ('ms_per_token', 'ms/token', '{:.3f}'), ('peak_memory_mb', 'peak MB', '{:,.0f}')],
         conclude=conclude_stream)
def plan_stream(ctx):
    cfg = ctx.cfg
    args = generate_args(ctx)
    n_layer, n_embd, block_size = args.n_layer, args.n_embd, args.block_size
    # a character tokenizer with one symbol per id of the model's vocabulary (specials first, as prepare.py has)
    symbols = [chr(0x100 + i) for i in range(args.vocab_size - len(tok.SPECIALS))]
    tokenizer = tok.CharTokenizer([*tok.SPECIALS, *symbols])

    def job(device, new_tokens):
        torch.manual_seed(cfg.seed)
        model = build_model(args).to(device).eval()
        prompt = torch.tensor([[tok.BOS_ID]], device=device)
        settings = generation.SampleConfig(max_new_tokens=new_tokens, temperature=1.0, seed=cfg.seed,
                                       decode=cfg.stream_decode)
        generation.draw(model, tokenizer, '', prompt, dataclasses.replace(settings, max_new_tokens=cfg.warmup),
                    io.StringIO())
        seconds = perf.median_seconds(lambda: generation.draw(model, tokenizer, '', prompt, settings, io.StringIO()),
                                      device, cfg.generate_repeats)
        return {'model': 'gpt', 'device': device, 'shape': f'{n_layer}x{n_embd}', 'decode': cfg.stream_decode,
                'block_size': block_size, 'new_tokens': new_tokens, 'tokens_per_s': new_tokens / seconds,
                'ms_per_token': seconds / new_tokens * 1e3}

    return [Job(f"stream {device} {n} tokens", device, None, functools.partial(job, device, n))
            for device in ctx.devices for n in cfg.stream_tokens]

"""How fast this machine trains and samples the GPT and the LSTM, and where the time goes.

    python bench.py                              # CPU, and CUDA when present: many minutes on 2 cores
    python bench.py --quick=True                 # tiny sizes: every section in seconds
    python bench.py --device=cuda --n_layer=6 --n_embd=384 --block_size=256 --out=bench.json
    python bench.py --data_dir=data/akjv --sections=train,study   # batches from a prepared dataset

Every measurement runs the project's own code: batches from batching.py, the model from model.py, one
optimizer step from optim.train_step (autocast, loss, backward, clipping, AdamW), generation from
generation.generate. Each is warmed up, then timed with the device synchronized at the ends of the timed region.

A section is a function registered with @section (slm/bench/harness.py): it plans jobs (one measurement each, one
row of its table and of the JSON's results[section]) and may draw conclusions from its rows. The sections live in
slm/bench/: train.py, generate.py, memory.py and recipe.py; add one there to measure something new.

FLOPs, MFU and the GPU peak table are perf.py's: its docstring gives the formulas.
"""
import dataclasses
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

import configurator
from configurator import UNKNOWN, UserError, option, parse, run
from model import MODELS, build_model
from slm import batching, decode, perf, runtime, storage, training
# importing a module of sections registers them, in this order: the order of the tables
from slm.bench import train as bench_train  # peak, train, defaults, profile, windowing, study
from slm.bench import generate as bench_generate  # noqa: F401 (sample, generate, stream)
from slm.bench import memory as bench_memory  # memory, busy
from slm.bench import recipe as bench_recipe  # recipe
from slm.bench.harness import SECTIONS, Context, Unsupported


SCHEMA_VERSION = 1
# the word-level AKJV GPT at three batch sizes, and the TinyStories CPU GPT with GPT-2's vocabulary at two
MEMORY_MODELS = ('gpt:4:4:128:64:32:12964', 'gpt:4:4:128:64:128:12964', 'gpt:4:4:128:64:500:12964',
                 'gpt:4:4:128:128:8:50257', 'gpt:4:4:128:128:32:50257')


@dataclasses.dataclass
class BenchConfig:
    device: str = option('all', choices=('all', 'auto', 'cpu', 'cuda', 'cuda:N'))  # all: cpu, and cuda when
    #                               present; auto: cuda, else cpu
    model: str = option('all', choices=('all', MODELS))  # the models timed (all: every one)
    sections: str = option('all', choices=('all',), some_of=lambda: SECTIONS)  # what to measure: all, or some
    #                               sections, comma-separated
    quick: bool = False           # tiny sizes, few repeats, no compile: every section in seconds
    data_dir: str = ''            # a prepared data directory to draw batches from ('' = random tokens)
    vocab_size: int = option(256, low=1)  # random tokens: vocabulary size (with --data_dir, the data's)
    # model shape, the same for both models (see model.ModelArgs)
    n_layer: int = option(2, low=1)  # transformer blocks (GPT) or stacked LSTM layers
    n_head: int = option(4, low=1)   # GPT only
    n_embd: int = option(128, low=1)  # width of the embedding (and of the GPT's residual stream)
    block_size: int = option(32, low=1)  # tokens per sequence
    windowing: str = option('auto', choices=('auto', batching.WINDOWINGS), error=UNKNOWN)  # how the train and
    #                               study sections cut batches (train.py --windowing)
    # training step
    batch_size: int = option(16, low=1)  # sequences per step in the training-step section
    dtype: str = option('both', choices=('both', runtime.DTYPES))  # both: float32, and bfloat16 where supported
    compile: str = option('both', choices=('both', 'True', 'False'))  # torch.compile, in the device's training
    #                               dtype if several
    # batch-size study: (a) small batch x iters, (b) large batch x iters, (c) large batch, the samples of (a)
    batch_sizes: tuple[int, int] = (50, 500)  # (small, large)
    iters: int = option(10, low=1)  # iterations of (a) and (b); (c) runs iters * small / large
    # timing
    warmup: int = option(2, low=1)  # untimed steps before every measurement
    repeats: int = option(5, low=1)  # timed repeats; the median is reported
    sample_tokens: int = option(64, low=1)  # sampling: tokens generated after the prompt
    # generation: generation.generate with its KV cache against recomputing the window at every token, on a GPT of
    # this shape (the character-level config's 4 x 128, at a 256-token context) whatever the shape above
    generate_shape: tuple[int, int, int, int] = (4, 4, 128, 256)  # n_layer, n_head, n_embd, block_size
    generate_tokens: tuple[int, ...] = (500, 20000)  # new tokens per run: the cost per token as the output grows
    generate_decodes: str = option('compile,aot', choices=('none',), some_of=lambda: decode.STEPS)  # decode.py's
    #                               compiled steps timed beside eager (sample.py --decode), comma-separated
    generate_recompute_tokens: int = option(2000, low=2)  # recomputing the window, the slow mode, runs at most
    #                               this many of each length's tokens (its cost per token is flat past block_size)
    generate_repeats: int = option(3, low=1)  # timed runs of each mode per length, alternating; the median
    #                               is reported
    stream_tokens: tuple[int, ...] = option((500, 20000), low=2)  # streaming: new tokens per sample, a short
    #                               and a long one (sample.py's loop; the cost per token should not grow)
    stream_decode: str = option('aot', choices=('eager', *decode.STEPS))  # streaming: how the GPT steps
    #                               (sample.py --decode)
    # models whatever the shape above
    defaults_models: tuple[str, ...] = ('gpt:6:6:384:256:8', 'gpt:4:4:128:128:32', 'lstm:2:1:512:128:32')
    #                               the defaults section's models, as
    #                               model:n_layer:n_head:n_embd:block_size:batch_size: train.py's default path
    #                               (runtime.py) against plain eager float32 (GPT ~10M and ~0.8M parameters,
    #                               LSTM 2 x 512)
    profile_models: tuple[str, ...] = ('gpt:4:4:128:128:32', 'gpt:2:4:128:32:16', 'lstm:2:1:128:32:16')
    #                               the profile section's models, as above: where a step's time goes
    #                               (torch.profiler), plain and default path
    memory_models: tuple[str, ...] = MEMORY_MODELS  # the memory section's models: whole batches against
    #                               train.py's micro-batches (the word-level AKJV GPT, the TinyStories CPU GPT),
    #                               each model:n_layer:n_head:n_embd:block_size:batch_size:vocab_size
    max_memory: str = 'auto'      # the memory section's budget for micro-batches (train.py's --max_memory)
    busy_model: str = 'gpt:4:4:128:128:32'  # the busy section's model, as in defaults_models
    recipe_model: str = 'gpt:4:4:128:128:32'  # the recipe section's GPT, as in defaults_models, in the GPT-2
    #                               recipe and the modern one
    recipe_config: str = option('config/train_akjv_5min.py', extensions=('.py',))  # the recipe section also times
    #                               this config's recipe options over the defaults, on the same shape ('' = not)
    threads: int = option(0, low=0)  # CPU threads torch uses (0 = one per physical core, as train.py)
    seed: int = option(1337, low=0, high=2**32 - 1)  # seeds the models, the random tokens and the sampling
    out: str = option('', extensions=('.json',))  # also write the results here as JSON ('' = table only)


QUICK = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, batch_size=4, batch_sizes=(2, 20),
             warmup=1, repeats=2, sample_tokens=8, compile='False', generate_shape=(1, 2, 32, 16),
             generate_tokens=(8, 40), generate_repeats=1, generate_decodes='none', stream_tokens=(8, 80),
             stream_decode='eager',
             defaults_models=('gpt:1:2:32:16:4', 'lstm:1:1:32:16:4'), profile_models=('gpt:1:2:32:16:4',),
             memory_models=('gpt:1:2:32:16:4:500', 'gpt:1:2:32:16:32:500'), max_memory='1MB',
             busy_model='gpt:1:2:32:16:4', recipe_model='gpt:1:2:32:16:4')


# ---------------------------------------------------------------------------------------------------------
# the run

def check(cfg):
    """Apply --quick to the fields left at their defaults, check the config, and return it."""
    if cfg.quick:
        defaults = BenchConfig()
        cfg = dataclasses.replace(cfg, **{k: v for k, v in QUICK.items()
                                          if getattr(cfg, k) == getattr(defaults, k)})
    configurator.check(cfg)
    if len(cfg.batch_sizes) != 2:
        raise UserError(f"--batch_sizes={cfg.batch_sizes} must be two sizes, small and large: e.g. 50,500")
    if len(cfg.generate_shape) != 4 or min(cfg.generate_shape) <= 0 or \
            cfg.generate_shape[2] % cfg.generate_shape[1]:
        raise UserError(f"--generate_shape={cfg.generate_shape} must be n_layer, n_head, n_embd, block_size,"
                        f" positive, n_embd a multiple of n_head: e.g. 4,4,128,256")
    if not cfg.generate_tokens or min(cfg.generate_tokens) < 2:
        raise UserError(f"--generate_tokens={cfg.generate_tokens} must be one or more counts of at least 2"
                        f" (each run is timed in halves)")
    for text in (*cfg.defaults_models, *cfg.profile_models, cfg.busy_model, cfg.recipe_model):
        bench_train.defaults_model(text)  # raises for a malformed one
    for text in cfg.memory_models:
        bench_memory.memory_model(text)
    if cfg.recipe_config and not bench_recipe.config_file(cfg.recipe_config):
        raise UserError(f"--recipe_config={cfg.recipe_config}: no such file here or in the repository; give a"
                        f" config file, or --recipe_config='' to leave it out")
    runtime.memory_budget(cfg.max_memory, 'cpu')
    small, large = cfg.batch_sizes
    if not 0 < small < large or (cfg.iters * small) % large:
        raise UserError(f"--batch_sizes={small},{large} --iters={cfg.iters}: need 0 < small < large and"
                        f" iters * small / large whole, so that (c) trains on the samples of (a);"
                        f" e.g. --batch_sizes=50,500 --iters=10")
    if cfg.out and not os.path.isdir(os.path.dirname(os.path.abspath(cfg.out))):
        raise UserError(f"--out={cfg.out}: its directory does not exist; create it or write elsewhere")
    return cfg


def selected_sections(cfg):
    return list(SECTIONS) if cfg.sections == 'all' else configurator.listed(cfg.sections)


def open_documents(cfg, directory):
    """(train split as batching.Documents over a memmap, vocab_size, pad id): the prepared split, or random tokens
    written to directory and opened by storage.open_split like a prepared split, so that the same loading path
    is timed. Random tokens come in documents of random lengths from block_size / 2 to 2 x block_size, so that
    the windowings that keep to documents pad and mask as they would on text."""
    if cfg.data_dir:
        meta = storage.load_meta(cfg.data_dir)
        return training.open_documents(cfg.data_dir, 'train', meta), meta['vocab_size'], \
            meta['tokenizer']['special_ids'].get('pad')
    n = max(1 << 20, 4 * max(cfg.batch_sizes) * cfg.block_size + 1)
    dtype = np.uint16 if cfg.vocab_size <= 1 << 16 else np.uint32
    bin_path, docs_path = storage.split_paths(directory, 'train')
    rng = np.random.default_rng(cfg.seed)
    rng.integers(0, cfg.vocab_size, size=n, dtype=dtype).tofile(bin_path)
    lengths = rng.integers(max(2, cfg.block_size // 2), 2 * cfg.block_size + 1, size=n // cfg.block_size)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    np.save(docs_path, np.append(offsets[offsets < n], n))
    tokens, offsets = storage.open_split(directory, 'train', {'dtype': np.dtype(dtype).name})
    return batching.Documents.from_split(tokens, offsets, {}), cfg.vocab_size, None


def format_table(title, columns, rows):
    cells = [['-' if row[key] is None else fmt.format(row[key]) for key, _, fmt in columns]  # None: not measured
             for row in rows]
    widths = [max([len(header), *(len(c[i]) for c in cells)]) for i, (_, header, _) in enumerate(columns)]
    lines = [[header for _, header, _ in columns], *cells]
    return '\n'.join([title, *('  '.join(v.rjust(w) for v, w in zip(line, widths)) for line in lines)])


def run_sections(ctx):
    """Run every planned job under one progress bar; print the tables and conclusions; return the results."""
    sections = [SECTIONS[name] for name in selected_sections(ctx.cfg)]
    jobs = [(s, job) for s in sections for job in s.plan(ctx)]
    rows, skipped = {s.name: [] for s in sections}, []
    with tqdm(jobs, desc='bench', unit='job', dynamic_ncols=True) as progress:
        for s, job in progress:
            progress.set_postfix_str(job.label)
            if job.dtype is not None:
                ctx.peak(job.device, job.dtype)  # first: its large matrices are not the job's memory
            perf.reset_peak_memory(job.device)
            try:
                row = job.run()
            except Unsupported as reason:
                skipped.append({'section': s.name, 'what': job.label, 'reason': str(reason)})
                continue
            rows[s.name].append({**row, 'peak_memory_mb': perf.peak_memory_mb(job.device)})
    summaries, conclusions = {}, []
    for s in sections:
        print('\n' + format_table(s.title, s.columns, rows[s.name]))
        if s.conclude:
            summaries[s.name], lines = s.conclude(rows[s.name], ctx)
            conclusions += lines
    for item in skipped:
        print(f"\nskipped {item['what']}: {item['reason']}")
    print('\nconclusions:\n' + '\n'.join(f'- {line}' for line in conclusions))
    return {'results': rows, 'summaries': summaries, 'skipped': skipped, 'conclusions': conclusions}


def bench(cfg):
    """Run the selected sections; print tables and conclusions; return the results (and write them to --out)."""
    cfg = check(cfg)
    started, threads = time.perf_counter(), torch.get_num_threads()
    try:
        torch.set_num_threads(runtime.resolve_threads(cfg.threads))
        with tempfile.TemporaryDirectory(prefix='bench-') as directory:
            ctx = Context(cfg, *open_documents(cfg, directory))
            machine = {'torch': torch.__version__, 'python': platform.python_version(),
                       'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
                       'load_average': os.getloadavg()[0],  # other work on the machine as the run starts
                       'devices': {d: perf.device_name(d) for d in ctx.devices}}
            sizes = ', '.join(f"{m} {sum(p.numel() for p in build_model(ctx.model_args(m)).parameters()):,}"
                              f" parameters" for m in ctx.models)
            print(f"bench: {'; '.join(f'{d}: {name}' for d, name in machine['devices'].items())};"
                  f" torch {torch.__version__}; {sizes}; data:"
                  f" {cfg.data_dir or f'random tokens, vocabulary {cfg.vocab_size}'}", flush=True)
            if 'cpu' in ctx.devices and machine['load_average'] >= 0.5 * os.cpu_count():
                print(f"warning: load average {machine['load_average']:.1f} on {os.cpu_count()} CPUs: other"
                      f" processes compete for the CPU, so its timings are noisy (and with several torch threads"
                      f" can be many times slower: compare --threads=1)", flush=True)
            data = {'source': cfg.data_dir or 'random tokens', 'vocab_size': ctx.vocab_size,
                    'tokens': len(ctx.tokens)}
            results = {'schema_version': SCHEMA_VERSION, 'machine': machine, 'config': dataclasses.asdict(cfg),
                       'data': data, **run_sections(ctx)}
    finally:
        torch.set_num_threads(threads)  # bench() may run inside another program, the tests for one
    results['total_s'] = time.perf_counter() - started
    if cfg.out:
        with storage.atomic_write(cfg.out, 'w') as f:
            json.dump(results, f, indent=1, allow_nan=False)
        print(f"wrote {cfg.out}")
    return results


def main(argv=None):
    return bench(parse(BenchConfig, argv))


if __name__ == '__main__':
    run(main)

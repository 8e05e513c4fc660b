"""How fast this machine trains and samples the GPT and the LSTM, and where the time goes.

    python bench.py                              # CPU, and CUDA when present: about 2 minutes on 2 CPU cores
    python bench.py --quick=True                 # tiny sizes: every section in seconds
    python bench.py --device=cuda --n_layer=6 --n_embd=384 --block_size=256 --out=bench.json
    python bench.py --data_dir=data/akjv --sections=train,study   # batches from a prepared dataset

Every measurement runs the project's own code: batches from batching.py, the model from model.py, one
optimizer step from train.train_step (autocast, loss, backward, clipping, AdamW), generation from
sample.generate. Each is warmed up, then timed with the device synchronized at the ends of the timed region.

A section is a function registered with @section: it plans jobs (one measurement each, one row of its table
and of the JSON's results[section]) and may draw conclusions from its rows. Add one to measure something new.

FLOPs, MFU and the GPU peak table are perf.py's: its docstring gives the formulas.
"""
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

import batching
import configurator
import perf
import runtime
import storage
import train
from configurator import UNKNOWN, UserError, option, parse, run
from model import MODELS, ModelArgs, build_model
from sample import generate

SCHEMA_VERSION = 1
PROMPT_TOKENS = 16  # sampling: the first tokens of the data are the prompt


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
    # generation: sample.generate with its KV cache against recomputing the window at every token, on a GPT of
    # this shape (the character-level config's 4 x 128, at a 256-token context) whatever the shape above
    generate_shape: tuple[int, int, int, int] = (4, 4, 128, 256)  # n_layer, n_head, n_embd, block_size
    generate_tokens: tuple[int, ...] = (500, 2000)  # new tokens per run: the cost per token as the output grows
    generate_repeats: int = option(3, low=1)  # timed runs of each mode per length, alternating; the median
    #                               is reported
    # models whatever the shape above
    defaults_models: tuple[str, ...] = ('gpt:6:6:384:256:8', 'gpt:4:4:128:128:32', 'lstm:2:1:512:128:32')
    #                               the defaults section's models, as
    #                               model:n_layer:n_head:n_embd:block_size:batch_size: train.py's default path
    #                               (runtime.py) against plain eager float32 (GPT ~10M and ~0.8M parameters,
    #                               LSTM 2 x 512)
    profile_models: tuple[str, ...] = ('gpt:4:4:128:128:32', 'gpt:2:4:128:32:16', 'lstm:2:1:128:32:16')
    #                               the profile section's models, as above: where a step's time goes
    #                               (torch.profiler), plain and default path
    threads: int = option(0, low=0)  # CPU threads torch uses (0 = one per physical core, as train.py)
    seed: int = option(1337, low=0, high=2**32 - 1)  # seeds the models, the random tokens and the sampling
    out: str = option('', extensions=('.json',))  # also write the results here as JSON ('' = table only)


QUICK = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, batch_size=4, batch_sizes=(2, 20),
             warmup=1, repeats=2, sample_tokens=8, compile='False', generate_shape=(1, 2, 32, 16),
             generate_tokens=(8, 40), generate_repeats=1,
             defaults_models=('gpt:1:2:32:16:4', 'lstm:1:1:32:16:4'), profile_models=('gpt:1:2:32:16:4',))


class Unsupported(Exception):
    """A configuration this device or build cannot run: listed as skipped, with the reason."""


def dtype_name(dtype):
    return str(dtype).removeprefix('torch.')


# ---------------------------------------------------------------------------------------------------------
# what every section measures with

class Context:
    """The resolved run: devices, models, dtypes, the token memmap, and the peaks measured so far."""

    def __init__(self, cfg, documents, vocab_size, pad_id):
        self.cfg, self.documents, self.vocab_size, self.pad_id = cfg, documents, vocab_size, pad_id
        self.tokens, self.ignore_index = documents.tokens, batching.IGNORE_INDEX
        self.devices = resolve_devices(cfg.device)
        self.models = list(MODELS) if cfg.model == 'all' else [cfg.model]
        self.compile_modes = {'both': [False, True], 'True': [True], 'False': [False]}[cfg.compile]
        self.peaks = {}

    def dtypes(self, device):
        """The autocast dtypes timed on device."""
        if self.cfg.dtype != 'both':
            return [runtime.resolve_dtype(self.cfg.dtype, device)]
        if torch.device(device).type == 'cuda' and not torch.cuda.is_bf16_supported():
            return [torch.float32, torch.float16]
        return [torch.float32, torch.bfloat16]

    def training_dtype(self, device):
        """The dtype train.py trains in on device (CUDA: bfloat16, CPU: float32) if it is timed, else the first."""
        auto = runtime.resolve_dtype('auto', device)
        return auto if auto in self.dtypes(device) else self.dtypes(device)[0]

    def shape(self, **overrides):
        """The model shape measured: --n_layer, --n_head, --n_embd, --block_size, or overrides of them."""
        return {k: overrides.get(k, getattr(self.cfg, k)) for k in ('n_layer', 'n_head', 'n_embd', 'block_size')}

    def train_config(self, model_type, batch_size, windowing=None, shape=None, adamw='auto'):
        """The train.py config of a measurement: its optimizer settings and clipping are what is timed."""
        cfg = train.TrainConfig(data_dir=self.cfg.data_dir or 'random tokens', model_type=model_type,
                                **(shape or self.shape()), batch_size=batch_size, seed=self.cfg.seed,
                                windowing=windowing or self.cfg.windowing, adamw=adamw)
        train.check_config(cfg)
        return cfg

    def model_args(self, model_type, shape=None):
        return ModelArgs(model_type=model_type, vocab_size=self.vocab_size, pad_id=self.pad_id,
                         **(shape or self.shape()))

    def peak(self, device, dtype):
        """The peak MFU divides by, and the matmul measured (once per device and dtype)."""
        if (device, dtype) not in self.peaks:
            quick = self.cfg.quick
            measured, n, op = perf.matmul_tflops(device, dtype, target_s=0.005 if quick else 0.05,
                                                 max_n=512 if quick else 16384, repeats=min(3, self.cfg.repeats))
            tflops, source = measured, 'measured matmul'
            if torch.device(device).type == 'cuda':
                listed, entry = perf.datasheet_tflops(perf.device_name(device), dtype_name(dtype))
                if listed:
                    tflops, source = listed, f'datasheet: {entry}'
            self.peaks[device, dtype] = {'peak_tflops': tflops, 'source': source, 'matmul_tflops': measured,
                                         'matmul_n': n, 'matmul_op': op}
        return self.peaks[device, dtype]


def resolve_devices(name):
    if name == 'all':
        return ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    device = runtime.resolve_device(name)
    if torch.device(device).type not in ('cpu', 'cuda'):
        raise UserError(f"--device={name} means {device} here, which bench.py does not time: use cpu or cuda")
    return [device]


class Trainer:
    """A fresh model, AdamW and batch source built as train.py builds them; step() is one train.train_step."""

    def __init__(self, ctx, model_type, device, dtype, batch_size, compiled, windowing=None, shape=None,
                 adamw='auto'):
        self.tcfg = ctx.train_config(model_type, batch_size, windowing, shape, adamw)
        self.batches = train.make_batches(self.tcfg, ctx.documents, 'train', self.tcfg.seed, device)
        torch.manual_seed(ctx.cfg.seed)
        self.raw_model = build_model(ctx.model_args(model_type, shape)).to(device)
        self.optimizer = train.make_optimizer(self.raw_model, self.tcfg, device)
        model = torch.compile(self.raw_model) if compiled else self.raw_model
        self.batch_loss = train.BatchLoss(model, self.batches, device, dtype, ctx.ignore_index)
        self.scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
        self.device, self.dtype, self.compiled, self.batch_size = device, dtype, compiled, batch_size
        self.flops_per_token = perf.train_flops_per_token(self.raw_model, self.tcfg.block_size)
        self.peak = ctx.peak(device, dtype)

    def step(self):
        train.train_step(self.batch_loss, self.optimizer, self.scaler, self.tcfg)

    def warm_up(self, steps):
        """Run the untimed steps; return the first one's seconds (compilation included when compiled)."""
        perf.synchronize(self.device)
        start = time.perf_counter()
        try:
            self.step()
            perf.synchronize(self.device)
        except RuntimeError as error:  # no kernel for this dtype here, out of memory, ...: the first step tells
            raise Unsupported(str(error).strip().split('. ')[0][:200])
        first = time.perf_counter() - start
        for _ in range(steps - 1):
            self.step()
        return first

    def close(self):
        if self.compiled:
            torch.compiler.reset()  # drop the compiled graphs: the next measurement compiles afresh

    def throughput(self, seconds_per_iter):
        """The rates of a step that takes seconds_per_iter: per second, achieved FLOP/s and MFU."""
        tokens_per_s = self.batch_size * self.tcfg.block_size / seconds_per_iter
        achieved = self.flops_per_token * tokens_per_s / 1e12
        return {'ms_per_iter': seconds_per_iter * 1e3, 'samples_per_s': self.batch_size / seconds_per_iter,
                'tokens_per_s': tokens_per_s, 'flops_per_token': self.flops_per_token, 'tflops': achieved,
                'peak_tflops': self.peak['peak_tflops'], 'mfu': achieved / self.peak['peak_tflops']}


# ---------------------------------------------------------------------------------------------------------
# sections: each plans its jobs; a job measures one thing and returns one row (a dict of plain values)

@dataclasses.dataclass
class Job:
    label: str          # what the progress bar shows
    device: str
    dtype: object       # the dtype whose peak FLOP/s the row needs (measured before the job), or None
    run: object         # () -> row


@dataclasses.dataclass
class Section:
    name: str
    title: str
    columns: list            # (row key, header, format) of the table; every row has at least these keys
    plan: object             # ctx -> [Job]
    conclude: object = None  # (rows, ctx) -> (summary rows, conclusion lines)


SECTIONS = {}


def section(name, title, columns, conclude=None):
    def register(plan):
        SECTIONS[name] = Section(name, title, columns, plan, conclude)
        return plan
    return register


@section('peak', 'peak FLOP/s: the fastest n x n product measured, and the peak MFU divides by',
         [('device', 'device', '{}'), ('dtype', 'dtype', '{}'), ('matmul_op', 'op', '{}'),
          ('matmul_n', 'n', '{}'), ('matmul_tflops', 'matmul TFLOP/s', '{:.3g}'),
          ('peak_tflops', 'peak TFLOP/s', '{:.3g}'), ('source', 'peak from', '{}')])
def plan_peak(ctx):
    def job(device, dtype):
        return {'device': device, 'name': perf.device_name(device), 'dtype': dtype_name(dtype),
                **ctx.peak(device, dtype)}
    return [Job(f'peak {device} {dtype_name(dtype)}', device, None, functools.partial(job, device, dtype))
            for device in ctx.devices for dtype in ctx.dtypes(device)]


THROUGHPUT_COLUMNS = [('ms_per_iter', 'ms/iter', '{:.1f}'), ('samples_per_s', 'samples/s', '{:,.0f}'),
                      ('tokens_per_s', 'tokens/s', '{:,.0f}'), ('tflops', 'TFLOP/s', '{:.3g}'),
                      ('mfu', 'MFU', '{:.1%}')]


def conclude_train(rows, ctx):
    """Speed-ups of torch.compile and of the low-precision dtype, and the share of a step spent loading data."""
    lines = []
    by_key = {(r['model'], r['device'], r['dtype'], r['compiled']): r for r in rows}
    for (model, device, dtype, compiled), row in by_key.items():
        eager, fp32 = by_key.get((model, device, dtype, False)), by_key.get((model, device, 'float32', False))
        if compiled and eager:
            lines.append(f"{device} {model} {dtype}: torch.compile runs a step"
                         f" {eager['ms_per_iter'] / row['ms_per_iter']:.2f}x as fast as eager, after"
                         f" {row['first_step_s']:.1f} s of compiling")
        elif dtype != 'float32' and fp32:
            lines.append(f"{device} {model}: {dtype} autocast runs a step"
                         f" {fp32['ms_per_iter'] / row['ms_per_iter']:.2f}x as fast as float32")
        if not compiled and dtype == dtype_name(ctx.training_dtype(device)):
            lines.append(f"{device} {model}: loading a batch of {row['batch_size']} from the memmap takes"
                         f" {row['data_ms']:.3f} ms, {row['data_share']:.2%} of a step")
    return [], lines


@section('train', 'training step (forward, backward, AdamW) at --batch_size, median of --repeats',
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('dtype', 'dtype', '{}'),
          ('compiled', 'compiled', '{}'), ('batch_size', 'batch', '{}'), *THROUGHPUT_COLUMNS,
          ('data_ms', 'data ms', '{:.3f}'), ('data_share', 'data share', '{:.2%}'),
          ('first_step_s', '1st step s', '{:.2f}'), ('peak_memory_mb', 'peak MB', '{:,.0f}')],
         conclude=conclude_train)
def plan_train(ctx):
    cfg = ctx.cfg

    def job(model_type, device, dtype, compiled):
        trainer = Trainer(ctx, model_type, device, dtype, cfg.batch_size, compiled)
        try:
            first_step_s = trainer.warm_up(cfg.warmup)
            step_s = perf.median_seconds(trainer.step, device, cfg.repeats)
            # the part of a step in which train.BatchLoss draws a batch and moves it to the device
            data_s = perf.median_seconds(lambda: batching.to_device(next(trainer.batches), device), device,
                                         4 * cfg.repeats)
        finally:
            trainer.close()
        return {'model': model_type, 'device': device, 'dtype': dtype_name(dtype), 'compiled': compiled,
                'batch_size': cfg.batch_size, 'block_size': cfg.block_size, **trainer.throughput(step_s),
                'data_ms': data_s * 1e3, 'data_share': data_s / step_s, 'first_step_s': first_step_s}

    jobs = []
    for device in ctx.devices:
        for model_type in ctx.models:
            for dtype in ctx.dtypes(device):
                for compiled in ctx.compile_modes:
                    if compiled and len(ctx.dtypes(device)) > 1 and dtype != ctx.training_dtype(device):
                        continue  # a compile costs tens of seconds on a CPU: only in the dtype one trains in
                    label = f"train {model_type} {device} {dtype_name(dtype)}{' compiled' if compiled else ''}"
                    jobs.append(Job(label, device, dtype,
                                    functools.partial(job, model_type, device, dtype, compiled)))
    return jobs


def defaults_model(text):
    """A --defaults_models entry, model:n_layer:n_head:n_embd:block_size:batch_size, as (model, shape, batch)."""
    parts = text.split(':')
    if len(parts) != 6 or parts[0] not in MODELS or not all(p.isdigit() and int(p) > 0 for p in parts[1:]) \
            or int(parts[3]) % int(parts[2]):
        raise UserError(f"--defaults_models: {text!r} must be model:n_layer:n_head:n_embd:block_size:batch_size,"
                        f" positive, n_embd a multiple of n_head: e.g. gpt:6:6:384:256:8")
    n_layer, n_head, n_embd, block_size, batch_size = map(int, parts[1:])
    return parts[0], dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size), batch_size


PATHS = ('plain', 'default')


def model_label(text):
    model_type, shape, batch_size = defaults_model(text)
    return f"{model_type} {shape['n_layer']}x{shape['n_embd']} block {shape['block_size']} batch {batch_size}"


def path_trainer(ctx, device, text, path):
    """(Trainer, CPU threads) for a --defaults_models entry on one path: 'plain' is eager float32 with the
    per-parameter AdamW loop at the thread count bench runs with; 'default' is what train.py picks (runtime.py)."""
    model_type, shape, batch_size = defaults_model(text)
    if path == 'plain':
        trainer = Trainer(ctx, model_type, device, torch.float32, batch_size, False, shape=shape, adamw='for_loop')
        return trainer, torch.get_num_threads()
    trainer = Trainer(ctx, model_type, device, runtime.resolve_dtype('auto', device), batch_size,
                      runtime.resolve_compile('auto', device), shape=shape)
    return trainer, runtime.resolve_threads(ctx.cfg.threads)


def conclude_defaults(rows, ctx):
    lines = [f"{r['device']} {r['model']}: train.py's default path ({r['path']}) runs a step {r['speedup']:.2f}x as"
             f" fast as plain eager float32 ({r['plain_path']})" for r in rows]
    if 'cpu' in ctx.devices and not runtime.cpu_has_fast_bfloat16():
        lines.append("cpu: no bfloat16 matrix instructions here (AVX-512 BF16 or AMX), so the default path trains"
                     " in float32 (bfloat16 autocast would emulate each product; see the train section)")
    return [], lines


@section('defaults', "train.py's default path (runtime.py: dtype, compile, threads, AdamW) against plain eager"
         " float32, alternating steps, median of --repeats",
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('params', 'params', '{:,}'),
          ('plain_ms', 'plain ms', '{:.1f}'), ('path', 'default path', '{}'), ('default_ms', 'default ms', '{:.1f}'),
          ('speedup', 'speed-up', '{:.2f}x'), ('tokens_per_s', 'tokens/s', '{:,.0f}'),
          ('mfu_float32', 'MFU fp32 peak', '{:.1%}'), ('mfu_low', 'MFU bf16 peak', '{:.1%}')],
         conclude=conclude_defaults)
def plan_defaults(ctx):
    cfg = ctx.cfg

    def describe(trainer, threads):
        kernel = runtime.adamw_kernel(trainer.tcfg.adamw, trainer.device)
        return (f"{dtype_name(trainer.dtype)}, {'compiled' if trainer.compiled else 'eager'}, {kernel} AdamW,"
                f" {threads} threads")

    def job(device, text):
        threads_before = torch.get_num_threads()
        (plain, plain_threads), (fast, fast_threads) = (path_trainer(ctx, device, text, p) for p in PATHS)
        threads = {plain: plain_threads, fast: fast_threads}
        times = {plain: [], fast: []}
        try:
            for trainer in (plain, fast):
                torch.set_num_threads(threads[trainer])
                trainer.warm_up(cfg.warmup)
            for _ in range(cfg.repeats):  # alternating, so that other work on the machine slows both alike
                for trainer in (plain, fast):
                    torch.set_num_threads(threads[trainer])
                    times[trainer].append(perf.median_seconds(trainer.step, device, 1))
        finally:
            torch.set_num_threads(threads_before)
            plain.close(), fast.close()
        plain_s, fast_s = (statistics.median(times[t]) for t in (plain, fast))
        low = torch.float16 if device.startswith('cuda') and not torch.cuda.is_bf16_supported() else torch.bfloat16
        achieved = fast.throughput(fast_s)['tflops']
        return {'model': model_label(text), 'device': device,
                'params': sum(p.numel() for p in fast.raw_model.parameters()),
                'plain_path': describe(plain, threads[plain]), 'path': describe(fast, threads[fast]),
                'plain_ms': plain_s * 1e3, 'default_ms': fast_s * 1e3, 'speedup': plain_s / fast_s,
                'tokens_per_s': fast.throughput(fast_s)['tokens_per_s'],
                'plain_tokens_per_s': plain.throughput(plain_s)['tokens_per_s'],
                'mfu_float32': achieved / ctx.peak(device, torch.float32)['peak_tflops'],
                'mfu_low': achieved / ctx.peak(device, low)['peak_tflops'], 'low_dtype': dtype_name(low)}

    return [Job(f'defaults {text} {device}', device, torch.float32, functools.partial(job, device, text))
            for device in ctx.devices for text in cfg.defaults_models]


# (category, substrings of the aten op names it takes), first match wins; ops under the optimizer's step or the
# loading of a batch count as those, whatever they are
PROFILE_CATEGORIES = [('matmul', ('mm', 'linear', 'matmul')), ('attention', ('scaled_dot_product', 'attention')),
                      ('recurrent', ('lstm', 'rnn')), ('activation', ('gelu', 'tanh', 'sigmoid', 'relu')),
                      ('norm', ('layer_norm',)), ('loss', ('softmax', 'nll_loss', 'cross_entropy')),
                      ('embedding', ('embedding',))]
PROFILE_GROUPS = ['matmul', 'attention', 'recurrent', 'activation', 'norm', 'loss', 'embedding', 'optimizer',
                  'data', 'other_ops', 'outside_ops']


class LabelledBatches:
    """A batch source whose batches are drawn under the profiler label 'batch' (the profile's data column),
    so that train.py's loop carries no label of its own."""

    def __init__(self, batches):
        self.batches = batches

    def __getattr__(self, name):  # everything else BatchLoss asks of its source
        return getattr(self.batches, name)

    def __next__(self):
        with torch.profiler.record_function('batch'):
            return next(self.batches)


def profile_category(event):
    """The PROFILE_GROUPS entry one profiled op's own time belongs to."""
    parent = event
    while parent is not None:
        if parent.name.startswith('Optimizer.'):
            return 'optimizer'
        if parent.name == 'batch':
            return 'data'
        parent = parent.cpu_parent
    name = event.name.lower()
    return next((c for c, keys in PROFILE_CATEGORIES if any(k in name for k in keys)), 'other_ops')


def conclude_profile(rows, ctx):
    lines = []
    for row in rows:
        top = sorted(PROFILE_GROUPS, key=lambda g: -row[g])[:3]
        lines.append(f"{row['device']} {row['model']} {row['path']}: {row['ms_per_iter']:.1f} ms a step, of it "
                     + ', '.join(f"{g.replace('_', ' ')} {row[g]:.0%}" for g in top)
                     + f"; the optimizer {row['optimizer']:.1%}, loading batches {row['data']:.1%}, time outside"
                       f" torch's ops (Python) {row['outside_ops']:.1%}")
    return [], lines


@section('profile', "where a training step's time goes (torch.profiler, CPU time of each op by kind, share of the"
         " step's wall time), plain eager float32 and train.py's default path",
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('path', 'path', '{}'),
          ('ms_per_iter', 'ms/iter', '{:.1f}'),
          *((g, g.replace('_', ' '), '{:.1%}') for g in PROFILE_GROUPS)], conclude=conclude_profile)
def plan_profile(ctx):
    cfg = ctx.cfg

    def job(device, text, path):
        threads_before = torch.get_num_threads()
        trainer, threads = path_trainer(ctx, device, text, path)
        trainer.batch_loss.batches = LabelledBatches(trainer.batches)
        torch.set_num_threads(threads)
        try:
            trainer.warm_up(cfg.warmup)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                perf.synchronize(device)
                started = time.perf_counter()
                for _ in range(cfg.repeats):
                    trainer.step()
                perf.synchronize(device)
                wall_us = (time.perf_counter() - started) * 1e6
        finally:
            torch.set_num_threads(threads_before)
            trainer.close()
        spent = dict.fromkeys(PROFILE_GROUPS, 0.0)
        for event in profiler.events():
            if event.device_type == torch.autograd.DeviceType.CPU:
                spent[profile_category(event)] += event.self_cpu_time_total
        spent['outside_ops'] = max(0.0, wall_us - sum(spent.values()))
        return {'model': model_label(text), 'device': device, 'path': path,
                'ms_per_iter': wall_us / cfg.repeats / 1e3, **{g: spent[g] / wall_us for g in PROFILE_GROUPS}}

    return [Job(f'profile {text} {path} {device}', device, None, functools.partial(job, device, text, path))
            for device in ctx.devices for text in cfg.profile_models for path in PATHS]


def conclude_windowing(rows, ctx):
    """Each windowing's step time and targets per second against the first one timed (random)."""
    lines = []
    base = {}
    for row in rows:
        base.setdefault((row['model'], row['device']), row)  # the first windowing timed: random
    for row in rows:
        first = base[row['model'], row['device']]
        if row is not first:
            lines.append(f"{row['device']} {row['model']} {row['windowing']}: a step takes"
                         f" {row['ms_per_iter'] / first['ms_per_iter']:.2f}x the time of {first['windowing']}'s"
                         f" and learns {row['target_tokens_per_s'] / first['target_tokens_per_s']:.2f}x the"
                         f" targets per second ({row['target_share']:.0%} of its positions are targets)")
    return [], lines


@section('windowing', 'windowing strategies (batching.py): drawing a batch and a training step, float32, at'
         ' --batch_size, median of --repeats',
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('windowing', 'windowing', '{}'),
          ('target_share', 'targets', '{:.0%}'), ('data_ms', 'data ms', '{:.3f}'),
          ('ms_per_iter', 'ms/iter', '{:.1f}'), ('tokens_per_s', 'tokens/s', '{:,.0f}'),
          ('target_tokens_per_s', 'targets/s', '{:,.0f}')],
         conclude=conclude_windowing)
def plan_windowing(ctx):
    cfg = ctx.cfg

    def job(model_type, device, windowing):
        trainer = Trainer(ctx, model_type, device, torch.float32, cfg.batch_size, False, windowing)
        try:
            trainer.warm_up(cfg.warmup)
            step_s = perf.median_seconds(trainer.step, device, cfg.repeats)
            data_s = perf.median_seconds(lambda: batching.to_device(next(trainer.batches), device), device,
                                         4 * cfg.repeats)
        finally:
            trainer.close()
        throughput = trainer.throughput(step_s)
        share = trainer.batches.target_fraction
        return {'model': model_type, 'device': device, 'windowing': windowing, 'batch_size': cfg.batch_size,
                'block_size': cfg.block_size, 'target_share': share, 'data_ms': data_s * 1e3, **throughput,
                'target_tokens_per_s': throughput['tokens_per_s'] * share}

    return [Job(f"windowing {model_type} {device} {windowing}", device, torch.float32,
                functools.partial(job, model_type, device, windowing))
            for device in ctx.devices for model_type in ctx.models for windowing in batching.WINDOWINGS]


def study_verdict(wall_a, wall_b, small, large):
    """(exponent, what time follows): wall time grows as samples**exponent from (a) to (b), which has
    large/small times the samples in as many iterations. 'samples' (exponent >= 0.75), 'iterations' (<= 0.25)
    or 'between'."""
    exponent = math.log(wall_b / wall_a) / math.log(large / small)
    return exponent, 'samples' if exponent >= 0.75 else 'iterations' if exponent <= 0.25 else 'between'


def conclude_study(rows, ctx):
    """What the time follows on each device, and how the devices compare run by run."""
    small, large = ctx.cfg.batch_sizes
    ratio = large / small
    runs = {(r['model'], r['device'], r['run']): r for r in rows}
    summaries, lines = [], []
    for model in ctx.models:
        for device in ctx.devices:
            if not all((model, device, run) in runs for run in 'abc'):
                continue
            a, b, c = (runs[model, device, run] for run in 'abc')
            exponent, follows = study_verdict(a['wall_s'], b['wall_s'], small, large)
            gain = b['samples_per_s'] / a['samples_per_s']
            summaries.append({'model': model, 'device': device, 'time_b_over_a': b['wall_s'] / a['wall_s'],
                              'time_c_over_a': c['wall_s'] / a['wall_s'], 'samples_exponent': exponent,
                              'samples_per_s_b_over_a': gain, 'follows': follows})
            lines.append(
                f"{device} {model}: {ratio:g}x the samples (b/a) took {b['wall_s'] / a['wall_s']:.2f}x the time;"
                f" the samples of (a) in {ratio:g}x fewer iterations (c/a) took {c['wall_s'] / a['wall_s']:.2f}x"
                + {'samples': f": time follows the number of samples (the {device} is busy already at batch"
                              f" {small}; batch {large} trains {gain:.2f}x the samples per second)",
                   'iterations': f": time follows the number of iterations (per-step overhead dominates up to"
                                 f" batch {large}, which trains {gain:.1f}x the samples per second of batch"
                                 f" {small})",
                   'between': f": in between, time ~ samples^{exponent:.2f} (batch {large} trains {gain:.1f}x"
                              f" the samples per second of batch {small})"}[follows])
        base = ctx.devices[0]
        for device in ctx.devices[1:]:
            for run in 'abc':
                if (model, base, run) in runs and (model, device, run) in runs:
                    speedup = runs[model, device, run]['tokens_per_s'] / runs[model, base, run]['tokens_per_s']
                    summaries.append({'model': model, 'device': device, 'versus': base, 'run': run,
                                      'tokens_per_s_ratio': speedup})
                    lines.append(f"{model} ({run}) batch {runs[model, device, run]['batch_size']}: {device} trains"
                                 f" {speedup:.1f}x the tokens per second of {base}")
    return summaries, lines


@section('study', 'batch-size study: (a) small batch x N iterations, (b) large x N (more samples),'
         ' (c) large x N*small/large (the samples of (a)), one timed run each',
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('dtype', 'dtype', '{}'), ('run', 'run', '{}'),
          ('batch_size', 'batch', '{}'), ('iters', 'iters', '{}'), ('samples', 'samples', '{:,}'),
          ('wall_s', 'wall s', '{:.3g}'), *THROUGHPUT_COLUMNS, ('peak_memory_mb', 'peak MB', '{:,.0f}')],
         conclude=conclude_study)
def plan_study(ctx):
    cfg = ctx.cfg
    small, large = cfg.batch_sizes
    runs = {'a': (small, cfg.iters), 'b': (large, cfg.iters), 'c': (large, cfg.iters * small // large)}

    def job(model_type, device, run):
        batch_size, iters = runs[run]
        dtype = ctx.training_dtype(device)
        trainer = Trainer(ctx, model_type, device, dtype, batch_size, compiled=ctx.compile_modes == [True])
        try:
            trainer.warm_up(cfg.warmup)
            # all iterations in one timed run, synchronized only at its ends, as train.py's loop runs them
            wall_s = perf.median_seconds(lambda: [trainer.step() for _ in range(iters)], device, repeats=1)
        finally:
            trainer.close()
        return {'model': model_type, 'device': device, 'dtype': dtype_name(dtype), 'run': run,
                'batch_size': batch_size, 'iters': iters, 'samples': batch_size * iters, 'wall_s': wall_s,
                **trainer.throughput(wall_s / iters)}

    return [Job(f"study {model_type} {device} ({run})", device, ctx.training_dtype(device),
                functools.partial(job, model_type, device, run))
            for device in ctx.devices for model_type in ctx.models for run in runs]


@section('sample', f'sampling: sample.generate after a {PROMPT_TOKENS}-token prompt, float32, median of --repeats',
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
                         + ('' if r['same_tokens'] else '; WARNING: the two generated different tokens'))
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


@section('generate', f'generation: sample.generate with the KV cache against recomputing the window at every'
         f' token (the same windows and tokens), greedy, after a {PROMPT_TOKENS}-token prompt, median of'
         f' --generate_repeats alternating runs',
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('shape', 'shape', '{}'),
          ('block_size', 'block', '{}'), ('new_tokens', 'new tokens', '{:,}'),
          ('cached_tokens_per_s', 'cached tokens/s', '{:,.1f}'),
          ('recompute_tokens_per_s', 'recompute tokens/s', '{:,.1f}'), ('speedup', 'speed-up', '{:.2f}x'),
          ('cached_second_half_tokens_per_s', 'cached 2nd half', '{:,.1f}'),
          ('recompute_second_half_tokens_per_s', 'recompute 2nd half', '{:,.1f}'),
          ('peak_memory_mb', 'peak MB', '{:,.0f}')],
         conclude=conclude_generate)
def plan_generate(ctx):
    cfg = ctx.cfg
    n_layer, n_head, n_embd, block_size = cfg.generate_shape
    args = dataclasses.replace(ctx.model_args('gpt'), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                               block_size=block_size)

    def job(device, new_tokens):
        torch.manual_seed(cfg.seed)
        model = build_model(args).to(device).eval()
        prompt_len = min(PROMPT_TOKENS, block_size)
        prompt = torch.from_numpy(np.asarray(ctx.tokens[:prompt_len], dtype=np.int64))[None].to(device)

        def timed_run(use_cache):
            """(seconds, seconds of the second half, the tokens) of one greedy generation. The device is
            synchronized at the ends and halfway: the second half's rate is the steady cost per token."""
            tokens, half = [], new_tokens // 2
            perf.synchronize(device)
            start = time.perf_counter()
            for token in generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache):
                tokens.append(token)
                if len(tokens) == half:
                    perf.synchronize(device)
                    halfway = time.perf_counter()
            perf.synchronize(device)
            end = time.perf_counter()
            return end - start, end - halfway, torch.stack(tokens).tolist()

        for use_cache in (True, False):
            for _ in generate(model, prompt, cfg.warmup, temperature=0, use_cache=use_cache):
                pass
        # alternating, so that other work on the machine slows both modes alike
        runs = {'cached': [], 'recompute': []}
        for _ in range(cfg.generate_repeats):
            for mode in runs:
                runs[mode].append(timed_run(use_cache=mode == 'cached'))
        row = {'model': 'gpt', 'device': device, 'shape': f'{n_layer}x{n_embd}', 'block_size': block_size,
               'prompt_tokens': prompt_len, 'new_tokens': new_tokens, 'repeats': cfg.generate_repeats,
               'same_tokens': len({str(tokens) for mode in runs for _, _, tokens in runs[mode]}) == 1}
        for mode, timings in runs.items():
            seconds = statistics.median(t for t, _, _ in timings)
            row.update({f'{mode}_s': seconds, f'{mode}_tokens_per_s': new_tokens / seconds,
                        f'{mode}_ms_per_token': seconds / new_tokens * 1e3,
                        f'{mode}_second_half_tokens_per_s':
                            (new_tokens - new_tokens // 2) / statistics.median(t for _, t, _ in timings)})
        row['speedup'] = row['cached_tokens_per_s'] / row['recompute_tokens_per_s']
        return row

    return [Job(f"generate {device} {n} tokens", device, None, functools.partial(job, device, n))
            for device in ctx.devices for n in cfg.generate_tokens]


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
    for text in (*cfg.defaults_models, *cfg.profile_models):
        defaults_model(text)  # raises for a malformed one
    small, large = cfg.batch_sizes
    if not 0 < small < large or (cfg.iters * small) % large:
        raise UserError(f"--batch_sizes={small},{large} --iters={cfg.iters}: need 0 < small < large and"
                        f" iters * small / large whole, so that (c) trains on the samples of (a);"
                        f" e.g. --batch_sizes=50,500 --iters=10")
    if cfg.out and not os.path.isdir(os.path.dirname(os.path.abspath(cfg.out))):
        raise UserError(f"--out={cfg.out}: its directory does not exist; create it or write elsewhere")
    return cfg


def selected_sections(cfg):
    return list(SECTIONS) if cfg.sections == 'all' else [s.strip() for s in cfg.sections.split(',') if s.strip()]


def open_documents(cfg, directory):
    """(train split as batching.Documents over a memmap, vocab_size, pad id): the prepared split, or random tokens
    written to directory and opened by storage.open_split like a prepared split, so that the same loading path
    is timed. Random tokens come in documents of random lengths from block_size / 2 to 2 x block_size, so that
    the windowings that keep to documents pad and mask as they would on text."""
    if cfg.data_dir:
        meta = storage.load_meta(cfg.data_dir)
        return train.open_documents(cfg.data_dir, 'train', meta), meta['vocab_size'], \
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
    cells = [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
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

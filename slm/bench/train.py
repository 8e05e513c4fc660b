"""bench.py's sections on training: peak FLOP/s, the training step (dtypes, torch.compile, data loading),
train.py's default path against plain eager, where a step's time goes, the windowings, the batch-size study."""
import functools
import math
import statistics
import time

import torch

from configurator import UserError
from model import MODELS
from slm import batching, perf, probe, runtime
from slm.bench.harness import Job, Trainer, dtype_name, section


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
            # the part of a step in which loss.BatchLoss draws a batch and moves it to the device
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
    per-parameter AdamW loop at the thread count bench runs with; 'default' is what train.py picks (runtime.py,
    probe.py)."""
    model_type, shape, batch_size = defaults_model(text)
    if path == 'plain':
        trainer = Trainer(ctx, model_type, device, torch.float32, batch_size, False, shape=shape, adamw='for_loop')
        return trainer, torch.get_num_threads()
    trainer = Trainer(ctx, model_type, device, default_dtype(ctx, model_type, device, shape, batch_size), batch_size,
                      runtime.resolve_compile('auto', device), shape=shape)
    return trainer, runtime.resolve_threads(ctx.cfg.threads)


def default_dtype(ctx, model_type, device, shape, batch_size, recipe=None):
    """The autocast dtype train.py's dtype=auto picks for this model (probe.py measures it on CPUs with bfloat16
    instructions)."""
    return probe.training_dtype('auto', device, ctx.model_args(model_type, shape, None, recipe), batch_size)[0]


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

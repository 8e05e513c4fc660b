"""bench.py's sections on memory and a shared CPU: big batches whole against train.py's micro-batches
(--max_memory), and torch's thread count on a CPU that other work keeps busy."""
import functools
import statistics
import subprocess
import sys
import time

import torch

from configurator import UserError
from slm import perf, runtime
from slm.bench.harness import Job, Trainer, section
from slm.bench.train import THROUGHPUT_COLUMNS, defaults_model, model_label


WHOLE = '1TB'  # a --max_memory no batch reaches: the batch runs whole, as train.py ran every batch before


def memory_model(text):
    """A --memory_models entry, model:n_layer:n_head:n_embd:block_size:batch_size:vocab_size, as
    (model, shape, batch, vocab)."""
    head, _, vocab = text.rpartition(':')
    try:
        model = defaults_model(head)
    except UserError:
        model = None
    if model is None or not vocab.isdigit() or int(vocab) < 2:
        raise UserError(f"--memory_models: {text!r} must be model:n_layer:n_head:n_embd:block_size:batch_size:"
                        f"vocab_size, positive, n_embd a multiple of n_head: e.g. gpt:4:4:128:64:500:12964")
    return (*model, int(vocab))


def conclude_memory(rows, ctx):
    """What the micro-batches save in memory and what they cost (or gain) in tokens/s, per model and batch."""
    by_key = {(r['model'], r['batch_size'], r['path']): r for r in rows}
    lines = []
    for (model, batch_size, path), row in by_key.items():
        whole = by_key.get((model, batch_size, 'whole'))
        if path != 'micro-batches' or not whole:
            continue
        if row['chunk_rows'] == batch_size:
            lines.append(f"{model}: fits --max_memory={ctx.cfg.max_memory} whole, no micro-batches")
            continue
        lines.append(f"{model}: micro-batches of {row['chunk_rows']} rows peak at"
                     f" {row['peak_memory_mb']:,.0f} MB against {whole['peak_memory_mb']:,.0f} MB whole"
                     f" ({whole['peak_memory_mb'] / row['peak_memory_mb']:.1f}x less), at"
                     f" {row['tokens_per_s'] / whole['tokens_per_s']:.2f}x the tokens/s")
    return [], lines


@section('memory', "big batches: whole (as before) against train.py's micro-batches under --max_memory,"
         " float32, median of --repeats; peak MB is the process's resident set (CUDA: tensors allocated)",
         [('model', 'model', '{}'), ('device', 'device', '{}'), ('batch_size', 'batch', '{}'),
          ('vocab_size', 'vocab', '{:,}'), ('path', 'path', '{}'), ('chunk_rows', 'rows/micro-batch', '{}'),
          *THROUGHPUT_COLUMNS, ('peak_memory_mb', 'peak MB', '{:,.0f}')],
         conclude=conclude_memory)
def plan_memory(ctx):
    cfg = ctx.cfg

    def job(text, device, path):
        model_type, shape, batch_size, vocab_size = memory_model(text)
        max_memory = WHOLE if path == 'whole' else cfg.max_memory
        trainer = Trainer(ctx, model_type, device, torch.float32, batch_size, False, shape=shape,
                          vocab_size=vocab_size, max_memory=max_memory)
        try:
            trainer.warm_up(cfg.warmup)
            step_s = perf.median_seconds(trainer.step, device, cfg.repeats)
        finally:
            trainer.close()
        return {'model': model_label(text.rpartition(':')[0]), 'device': device, 'batch_size': batch_size,
                'vocab_size': vocab_size, 'path': path, 'chunk_rows': trainer.chunk_rows,
                **trainer.throughput(step_s)}

    return [Job(f"memory {text} {device} {path}", device, torch.float32, functools.partial(job, text, device, path))
            for device in ctx.devices for text in cfg.memory_models for path in ('whole', 'micro-batches')]


def spin():
    """A process that keeps one CPU busy until it is killed: the other work of a shared machine."""
    return subprocess.Popen([sys.executable, '-c', 'while True: pass'])


def conclude_busy(rows, ctx):
    lines = []
    for row in rows:
        lines.append(f"{row['load']}: {row['auto_threads']} thread(s), as train.py's auto picks with"
                     f" {row['busy_cpus']:.1f} CPUs busy, run a step {row['speedup']:.2f}x as fast as"
                     f" {row['all_threads']} (one per core)")
    return [], lines


@section('busy', 'a CPU other work keeps busy: a step with one thread per core against the threads train.py'
         " picks (runtime.resolve_threads) on the machine as found and with a process of ours spinning on one CPU,"
         ' alternating, median of --repeats',
         [('model', 'model', '{}'), ('load', 'other work', '{}'), ('busy_cpus', 'busy CPUs seen', '{:.1f}'),
          ('all_threads', 'threads', '{}'), ('all_ms', 'ms/iter', '{:.1f}'), ('auto_threads', 'auto threads', '{}'),
          ('auto_ms', 'ms/iter', '{:.1f}'), ('speedup', 'speed-up', '{:.2f}x')],
         conclude=conclude_busy)
def plan_busy(ctx):
    cfg = ctx.cfg

    def job(load):
        model_type, shape, batch_size = defaults_model(cfg.busy_model)
        spinner = spin() if 'spinning' in load else None
        trainer = Trainer(ctx, model_type, 'cpu', torch.float32, batch_size, False, shape=shape)
        threads = torch.get_num_threads()
        try:
            time.sleep(0.5 if spinner else 0)  # the spinner at full speed before the CPU is looked at
            busy = runtime.measure_busy_cpus()
            counts = {'all': runtime.physical_cores(), 'auto': runtime.resolve_threads(0, 1, busy)}
            times = {name: [] for name in counts}
            for _ in range(cfg.repeats):  # alternating, so that both see the same machine
                for name, count in counts.items():
                    torch.set_num_threads(count)
                    trainer.warm_up(1)
                    times[name].append(perf.median_seconds(trainer.step, 'cpu', 1))
        finally:
            torch.set_num_threads(threads)
            trainer.close()
            if spinner:
                spinner.kill()
                spinner.wait()
        all_s, auto_s = statistics.median(times['all']), statistics.median(times['auto'])
        return {'model': model_label(cfg.busy_model), 'load': load, 'busy_cpus': busy,
                'all_threads': counts['all'], 'all_ms': all_s * 1e3, 'auto_threads': counts['auto'],
                'auto_ms': auto_s * 1e3, 'speedup': all_s / auto_s}

    if 'cpu' not in ctx.devices:
        return []
    return [Job(f"busy {load}", 'cpu', torch.float32, functools.partial(job, load))
            for load in ('as found', 'as found + 1 CPU spinning')]

"""dtype=auto on a CPU with bfloat16 instructions, decided by measurement: a few training steps (forward and
backward) of the run's own model shape in float32 and in bfloat16 autocast, taken in turn, and the faster kept.
Whether bfloat16 pays depends on the model, not only on the instructions (on a Xeon with AMX it made the 4 x 128
GPT 6-10% slower: its products are too small for the tiles to win back the conversions), so a rule about the
CPU alone cannot say. The answer is cached per machine, torch version, threads and model shape
($XDG_CACHE_HOME/slm/probe.json, else ~/.cache/slm/probe.json), so a second start costs nothing.
"""
import dataclasses
import inspect
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from model import build_model
from slm import runtime, storage
from slm.batching import Batch
from slm.evaluation import logits_of


STEPS = 3          # timed steps of each dtype, after one untimed
MAX_ROWS = 32      # rows of the probe's batch (a bigger batch's ratio is about the same, its memory is not)
MARGIN = 1.03      # bfloat16 must be this much faster: float32 is exact, and the better default on a tie


def cache_path():
    return os.path.join(runtime.cache_dir(), 'probe.json')


def cache_key(args, rows):
    """What a measurement holds for: the CPU, torch, threads, batch rows, model shape and model.py's code (a change
    to the forward, as float32 attention under bfloat16 was, can turn the answer)."""
    shape = {k: v for k, v in dataclasses.asdict(args).items() if k != 'dropout'}
    code = storage.file_digest(inspect.getsourcefile(build_model))['sha256']
    return json.dumps({'cpu': runtime.cpu_name(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
                       'rows': rows, 'model': shape, 'code': code}, sort_keys=True)


def training_dtype(name, device, args, batch_size):
    """(the autocast dtype, why it was chosen, in a few words) for train.py's --dtype on device for a model of
    args trained at batch_size rows: auto on a CPU with bfloat16 instructions is measured (or read from the
    cache), everything else is runtime.resolve_dtype's."""
    if name != 'auto' or torch.device(device).type != 'cpu':
        return runtime.resolve_dtype(name, device), 'given' if name != 'auto' else 'auto'
    if not runtime.cpu_has_fast_bfloat16():
        return torch.float32, 'auto: no bfloat16 instructions on this CPU'
    rows = min(batch_size, MAX_ROWS)
    key, cache = cache_key(args, rows), read_cache()
    found = usable(cache.get(key))
    if not found:
        cache[key] = measure(args, rows)
        write_cache(cache)
    ratio = cache[key]['float32_s'] / cache[key]['bfloat16_s']
    dtype = torch.bfloat16 if ratio >= MARGIN else torch.float32
    faster, slower, factor = ('bfloat16', 'float32', ratio) if ratio >= 1 else ('float32', 'bfloat16', 1 / ratio)
    short = f", short of the {MARGIN:.2f}x it must beat" if dtype == torch.float32 and ratio >= 1 else ''
    return dtype, (f"auto: {faster} measured {factor:.2f}x as fast as {slower} here at this shape{short}"
                   f"{' (cached)' if found else ''}")


def usable(entry):
    """Whether a cache entry holds two positive times (a hand-edited or damaged one is measured again)."""
    try:
        return entry['float32_s'] > 0 and entry['bfloat16_s'] > 0
    except (KeyError, TypeError):
        return False


def measure(args, rows):
    """Seconds of a training step (median of STEPS, each dtype in turn) in float32 and in bfloat16 autocast, of a
    fresh model of args on rows random windows; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(args)
        x = torch.randint(0, args.vocab_size, (rows, args.block_size))
        batch = Batch(x, torch.roll(x, -1, dims=1))
        times = {torch.float32: [], torch.bfloat16: []}
        for k in range(STEPS + 1):
            for dtype in times:
                started = time.perf_counter()
                with runtime.autocast('cpu', dtype):
                    logits = logits_of(model, batch)
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch.y.flatten())
                loss.backward()
                model.zero_grad(set_to_none=True)
                if k:
                    times[dtype].append(time.perf_counter() - started)
    return {'float32_s': statistics.median(times[torch.float32]),
            'bfloat16_s': statistics.median(times[torch.bfloat16]), 'measured': time.strftime('%Y-%m-%d')}


def read_cache():
    try:
        with open(cache_path()) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(cache):
    """Keep the answers for the next start; where the cache cannot be written, the next start measures again."""
    try:
        os.makedirs(os.path.dirname(cache_path()), exist_ok=True)
        with storage.atomic_write(cache_path(), 'w') as f:
            json.dump(cache, f, indent=1)
    except OSError:
        pass

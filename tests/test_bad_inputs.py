"""A sweep of bad inputs across the scripts: each gets exactly one line on stderr that names the problem (and
the way on), exit code 2, no traceback, and every good file that was there before is byte-identical after."""
import hashlib
import json
import os
import re
import shutil

import pytest

import ablate
import bench
from configurator import run
import prepare
import sample
import serve
import train


SCRIPTS = {'prepare': prepare, 'train': train, 'sample': sample, 'bench': bench, 'ablate': ablate,
           'serve': serve}


@pytest.fixture(scope='module')
def world(tmp_path_factory, char_data, tiny_checkpoint, corpus_file):
    """Good files to keep safe: a prepared data directory, a trained out_dir, a corpus; and some bad ones."""
    root = tmp_path_factory.mktemp('bad-inputs')
    data, out = root / 'data', root / 'out'
    shutil.copytree(char_data, data)
    shutil.copytree(tiny_checkpoint, out)
    shutil.copy(corpus_file, root / 'corpus.txt')
    (root / 'empty_out').mkdir()
    (root / 'a_file').write_text('not a directory\n')
    (root / 'garbage.pt').write_bytes(b'this is not a checkpoint')
    (root / 'calls.py').write_text("batch_size = int('8')\n")
    (root / 'unknown_key.py').write_text("batch_sise = 8\n")
    (root / 'imports.py').write_text("import os\nbatch_size = 8\n")
    (root / 'prompt_dir').mkdir()
    wrong_shape = root / 'wrong_meta'
    shutil.copytree(char_data, wrong_shape)
    with open(wrong_shape / 'meta.json', 'w') as f:
        json.dump(['a', 'list', 'not', 'an', 'object'], f)
    bad_tokenizer = root / 'bad_tokenizer'  # meta.json edited by hand: a tokenizer kind that does not exist
    shutil.copytree(char_data, bad_tokenizer)
    with open(bad_tokenizer / 'meta.json') as f:
        meta = json.load(f)
    meta['tokenizer']['kind'] = 'charz'
    with open(bad_tokenizer / 'meta.json', 'w') as f:
        json.dump(meta, f)
    return root


def fingerprint(root):
    """sha256 of every file under root, by path."""
    prints = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                prints[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return prints


# (script, arguments with {root} for the module's folder, what the one line must say)
CASES = [
    # train.py: the optimizer and the model
    ('train', ['--learning_rate=-1'], r'--learning_rate=-1.0 must be'),
    ('train', ['--dropout=2.0'], r'--dropout=2.0 must be'),
    ('train', ['--beta1=1.5'], r'--beta1=1.5 must be'),
    ('train', ['--beta2=-0.1'], r'--beta2=-0.1 must be'),
    ('train', ['--model_type=lstm', '--n_hidden=-4'], r'--n_hidden=-4 must be'),
    ('train', ['--grad_clip=-1'], r'--grad_clip=-1.0 must be'),
    ('train', ['--min_lr=-0.1'], r'--min_lr=-0.1 must be'),
    ('train', ['--warmup_iters=-5'], r'--warmup_iters=-5 must be'),
    ('train', ['--lr_decay_iters=-1'], r'--lr_decay_iters=-1 must be'),
    ('train', ['--weight_decay=-0.1'], r'--weight_decay=-0.1 must be'),
    ('train', ['--max_iters=-1'], r'--max_iters=-1 must be'),
    ('train', ['--batch_size=0'], r'--batch_size=0 must be'),
    ('train', ['--n_embd=30', '--n_head=4'], r'--n_embd=30 must be a multiple of --n_head=4'),
    ('train', ['--learning_rate=nan'], r'--learning_rate wants float'),
    ('train', ['--windowing=diagonal'], r'windowing=diagonal'),
    ('train', ['--model_type=rnn'], r'--model_type=rnn'),
    ('train', ['--device=gpu0'], r'--device=gpu0'),
    ('train', ['--dtype=float8'], r'--dtype=float8'),
    ('train', ['--compile=maybe'], r'--compile=maybe'),
    ('train', ['--seed=-1'], r'--seed=-1 must be'),
    ('train', ['--max_memory=lots'], r'--max_memory=lots is not a size'),
    ('train', ['--eval_tokens=0'], r'--eval_tokens=0 must be'),
    ('train', ['--batch_sise=8'], r'did you mean batch_size'),
    ('train', ['--batch_size'], r'has no value'),
    ('train', ['--batch_size=eight'], r'--batch_size wants int'),
    ('train', ['{root}/calls.py'], r'calls.py:1: only assignments of literal values'),
    ('train', ['{root}/imports.py'], r'imports.py:1: only assignments of literal values'),
    ('train', ['{root}/unknown_key.py'], r'unknown config key batch_sise'),
    ('train', ['{root}/missing_config.py'], r'missing_config.py not found'),
    # train.py: the files it reads and writes
    ('train', ['--data_dir={root}/nothing_here'], r'prepare\.py'),
    ('train', ['--data_dir={root}/wrong_meta', '--out_dir={root}/new_out'], r'meta\.json'),
    ('train', ['--data_dir={root}/bad_tokenizer', '--out_dir={root}/new_out'],
     r"bad_tokenizer/meta\.json holds a tokenizer that cannot be built \(unknown tokenizer kind 'charz'.*python prepare\.py"),
    ('train', ['--data_dir={root}/data', '--out_dir={root}/empty_out', '--init_from=resume'], r'nothing to resume'),
    ('train', ['--data_dir={root}/data', '--out_dir={root}/out'], r'already holds a trained model'),
    ('train', ['--data_dir={root}/data', '--out_dir={root}/a_file'], r'a_file'),
    ('train', ['--data_dir={root}/data', '--out_dir={root}/new_out', '--block_size=100000'], r'too small'),
    # sample.py
    ('sample', ['--out_dir={root}/out', '--temperature=-1'], r'--temperature'),
    ('sample', ['--out_dir={root}/out', '--top_k=-3'], r'--top_k'),
    ('sample', ['--out_dir={root}/out', '--top_p=1.5'], r'--top_p=1.5 must be'),
    ('sample', ['--out_dir={root}/out', '--out=sample.mp3'], r'--out=sample\.mp3'),
    ('sample', ['--out_dir={root}/out', '--num_samples=0'], r'--num_samples'),
    ('sample', ['--out_dir={root}/out', '--decode=fast'], r'--decode=fast must be eager, compile or aot'),
    ('sample', ['--out_dir={root}/out', '--device=tpu'], r'--device=tpu'),
    ('sample', ['--out_dir={root}/nothing_here'], r'nothing_here'),
    ('sample', ['--checkpoint={root}/garbage.pt'], r'garbage\.pt'),
    ('sample', ['--out_dir={root}/out', '--start=FILE:{root}/no_prompt.txt'], r'no_prompt\.txt'),
    ('sample', ['--out_dir={root}/out', '--start=FILE:{root}/prompt_dir'], r'prompt_dir'),
    ('sample', ['--out_dir={root}/out', '--program=200'], r'--program=200 must be'),
    # prepare.py
    ('prepare', ['{root}/new_data', '--input={root}/corpus.txt', '--val_fraction=1.5'], r'--val_fraction=1.5'),
    ('prepare', ['{root}/new_data', '--input={root}/corpus.txt', '--tokenizer=sentencepiece'], r'sentencepiece'),
    ('prepare', ['{root}/new_data', '--input={root}/no_corpus.txt'], r'no_corpus\.txt'),
    ('prepare', ['{root}/new_data', '--source=klingon'], r'klingon'),
    ('prepare', ['{root}/new_data', '--input={root}/corpus.txt', '--batch_size=0'], r'--batch_size=0 must be'),
    ('prepare', ['{root}/new_data', 'extra_argument'], r'extra_argument'),
    # bench.py and ablate.py
    ('bench', ['--sections=train,speed'], r'unknown speed'),
    ('bench', ['--repeats=0'], r'--repeats=0 must be'),
    ('bench', ['--generate_decodes=jit'], r'--generate_decodes=jit: unknown jit'),
    ('bench', ['--out={root}/no_dir/bench.json'], r'no_dir'),
    ('bench', ['--model=rnn'], r'--model=rnn'),
    ('bench', ['--memory_models=gpt:1:2'], r'memory_models'),
    ('bench', ['--max_memory=0MB'], r'--max_memory=0MB'),
    ('bench', ['--recipe_config={root}/none.py'], r'--recipe_config=.*none.py: no such file'),
    ('bench', ['--recipe_config=config/train_akjv_5min.txt'], r'recipe_config'),
    ('ablate', ['--data_dir={root}/data', '--what=everything'], r'--what=everything'),
    ('ablate', ['--data_dir={root}/data', '--what=sweep', '--sweep=learning_rate'], r'must be KEY=V1,V2'),
    ('ablate', ['--data_dir={root}/data', '--what=sweep', '--sweep=lr=1e-3,3e-3'], r'--lr'),
    ('ablate', ['--data_dir={root}/data', '--what=sweep', '--sweep=learning_rate=-1'], r'--learning_rate=-1'),
    ('ablate', ['--data_dir={root}/data', '--what=recipe', '--recipe_base=relu2,swiglu'], r'both set mlp'),
    ('ablate', ['--data_dir={root}/data', '--what=recipe', '--recipe_changes=alibi'], r'alibi'),
    ('ablate', ['--data_dir={root}/data', '--what=recipe', '--model_type=lstm'], r'--model_type=lstm has none'),
    ('ablate', ['--data_dir={root}/data', '--jobs=64'], r'--jobs=64'),
    # serve.py
    ('serve', ['--out_dir={root}/out', '--port=70000'], r'--port=70000'),
    ('serve', ['--out_dir={root}/out', '--decode=jit'], r'--decode=jit must be auto, eager, compile or aot'),
    ('serve', ['--out_dir={root}/no_out'], r'no_out'),
    ('serve', ['--out_dir={root}/out', '--queue=0'], r'--queue=0 must be positive'),
]


@pytest.mark.parametrize('script, argv, says', CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(world, capsys, script, argv, says):
    before = fingerprint(world)
    argv = [arg.format(root=world) for arg in argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: SCRIPTS[script].main(argv))
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.replace('\r', '\n').splitlines() if line.strip()]
    assert exit_info.value.code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr
    assert 'Traceback' not in stderr
    assert re.search(says, lines[0]), lines[0]
    after = fingerprint(world)
    assert {path: after.get(path) for path in before} == before  # every good file as it was
    assert set(after) == set(before)  # and nothing new (no half-written files, no stray directories)


def test_the_sweep_covers_every_script_and_forty_inputs():
    assert len(CASES) >= 40 and {script for script, _, _ in CASES} == set(SCRIPTS)

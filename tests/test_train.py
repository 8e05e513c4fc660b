import os
import random

import numpy as np
import pytest
import torch

from configurator import UserError
from conftest import TINY_GPT, TINY_LSTM, metrics, without_timing
from slm import checkpoint, optim, training
import train


@pytest.mark.parametrize('model_args', [TINY_GPT, TINY_LSTM, [*TINY_GPT, '--windowing=packed']],
                         ids=['gpt', 'lstm', 'gpt-packed'])
def test_loss_falls(char_data, tmp_path, model_args):
    out_dir = str(tmp_path / 'out')
    result = train.main([f'--data_dir={char_data}', f'--out_dir={out_dir}', '--max_iters=60',
                         '--eval_interval=60', '--learning_rate=3e-3', *model_args])
    evals = [r for r in metrics(out_dir) if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 60]
    # from uniform guessing over ~50 characters (ln 50 = 3.9 nats) to well below it
    assert evals[0]['val_loss'] > 3.5 and evals[1]['val_loss'] < evals[0]['val_loss'] - 0.8
    assert result['val_loss'] == evals[1]['val_loss']
    assert 1 < result['val_bits_per_char'] < evals[0]['val_bits_per_char']
    steps = [r for r in metrics(out_dir) if 'train_loss' in r]
    assert len(steps) == 12 and all(r['tokens_per_sec'] > 0 for r in steps)
    assert steps[-1]['train_loss'] < steps[0]['train_loss']
    assert os.path.getsize(os.path.join(out_dir, 'loss.png')) > 1000


def test_checkpoint_is_self_contained_and_loads_weights_only(tiny_checkpoint):
    ckpt = torch.load(os.path.join(tiny_checkpoint, 'ckpt.pt'), weights_only=True)
    assert ckpt['format_version'] == checkpoint.FORMAT_VERSION and ckpt['iter_num'] == 40
    assert ckpt['model_args']['model_type'] == 'gpt' and ckpt['model_args']['n_embd'] == 32
    assert ckpt['tokenizer']['kind'] == 'char' and ckpt['config']['max_iters'] == 40
    assert not any(k.startswith('_orig_mod.') for k in ckpt['model'])
    assert ckpt['optimizer']['state'] and ckpt['val_loss'] >= ckpt['best_val_loss']
    model = checkpoint.restore_model(ckpt)
    assert torch.equal(model.wte.weight, ckpt['model']['wte.weight'])
    best = torch.load(os.path.join(tiny_checkpoint, 'best.pt'), weights_only=True)
    assert best['val_loss'] == best['best_val_loss'] == ckpt['best_val_loss']


@pytest.mark.parametrize('model_args', [
    TINY_GPT, TINY_LSTM, [*TINY_GPT, '--windowing=packed'], [*TINY_GPT, '--windowing=sliding', '--num_workers=1'],
    [*TINY_LSTM, '--windowing=packed'], [*TINY_LSTM, '--windowing=lines_slide'],
], ids=['gpt', 'lstm', 'gpt-packed', 'gpt-sliding', 'lstm-packed', 'lstm-lines'])
def test_resume_continues_exactly(char_data, tmp_path, model_args, monkeypatch):
    # Code that draws from the global python and numpy RNGs (here a jittered learning rate; dropout draws
    # from torch's) resumes exactly only if the checkpoint carries their states.
    schedule = optim.learning_rate
    monkeypatch.setattr(training, 'learning_rate', lambda it, cfg: schedule(it, cfg) * (0.5 + random.random()) *
                        (0.5 + np.random.rand()))
    # the same schedule in both: the first run of the split pair stops at 10 of its 20 planned steps
    common = [f'--data_dir={char_data}', '--eval_interval=10', '--dropout=0.1', '--lr_decay_iters=20',
              *model_args]
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    train.main([*common, f'--out_dir={straight}', '--max_iters=20'])
    train.main([*common, f'--out_dir={split}', '--max_iters=10'])
    halfway = torch.load(os.path.join(split, 'ckpt.pt'), weights_only=True)
    train.main([*common, f'--out_dir={split}', '--max_iters=20', '--init_from=resume'])
    resumed = torch.load(os.path.join(split, 'ckpt.pt'), weights_only=True)

    assert halfway['iter_num'] == 10 and resumed['iter_num'] == 20
    assert without_timing(metrics(split)) == without_timing(metrics(straight))  # every logged loss
    reference = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=True)
    for name, tensor in reference['model'].items():
        assert torch.equal(tensor, resumed['model'][name]), name
    moments = reference['optimizer']['state'][0]['exp_avg'], resumed['optimizer']['state'][0]['exp_avg']
    assert torch.equal(*moments)
    assert resumed['optimizer']['state'][0]['step'] == 20


def test_resume_with_another_windowing_is_refused(char_data, tmp_path):
    args = [f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--eval_interval=2', *TINY_GPT]
    train.main([*args, '--max_iters=2'])
    with pytest.raises(UserError, match=r'trained with --windowing=random: resume with that windowing'):
        train.main([*args, '--max_iters=4', '--init_from=resume', '--windowing=packed'])
    train.main([*args, '--max_iters=4', '--init_from=resume', '--windowing=random'])  # auto was random


def test_resume_says_which_model_options_given_on_the_command_line_it_ignores(char_data, tmp_path, capsys):
    args = [f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--eval_interval=2', *TINY_GPT]
    train.main([*args, '--max_iters=2'])
    capsys.readouterr()
    train.main([*args, '--max_iters=4', '--init_from=resume', '--n_layer=7', '--dropout=0.0'])  # dropout: as saved
    lines = [line for line in capsys.readouterr().out.splitlines() if 'ignored' in line]
    assert lines == [f"--n_layer=7 ignored: {tmp_path / 'ckpt.pt'} continues its own model (n_layer=2); train"
                     f" another into a new --out_dir"]
    assert checkpoint.load(str(tmp_path / 'ckpt.pt'))['model_args']['n_layer'] == 2


def test_unknown_windowing_names_the_choices(char_data, tmp_path):
    with pytest.raises(UserError, match=r'unknown --windowing=diagonal: choose auto or one of random, sliding,'):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', *TINY_GPT, '--windowing=diagonal'])


def test_resume_needs_a_checkpoint(char_data, tmp_path):
    with pytest.raises(UserError, match=r'nothing to resume in .* \(no ckpt.pt or best.pt\): train from scratch'):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--init_from=resume', *TINY_GPT])


def test_block_size_longer_than_val_split(char_data, tmp_path):
    with pytest.raises(UserError, match='the val split'):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', *TINY_GPT, '--block_size=5000'])


def test_unprepared_data_dir_names_the_prepare_command(tmp_path):
    with pytest.raises(UserError, match=r'run `python prepare.py .*/nothing` first'):
        train.main([f'--data_dir={tmp_path}/nothing', f'--out_dir={tmp_path}/out'])


def test_unwritable_out_dir_fails_before_training(char_data, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    with pytest.raises(UserError, match='cannot write to out_dir'):
        train.main([f'--data_dir={char_data}', f'--out_dir={blocker}/out', *TINY_GPT])


def test_learning_rate_schedule():
    cfg = training.TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert optim.learning_rate(0, cfg) == pytest.approx(0.1)
    assert optim.learning_rate(9, cfg) == pytest.approx(1.0)
    assert optim.learning_rate(60, cfg) == pytest.approx(0.55)
    assert optim.learning_rate(110, cfg) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices(char_data):
    from model import ModelArgs, build_model
    model = build_model(ModelArgs(vocab_size=20, n_layer=1, n_head=2, n_embd=8, bias=True))
    decay, no_decay = optim.make_optimizer(model, training.TrainConfig(optimizer='adamw'), 'cpu').param_groups
    assert all(p.dim() == 2 for p in decay['params']) and decay['weight_decay'] == 0.1
    assert all(p.dim() == 1 for p in no_decay['params']) and no_decay['weight_decay'] == 0.0


def test_bpe_model_trains_and_checkpoints_the_gpt2_tokenizer(bpe_checkpoint):
    evals = [r for r in metrics(bpe_checkpoint) if 'val_loss' in r]
    # from uniform over GPT-2's 50,257 ids (ln 50257 = 10.8 nats) to well below it
    assert [r['iter'] for r in evals] == [0, 15]
    assert evals[0]['val_loss'] > 10 and evals[1]['val_loss'] < evals[0]['val_loss'] - 1.5
    ckpt = torch.load(os.path.join(bpe_checkpoint, 'ckpt.pt'), weights_only=True)
    assert ckpt['tokenizer']['kind'] == 'bpe' and ckpt['model_args']['vocab_size'] == 50257
    assert ckpt['model_args']['pad_id'] is None  # GPT-2 has no padding token: every target counts
    assert 0.1 < ckpt['data']['val_tokens_per_char'] < 0.5  # a GPT-2 token spans a few characters of a story

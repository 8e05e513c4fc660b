"""Training in several processes: real torchrun launches (2 CPU processes, gloo) against single-process runs."""
import dataclasses
import io
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from configurator import UserError
from conftest import ONE_THREAD, ROOT, TINY_GPT, TINY_LSTM, metrics, temporaries, wait_until, without_timing
import sample
from slm import batching, checkpoint, distributed, generation, optim, reliability, training
import train


# AdamW where a run of 2 processes must be the single process's run to float32 rounding: Muon orthogonalizes in
# bfloat16, which agrees across process counts to about 1e-4 only (its own test below)
EXACT_GPT = [*TINY_GPT, '--optimizer=adamw']


from model import ModelArgs, build_model
from slm.loss import BatchLoss


TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
            os.path.join(ROOT, 'train.py')]


def torchrun(*args):
    """Run train.py in 2 processes under torchrun to the end; return the CompletedProcess."""
    done = subprocess.run([*TORCHRUN, *args], cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    return done


def largest_difference(weights_a, weights_b):
    assert weights_a.keys() == weights_b.keys()
    return max((weights_a[name] - weights_b[name]).abs().max().item() for name in weights_a)


def assert_same_run(out_a, out_b, weights_tolerance):
    """Every logged loss equal to float32 rounding, and the last weights to weights_tolerance."""
    records_a, records_b = without_timing(metrics(out_a)), without_timing(metrics(out_b))
    assert [r['iter'] for r in records_a] == [r['iter'] for r in records_b]
    for a, b in zip(records_a, records_b):
        assert a.keys() == b.keys() and all(a[key] == pytest.approx(b[key], rel=2e-6) for key in a), (a, b)
    ckpt_a, ckpt_b = (checkpoint.load(os.path.join(out, 'ckpt.pt')) for out in (out_a, out_b))
    assert ckpt_a['iter_num'] == ckpt_b['iter_num']
    assert largest_difference(ckpt_a['model'], ckpt_b['model']) < weights_tolerance


def test_two_processes_take_the_single_process_step_and_checkpoints_move_between_them(char_data, tmp_path):
    # dropout off (TINY_GPT), 2 micro-steps per step: process r takes micro-step r of each of the single's steps
    common = [f'--data_dir={char_data}', *EXACT_GPT, '--gradient_accumulation_steps=2', '--log_interval=1',
              '--eval_interval=1', '--learning_rate=3e-3', '--lr_decay_iters=6']
    shared, single = tmp_path / 'shared', tmp_path / 'single'
    launch = torchrun(*common, f'--out_dir={shared}', '--max_iters=1')
    assert launch.stdout.count('in each of 2 processes; 512 tokens per iteration') == 1  # process 0 speaks
    train.main([*common, f'--out_dir={single}', '--max_iters=1'])

    # the first step: the same loss and, to float32 rounding, the same weights
    [step] = [r for r in metrics(shared) if 'train_loss' in r]
    [single_step] = [r for r in metrics(single) if 'train_loss' in r]
    first, single_first = checkpoint.load(shared / 'ckpt.pt'), checkpoint.load(single / 'ckpt.pt')
    checkpoint.seed_everything(1337)
    initial = build_model(ModelArgs(**first['model_args'])).state_dict()
    print(f"first step: loss {step['train_loss']!r} in 2 processes, {single_step['train_loss']!r} in one;"
          f" weights differ by at most {largest_difference(first['model'], single_first['model']):.3g},"
          f" the step moved them by up to {largest_difference(first['model'], initial):.3g}")
    assert step['train_loss'] == pytest.approx(single_step['train_loss'], rel=1e-6)
    assert largest_difference(first['model'], single_first['model']) < 1e-6
    assert largest_difference(first['model'], initial) > 1e-4  # the tolerance is far below what a step changes
    assert first['model'].keys() == initial.keys()  # the plain module's names: no 'module.' prefix
    assert len(first['rng']['other_processes']) == 1 and single_first['rng']['other_processes'] == []

    # 2 processes' checkpoint resumes in 1, and 1's in 2 again: the run goes on as one process alone runs it
    train.main([*common, f'--out_dir={shared}', '--max_iters=3', '--init_from=resume'])
    launch = torchrun(*common, f'--out_dir={shared}', '--max_iters=6', '--init_from=resume')
    assert f"resuming {shared / 'ckpt.pt'} at iteration 3" in launch.stdout
    train.main([*common, f'--out_dir={single}', '--max_iters=6', '--init_from=resume'])
    assert_same_run(shared, single, weights_tolerance=1e-5)
    val_losses = [r['val_loss'] for r in metrics(shared) if 'val_loss' in r]
    assert len(val_losses) == 7 and val_losses[-1] < val_losses[0] - 0.3  # the loss falls
    assert temporaries(shared) == []

    # sample.py generates from the 2 processes' checkpoint
    [text] = sample.sample(generation.SampleConfig(checkpoint=str(shared / 'ckpt.pt'), start='And God',
                                               max_new_tokens=20, device='cpu'), io.StringIO())
    assert text.startswith('And God') and len(text) > len('And God') + 10  # (<s> reads as nothing)


@pytest.mark.parametrize('model_args', [[*EXACT_GPT, '--windowing=packed'],
                                        [*TINY_LSTM, '--windowing=lines_slide']],
                         ids=['gpt-packed-by-row', 'lstm-lines-by-micro-step'])
def test_two_processes_share_every_windowing_as_its_batch_source_says(char_data, tmp_path, model_args):
    # packed rows continue from batch to batch: shared by row, even for the GPT; lines windows do not: shared by
    # micro-step, even for the LSTM. Either way the run is the single process's, evaluations included.
    common = [f'--data_dir={char_data}', *model_args, '--gradient_accumulation_steps=2', '--log_interval=1',
              '--eval_interval=2', '--eval_tokens=768', '--max_iters=4', '--learning_rate=3e-3']
    torchrun(*common, f'--out_dir={tmp_path / "shared"}')
    train.main([*common, f'--out_dir={tmp_path / "single"}'])
    assert_same_run(tmp_path / 'shared', tmp_path / 'single', weights_tolerance=1e-5)


def test_two_processes_train_the_modern_recipe_with_muon_as_one_does(char_data, tmp_path):
    # Muon orthogonalizes each update in bfloat16 (torch's Newton-Schulz): the float32 rounding by which two
    # processes' averaged gradient differs from one's can flip a bfloat16 digit, so the runs agree to about 1e-4,
    # not to float32 rounding as with AdamW (above)
    common = [f'--data_dir={char_data}', *TINY_GPT, training.MODERN_RECIPE, '--gradient_accumulation_steps=2',
              '--log_interval=1', '--eval_interval=2', '--eval_tokens=768', '--max_iters=4']
    shared, single = tmp_path / 'shared', tmp_path / 'single'
    assert 'Muon + ' in torchrun(*common, f'--out_dir={shared}').stdout
    train.main([*common, f'--out_dir={single}'])
    records = [without_timing(metrics(out)) for out in (shared, single)]
    assert [r['iter'] for r in records[0]] == [r['iter'] for r in records[1]]
    for a, b in zip(*records):
        assert a.keys() == b.keys() and all(a[key] == pytest.approx(b[key], rel=1e-4) for key in a), (a, b)
    ckpt_shared, ckpt_single = (checkpoint.load(os.path.join(out, 'ckpt.pt')) for out in (shared, single))
    assert largest_difference(ckpt_shared['model'], ckpt_single['model']) < 1e-3
    assert ckpt_shared['optimizer'].keys() == {'muon', 'adamw'}


def test_sigterm_to_torchrun_saves_one_checkpoint_from_which_the_lstm_continues(char_data, tmp_path):
    # the LSTM's 8 streams: process 0 carries rows 0-3, process 1 rows 4-7, each through both micro-steps
    args = [f'--data_dir={char_data}', *TINY_LSTM, '--gradient_accumulation_steps=2', '--eval_interval=4',
            '--log_interval=3', '--eval_tokens=256', '--lr_decay_iters=100']
    out_dir, straight = tmp_path / 'stopped', tmp_path / 'straight'
    with open(tmp_path / 'out', 'w') as out, open(tmp_path / 'err', 'w') as err:
        # 2000 steps, not more: they would outlive a test that failed to stop them (its processes have sessions
        # of their own) by a minute or two at most
        process = subprocess.Popen([*TORCHRUN, *args, '--max_iters=2000', f'--out_dir={out_dir}'], cwd=ROOT,
                                   env=ONE_THREAD, stdout=out, stderr=err)
    try:
        assert wait_until(lambda: any('train_loss' in r for r in metrics(out_dir)), process)  # in the hot loop
        process.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to each process
        process.wait(timeout=300)
    finally:
        process.kill()
    err = (tmp_path / 'err').read_text()
    [line] = [line for line in err.splitlines() if line.startswith('SIGTERM: stopped')]  # process 0 alone
    stopped = re.fullmatch(r"SIGTERM: stopped at iteration (\d+), saved (.+)\. Resume with: (.+)", line)
    assert stopped and stopped[2] == str(out_dir / 'ckpt.pt')
    assert stopped[3].startswith('torchrun --standalone --nproc_per_node=2 train.py --data_dir=')
    ckpt, stopped_at = checkpoint.load(stopped[2]), int(stopped[1])
    assert ckpt['iter_num'] == stopped_at > 0 and temporaries(out_dir) == []
    assert [h.shape for h in ckpt['rng']['hidden']] == [(2, 8, 32)] * 2  # the state of every stream, whole

    # one process continues it where the two would have gone: as a run of one process alone goes
    end = stopped_at + 3
    train.main([*args, f'--out_dir={out_dir}', f'--max_iters={end}', '--init_from=resume'])
    train.main([*args, f'--out_dir={straight}', f'--max_iters={end}'])
    assert_same_run(out_dir, straight, weights_tolerance=1e-5)


def test_each_model_shares_its_step_out_in_its_own_way():
    gpt = training.TrainConfig(model_type='gpt', gradient_accumulation_steps=8, batch_size=6)
    assert [distributed.micro_steps_per_process(gpt, n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(UserError, match=r'--gradient_accumulation_steps=8 cannot be shared evenly by 3 processes:'
                                        r' make it a multiple of 3'):
        distributed.micro_steps_per_process(gpt, 3)
    lstm = training.TrainConfig(model_type='lstm', gradient_accumulation_steps=3, batch_size=8)
    assert [distributed.micro_steps_per_process(lstm, n) for n in (1, 2, 4, 8)] == [3, 3, 3, 3]  # rows are shared
    with pytest.raises(UserError, match=r'--batch_size=8 rows of streams batches cannot be shared evenly by 3'
                                        r' processes'):
        distributed.micro_steps_per_process(lstm, 3)
    # it is the windowing that decides: rows whose batches continue each other (streams, packed) are shared out
    packed_gpt = dataclasses.replace(gpt, windowing='packed', batch_size=8)
    assert [distributed.micro_steps_per_process(packed_gpt, n) for n in (1, 2, 4, 8)] == [8, 8, 8, 8]
    lines_lstm = dataclasses.replace(lstm, windowing='lines_left', gradient_accumulation_steps=4)
    assert [distributed.micro_steps_per_process(lines_lstm, n) for n in (1, 2, 4)] == [4, 2, 1]


def test_world_from_torchrun_environment(monkeypatch):
    assert distributed.World.from_environment() == distributed.World()  # plain python: one process
    for key, value in dict(RANK='5', LOCAL_RANK='1', WORLD_SIZE='8', LOCAL_WORLD_SIZE='4').items():
        monkeypatch.setenv(key, value)
    world = distributed.World.from_environment()
    assert (world.rank, world.local_rank, world.size, world.is_distributed) == (5, 1, 8, True)
    assert not world.is_main
    assert world.launcher().startswith('torchrun --nnodes=2 --nproc_per_node=4 ')
    assert world.device_for('cpu') == 'cpu'
    with pytest.raises(UserError, match=r'--device=cuda:1 cannot be shared by torchrun\'s processes'):
        world.device_for('cuda:1')
    single_node = distributed.World(rank=1, local_rank=1, size=2, local_size=2, is_distributed=True)
    assert reliability.resume_command(training.TrainConfig(), ['--max_iters=5'], single_node.launcher()) == \
        'torchrun --standalone --nproc_per_node=2 train.py --max_iters=5 --init_from=resume'


def test_gradients_are_averaged_once_per_step_in_the_last_micro_step(monkeypatch):
    # a process group of one process, in this process: DDP still runs its all-reduce, through a hook we count
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', LOCAL_WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    world = distributed.World.from_environment()
    with world.join('cpu'):
        model = build_model(ModelArgs(vocab_size=50, n_layer=1, n_head=2, n_embd=8, block_size=8))
        ddp = world.wrap(model)
        synced_backwards = []

        def count_and_average(state, bucket):
            synced_backwards.append(bucket.index())
            return allreduce_hook(state, bucket)
        ddp.register_comm_hook(None, count_and_average)
        tokens = torch.randint(0, 50, (1000,)).numpy()
        batch_loss = BatchLoss(ddp, batching.RandomWindows(tokens, 2, 8, seed=0), 'cpu', torch.float32, -100)
        cfg = training.TrainConfig(gradient_accumulation_steps=3, optimizer='adamw')
        optimizer, scaler = optim.make_optimizer(model, cfg, 'cpu'), torch.amp.GradScaler(enabled=False)
        for _ in range(2):
            optim.train_step(batch_loss, optimizer, scaler, cfg, 3)
        assert synced_backwards == [0, 0]  # one bucket, once per step of 3 micro-steps
        assert distributed.unwrap(ddp) is model
    assert not torch.distributed.is_initialized()  # left on the way out

"""Reliability: signals, SIGKILL at any moment, non-finite steps, damaged checkpoints and data, full disks.

The kill tests run the real scripts in subprocesses; tests/killpoint.py lands a kill at an exact point
(halfway through a checkpoint write, say), and the others land at random moments from outside.
"""
import errno
import itertools
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from configurator import UserError
from conftest import ROOT, TINY_GPT, launch, metrics, output, temporaries, wait_until, without_timing
import prepare
import sample
from slm import checkpoint, loss, storage, training
import train


# A tiny model gains nothing from a second intra-op thread, and on a busy machine the two threads' spin-waits
# for each other make its steps up to 50 times slower: one thread here and in the processes started here.


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_weights(path_a, path_b):
    a, b = checkpoint.load(path_a), checkpoint.load(path_b)
    assert a['iter_num'] == b['iter_num']
    for name, tensor in a['model'].items():
        assert torch.equal(tensor, b['model'][name]), name


def crash_args(char_data, max_iters):
    # evaluations every 4 steps and log lines every 3, so that checkpoints fall inside a log window too
    return [f'--data_dir={char_data}', *TINY_GPT, '--dropout=0.1', '--eval_interval=4', '--log_interval=3',
            '--eval_tokens=512', '--lr_decay_iters=100', f'--max_iters={max_iters}']


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_signal_saves_a_checkpoint_and_prints_the_command_that_resumes_exactly(char_data, tmp_path, signum):
    out_dir = tmp_path / 'stopped'
    process = launch(tmp_path, 'run', 'train.py', *crash_args(char_data, 100_000), f'--out_dir={out_dir}')
    try:
        assert wait_until(lambda: any('train_loss' in r for r in metrics(out_dir)), process)  # in the hot loop
        process.send_signal(signum)
        assert process.wait(timeout=300) == 128 + signum
    finally:
        process.kill()  # a no-op once it has exited; else it would train 100,000 steps
    err = output(tmp_path, 'run', 'err')
    assert f"{signum.name}: finishing this step, then saving a checkpoint" in err
    stopped = re.fullmatch(rf"{signum.name}: stopped at iteration (\d+), saved (.+)\. Resume with: (.+)",
                           err.strip().splitlines()[-1])
    assert stopped and stopped[2] == str(out_dir / 'ckpt.pt')
    stopped_at, command = int(stopped[1]), shlex.split(stopped[3])
    assert checkpoint.load(stopped[2])['iter_num'] == stopped_at > 0

    # the printed command continues the run as if it had never stopped
    assert command[:2] == ['python', 'train.py'] and command[-1] == '--init_from=resume'
    end = stopped_at + 4
    train.main([*command[2:], f'--max_iters={end}'])
    train.main([*crash_args(char_data, end), f'--out_dir={tmp_path / "straight"}'])
    assert_same_weights(out_dir / 'ckpt.pt', tmp_path / 'straight' / 'ckpt.pt')
    assert without_timing(metrics(out_dir)) == without_timing(metrics(tmp_path / 'straight'))


def test_sigkill_anywhere_leaves_checkpoints_that_load_and_resume_exactly(char_data, tmp_path):
    """Kill one training run again and again, each time resuming from what is on disk; the end result must
    be the uninterrupted run's, bit for bit."""
    args = crash_args(char_data, 24)
    straight, out_dir = tmp_path / 'straight', tmp_path / 'killed'
    train.main([*args, f'--out_dir={straight}'])
    ckpt_path, best_path = out_dir / 'ckpt.pt', out_dir / 'best.pt'

    # Exact points first. Saves go best.pt (when the val loss improved), then ckpt.pt, at iterations 0, 4, ...
    planned = [('checkpoint-half-written', 3, 'scratch'),  # best.pt of iteration 4, half written
               ('checkpoint-start', 2, 'resume')]  # between best.pt and ckpt.pt of iteration 4
    rng = np.random.default_rng(7)
    kills, last_iter = [], 0
    for run in range(len(planned) + 3):
        name = f'run{run}'
        if run < len(planned):
            point, n, init_from = planned[run]
            process = launch(tmp_path, name, 'tests/killpoint.py', point, str(n), 'train', *args,
                             f'--out_dir={out_dir}', f'--init_from={init_from}')
            assert process.wait(timeout=300) == -signal.SIGKILL, output(tmp_path, name, 'err')
        else:  # from outside, at a random moment after a random number of further steps
            point = 'random'
            process = launch(tmp_path, name, 'train.py', *args, f'--out_dir={out_dir}', '--init_from=resume')
            target = last_iter + int(rng.integers(1, 6))
            # its metrics.jsonl holds the killed run's lines until it has been cut back to the checkpoint
            assert wait_until(lambda: 'parameters on cpu' in output(tmp_path, name), process)
            reached = wait_until(lambda: max((r['iter'] for r in metrics(out_dir)), default=0) >= target, process)
            assert reached, output(tmp_path, name, 'err')
            time.sleep(rng.uniform(0, 0.05))
            process.kill()
            process.wait(timeout=300)
        if run:  # it resumed from what the previous kill left
            assert f"resuming {ckpt_path} at iteration {last_iter} " in output(tmp_path, name)
        ckpt, best = checkpoint.load(ckpt_path), checkpoint.load(best_path)  # whole, whatever the moment
        assert ckpt['iter_num'] >= last_iter and best['best_val_loss'] <= ckpt['best_val_loss']
        last_iter = ckpt['iter_num']
        kills.append((point, ckpt['iter_num'], best['iter_num'],
                      [re.sub(r'\d+$', 'PID', name) for name in temporaries(out_dir)]))

    print(f"{len(kills)} kills, each resumed (point, ckpt.pt and best.pt iterations, temporaries):", *kills,
          sep='\n  ')
    assert kills[0][1:] == (0, 0, ['.best.pt.tmp-PID'])  # half a best.pt beside the old files
    assert kills[1][1:] == (0, 4, [])  # the temporary cleaned up; best.pt ahead of ckpt.pt, so resuming redoes
    # the evaluation that wrote it
    with open(out_dir / 'metrics.jsonl', 'a') as f:
        f.write('{"iter": 9, "lr": 0.0')  # what a kill halfway through appending a line leaves
    train.main([*args, f'--out_dir={out_dir}', '--init_from=resume'])  # the last resume runs to the end
    assert temporaries(out_dir) == []
    assert_same_weights(ckpt_path, straight / 'ckpt.pt')
    assert_same_weights(best_path, straight / 'best.pt')
    assert without_timing(metrics(out_dir)) == without_timing(metrics(straight))


def poison_loss(monkeypatch, at_iter):
    """Make the training loss of iteration at_iter NaN (evaluation runs without gradients and is spared)."""
    real_loss, training_calls = loss.lm_loss, itertools.count()

    def lm_loss(logits, targets, ignore_index, reduction='mean'):
        loss = real_loss(logits, targets, ignore_index, reduction)
        return loss * torch.nan if torch.is_grad_enabled() and next(training_calls) == at_iter else loss
    monkeypatch.setattr(loss, 'lm_loss', lm_loss)


def nonfinite_args(char_data, out_dir, *more):
    return [f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--max_iters=12', '--eval_interval=4',
            '--log_interval=4', *more]


def test_nonfinite_step_stops_without_touching_the_good_checkpoint(char_data, tmp_path, monkeypatch):
    poison_loss(monkeypatch, at_iter=6)
    with pytest.raises(UserError, match=r"non-finite loss or gradients at iteration 6: training stopped, nothing"
                                        r" saved; .*ckpt.pt \(iteration 4\) is the last good checkpoint: resume"):
        train.main(nonfinite_args(char_data, tmp_path))
    ckpt = checkpoint.load(tmp_path / 'ckpt.pt')
    assert ckpt['iter_num'] == 4 and all(torch.isfinite(t).all() for t in ckpt['model'].values())
    assert max(r['iter'] for r in metrics(tmp_path)) == 4  # nothing logged from the bad window


def test_nonfinite_step_is_skipped_with_on_nonfinite_skip(char_data, tmp_path, monkeypatch, capsys):
    poison_loss(monkeypatch, at_iter=6)
    train.main(nonfinite_args(char_data, tmp_path, '--on_nonfinite=skip'))
    assert 'iteration 6: non-finite loss or gradients, step skipped' in capsys.readouterr().out
    ckpt = checkpoint.load(tmp_path / 'ckpt.pt')
    assert ckpt['iter_num'] == 12 and all(torch.isfinite(t).all() for t in ckpt['model'].values())
    assert ckpt['optimizer']['state'][0]['step'] == 11  # 12 iterations, one of them skipped
    logged = {r['iter']: r for r in metrics(tmp_path) if 'lr' in r}
    assert logged[8]['skipped_steps'] == 1 and np.isfinite(logged[8]['train_loss'])
    assert 'skipped_steps' not in logged[4] and 'skipped_steps' not in logged[12]


def test_diverging_run_stops_in_either_mode(char_data, tmp_path):
    # lr 1e30: step 0 is finite but throws the weights to ~1e30, and from then on every loss is NaN
    diverging = ['--learning_rate=1e30', '--warmup_iters=0', '--max_iters=40']
    with pytest.raises(UserError, match=r'non-finite loss or gradients at iteration 1: .*\(iteration 0\)'):
        train.main(nonfinite_args(char_data, tmp_path / 'stop', *diverging))
    # skipping keeps weights that are finite, 1e30s, but useless: the evaluation stops the run
    with pytest.raises(UserError, match=r'non-finite validation loss at iteration 4: training stopped, nothing'
                                        r' saved; .*\(iteration 0\) is the last good checkpoint'):
        train.main(nonfinite_args(char_data, tmp_path / 'skip', *diverging, '--on_nonfinite=skip'))
    # and without an evaluation in sight, skipping gives up after 20 steps in a row
    with pytest.raises(UserError, match=r'20 steps in a row had non-finite losses or gradients \(iterations'
                                        r' 1-20\): training stopped; .*\(iteration 0\) is the last good'):
        train.main(nonfinite_args(char_data, tmp_path / 'skip-on', *diverging, '--on_nonfinite=skip',
                                  '--eval_interval=100'))
    with pytest.raises(UserError, match='--learning_rate=inf must be a finite number'):
        train.main(nonfinite_args(char_data, tmp_path, '--learning_rate=1e999'))


def test_nonfinite_weights_are_never_evaluated_or_saved(char_data, tmp_path, monkeypatch):
    # the weights can overflow in the optimizer step after a finite loss and gradient: the last line of defence
    real_step, steps = training.train_step, itertools.count()

    def step(batch_loss, *args):
        result = real_step(batch_loss, *args)
        if next(steps) == 7:
            next(batch_loss.model.parameters()).data[0, 0] = torch.inf
        return result
    monkeypatch.setattr(training, 'train_step', step)
    with pytest.raises(UserError, match=r'non-finite weights at iteration 8: training stopped, nothing saved;'
                                        r' .*ckpt.pt \(iteration 4\) is the last good checkpoint'):
        train.main(nonfinite_args(char_data, tmp_path, '--on_nonfinite=skip'))
    assert checkpoint.load(tmp_path / 'ckpt.pt')['iter_num'] == 4
    assert max(r['iter'] for r in metrics(tmp_path)) == 8 and 'val_loss' not in metrics(tmp_path)[-1]


def test_checkpoint_of_another_format_version_is_a_one_line_error(tiny_checkpoint, char_data, tmp_path):
    ckpt = torch.load(os.path.join(tiny_checkpoint, 'ckpt.pt'), weights_only=True)
    ckpt['format_version'] = 99
    ckpt['digest'] = checkpoint.digest(ckpt)
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    message = r'ckpt.pt has checkpoint format 99, this code reads format 2: use the matching version of the code'
    with pytest.raises(UserError, match=message):  # a UserError is one line on stderr and exit code 2
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--init_from=resume', *TINY_GPT])
    with pytest.raises(UserError, match=message):
        sample.main([f'--out_dir={tmp_path}'])


def test_checkpoint_with_changed_bytes_is_an_error_not_wrong_weights(tiny_checkpoint, char_data, tmp_path):
    data = open(os.path.join(tiny_checkpoint, 'ckpt.pt'), 'rb').read()
    (tmp_path / 'ckpt.pt').write_bytes(data)
    torch_only = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    for where in (0.25, 0.5, 0.75):
        damaged = bytearray(data)
        damaged[int(len(data) * where)] ^= 0x10  # one bit, size unchanged
        (tmp_path / 'ckpt.pt').write_bytes(damaged)
        with pytest.raises(UserError, match='is corrupted|is not a readable checkpoint'):
            checkpoint.load(tmp_path / 'ckpt.pt')
    # torch.load alone reads the middle one happily, with one weight changed; the digest is what catches it
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x10
    (tmp_path / 'ckpt.pt').write_bytes(damaged)
    changed = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert checkpoint.digest(changed) != checkpoint.digest(torch_only) == torch_only['digest']
    with pytest.raises(UserError, match=r'ckpt.pt is corrupted \(its contents do not match the sha256'):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--init_from=resume', *TINY_GPT])


def test_global_rng_states_survive_a_weights_only_round_trip(tmp_path):
    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random()
    checkpoint.seed_everything(5)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = checkpoint.global_rng_state('cpu')
    expected = draws()
    torch.save({'rng': state}, tmp_path / 'rng.pt')
    checkpoint.seed_everything(6)
    checkpoint.restore_global_rng_state(torch.load(tmp_path / 'rng.pt', weights_only=True)['rng'], 'cpu')
    assert draws() == expected


def test_corrupted_data_file_of_the_same_size_is_caught_by_its_checksum(char_data, tmp_path):
    data_dir = tmp_path / 'data'
    shutil.copytree(char_data, data_dir)
    tokens = np.fromfile(data_dir / 'train.bin', dtype=np.uint16)
    assert tokens[1000] != tokens[1001]
    tokens[[1000, 1001]] = tokens[[1001, 1000]]  # valid token ids still, and the size is unchanged
    tokens.tofile(data_dir / 'train.bin')
    args = [f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}', *TINY_GPT, '--max_iters=0']
    with pytest.raises(UserError, match=r'train.bin is corrupted \(its sha256 differs from the one in meta.json\):'
                                        r' run `python prepare.py .*/data` again'):
        train.main(args)
    train.main([*args, '--verify_data=False'])  # the size check alone cannot tell


def test_too_little_free_space_is_an_error_before_training(char_data, tiny_checkpoint, tmp_path, monkeypatch):
    out_dir = tmp_path / 'out'
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: real_disk_usage(path)._replace(free=500_000))
    with pytest.raises(UserError, match=r'out has 0.5 MiB free but the checkpoints \(ckpt.pt, best.pt\) need about'
                                        r' [\d.]+ MiB: free some space or choose another directory'):
        train.main([f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT])
    assert not os.path.exists(out_dir)  # the run made it and wrote nothing: released and gone again
    # the estimate is an upper bound of a real checkpoint of that model (the tiny one trained 40 steps)
    ckpt = checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))
    estimate = checkpoint.estimated_size(checkpoint.restore_model(ckpt), ckpt['tokenizer'])
    assert os.path.getsize(os.path.join(tiny_checkpoint, 'ckpt.pt')) < estimate


def test_disk_full_during_a_run_keeps_the_previous_checkpoint(char_data, tmp_path, monkeypatch):
    real_save, saves = torch.save, itertools.count()

    def save(obj, f, *args, **kwargs):
        if next(saves) == 2:
            f.write(b'the first bytes')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', save)
    with pytest.raises(UserError, match=r'cannot write .*\.pt at iteration 4: No space left on device; [\d,.]+ MiB'
                                        r' free on /.*: free some space there .*, then resume from .*ckpt.pt'
                                        r' \(iteration 0, the last checkpoint written\): python train.py'):
        train.main(nonfinite_args(char_data, tmp_path))
    assert checkpoint.load(tmp_path / 'ckpt.pt')['iter_num'] == 0 and temporaries(tmp_path) == []


def process_table():
    """{pid: (parent pid, start time, state)} of every process, from /proc (Linux)."""
    table = {}
    for name in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{name}/stat') as f:
                stat = f.read()
        except OSError:
            continue  # one that has just ended
        fields = stat[stat.rindex(')') + 2:].split()  # after "pid (command) ": state, ppid, ..., starttime
        table[int(name)] = (int(fields[1]), fields[19], fields[0])
    return table


def descendants(pid):
    """{pid: start time} of every process below pid (children, their children, ...)."""
    table, found, parents = process_table(), {}, {pid}
    while parents:
        parents = {child for child, (parent, _, _) in table.items() if parent in parents and child not in found}
        found.update((child, table[child][1]) for child in parents)
    return found


def survivors(processes, timeout):
    """Those of processes ({pid: start time}) still running (not a zombie) after up to timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        table = process_table()
        alive = {pid: start for pid, start in processes.items()
                 if pid in table and table[pid][1] == start and table[pid][2] != 'Z'}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def kill_all(processes):
    for pid, start in survivors(processes, 0).items():
        os.kill(pid, signal.SIGKILL)


def snapshot(data_dir):
    return {name: (data_dir / name).read_bytes() for name in os.listdir(data_dir) if '.tmp-' not in name}


def test_prepare_killed_at_any_moment_leaves_the_previous_files_or_none(tmp_path, verses):
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n'.join(verses * 25) + '\n', encoding='utf-8')  # 1 MB: encoding takes a while
    data_dir = tmp_path / 'data'
    new_args = [str(data_dir), f'--input={corpus}', '--tokenizer=word', '--num_proc=2']  # workers on any machine
    prepare.main([*new_args, '--tokenizer=char'])
    previous = snapshot(data_dir)
    start = time.monotonic()
    assert launch(tmp_path, 'whole', 'prepare.py', *new_args).wait(timeout=300) == 0
    duration, new = time.monotonic() - start, snapshot(data_dir)

    rng, outcomes, workers_killed = np.random.default_rng(3), [], 0
    for run, n in enumerate([1, 3, 5, 'workers', None, None, None]):
        for name in os.listdir(data_dir):
            os.remove(data_dir / name)
        for name, content in previous.items():
            (data_dir / name).write_bytes(content)
        if isinstance(n, int):  # the n-th of the five renames that publish the files, meta.json last
            process = launch(tmp_path, f'run{run}', 'tests/killpoint.py', 'rename', str(n), 'prepare', *new_args)
            process.wait(timeout=300)
        else:  # from outside: while its tokenizing workers run, or at a random moment of a run
            process, below = launch(tmp_path, f'run{run}', 'prepare.py', *new_args), {}
            try:
                if n == 'workers':  # two pool workers, and the manager process datasets starts after them
                    assert wait_until(lambda: len(descendants(process.pid)) >= 3, process)
                else:
                    time.sleep(rng.uniform(0, duration))
                below = descendants(process.pid)
                process.kill()
                process.wait(timeout=300)
                workers_killed += len(below)
                assert survivors(below, timeout=5) == {}, f"outlived the SIGKILL of prepare.py: {below}"
            finally:  # nothing of this test stays running, whatever failed
                below.update(descendants(process.pid))
                process.kill()
                kill_all(below)
        files = snapshot(data_dir)
        if storage.META not in files:
            outcome = 'none'
            with pytest.raises(UserError, match=r'meta.json not found: run `python prepare.py'):
                storage.load_meta(str(data_dir))
        else:
            storage.verify_checksums(str(data_dir), storage.load_meta(str(data_dir)))
            outcome = 'previous' if files == previous else 'new'
            assert files == (previous if outcome == 'previous' else new)
        outcomes.append(outcome)
    print(f"prepare killed {len(outcomes)} times, leaving:", outcomes)
    assert outcomes[:3] == ['none'] * 3  # meta.json goes before the first rename, returns after the last
    assert workers_killed >= 3  # the check above saw processes to check
    assert prepare.main(new_args) and snapshot(data_dir) == new and temporaries(data_dir) == []


@pytest.mark.parametrize('signum, moment', [(signal.SIGINT, 'tokenize'), (signal.SIGTERM, 'tokenize'),
                                            (signal.SIGINT, 'write'), (signal.SIGTERM, 'write')])
def test_a_signal_stops_prepare_with_one_line_and_leaves_the_previous_files(tmp_path, verses, signum, moment):
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n'.join(verses * 25) + '\n', encoding='utf-8')
    data_dir = tmp_path / 'data'
    args = [str(data_dir), f'--input={corpus}', '--tokenizer=word', '--num_proc=2']
    prepare.main([*args, '--tokenizer=char'])
    previous = snapshot(data_dir)
    if moment == 'tokenize':  # while the workers run; SIGINT to the whole process group, as Ctrl-C in a terminal
        process, below = launch(tmp_path, 'run', 'prepare.py', *args, start_new_session=True), {}
        try:
            assert wait_until(lambda: len(descendants(process.pid)) >= 3, process)
            below = descendants(process.pid)
            (os.killpg if signum == signal.SIGINT else os.kill)(process.pid, signum)
            assert process.wait(timeout=60) == 128 + signum
            assert survivors(below, timeout=5) == {}
        finally:
            below.update(descendants(process.pid))
            process.kill()
            kill_all(below)
    else:  # halfway through writing the training split: its .bin and .docs.npy are temporary files
        process = launch(tmp_path, 'run', 'tests/killpoint.py', f'memmap:{signum.name}', '3', 'prepare', *args)
        assert process.wait(timeout=60) == 128 + signum
    err = output(tmp_path, 'run', 'err')
    # tqdm's progress bars share stderr: the lines that are not one (no elapsed time "[00:01") are the messages
    messages = [line for line in re.split(r'[\r\n]', err) if line.strip() and not re.search(r'\[\d+:\d\d', line)]
    assert 'Traceback' not in err and messages == [
        f"{signum.name}: prepare stopped, its temporary files removed; {data_dir} holds a complete dataset"]
    if snapshot(data_dir) != previous:  # on a slow machine the signal can come after the new files are published:
        meta = storage.load_meta(str(data_dir))  # then they are the new dataset, whole
        storage.verify_checksums(str(data_dir), meta)
        assert meta['tokenizer']['kind'] == 'word' and moment == 'tokenize'
    assert temporaries(data_dir) == []
    tokens_cache = os.path.join(os.environ['HF_DATASETS_CACHE'], 'prepare-tokens')
    assert [name for name in os.listdir(tokens_cache) if f'.tmp-{process.pid}' in name] == []


@pytest.mark.parametrize('full', ['before', 'at allocation'])
def test_prepare_onto_a_full_disk_says_so_and_keeps_the_previous_files(tmp_path, corpus_file, monkeypatch, full):
    data_dir = tmp_path / 'data'
    prepare.main([str(data_dir), f'--input={corpus_file}', '--tokenizer=char'])
    previous, real_disk_usage = snapshot(data_dir), shutil.disk_usage
    if full == 'before':  # what the free-space check reads: less than the new files need
        monkeypatch.setattr(shutil, 'disk_usage', lambda path: real_disk_usage(path)._replace(free=50_000))
        match = r'the new train.bin and val.bin need about'
    else:  # the space went between the check and the allocation (another process filled the disk)
        def posix_fallocate(fd, offset, size):
            raise OSError(errno.ENOSPC, 'No space left on device')
        monkeypatch.setattr(os, 'posix_fallocate', posix_fallocate)
        match = r'the new train files need about'
    with pytest.raises(UserError, match=rf'^{data_dir} has [\d,.]+ MiB free but {match} [\d.]+ MiB: free some space'
                                        rf' or choose another directory$'):
        prepare.main([str(data_dir), f'--input={corpus_file}', '--tokenizer=word'])
    assert snapshot(data_dir) == previous and temporaries(data_dir) == []


def test_allocated_files_have_their_disk_blocks(tmp_path):
    storage.allocate(tmp_path / 'a.bin', 1 << 20, 'the new a.bin')
    assert os.path.getsize(tmp_path / 'a.bin') == 1 << 20 and os.stat(tmp_path / 'a.bin').st_blocks * 512 >= 1 << 20

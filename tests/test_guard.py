"""Guards around a trained model and the files it came from: no scratch run over a checkpoint, one run per
out_dir, a resume that finds what a kill left, a full disk that says so, and damaged inputs refused in one line."""
import errno
import json
import os
import re
import shutil
import signal

import pytest

from configurator import UserError
from conftest import ROOT, TINY_GPT, launch, metrics, output, run_script, wait_until
from slm import checkpoint, reliability, training, trainlog
import train


RUN_FILES = ('ckpt.pt', 'best.pt', 'metrics.jsonl', 'loss.png')


def files_of(out_dir):
    return {name: (out_dir / name).read_bytes() for name in RUN_FILES if (out_dir / name).exists()}


def assert_one_line_error(result, pattern):
    """Exit code 2 and a single 'error: ...' line on stderr that matches pattern, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert lines[0].startswith('error: ')
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def trained(tiny_checkpoint, tmp_path):
    """A copy of the tiny trained out_dir, for tests that run into it (the session's stays untouched)."""
    out_dir = tmp_path / 'trained'
    shutil.copytree(tiny_checkpoint, out_dir)
    return out_dir


def test_scratch_run_into_a_trained_out_dir_is_refused_and_touches_nothing(trained, char_data, monkeypatch):
    before = files_of(trained)
    assert set(before) == set(RUN_FILES)
    args = [f'--data_dir={char_data}', f'--out_dir={trained}', *TINY_GPT, '--max_iters=4']
    best = checkpoint.load(trained / 'ckpt.pt')['best_val_loss']
    assert_one_line_error(run_script('train.py', *args),
                          rf"{trained} already holds a trained model \(.*ckpt.pt: iteration 40, best val loss"
                          rf" {best:.4f}\): continue it with --init_from=resume, train into another --out_dir, or"
                          rf" replace it with --overwrite=True")
    assert files_of(trained) == before

    # --overwrite=True: the old run's files stay while the new run sets up, and a run that fails there keeps them
    with pytest.raises(UserError, match='too small'):
        train.main([*args, '--overwrite=True', '--block_size=5000'])
    assert files_of(trained) == before
    # and are replaced when the new run saves its first checkpoint. Here that is not a best one (a signal before
    # the first evaluation, which is skipped), so the old best.pt, log and plot must not stay beside it either.
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
        patch.setattr(training.Run, 'is_evaluation_due', lambda run: os.kill(os.getpid(), signal.SIGTERM))
        train.main([*args, '--overwrite=True'])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert sorted(os.listdir(trained)) == ['.lock', 'ckpt.pt', 'metrics.jsonl'] and metrics(trained) == []
    assert checkpoint.load(trained / 'ckpt.pt')['iter_num'] == 1
    # the same command twice (make demo does this): each run replaces the last
    for _ in range(2):
        train.main([*args, '--overwrite=True'])
        evaluations = {r['iter']: r['val_loss'] for r in metrics(trained) if 'val_loss' in r}
        assert list(evaluations) == [0, 4] and checkpoint.load(trained / 'ckpt.pt')['iter_num'] == 4
        assert checkpoint.load(trained / 'best.pt')['best_val_loss'] == min(evaluations.values())


def test_a_second_run_in_the_same_out_dir_is_refused_naming_the_first(char_data, tmp_path):
    out_dir = tmp_path / 'shared'
    args = [f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--max_iters=100000']
    first = launch(tmp_path, 'first', 'train.py', *args)
    try:
        assert wait_until(lambda: any('train_loss' in r for r in metrics(out_dir)), first)  # in its hot loop
        for init_from in ('scratch', 'resume'):
            second = run_script('train.py', *args, f'--init_from={init_from}')
            assert_one_line_error(second, rf"{out_dir} is in use by another training run \(process {first.pid}\):"
                                          rf" wait for it to finish or stop it, or choose another --out_dir")
        assert first.poll() is None
        first.send_signal(signal.SIGINT)  # the first run is untouched: it stops as it would have, saving
        assert first.wait(timeout=300) == 128 + signal.SIGINT
    finally:
        first.kill()
    assert 'Resume with:' in output(tmp_path, 'first', 'err')
    iters = [r['iter'] for r in metrics(out_dir)]
    assert iters == sorted(iters) and checkpoint.load(out_dir / 'ckpt.pt')['iter_num'] >= iters[-1]  # one run's


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    held = reliability.OutDirLock(str(tmp_path))
    held.acquire()
    with pytest.raises(UserError, match=rf'in use by another training run \(process {os.getpid()}\)'):
        reliability.OutDirLock(str(tmp_path)).acquire()
    held.release()
    again = reliability.OutDirLock(str(tmp_path))
    again.acquire()  # sequential runs in one process (ablate.py, the tests) take it in turn
    again.release()


def test_a_kill_in_the_first_ckpt_write_leaves_best_pt_which_resumes_at_once(char_data, tmp_path, capsys):
    """The first save writes best.pt, then ckpt.pt: SIGKILL halfway through ckpt.pt leaves only best.pt. The lock
    died with the process, and --init_from=resume takes best.pt, saying so."""
    out_dir = tmp_path / 'killed'
    args = [f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--eval_interval=4']
    process = launch(tmp_path, 'run', 'tests/killpoint.py', 'checkpoint-half-written', '2', 'train', *args,
                     '--max_iters=8')
    assert process.wait(timeout=300) == -signal.SIGKILL, output(tmp_path, 'run', 'err')
    assert not (out_dir / 'ckpt.pt').exists() and checkpoint.load(out_dir / 'best.pt')['iter_num'] == 0
    train.main([*args, '--max_iters=8', '--init_from=resume'])
    said = capsys.readouterr().out
    assert f"{out_dir} has no ckpt.pt: resuming best.pt" in said
    assert f"resuming {out_dir / 'best.pt'} at iteration 0" in said
    assert checkpoint.load(out_dir / 'ckpt.pt')['iter_num'] == 8


def test_a_damaged_ckpt_pt_beside_best_pt_says_how_to_resume_best_pt(trained, char_data):
    (trained / 'ckpt.pt').write_bytes((trained / 'ckpt.pt').read_bytes()[:1000])
    args = [f'--data_dir={char_data}', f'--out_dir={trained}', '--init_from=resume', *TINY_GPT, '--max_iters=44']
    with pytest.raises(UserError, match=rf'ckpt.pt is not a readable checkpoint .*; to resume from best.pt \(the'
                                        rf' checkpoint of the lowest val loss\), move {trained}/ckpt.pt aside'):
        train.main(args)
    os.rename(trained / 'ckpt.pt', trained / 'ckpt.pt.damaged')
    train.main(args)  # as the message says
    assert checkpoint.load(trained / 'ckpt.pt')['iter_num'] == 44


def test_a_full_disk_says_what_to_do_about_the_disk(char_data, tmp_path, monkeypatch):
    """A full disk (or quota) while plotting after the checkpoints: one line on the disk, the checkpoints kept."""

    def full(self):
        raise OSError(errno.EDQUOT, 'Disk quota exceeded')
    monkeypatch.setattr(trainlog.MetricsLog, 'plot', full)
    with pytest.raises(UserError) as raised:
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', *TINY_GPT, '--max_iters=4'])
    message = str(raised.value)
    assert message.startswith(f"cannot write {tmp_path / 'loss.png'} at iteration 0: Disk quota exceeded; ")
    assert ' MiB free on /' in message and 'free some space there' in message and 'learning_rate' not in message
    assert f"then resume from {tmp_path / 'ckpt.pt'} (iteration 0, the last checkpoint written)" in message
    assert checkpoint.load(tmp_path / 'ckpt.pt')['iter_num'] == 0


def damaged_data(char_data, tmp_path, change):
    """A copy of the prepared char data with meta.json changed by change(meta) (which returns the new meta)."""
    data_dir = tmp_path / 'data'
    shutil.copytree(char_data, data_dir)
    meta = json.loads((data_dir / 'meta.json').read_text())
    (data_dir / 'meta.json').write_text(json.dumps(change(meta)))
    return data_dir


def shrunk_vocabulary(meta):
    """The tokenizer and vocab_size cut to 10 tokens: they agree, but the data holds higher ids."""
    meta['tokenizer']['vocab'] = meta['tokenizer']['vocab'][:10]
    return dict(meta, vocab_size=10)


@pytest.mark.parametrize('change, problem', [
    (lambda meta: [meta], r'is not what prepare.py writes \(a JSON list, not an object\)'),
    (lambda meta: {k: v for k, v in meta.items() if k != 'splits'}, r'\(no splits\)'),
    (lambda meta: dict(meta, vocab_size='65'), r"\(vocab_size '65' is not a positive integer\)"),
    (lambda meta: dict(meta, tokenizer='char'), r'\(the tokenizer has no special_ids\)'),
    (lambda meta: dict(meta, vocab_size=meta['vocab_size'] + 1), r'\(vocab_size \d+ disagrees with its tokenizer'),
    (shrunk_vocabulary, r'train.bin holds token id \d+, not below vocab_size 10 of .*meta.json'),
], ids=['list', 'no-splits', 'vocab-size-text', 'tokenizer-text', 'vocab-disagrees', 'ids-beyond-vocab'])
def test_meta_json_of_the_wrong_shape_or_vocabulary_is_one_line(char_data, tmp_path, change, problem):
    data_dir = damaged_data(char_data, tmp_path, change)
    args = [f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}', *TINY_GPT, '--max_iters=0']
    with pytest.raises(UserError, match=problem + r'.*: run `python prepare.py .*data` again'):
        train.main(args)


def test_damaged_meta_json_in_a_fresh_process(char_data, tmp_path):
    data_dir = damaged_data(char_data, tmp_path, shrunk_vocabulary)
    result = run_script('train.py', f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}', *TINY_GPT)
    assert_one_line_error(result, r'train.bin holds token id \d+, not below vocab_size 10')
    assert not os.path.exists(tmp_path / 'out')  # the run made it and wrote nothing there: it is gone again


def test_checkpoint_whose_model_args_disagree_with_its_weights(tiny_checkpoint, char_data, tmp_path):
    ckpt = checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))
    ckpt['model_args']['n_embd'] = 64
    checkpoint.save(tmp_path / 'ckpt.pt', ckpt)  # with a digest that matches: the file is whole, just wrong
    pattern = (r'ckpt.pt is inconsistent: its weights do not fit the model its model_args describe \(.*: \(\d+, 32\)'
               r' in the weights, \(\d+, 64\) by the model_args\): use another checkpoint')
    assert_one_line_error(run_script('sample.py', f'--out_dir={tmp_path}', '--max_new_tokens=5'), pattern)
    with pytest.raises(UserError, match=pattern):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--init_from=resume', *TINY_GPT])
    ckpt['model_args']['n_head'] = 5  # 64 is no multiple of 5: no model at all
    checkpoint.save(tmp_path / 'ckpt.pt', ckpt)
    assert_one_line_error(run_script('sample.py', f'--out_dir={tmp_path}', '--max_new_tokens=5'),
                          r'ckpt.pt holds model_args that describe no model \(.*\): use another checkpoint')


def test_sample_out_that_is_a_directory_is_one_line(tiny_checkpoint, tmp_path):
    folder = tmp_path / 'samples.txt'  # a directory, though its name looks like a text file's
    folder.mkdir()
    result = run_script('sample.py', f'--out_dir={tiny_checkpoint}', f'--out={folder}', '--max_new_tokens=5')
    assert_one_line_error(result, rf'--out={folder} is a directory: give a file name, e.g. {folder}/sample.txt')
    assert os.listdir(folder) == []


def test_a_second_ctrl_c_while_saving_stops_at_once_in_one_line(char_data, tmp_path):
    """Ctrl-C, then Ctrl-C again while the run saves its checkpoint: exit 130, one line more, no traceback."""
    out_dir, script = tmp_path / 'twice', tmp_path / 'slow_save.py'
    script.write_text(SLOW_SAVE)
    process = launch(tmp_path, 'run', str(script), f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT,
                     '--max_iters=100000')
    try:
        assert wait_until(lambda: any('train_loss' in r for r in metrics(out_dir)), process)  # in the hot loop
        process.send_signal(signal.SIGINT)
        assert wait_until(lambda: 'saving' in output(tmp_path, 'run'), process)  # the save has begun (it takes 1 s)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
    finally:
        process.kill()
    err = output(tmp_path, 'run', 'err')
    lines = [line for line in err.replace('\r', '\n').splitlines() if line.strip() and not line.startswith('train:')]
    assert process.returncode == 130 and 'Traceback' not in err, err
    assert lines == ['SIGINT: finishing this step, then saving a checkpoint (send it again to stop at once)',
                     'SIGINT again: stopped at once, nothing more saved']
    assert checkpoint.load(out_dir / 'ckpt.pt')['iter_num'] == 0  # the one of the evaluation before: whole


# train.py with a checkpoint write on a signal that says when it begins and takes a second, so that a second
# signal lands inside it
SLOW_SAVE = f"""
import runpy, sys, time
from slm import checkpoint
from configurator import run
train_main = runpy.run_path({os.path.join(ROOT, 'train.py')!r})['main']
real_save = checkpoint.save
def save(path, contents):
    if contents['val_loss'] is None:
        print('saving', flush=True)
        time.sleep(1)
    return real_save(path, contents)
checkpoint.save = save
run(lambda: train_main(sys.argv[1:]))
"""


def test_a_forked_worker_leaves_the_signals_to_the_training_process():
    """A DataLoader worker is forked with the training process's handler, and Ctrl-C reaches it too: there the
    handler does nothing (no second 'finishing this step' line, no exit at once), and the parent is not asked."""
    with reliability.StopOnSignal() as stop:
        pid = os.fork()
        if pid == 0:  # the worker
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(0 if stop.signum is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and stop.signum is None

"""slm/budget.py and train.py's --max_time: the grammar, the plan, and runs that end inside their budget."""
import dataclasses
import os

import pytest
import torch

import configurator
from configurator import UserError
from conftest import TINY_GPT, metrics
from slm import budget, training
import train


@pytest.mark.parametrize('text, seconds', [('300s', 300), ('5min', 300), ('2h', 7200), ('90', 90), ('1.5h', 5400),
                                           ('0.5m', 30), (' 10 sec ', 10)])
def test_durations_read_as_seconds(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize('text, message', [('soon', 'is not a duration: write a number and a unit'),
                                           ('5 days', 'is not a duration'), ('-5s', 'is not a duration'),
                                           ('0s', 'must be more than zero')])
def test_bad_durations_are_one_line_errors(text, message):
    with pytest.raises(UserError, match=message):
        budget.parse_duration(text)


def test_the_plan_keeps_room_for_a_step_and_the_last_evaluation():
    plan = budget.TimeBudget(100.0, eval_interval=50)
    assert plan.step_s() is None and plan.planned_iters(0, 1.0) is None and not plan.should_end(99.0)
    plan.evaluated(2.0)  # the evaluation at iteration 0
    for it in range(1, 11):  # 10 steps of 0.5 s from 10 s on
        plan.stepped(it, now=10.0 + 0.5 * it)
    assert plan.step_s() == 0.5
    # 84.5 s left after the last evaluation: steps of 0.5 s, each paying a fiftieth of a 2 s evaluation
    assert plan.planned_iters(10, 15.0) == 10 + int((100 - 15 - 2) / (0.5 + 2 / 50))
    assert not plan.should_end(97.5) and plan.should_end(97.6)  # 97.5 + a step + an evaluation = 100
    plan.evaluated(3.0)  # the pace is measured again after an evaluation; until then the last one stands
    assert plan.step_s() == 0.5 and plan.planned_iters(10, 15.0) == 10 + int((100 - 15 - 3) / (0.5 + 3 / 50))
    plan.stepped(11, now=30.0)
    plan.stepped(12, now=30.7)
    assert plan.step_s() == pytest.approx(0.7) and plan.should_end(96.4)
    plan.stepped(13, now=32.1)  # steps slow down to 1.4 s: another process started; so will the evaluation
    assert plan.step_s() == pytest.approx(1.05) and plan.next_evaluation_s() == pytest.approx(3.0 * 1.05 / 0.7)
    assert plan.should_end(100 - 1.05 - 4.5 + 0.01) and not plan.should_end(100 - 1.05 - 4.5 - 0.01)
    plan.stepped(20, now=33.5)  # faster again than after the evaluation: it will take no less than that one
    assert plan.next_evaluation_s() == 3.0


def test_a_timed_run_ends_inside_its_budget_at_the_end_of_its_schedule(char_data, tmp_path):
    out_dir, config = str(tmp_path / 'out'), tmp_path / 'config.py'
    config.write_text('max_iters = 10\nwarmup_iters = 1\n')  # a config file's max_iters: the time wins
    result = train.main([str(config), f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--max_time=4s',
                         '--eval_interval=100000', '--log_interval=1', '--learning_rate=3e-3',
                         '--min_lr=3e-4'])
    records = metrics(out_dir)
    spent, steps = records[-1], [r for r in records if 'lr' in r]
    evals = [r for r in records if 'val_loss' in r]
    assert spent['max_time_s'] == 4 and spent['elapsed_s'] <= 4.4  # but for an evaluation slower than the first
    assert spent['elapsed_s'] > 2.5  # it stops a step and the first evaluation (with one-time costs) before the end
    assert spent['elapsed_s'] == pytest.approx(
        spent['startup_s'] + spent['evaluations_s'] + spent['steps_s'])
    assert [r['iter'] for r in evals] == [0, spent['iter']] and spent['iter'] == len(steps) > 10  # not max_iters
    assert result['val_loss'] == evals[-1]['val_loss'] < evals[0]['val_loss']
    peak = max(r['lr'] for r in steps)
    assert peak == pytest.approx(3e-3, rel=0.05)  # the warmup ended on the way (its share: 1 of 10)
    assert steps[-1]['lr'] < 3e-4 + 0.05 * (3e-3 - 3e-4)  # the last step at the end of the cosine
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == spent['iter'] and ckpt['config']['max_time'] == '4s'


def test_a_resumed_timed_run_continues_its_budget(char_data, tmp_path):
    out_dir = str(tmp_path / 'out')
    cfg = configurator.parse(training.TrainConfig, [f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT,
                                                    '--max_time=4s', '--eval_interval=100000'])
    training.train(cfg, pause_at=2.0)  # stops 2 s into the budget, saving ckpt.pt
    paused = torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)
    assert 2.0 <= paused['elapsed_s'] < 3.0 and paused['val_loss'] is None
    training.train(dataclasses.replace(cfg, init_from='resume'))
    spent = metrics(out_dir)[-1]
    assert spent['iter'] > paused['iter_num'] and spent['elapsed_s'] <= 4.4
    assert spent['startup_s'] > paused['spent_s']['startup']  # each start-up counts
    assert [r['iter'] for r in metrics(out_dir) if 'val_loss' in r] == [0, spent['iter']]


def test_max_iters_on_the_command_line_wins(char_data, tmp_path, capsys):
    out_dir = str(tmp_path / 'out')
    train.main([f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--max_time=1h', '--max_iters=3',
                '--eval_interval=3'])
    assert '--max_iters=3 on the command line wins over --max_time=1h' in capsys.readouterr().out
    assert [r['iter'] for r in metrics(out_dir) if 'val_loss' in r] == [0, 3]
    assert 'max_time_s' not in metrics(out_dir)[-1]


def test_a_bad_max_time_stops_before_training(char_data, tmp_path):
    with pytest.raises(UserError, match='--max_time=soon is not a duration'):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}/out', *TINY_GPT, '--max_time=soon'])
    assert not os.path.exists(tmp_path / 'out' / 'ckpt.pt')


def test_evaluations_on_the_way_leave_the_schedule_where_it_was(char_data, tmp_path):
    """After an evaluation the pace is measured again; meanwhile the last one stands, so the learning rate goes on
    down its cosine instead of back to the peak, and the run ends at an evaluation or one after it, inside the
    budget."""
    out_dir = str(tmp_path / 'out')
    train.main([f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--max_time=4s', '--eval_interval=40',
                '--log_interval=1', '--learning_rate=3e-3', '--min_lr=3e-4'])
    records = metrics(out_dir)
    spent, steps = records[-1], [r for r in records if 'lr' in r]
    evals = [r['iter'] for r in records if 'val_loss' in r]
    assert len(evals) > 3 and all(it % 40 == 0 for it in evals[:-1]) and evals[-1] == spent['iter']
    peak = max(range(len(steps)), key=lambda i: steps[i]['lr'])
    after = [r['lr'] for r in steps[peak:]]
    assert all(b <= a * 1.1 for a, b in zip(after, after[1:]))  # no jump back up after an evaluation
    assert spent['elapsed_s'] <= 4.4

import contextlib
import io
import json
import math

import pytest
import torch

import bench
from configurator import UserError
from slm import storage
from slm.bench import generate as bench_generate
from slm.bench import train as bench_train


def numbers(row):
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    out, stdout = tmp_path_factory.mktemp('bench') / 'bench.json', io.StringIO()
    threads = torch.get_num_threads()
    # one thread: on a machine whose cores are busy with other work, OpenMP threads waiting on each other
    # make every tiny step tens of times slower, and this test is about the fields, not the speed
    with contextlib.redirect_stdout(stdout):
        returned = bench.main(['--quick=True', '--device=cpu', '--threads=1', f'--out={out}'])
    assert torch.get_num_threads() == threads and returned['machine']['torch_threads'] == 1
    with open(out) as f:
        return returned, json.load(f), stdout.getvalue()


def test_quick_run_writes_every_field_positive_and_finite(quick_run):
    returned, written, _ = quick_run
    assert written['schema_version'] == bench.SCHEMA_VERSION and written['results'] == returned['results']
    results = written['results']
    assert list(results) == list(bench.SECTIONS)
    for name, section in bench.SECTIONS.items():
        assert results[name], name
        for row in results[name]:
            missing = {key for key, _, _ in section.columns} - set(row)
            assert not missing, (name, missing)
            for key, value in numbers(row).items():
                shares = name == 'profile' and key in bench_train.PROFILE_GROUPS  # a kind of op may take no time
                idle = name == 'busy' and key == 'busy_cpus'  # a quiet machine's CPUs may all be idle
                assert math.isfinite(value) and (value >= 0 if shares or idle else value > 0), (name, key, value)
    for row in results['defaults']:  # train.py's default path against plain eager float32, per model
        assert row['speedup'] == pytest.approx(row['plain_ms'] / row['default_ms'])
        assert 'for_loop AdamW' in row['plain_path'] and 'fused AdamW' in row['path']
    assert [r['model'].split()[0] for r in results['defaults']] == ['gpt', 'lstm']
    for row in results['profile']:  # every microsecond of the step in exactly one kind
        assert sum(row[g] for g in bench_train.PROFILE_GROUPS) >= 0.999 and row['matmul'] > 0
    assert [r['path'] for r in results['profile']] == ['plain', 'default']
    # --quick's 1MB: the 4-row batch fits whole, the 32-row one runs in micro-batches; whole is whole
    assert [(r['batch_size'], r['path'], r['chunk_rows']) for r in results['memory']] == \
        [(4, 'whole', 4), (4, 'micro-batches', 4), (32, 'whole', 32), (32, 'micro-batches', 6)]
    found, spinning = results['busy']
    assert spinning['busy_cpus'] > 0.9 and spinning['auto_threads'] <= found['auto_threads']  # the spinner was seen
    shape = {'device': 'cpu', 'batch_size': 4, 'block_size': 16}
    assert all(row.items() >= shape.items() for row in results['train'])
    # float32 ran for both models; bfloat16 either ran or is listed as skipped with the reason
    timed = {(r['model'], r['dtype']) for r in results['train']}
    skipped = {w['what']: w['reason'] for w in written['skipped']}
    for model in ('gpt', 'lstm'):
        assert (model, 'float32') in timed
        assert ((model, 'bfloat16') in timed) != bool(skipped.get(f'train {model} cpu bfloat16'))
    assert not any(r['compiled'] for r in results['train'])  # --quick leaves compile off

    study = {(r['model'], r['run']): r for r in results['study']}
    assert len(study) == 6
    for model in ('gpt', 'lstm'):  # --quick: batches 2 and 20, 10 iterations; (c) sees the samples of (a)
        a, b, c = (study[model, run] for run in 'abc')
        assert (a['batch_size'], a['iters'], b['batch_size'], b['iters'], c['batch_size'], c['iters']) == \
            (2, 10, 20, 10, 20, 1)
        assert a['samples'] == c['samples'] == b['samples'] // 10
        assert a['ms_per_iter'] == pytest.approx(a['wall_s'] / 10 * 1e3)
        assert a['tokens_per_s'] == pytest.approx(a['samples_per_s'] * 16)
    summaries = written['summaries']['study']
    assert {(s['model'], s['follows']) for s in summaries} <= {(m, f) for m in ('gpt', 'lstm')
                                                                for f in ('samples', 'iterations', 'between')}
    assert len(summaries) == 2 and all(math.isfinite(numbers(s)[k]) for s in summaries for k in numbers(s))
    assert any('time follows' in line or 'in between' in line for line in written['conclusions'])
    generation = results['generate']  # --quick: a 1 x 32 GPT at block_size 16, 8 and 40 new tokens, one run each
    assert [(r['shape'], r['block_size'], r['new_tokens'], r['repeats']) for r in generation] == \
        [('1x32', 16, 8, 1), ('1x32', 16, 40, 1)]
    assert all(r['same_tokens'] for r in generation)  # past block_size too: 16 + 40 tokens
    assert all(r['speedup'] == pytest.approx(r['recompute_s'] / r['cached_s']) for r in generation)
    assert [r['source'] for r in results['peak']] == ['measured matmul'] * len(results['peak'])
    assert written['machine']['devices'] == {'cpu': results['peak'][0]['name']}


def test_quick_run_prints_a_table_per_section_and_the_conclusions(quick_run):
    _, written, stdout = quick_run
    for name, section in bench.SECTIONS.items():
        table = bench.format_table(section.title, section.columns, written['results'][name])
        assert table in stdout
        lines = table.splitlines()
        assert lines[0] == section.title and len(lines) == 2 + len(written['results'][name])
        assert lines[1].split() == [w for _, header, _ in section.columns for w in header.split()]
        assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    empty = bench.format_table('t', section.columns, []).splitlines()
    assert len(empty) == 2 and empty[1].split() == lines[1].split()  # no rows: the header alone
    assert stdout.split('conclusions:\n')[1].startswith('\n'.join(f'- {c}' for c in written['conclusions']))


@pytest.mark.parametrize('wall_b, follows', [(10.0, 'samples'), (7.0, 'samples'), (1.05, 'iterations'),
                                             (3.0, 'between')])
def test_study_verdict(wall_b, follows):
    exponent, kind = bench_train.study_verdict(1.0, wall_b, 50, 500)
    assert kind == follows and exponent == pytest.approx(math.log10(wall_b))


def test_study_conclusion_is_computed_from_the_runs():
    cfg = bench.check(bench.BenchConfig(device='cpu', model='gpt'))
    ctx = type('Ctx', (), {'cfg': cfg, 'models': ['gpt'], 'devices': ['cpu', 'cuda']})()

    def row(device, run, wall_s):
        batch, iters = {'a': (50, 10), 'b': (500, 10), 'c': (500, 1)}[run]
        return {'model': 'gpt', 'device': device, 'run': run, 'batch_size': batch, 'wall_s': wall_s,
                'samples_per_s': batch * iters / wall_s, 'tokens_per_s': batch * iters * 32 / wall_s}

    rows = [row('cpu', 'a', 1.0), row('cpu', 'b', 9.5), row('cpu', 'c', 0.9),
            row('cuda', 'a', 0.1), row('cuda', 'b', 0.12), row('cuda', 'c', 0.012)]
    summaries, lines = bench_train.conclude_study(rows, ctx)
    assert [s['follows'] for s in summaries if 'follows' in s] == ['samples', 'iterations']
    assert 'cpu gpt: 10x the samples (b/a) took 9.50x the time' in lines[0]
    assert 'time follows the number of samples' in lines[0]
    assert 'time follows the number of iterations' in lines[1]
    ratios = {s['run']: s['tokens_per_s_ratio'] for s in summaries if 'run' in s}
    assert ratios == pytest.approx({'a': 10.0, 'b': 9.5 / 0.12, 'c': 75.0})
    assert lines[2] == 'gpt (a) batch 50: cuda trains 10.0x the tokens per second of cpu'


def test_generation_conclusions_are_computed_from_the_runs():
    ctx = type('Ctx', (), {'devices': ['cpu']})()

    def row(new_tokens, cached, recompute, cached_half, recompute_half):
        return {'device': 'cpu', 'shape': '4x128', 'new_tokens': new_tokens, 'cached_tokens_per_s': cached,
                'recompute_tokens_per_s': recompute, 'speedup': cached / recompute, 'same_tokens': True,
                'cached_second_half_tokens_per_s': cached_half,
                'recompute_second_half_tokens_per_s': recompute_half}

    rows = [row(2000, 380.0, 60.0, 360.0, 56.0), row(500, 400.0, 80.0, 360.0, 64.0)]
    assert bench_generate.conclude_generate(rows, ctx) == ([], [
        'cpu gpt 4x128: 500 new tokens with the KV cache at 400 tokens/s, 5.0x recomputing the window at every'
        ' token (80 tokens/s)',
        'cpu gpt 4x128: 2000 new tokens with the KV cache at 380 tokens/s, 6.3x recomputing the window at every'
        ' token (60 tokens/s)',
        "cpu gpt 4x128: from 500 to 2000 new tokens the cached tokens/s changes 0.95x overall and 1.00x over each"
        " output's second half (recomputing: 0.75x and 0.88x)"])


@pytest.mark.parametrize('argv, message', [
    (['--iters=7'], 'iters \\* small / large whole'),
    (['--batch_sizes=(500, 50)'], 'need 0 < small < large'),
    (['--batch_sizes=(1, 2, 3)'], 'must be two sizes'),
    (['--model=rnn'], 'must be all or one of gpt, lstm'),
    (['--compile=maybe'], 'must be both, True or False'),
    (['--sections=train,speed'], 'choose all or some of peak,train,defaults,profile,windowing,study,sample'),
    (['--defaults_models=gpt:2:3:64:32:4'], 'n_embd a multiple of n_head'),
    (['--repeats=0'], 'must be positive'),
    (['--out=/nonexistent/dir/bench.json'], 'its directory does not exist'),
    (['--generate_shape=(4, 3, 128, 256)'], 'n_embd a multiple of n_head'),
    (['--generate_tokens=(500, 1)'], 'one or more counts of at least 2'),
])
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=message):
        bench.main(argv)


def test_unprepared_data_dir_names_the_prepare_command(tmp_path):
    with pytest.raises(UserError, match=r'run `python prepare.py .*/nothing` first'):
        bench.main([f'--data_dir={tmp_path}/nothing', '--quick=True', '--sections=train'])


def test_batches_from_a_prepared_data_dir(char_data):
    results = bench.main([f'--data_dir={char_data}', '--quick=True', '--device=cpu', '--model=gpt',
                          '--sections=sample', '--sample_tokens=4', '--threads=1'])
    meta = storage.load_meta(char_data)
    assert results['data'] == {'source': char_data, 'vocab_size': meta['vocab_size'],
                               'tokens': meta['splits']['train']['tokens']}
    [row] = results['results']['sample']
    assert row['prompt_tokens'] == 15 and row['new_tokens'] == 4  # --quick: block_size 16


def test_quick_run_times_both_recipes_side_by_side(quick_run):
    _, written, stdout = quick_run
    (row,) = written['results']['recipe']  # --quick: one GPT, on the CPU
    assert row['step_ratio'] == pytest.approx(row['default_ms'] / row['gpt2_ms'])
    # the same shape (1 layer, n_embd 32, 2 heads, block 16): train.py's default recipe rotates q and k instead of
    # adding a learned position table (16 x 32 weights fewer), and its optimizer is not model FLOPs
    assert row['default_recipe'] == 'rope=True, optimizer=muon'
    assert row['gpt2_params'] - row['default_params'] == 16 * 32
    assert row['default_flops_per_token'] == row['gpt2_flops_per_token']
    assert row['dtype'] in ('float32', 'bfloat16') and not row['compiled']  # train.py's path on the CPU
    assert f"train.py's default path (the recipe rope=True, optimizer=muon; {row['dtype']}, eager) takes" in stdout
    assert "the plain GPT-2 recipe's time per step (float32, eager;" in stdout
    # and the five-minute AKJV config's recipe (--recipe_config's default) on the default's path: its options over
    # the defaults, 2 x0-mix scalars for the 1 layer and that layer's value embedding (64 ids x 32) and gates (32 x 2)
    assert row['config'] == 'config/train_akjv_5min.py'
    assert row['config_recipe'] == 'x0_mix=True, value_embed=True'
    assert row['config_params'] - row['default_params'] == 2 + 64 * 32 + 32 * 2
    assert row['config_ratio'] == pytest.approx(row['config_ms'] / row['default_ms'])
    assert "config/train_akjv_5min.py's recipe (the default's with x0_mix=True, value_embed=True) takes" in stdout

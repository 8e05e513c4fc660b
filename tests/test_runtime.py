import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import ablate
from configurator import UserError
from conftest import ROOT, TINY_GPT, metrics
from model import ModelArgs
from slm import optim, probe, runtime, training
import train


@pytest.mark.parametrize('avx512_bf16, amx, fast', [(True, False, True), (False, True, True), (False, False, False)])
def test_cpu_bfloat16_instructions_are_detected_and_auto_alone_means_float32(monkeypatch, avx512_bf16, amx, fast):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)
    assert runtime.cpu_has_fast_bfloat16() == fast
    assert runtime.resolve_dtype('auto', 'cpu') == torch.float32  # without a model to measure (probe.py has one)
    assert runtime.resolve_dtype('float32', 'cpu') == torch.float32  # forcing always wins
    assert runtime.resolve_dtype('bfloat16', 'cpu') == torch.bfloat16


@pytest.mark.parametrize('float32_s, bfloat16_s, expected', [(1.0, 0.9, torch.bfloat16), (1.0, 0.99, torch.float32),
                                                             (0.9, 1.0, torch.float32)])
def test_train_dtype_auto_is_measured_once_per_shape_where_the_cpu_has_bfloat16(monkeypatch, tmp_path, float32_s,
                                                                                bfloat16_s, expected):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    monkeypatch.setattr(runtime, 'cpu_has_fast_bfloat16', lambda: True)
    measured = []
    monkeypatch.setattr(probe, 'measure', lambda args, rows: measured.append(rows) or
                        {'float32_s': float32_s, 'bfloat16_s': bfloat16_s})
    args = ModelArgs(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)
    dtype, why = probe.training_dtype('auto', 'cpu', args, 64)
    assert dtype == expected and measured == [probe.MAX_ROWS] and 'cached' not in why
    assert f"{max(float32_s, bfloat16_s) / min(float32_s, bfloat16_s):.2f}x as fast as" in why
    again, why = probe.training_dtype('auto', 'cpu', args, 64)  # the next start reads the cache
    assert again == expected and measured == [probe.MAX_ROWS] and why.endswith('(cached)')
    probe.training_dtype('auto', 'cpu', dataclasses.replace(args, n_embd=32), 64)  # another shape is measured
    assert len(measured) == 2 and os.path.exists(tmp_path / 'slm' / 'probe.json')
    edited = tmp_path / 'model.py'  # model.py's code changed: what it measured no longer holds
    edited.write_text('# another forward\n')
    with monkeypatch.context() as patched:
        patched.setattr(probe.inspect, 'getsourcefile', lambda _: str(edited))
        probe.training_dtype('auto', 'cpu', args, 64)
    assert len(measured) == 3
    probe.training_dtype('auto', 'cpu', args, 64)  # the code as it is: still cached
    assert len(measured) == 3
    assert probe.training_dtype('float32', 'cpu', args, 64) == (torch.float32, 'given')
    monkeypatch.setattr(runtime, 'cpu_has_fast_bfloat16', lambda: False)
    assert probe.training_dtype('auto', 'cpu', args, 64)[0] == torch.float32 and len(measured) == 3


def test_the_probe_times_both_dtypes_and_leaves_the_random_state_alone():
    args = ModelArgs(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    times = probe.measure(args, 4)
    assert times['float32_s'] > 0 and times['bfloat16_s'] > 0
    assert torch.equal(torch.rand(3), expected)


def test_a_torch_without_the_private_checks_means_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, '_is_avx512_bf16_supported')
    monkeypatch.delattr(torch.cpu, '_is_amx_tile_supported')
    assert not runtime.cpu_has_fast_bfloat16()
    assert runtime.resolve_dtype('auto', 'cpu') == torch.float32


def test_compile_auto_only_on_cuda():
    assert runtime.resolve_compile('auto', 'cuda') and runtime.resolve_compile('auto', 'cuda:1')
    assert not runtime.resolve_compile('auto', 'cpu')
    assert runtime.resolve_compile(True, 'cpu') and runtime.resolve_compile('true', 'cpu')
    assert not runtime.resolve_compile('False', 'cuda')
    with pytest.raises(UserError, match='--compile=sometimes must be auto, True or False'):
        runtime.resolve_compile('sometimes', 'cpu')


def test_a_step_torch_cannot_compile_runs_eagerly_after_one_line(tmp_path):
    """As on a machine with no C++ compiler (in a process of its own: torch keeps the compiler it found)."""
    script = textwrap.dedent("""
        import torch
        from slm import runtime

        def scaled_sum(x, scale):
            return (x.sin() * scale).sum(dim=-1)

        step = runtime.compiled(scaled_sum)
        x = torch.randn(3, 5)
        torch.testing.assert_close(step(x, 2.0), scaled_sum(x, 2.0))
        print('first call done', flush=True)
        torch.testing.assert_close(step(x, 3.0), scaled_sum(x, 3.0))
        print('second call done', flush=True)
    """)
    env = dict(os.environ, CXX=str(tmp_path / 'no-such-g++'), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'cache'))
    done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == 'first call done\nsecond call done\n'
    warnings = [line for line in done.stderr.splitlines() if line.startswith('warning: ')]
    assert len(warnings) == 1  # eager from then on: no second warning
    assert warnings[0].startswith('warning: torch could not compile scaled_sum (')
    assert 'install a C++ compiler (g++)' in warnings[0] and '--compile=False' in warnings[0]


def test_threads_default_to_physical_cores_shared_by_the_processes(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(runtime, 'physical_cores', lambda: 8)
    assert runtime.resolve_threads(0) == 8
    assert runtime.resolve_threads(0, processes_on_machine=2) == 4
    assert runtime.resolve_threads(0, processes_on_machine=16) == 1
    assert runtime.resolve_threads(3) == 3  # forced
    monkeypatch.setenv('OMP_NUM_THREADS', '2')  # the user's (or torchrun's) setting wins over the default
    assert runtime.resolve_threads(0) == 2 and runtime.resolve_threads(5) == 5
    with pytest.raises(UserError, match='--threads=-1 must be 0'):
        runtime.resolve_threads(-1)


def test_a_busy_cpu_leaves_out_the_cores_other_work_holds(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(runtime, 'physical_cores', lambda: 2)
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    assert [runtime.resolve_threads(0, 1, busy) for busy in (0.0, 0.4, 0.9, 1.6, 2.0)] == [2, 2, 1, 1, 1]
    assert runtime.resolve_threads(2, 1, 2.0) == 2  # --threads wins
    assert runtime.busy_note(0.3, 2) is None  # an idle CPU: nothing to say
    assert runtime.busy_note(1.2, 1) == ('the CPU is busy: other work kept 1.2 of its 2 CPUs busy as training'
                                         ' started, so training takes 1 thread of its 2 cores: a thread that shares'
                                         ' its core with other work holds up the others (--threads=N sets the count)')
    assert runtime.busy_note(1.2, 2).endswith('with 2 threads a step can run several times slower than with fewer;'
                                              ' try --threads=1')
    monkeypatch.setattr(runtime, 'physical_cores', lambda: 1)
    assert runtime.busy_note(1.2, 1) is None  # one core: no choice to make


def test_busy_cpus_are_measured_from_the_machine():
    busy = runtime.measure_busy_cpus(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_training_on_a_busy_cpu_says_so_and_takes_fewer_threads(char_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(runtime, 'physical_cores', lambda: 2)
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(runtime, 'measure_busy_cpus', lambda seconds=0.2: 1.5)  # another job holds a core
    train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', *TINY_GPT, '--max_iters=2', '--eval_interval=2'])
    said = capsys.readouterr().out
    assert 'the CPU is busy: other work kept 1.5 of its 2 CPUs busy' in said and ', 1 CPU thread)' in said


def test_physical_cores_counts_no_more_than_the_usable_cpus():
    assert 1 <= runtime.physical_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize('choice, fused, foreach', [
    ('auto', True, False), ('fused', True, False), ('foreach', False, True), ('for_loop', False, False)])
def test_adamw_kernels(choice, fused, foreach):
    model = torch.nn.Linear(4, 3)
    optimizer = optim.make_optimizer(model, training.TrainConfig(adamw=choice, optimizer='adamw'), 'cpu')
    assert (optimizer.defaults['fused'], optimizer.defaults['foreach']) == (fused, foreach)


def test_fused_adamw_takes_the_same_steps_as_the_loop():
    torch.manual_seed(0)
    models = {kernel: torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 5))
              for kernel in ('for_loop', 'fused')}
    models['fused'].load_state_dict(models['for_loop'].state_dict())
    initial = {k: v.clone() for k, v in models['fused'].state_dict().items()}
    optimizers = {k: optim.make_optimizer(m, training.TrainConfig(adamw=k, learning_rate=1e-2, optimizer='adamw'), 'cpu')
                  for k, m in models.items()}
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
    for _ in range(5):
        for kernel, model in models.items():
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizers[kernel].step()
            optimizers[kernel].zero_grad()
    for (name, a), b in zip(models['for_loop'].named_parameters(), models['fused'].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.allclose(b, initial[name], atol=1e-3), name  # and they did move


@pytest.mark.parametrize('key, value, message', [
    ('adamw', 'sgd', '--adamw=sgd must be auto or one of fused, foreach, for_loop'),
    ('compile', 'maybe', '--compile=maybe must be auto, True or False'),
    ('threads', '-2', '--threads=-2 must be 0')])
def test_bad_runtime_choices_are_one_line_errors(char_data, tmp_path, key, value, message):
    with pytest.raises(UserError, match=message):
        train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', f'--{key}={value}', *TINY_GPT])


def test_training_records_its_wall_clock_and_keeps_counting_on_resume(char_data, tmp_path, capsys):
    common = [f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--eval_interval=10', '--log_interval=5',
              *TINY_GPT, '--dtype=auto']  # the path train.py picks on this machine
    train.main([*common, '--max_iters=10'])
    said = capsys.readouterr().out  # the path train.py chose, said once, and why where it measured
    if runtime.cpu_has_fast_bfloat16():
        assert re.search(r'\((float32|bfloat16) \(auto: (float32|bfloat16) measured [0-9.]+x as fast as', said)
    else:
        assert '(float32 (auto: no bfloat16 instructions on this CPU), eager, fused AdamW, ' in said
    assert ', eager, fused AdamW, ' in said
    first = [r['elapsed_s'] for r in metrics(tmp_path)]
    train.main([*common, '--max_iters=20', '--init_from=resume'])
    records = metrics(tmp_path)
    elapsed = [r['elapsed_s'] for r in records]
    assert len(elapsed) == len(records) > len(first) and elapsed[:len(first)] == first
    assert all(a <= b for a, b in zip(elapsed, elapsed[1:]))  # the resumed run counts on from the checkpoint
    assert elapsed[len(first)] >= first[-1]


def test_dtype_ablation_runs_one_variant_per_dtype(char_data):
    cfg = ablate.AblateConfig(data_dir=char_data, what='dtype')
    assert [(v.name, v.overrides) for v in ablate.variants(cfg)] == \
        [('float32', {'dtype': 'float32'}), ('bfloat16', {'dtype': 'bfloat16'})]
    with pytest.raises(UserError, match='--dtype=float8 is not one of'):
        ablate.variants(ablate.AblateConfig(data_dir=char_data, what='dtype', dtypes='float32,float8'))

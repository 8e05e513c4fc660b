"""tools/gpu_check.sh, the GPU check, in its dry run on the CPU: every step runs and the JSON holds its numbers, so
that the day a GPU is lent the check is one call that works."""
import json
import subprocess

from conftest import ROOT


def test_the_dry_run_runs_every_step_and_writes_the_numbers(tmp_path):
    out = tmp_path / 'check.json'
    done = subprocess.run([f'{ROOT}/tools/gpu_check.sh', '--cpu', str(out), f'--work_dir={tmp_path}/runs',
                           f'--data_dir={tmp_path}/akjv_char'], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    steps = report['steps']
    assert report['kind'] == 'cpu' and report['passed']
    assert list(steps) == ['prepare', 'train', 'torchrun', 'sample_eager', 'sample_compile', 'bench']
    assert all(s['rc'] == 0 and s['seconds'] > 0 for s in steps.values())
    assert steps['train']['numbers']['iterations'] == 6 and steps['train']['numbers']['tokens_per_s'] > 0
    assert steps['torchrun']['same_as_train']  # one process under torchrun trains the same model
    assert '--compile=False' in steps['train']['command'] and '--decode=compile' in steps['sample_compile']['command']
    bench = steps['bench']['bench']
    assert {r['model'] for r in bench['results']['train']} == {'gpt', 'lstm'} and bench['results']['generate']

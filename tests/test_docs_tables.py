"""The option tables in docs/*.md are what tools/docs_tables.py renders from the config dataclasses now."""
import dataclasses
import glob
import os
import re

import pytest

import configurator
from configurator import option
from conftest import ROOT, run_script
from slm import generation, training
from tools import docs_tables, import_graph
import train


def all_blocks():
    found = {}
    for path in docs_tables.docs_pages():
        with open(path, encoding='utf-8') as f:
            for block in docs_tables.blocks(f.read()):
                found.setdefault(block, []).append(os.path.relpath(path, ROOT))
    return found


def test_every_docs_table_is_what_the_generator_prints_now():
    for path in docs_tables.docs_pages():
        with open(path, encoding='utf-8') as f:
            text = f.read()
        assert docs_tables.regenerate(text) == (text, []), f"{path}: run python tools/docs_tables.py"
    assert docs_tables.main(['--check']) == 0


def test_every_scripts_config_class_has_a_table():
    expected = set()  # every class a script hands to configurator.parse
    for path in [*glob.glob(os.path.join(ROOT, '*.py')), os.path.join(ROOT, 'tools', 'bench_prepare.py')]:  # the scripts with option tables
        module = os.path.splitext(os.path.relpath(path, ROOT))[0].replace(os.sep, '.')
        with open(path, encoding='utf-8') as f:
            expected |= {f'{module}.{name}' for name in re.findall(r'\bparse\(([A-Z]\w*)', f.read())}
    assert {'train.TrainConfig', 'prepare.PrepareConfig', 'sample.SampleConfig', 'bench.BenchConfig',
            'ablate.AblateConfig', 'tools.bench_prepare.BenchConfig'} <= expected
    assert sorted(expected - set(all_blocks())) == []


def test_a_table_has_every_key_with_its_default_valid_values_and_comment():
    table = configurator.markdown_table(training.TrainConfig).splitlines()
    assert table[:2] == ['| key | default | valid values | what it does |', '|---|---|---|---|']
    assert len(table) == 2 + len(dataclasses.fields(training.TrainConfig))
    assert '| `--grad_clip` | `1.0` | float, 0 or more | clip the gradient norm to this (0 = off) |' in table
    assert any(row.startswith('| `--windowing` | `\'auto\'` | str, auto or one of random, sliding,') and
               row.endswith('how batches are cut (slm/batching.py); auto: random (GPT), streams (LSTM) |')
               for row in table)


def test_a_changed_default_makes_the_check_fail(monkeypatch, capsys):
    @dataclasses.dataclass
    class Changed(training.TrainConfig):
        learning_rate: float = option(5e-3, low=0, low_open=True)  # peak learning rate, reached after warmup
    monkeypatch.setattr(train, 'TrainConfig', Changed)
    assert docs_tables.main(['--check']) == 1
    assert 'docs/options.md: train.TrainConfig' in capsys.readouterr().err


def test_a_changed_comment_makes_the_check_fail(monkeypatch, capsys):
    real = configurator.class_source

    def edited(cls):
        return real(cls).replace('# clip the gradient norm to this (0 = off)', '# clip it (0 = off)')
    monkeypatch.setattr(configurator, 'class_source', edited)
    assert docs_tables.main(['--check']) == 1
    err = capsys.readouterr().err
    assert 'docs/options.md: train.TrainConfig' in err and 'docs/options.md: ablate.AblateConfig' in err
    assert 'sample.SampleConfig' not in err  # only the tables the comment is in


def test_regenerating_rewrites_a_stale_block_and_nothing_else(tmp_path, monkeypatch):
    page = tmp_path / 'page.md'
    page.write_text('# Title\n\ntext\n\n<!-- options: sample.SampleConfig -->\n| stale |\n<!-- /options -->\n\nend\n',
                    encoding='utf-8')
    monkeypatch.setattr(docs_tables, 'docs_pages', lambda: [str(page)])
    assert docs_tables.main(['--check']) == 1
    assert docs_tables.main([]) == 0 and docs_tables.main(['--check']) == 0
    import sample
    assert page.read_text(encoding='utf-8') == ('# Title\n\ntext\n\n<!-- options: sample.SampleConfig -->\n'
                                                 + configurator.markdown_table(generation.SampleConfig)
                                                 + '\n<!-- /options -->\n\nend\n')


@pytest.mark.parametrize('args, code', [(['--check'], 0), (['--bogus'], 2)])
def test_the_command_runs_as_the_docs_show(args, code):
    result = run_script(os.path.join('tools', 'docs_tables.py'), *args)
    assert result.returncode == code, result.stderr


# ---------------------------------------------------------------------------------------------------------
# the import graph in docs/architecture.md (tools/import_graph.py)

def test_the_import_graph_is_what_the_code_imports_now():
    result = run_script(os.path.join('tools', 'import_graph.py'), '--check')
    assert result.returncode == 0, result.stderr


def test_the_import_graph_reads_every_form_of_import(tmp_path):
    (tmp_path / 'slm' / 'bench').mkdir(parents=True)
    (tmp_path / 'docs').mkdir()
    files = {'train.py': 'import configurator\nfrom slm import a, b\n',
             'bench.py': 'from slm.bench import train as bench_train\nfrom slm.a import thing\n',
             'configurator.py': 'def run():\n    from slm import b\n',
             'model.py': '', 'slm/__init__.py': '', 'slm/a.py': 'import slm.b\nfrom . import b\n', 'slm/b.py': '',
             'slm/bench/__init__.py': '', 'slm/bench/train.py': 'from ..a import thing\nimport numpy\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding='utf-8')
    edges, _ = import_graph.graph(str(tmp_path))
    assert {m: t for m, t in edges.items() if t} == {
        'bench': {'slm.bench.train': True, 'slm.a': True}, 'configurator': {'slm.b': False},
        'slm.a': {'slm.b': True}, 'slm.bench.train': {'slm.a': True},
        'train': {'configurator': True, 'slm.a': True, 'slm.b': True}}
    page = tmp_path / 'docs' / 'architecture.md'
    page.write_text('# A\n\n<!-- import-graph -->\nstale\n<!-- /import-graph -->\n', encoding='utf-8')
    assert import_graph.main(['--check'], root=str(tmp_path)) == 1
    assert import_graph.main([], root=str(tmp_path)) == 0 and import_graph.main(['--check'], root=str(tmp_path)) == 0
    text = page.read_text(encoding='utf-8')
    assert 'train --> slm_a' in text and 'configurator -.-> slm_b' in text and 'slm_a --> slm_b' in text
    assert 'train --> configurator' not in text  # named in the table under the picture instead
    assert '| `configurator.py` | `train.py` |' in text

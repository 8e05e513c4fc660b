import dataclasses
import glob
import os

import pytest

import ablate
import bench
from configurator import UserError, check, field_comments, option, parse, positional, usage
from conftest import ROOT, run_script
import model
from slm import batching, corpus, generation, runtime, training
from tools import bench_prepare


SCRIPT_CONFIGS = (training.TrainConfig, generation.SampleConfig, corpus.PrepareConfig, bench.BenchConfig,
                  ablate.AblateConfig, bench_prepare.BenchConfig)


@dataclasses.dataclass
class Demo:
    name: str = positional('data/x')  # where things go
    size: int = 8         # how many
    rate: float = 0.5     # how fast
    flag: bool = False    # whether
    limit: int | None = None
    sizes: tuple[int, ...] = (1, 2)
    names: tuple[str, ...] = ('a',)


def test_defaults_file_then_overrides(tmp_path):
    config = tmp_path / 'c.py'
    config.write_text('size = 16\nrate = 1\n_private = "ignored"\n')  # an import is an error now: see below
    cfg = parse(Demo, [str(config), '--rate=2e-3', '--flag=True', 'data/y', '--sizes=(3,4)'])
    assert cfg == Demo(name='data/y', size=16, rate=0.002, flag=True, sizes=(3, 4))
    assert isinstance(parse(Demo, [str(config)]).rate, float)


def test_string_fields_take_the_text_as_written():
    assert parse(Demo, ['--name=123']).name == '123'
    assert parse(Demo, ['--name=In the beginning']).name == 'In the beginning'
    assert parse(Demo, ['--limit=None']).limit is None and parse(Demo, ['--limit=3']).limit == 3
    assert parse(Demo, ['--names=gpt:1:2, lstm:3']).names == ('gpt:1:2', 'lstm:3')  # commas split a tuple
    assert parse(Demo, ["--names=('x,y',)"]).names == ('x,y',) and parse(Demo, ['--sizes=5,6']).sizes == (5, 6)
    with pytest.raises(UserError, match="--sizes wants int, got 'x'"):
        parse(Demo, ['--sizes=5,x'])
    assert parse(Demo, ['--sizes=5']).sizes == (5,) and parse(Demo, ['--names=gpt']).names == ('gpt',)  # one item


def test_a_tuple_of_fixed_length_takes_no_single_value():
    @dataclasses.dataclass
    class Shape:
        shape: tuple[int, int] = (1, 2)

    with pytest.raises(UserError, match=r'--shape wants tuple\[int, int\], got 4'):
        parse(Shape, ['--shape=4'])


@pytest.mark.parametrize('argv, message', [
    (['--szie=3'], 'unknown config key --szie; did you mean size'),
    (['--size=big'], "--size wants int, got 'big'"),
    (['--size=2.5'], '--size wants int, got 2.5'),
    (['--flag=1'], '--flag wants bool, got 1'),
    (['--size'], 'has no value'),
    (['a', 'b'], "unexpected argument 'b'"),
])
def test_errors_name_the_key(argv, message):
    with pytest.raises(UserError, match=message.replace('(', r'\(')):
        parse(Demo, argv)


def test_unknown_key_in_a_config_file(tmp_path):
    config = tmp_path / 'c.py'
    config.write_text('sise = 3\n')
    with pytest.raises(UserError, match=r'sise \(in .*c.py\); did you mean size'):
        parse(Demo, [str(config)])
    with pytest.raises(UserError, match='not found'):
        parse(Demo, [str(tmp_path / 'missing.py')])


def test_help_lists_every_key_with_default_and_comment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(Demo, ['-h'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--name (positional)='data/x'  [str]  where things go" in out
    assert '--rate=0.5  [float]  how fast' in out and '--limit=None' in out


def test_cli_error_is_one_line_and_exit_2():
    for script in ('train.py', 'prepare.py', 'sample.py'):
        result = run_script(script, '--batch_sise=3')
        assert result.returncode == 2, script
        assert result.stderr.count('\n') == 1 and result.stderr.startswith('error: unknown config key')
        assert 'Traceback' not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# declared valid values

@dataclasses.dataclass
class Checked:
    rate: float = option(0.5, low=0, high=1, high_open=True)  # a share
    count: int = option(3, low=1)  # how many
    floor: float = option(0.0, low=0)  # at least nothing (0 = off)
    kind: str = option('auto', choices=('auto', ('x', 'y')))  # which one
    #                     (auto: x)
    mode: str = option('a', choices=('a', 'b'))  # a or b
    device: str = option('cpu', choices=('cpu', 'cuda', 'cuda:N'))  # where
    parts: str = option('all', choices=('all',), some_of=lambda: REGISTRY)  # some parts
    sizes: tuple[int, ...] = option((1, 2), low=1)  # each positive
    out: str = option('', extensions=('.txt', '.mid'))  # a file
    loud: str = option('q', choices=('q',), error='unknown {arg}: choose {valid}')  # worded its own way
    plain: float = 1.0


REGISTRY = {'one': 1, 'two': 2}


@pytest.mark.parametrize('argv, message', [
    (['--rate=1.0'], '--rate=1.0 must be in [0, 1)'),
    (['--rate=-0.5'], '--rate=-0.5 must be in [0, 1)'),
    (['--count=0'], '--count=0 must be positive'),
    (['--floor=-1'], '--floor=-1.0 must be 0 or more'),
    (['--kind=z'], '--kind=z must be auto or one of x, y'),
    (['--mode=c'], '--mode=c must be a or b'),
    (['--device=gpu'], '--device=gpu must be cpu, cuda or cuda:N'),
    (['--device=cuda:x'], '--device=cuda:x must be cpu, cuda or cuda:N'),
    (['--parts=one,three'], '--parts=one,three: unknown three; choose all or some of one,two'),
    (['--parts=,'], '--parts=, must be all or some of one,two'),
    (['--sizes=3,0'], '--sizes=(3, 0): each must be positive'),
    (['--out=song.mp3'], "--out=song.mp3 must be '' or a .txt or .mid file name"),
    (['--loud=x'], 'unknown --loud=x: choose q'),
    (['--plain=1e999'], '--plain=inf must be a finite number'),
    (['--rate=-1e999'], '--rate=-inf must be a finite number'),
])
def test_a_value_outside_its_declared_values_is_one_exact_line(argv, message):
    with pytest.raises(UserError) as error:
        parse(Checked, argv)
    assert str(error.value) == message


def test_values_inside_their_declared_values_pass():
    cfg = parse(Checked, ['--rate=0', '--count=1', '--floor=0', '--kind=y', '--device=cuda:12', '--parts=two, one',
                          '--sizes=1,9', '--out=a.TXT', '--plain=-3'])
    assert (cfg.kind, cfg.device, cfg.parts, cfg.sizes, cfg.out) == ('y', 'cuda:12', 'two, one', (1, 9), 'a.TXT')
    assert parse(Checked, ['--parts=all', '--out=']).parts == 'all'
    assert check(Checked()) == Checked()  # and check is what parse applies, also to hand-built configs
    with pytest.raises(UserError, match=r'--count=-2 must be positive'):
        check(Checked(count=-2))


def test_a_registry_read_when_checked_sees_what_registered_later(monkeypatch):
    monkeypatch.setitem(REGISTRY, 'three', 3)
    assert parse(Checked, ['--parts=three']).parts == 'three'
    assert 'some of one,two,three' in usage(Checked)


def test_a_list_default_is_copied_for_each_instance():
    @dataclasses.dataclass
    class Lists:
        sizes: list[int] = option([1, 2], low=1)  # sizes
    first, second = Lists(), Lists()
    first.sizes.append(3)
    assert second.sizes == [1, 2] and first.sizes is not second.sizes


def test_help_shows_type_valid_values_and_the_comment_lines_under_a_field():
    text = usage(Checked)
    assert "  --rate=0.5  [float, in [0, 1)]  a share" in text
    assert "  --kind='auto'  [str, auto or one of x, y]  which one (auto: x)" in text  # its second line joined
    assert "  --parts='all'  [str, all or some of one,two]  some parts" in text
    assert "  --sizes=(1, 2)  [tuple[int, ...], each positive]  each positive" in text
    assert "  --plain=1.0  [float]" in text


def test_every_scripts_defaults_are_valid_and_every_choice_is_in_its_help():
    for cls in SCRIPT_CONFIGS:
        check(cls())
    train_help, bench_help = usage(training.TrainConfig), usage(bench.BenchConfig)
    for name in (*batching.WINDOWINGS, *model.MODELS, *runtime.DTYPES, *runtime.ADAMW_KERNELS, 'cuda:N', 'mps'):
        assert name in train_help, name
    assert f"all or some of {','.join(bench.SECTIONS)}" in bench_help and 'profile' in bench.SECTIONS
    for cls in (training.TrainConfig, bench.BenchConfig, generation.SampleConfig, corpus.PrepareConfig):
        for f in dataclasses.fields(cls):
            assert f'--{f.name}' in usage(cls), (cls, f.name)


def test_every_script_field_has_a_comment():
    for cls in SCRIPT_CONFIGS:
        comments = field_comments(cls)
        assert [f.name for f in dataclasses.fields(cls) if not comments.get(f.name)] == [], cls
    assert field_comments(training.TrainConfig)['windowing'].endswith('auto: random (GPT), streams (LSTM)')


@pytest.mark.parametrize('script, argv, message', [
    ('train.py', ['--grad_clip=-1'], 'error: --grad_clip=-1.0 must be 0 or more'),
    ('train.py', ['--dropout=2.0'], 'error: --dropout=2.0 must be in [0, 1)'),
    ('train.py', ['--device=gpu0'], 'error: --device=gpu0 must be auto, cpu, cuda, cuda:N or mps'),
    ('sample.py', ['--out=sample.mp3'], "error: --out=sample.mp3 must be '' or a .txt, .md, .mid, .midi or .png"
                                        " file name"),
    ('prepare.py', ['data/x', '--val_fraction=1.5'], 'error: --val_fraction=1.5 must be in (0, 1)'),
    ('bench.py', ['--sections=train,speed'], 'error: --sections=train,speed: unknown speed; choose all or some'
                                             ' of peak,train,defaults,profile,windowing,study,sample,generate,'
                                             'stream,memory,busy,recipe'),
])
def test_a_bad_value_from_the_command_line_is_one_line_and_exit_2(script, argv, message):
    result = run_script(script, *argv)
    assert (result.returncode, result.stderr, result.stdout) == (2, message + '\n', '')


# ---------------------------------------------------------------------------------------------------------
# config files are read, never run

def test_config_file_literals_and_arithmetic(tmp_path):
    config = tmp_path / 'c.py'
    config.write_text('"""A docstring."""\n# a comment\nsize = 2 ** 4 * (3 - 1) // 2  # 16\nrate = -1e-3 / 2\n'
                      'flag = True\nlimit = None\nsizes = (1, 2,\n         3)\nnames = ["a", "b"]\nsize = 16\n')
    cfg = parse(Demo, [str(config)])
    assert cfg == Demo(size=16, rate=-0.0005, flag=True, limit=None, sizes=(1, 2, 3), names=('a', 'b'))


@pytest.mark.parametrize('line, what', [
    ('import os', 'an import'),
    ('size = len("abc")', 'a function call'),
    ('size = other', 'a name'),
    ('name = os.sep', 'an attribute'),
    ('name = f"x{1}"', 'an f-string'),
    ('if True:\n    size = 3', 'an if statement'),
    ('for i in (1,):\n    pass', 'a for loop'),
    ('name = "a" + "b"', 'arithmetic on something other than numbers'),
    ('size = 7 % 2', 'an operator other than + - * / // **'),
    ('size = 1 / 0', 'arithmetic that fails: division by zero'),
    ('size = 10 ** 10 ** 10', 'a number too large'),
    ('size += 1', 'an augmented assignment'),
    ('size = rate = 1', 'an assignment to something other than one name'),
])
def test_anything_but_literal_assignments_is_a_one_line_error_with_file_and_line(tmp_path, line, what):
    config = tmp_path / 'c.py'
    config.write_text(f'size = 3\n\n{line}\n')
    with pytest.raises(UserError) as error:
        parse(Demo, [str(config)])
    assert str(error.value) == f'{config}:3: only assignments of literal values are allowed (got {what})'


def test_nothing_in_a_config_file_runs(tmp_path):
    marker = tmp_path / 'ran'
    config = tmp_path / 'evil.py'
    config.write_text(f'size = 3\nopen({str(marker)!r}, "w").write("x")\nraise SystemExit(7)\n')
    result = run_script('train.py', str(config), f'--out_dir={tmp_path / "out"}')
    assert result.returncode == 2 and not marker.exists() and not (tmp_path / 'out').exists()
    assert result.stderr == f'error: {config}:2: only assignments of literal values are allowed (got a function' \
                            f' call)\n'


def test_config_file_values_are_checked_naming_the_file_and_line(tmp_path):
    config = tmp_path / 'c.py'
    config.write_text('size = 3\n\nsizes = (1, "x")\n')
    with pytest.raises(UserError, match=r"c.py:3: --sizes wants int, got 'x'"):
        parse(Demo, [str(config)])
    config.write_text('count = 2\nrate = 1.5\n')
    with pytest.raises(UserError) as error:
        parse(Checked, [str(config)])
    assert str(error.value) == f'{config}:2: --rate=1.5 must be in [0, 1)'
    assert parse(Checked, [str(config), '--rate=0.25']).rate == 0.25  # an override on the command line wins
    config.write_text('size = 3\nsise = 4\n')
    with pytest.raises(UserError, match=r'unknown config key sise \(in line 2 of .*c.py\); did you mean size'):
        parse(Demo, [str(config)])
    config.write_text('size = (\n')
    with pytest.raises(UserError, match=r'c.py:1: '):
        parse(Demo, [str(config)])


def test_every_config_file_in_the_repository_parses_with_its_script():
    paths = sorted(glob.glob(os.path.join(ROOT, 'config', '*.py')))
    assert paths
    for path in paths:
        cfg = parse(training.TrainConfig, [path])
        assert cfg.out_dir != training.TrainConfig().out_dir, path  # it was applied


def test_a_device_name_that_fits_but_is_not_here_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(runtime.torch.backends.mps, 'is_available', lambda: False)
    with pytest.raises(UserError, match=r'^--device=mps but MPS \(Apple\'s GPU\) is not available here'):
        runtime.resolve_device('mps')
    monkeypatch.setattr(runtime.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, 'device_count', lambda: 2)
    assert runtime.resolve_device('cuda:1') == 'cuda:1'
    with pytest.raises(UserError, match=r'^--device=cuda:2 but this machine has 2 CUDA device\(s\): use cuda:0 to'
                                        r' cuda:1, or cuda$'):
        runtime.resolve_device('cuda:2')

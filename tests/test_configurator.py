import dataclasses

import pytest

from configurator import UserError, parse, positional
from conftest import run_script


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
    config.write_text('size = 16\nrate = 1\n_private = "ignored"\nimport os\n')
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

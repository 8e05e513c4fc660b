"""Command-line configuration shared by every script.

Defaults live in one @dataclass per script. A run is configured in three layers, later ones winning:

    the dataclass defaults  ->  config files (positional *.py, plain assignments)  ->  --key=value overrides

    python train.py config/train_akjv.py --batch_size=500 --compile=True

Values are Python literals checked against the field's type; a string field takes the text as written.
A field marked positional (prepare.py's data directory) also takes one bare positional argument.
`-h` lists every key with its default and the comment written beside it in the dataclass.

User mistakes raise UserError; `run` turns that into one line on stderr and exit code 2.
"""
import ast
import dataclasses
import difflib
import inspect
import os
import re
import runpy
import signal
import sys
import types
import typing


class UserError(Exception):
    """A mistake in the user's input or environment: reported as one line, exit code 2, no traceback."""


def positional(default):
    """A dataclass field that may also be given as the script's one bare positional argument."""
    return dataclasses.field(default=default, metadata={'positional': True})


def parse(config_class, argv=None):
    """Build a config_class instance from the defaults, config files and --key=value overrides in argv."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if '-h' in argv or '--help' in argv:
        print(usage(config_class))
        raise SystemExit(0)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    values, positional_given = {}, set()
    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise UserError(f"argument {arg!r} has no value: write --{key}=VALUE")
            _check_known(key, fields, f'--{key}')
            values[key] = _convert(key, _literal(text, hints[key]), hints[key])
        elif arg.endswith('.py'):
            for key, value in _read_config_file(arg).items():
                _check_known(key, fields, f'{key} (in {arg})')
                values[key] = _convert(key, value, hints[key])
        else:
            slot = [name for name, f in fields.items() if f.metadata.get('positional')]
            if not slot or slot[0] in positional_given:
                raise UserError(f"unexpected argument {arg!r}: options are written --key=value (see -h)")
            positional_given.add(slot[0])
            values[slot[0]] = _convert(slot[0], arg, hints[slot[0]])
    return config_class(**values)


def run(main):
    """Call main(); a UserError becomes one line on stderr and exit code 2, Ctrl-C the line "interrupted" and 130."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, _exit_at_once)
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    finally:
        # from here Python shuts down (joins worker processes, runs atexit): a Ctrl-C there ends it at once, rather
        # than as a traceback from the middle of that
        signal.signal(signal.SIGINT, _exit_at_once)


def _exit_at_once(signum, frame):
    os._exit(128 + signum)


def usage(config_class):
    """Every key with its type, default and the comment written beside it in the dataclass source."""
    # a dataclass that extends another (ablate.py's extends train.py's) documents its fields in both sources
    sources = ''.join(inspect.getsource(c) for c in reversed(config_class.__mro__) if dataclasses.is_dataclass(c))
    comments = dict(re.findall(r'^\s+(\w+)\s*:[^#\n]*#\s*(.*)$', sources, re.M))
    hints = typing.get_type_hints(config_class)
    lines = [f"usage: {sys.argv[0]} [config.py ...] [--key=value ...]", "", "keys (default, then what it does):"]
    for f in dataclasses.fields(config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = f.name + (' (positional)' if f.metadata.get('positional') else '')
        lines.append(f"  --{name}={default!r}  [{_type_name(hints[f.name])}]  {comments.get(f.name, '')}".rstrip())
    return '\n'.join(lines)


def _check_known(key, fields, where):
    if key not in fields:
        near = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see -h for the valid keys"
        raise UserError(f"unknown config key {where}{hint}")


def _read_config_file(path):
    try:
        namespace = runpy.run_path(path)
    except FileNotFoundError:
        raise UserError(f"config file {path} not found")
    except SyntaxError as error:
        raise UserError(f"config file {path} line {error.lineno}: {error.msg}")
    return {k: v for k, v in namespace.items() if not k.startswith('_') and not isinstance(v, types.ModuleType)}


def _literal(text, hint):
    """Parse text as a Python literal, except where the field is a plain string: then it is the text itself."""
    if hint is str:
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text in ('true', 'false'):
            return text == 'true'
        if typing.get_origin(hint) in (tuple, list):  # --names=a,b for a tuple of strings
            item = (typing.get_args(hint) or (str,))[0]
            return [_literal(part.strip(), item) for part in text.split(',')]
        return text  # let the type check below name the problem


def _convert(key, value, hint):
    """Return value as the field's type, or raise a UserError naming the key and the type it wants."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
        if typing.get_origin(option) in (tuple, list) and isinstance(value, (tuple, list)):
            item = (typing.get_args(option) or (object,))[0]
            return typing.get_origin(option)(value if item is object else
                                             (_convert(key, v, item) for v in value))
    raise UserError(f"--{key} wants {_type_name(hint)}, got {value!r}")


def _type_name(hint):
    return getattr(hint, '__name__', None) if not typing.get_args(hint) else str(hint).replace('typing.', '')

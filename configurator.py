"""Command-line configuration shared by every script.

Defaults live in one @dataclass per script. A run is configured in three layers, later ones winning:

    the dataclass defaults  ->  config files (positional *.py)  ->  --key=value overrides

    python train.py config/train_akjv.py --batch_size=500 --compile=True

A config file is read, never run: each statement must be `key = literal`, the literal a number, string,
boolean, None, a tuple/list/dict of those, or arithmetic on numbers (+ - * / // **, parentheses); comments and
a docstring may go with them. Anything else (an import, a call, a name, an f-string, an if) is an error naming
the file and line. Names starting with an underscore are ignored.

Values are Python literals checked against the field's type; a string field takes the text as written.
A field marked positional (prepare.py's data directory) also takes one bare positional argument.

Each field declares its valid values beside its default with option(), and `parse` checks them, right after
building the config, for every script (`check` does the same for a config built in code):

    grad_clip: float = option(1.0, low=0)  # clip the gradient norm to this (0 = off)
    dropout: float = option(0.0, low=0, high=1, high_open=True)  # ...   -> "--dropout=2.0 must be in [0, 1)"
    windowing: str = option('auto', choices=('auto', batching.WINDOWINGS))  # auto, or one of the registry's
    sections: str = option('all', choices=('all',), some_of=lambda: SECTIONS)  # all, or a comma list of them
    out: str = option('', extensions=('.json',))  # '' (no file) or a file name with one of these endings

Bounds apply to each item of a tuple or list field. A collection inside choices is a registry the code keeps
(its names are listed, never retyped); a callable is read when checked, for a registry that fills after the
class is defined; an `N` in a choice stands for a whole number (`cuda:N`). Every float must be finite. A value
outside its field's values is one line, prefixed with the config file and line that set it if one did;
`error=` words it otherwise where a script keeps an older wording (the UNKNOWN wording, say).

`-h` lists every key with its default, type, valid values and the comment written beside it in the dataclass,
joined with the indented comment lines under it (`#` and two or more spaces); markdown_table renders the same
as a Markdown table, which tools/docs_tables.py writes into docs/.

User mistakes raise UserError; `run` turns that into one line on stderr and exit code 2.
"""
import ast
import dataclasses
import difflib
import inspect
import io
import math
import operator
import re
import sys
import tokenize
import types
import typing

UNKNOWN = 'unknown {arg}: choose {valid}'  # an error= wording for choices: "unknown --windowing=x: choose ..."


class UserError(Exception):
    """A mistake in the user's input or environment: reported as one line, exit code 2, no traceback."""


def positional(default):
    """A dataclass field that may also be given as the script's one bare positional argument."""
    return dataclasses.field(default=default, metadata={'positional': True})


@dataclasses.dataclass(frozen=True)
class Valid:
    """The valid values of one field: see option."""
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    choices: object = None     # values, or collections of them ("auto or one of ..."), or a callable giving them
    some_of: object = None     # a comma-separated list of these (a collection, or a callable giving one)
    extensions: tuple = ()     # a file name ending in one of these ('' = no file)
    error: str = ''            # the message instead of the generic one: {arg} {key} {value} {valid} {bad} {choices}

    def describe(self, hint=None, each=True):
        """What the valid values are, as -h, the docs and the error messages say it (a range of a tuple or list
        field is each item's, and says so when each)."""
        parts = []
        if self.low is not None or self.high is not None:
            is_sequence = typing.get_origin(hint) in (tuple, list)
            parts.append(('each ' if each and is_sequence else '') + self._describe_range(hint))
        if self.choices is not None:
            parts.append(_describe_choices(_resolve(self.choices)))
        if self.some_of is not None:
            parts.append(f"some of {','.join(map(str, _flat(_resolve(self.some_of))))}")
        if self.extensions:
            *rest, last = self.extensions
            parts.append(f"'' or a {', '.join(rest)} or {last} file name" if rest else f"'' or a {last} file name")
        return ' or '.join(parts)

    def _describe_range(self, hint):
        low, high = (f'{x:g}' if isinstance(x, float) else str(x) for x in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.high is not None:
            return f"less than {high}" if self.high_open else f"{high} or less"
        item = (typing.get_args(hint) or (hint,))[0] if typing.get_origin(hint) in (tuple, list) else hint
        if typing.get_origin(item) in (typing.Union, types.UnionType):  # int | None: None is never checked
            item = next(t for t in typing.get_args(item) if t is not type(None))
        if (self.low == 0 and self.low_open) or (self.low == 1 and not self.low_open and item is int):
            return 'positive'
        return f"more than {low}" if self.low_open else f"{low} or more"

    def problem(self, key, value, hint=None):
        """The one-line message for value, or None when it is valid (None itself always is)."""
        found = None if value is None else self._unknown(value)
        if found is None:
            return None
        bad, generic = found
        members = _flat(_resolve(self.some_of if self.some_of is not None else self.choices or ()))
        return (self.error or generic).format(
            arg=f'--{key}={value}', key=key, value=value, valid=self.describe(hint, each=False), bad=bad,
            choices=', '.join(map(str, members)))

    def _unknown(self, value):
        """None if value is valid, else (the invalid part of it, the generic message for it)."""
        if self.choices is not None and self._is_choice(value):
            return None
        if self.some_of is not None:
            members = _flat(_resolve(self.some_of))
            items = listed(value)
            unknown = [s for s in items if not any(_matches(s, c) for c in members)]
            if unknown:
                return ', '.join(unknown), '{arg}: unknown {bad}; choose {valid}'
            return None if items else (value, '{arg} must be {valid}')
        if self.choices is not None:
            return value, '{arg} must be {valid}'
        if self.extensions:
            is_known = not value or str(value).lower().endswith(tuple(e.lower() for e in self.extensions))
            return None if is_known else (value, '{arg} must be {valid}')
        if isinstance(value, (tuple, list)):
            out = [str(v) for v in value if not self._in_range(v)]
            return (', '.join(out), '{arg}: each must be {valid}') if out else None
        return None if self._in_range(value) else (value, '{arg} must be {valid}')

    def _is_choice(self, value):
        return any(_matches(value, c) for c in _flat(_resolve(self.choices)))

    def _in_range(self, value):
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def listed(text):
    """The items of a comma-separated option (some_of's), stripped, empty ones dropped."""
    return [item.strip() for item in str(text).split(',') if item.strip()]


def option(default, *, low=None, high=None, low_open=False, high_open=False, choices=None, some_of=None,
           extensions=(), error='', metadata=None):
    """A dataclass field with its valid values: a range [low, high] (each bound optional, open on request),
    choices, a comma-separated list of some_of, or a file name with one of extensions; parse checks them.
    error, when given, replaces the generic message (placeholders: see Valid.error). A list or dict default
    is copied for each instance. metadata: more of the field's metadata (model.recipe_option's)."""
    metadata = {'valid': Valid(low, high, low_open, high_open, choices, some_of, tuple(extensions), error),
                **(metadata or {})}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def given_keys(argv):
    """The keys an argument list sets with --key=value (not those of its config files), in order."""
    return list(dict.fromkeys(arg[2:].partition('=')[0] for arg in argv or () if arg.startswith('--') and '=' in arg))


def config_file_values(config_class, path):
    """{key: value} of the keys a config file sets, read and checked as parse reads them."""
    cfg = parse(config_class, [path])
    return {key: getattr(cfg, key) for key in _read_config_file(path)}


def parse(config_class, argv=None):
    """Build a config_class instance from the defaults, config files and --key=value overrides in argv, and
    check every value against its field's declared valid values."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if '-h' in argv or '--help' in argv:
        print(usage(config_class))
        raise SystemExit(0)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    values, where, positional_given = {}, {}, set()
    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise UserError(f"argument {arg!r} has no value: write --{key}=VALUE")
            values[key] = parse_value(config_class, key, text)
            where.pop(key, None)
        elif arg.endswith('.py'):
            for key, (value, line) in _read_config_file(arg).items():
                _check_known(key, fields, f'{key} (in line {line} of {arg})')
                try:
                    values[key] = _convert(key, value, hints[key])
                except UserError as error:
                    raise UserError(f"{arg}:{line}: {error}")
                where[key] = f'{arg}:{line}'
        else:
            slot = [name for name, f in fields.items() if f.metadata.get('positional')]
            if not slot or slot[0] in positional_given:
                raise UserError(f"unexpected argument {arg!r}: options are written --key=value (see -h)")
            positional_given.add(slot[0])
            values[slot[0]] = _convert(slot[0], arg, hints[slot[0]])
    return check(config_class(**values), where)


def parse_value(config_class, key, text):
    """The value --key=text gives config_class's field key, in the field's type (a UserError for an unknown key
    or a value of another type; its valid values are check's)."""
    _check_known(key, {f.name: f for f in dataclasses.fields(config_class)}, f'--{key}')
    hint = typing.get_type_hints(config_class)[key]
    return _convert(key, _literal(text, hint), hint)


def check(cfg, where=None):
    """Return cfg if every field holds one of its declared valid values (and every float is finite), else
    raise a UserError for the first that does not; where maps a key to the config file:line that set it."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            message = f"--{f.name}={value} must be a finite number"
        else:
            message = f.metadata['valid'].problem(f.name, value, hints[f.name]) if 'valid' in f.metadata else None
        if message:
            raise UserError(f"{where[f.name]}: {message}" if where and f.name in where else message)
    return cfg


def run(main):
    """Call main(); a UserError becomes one line on stderr and exit code 2, Ctrl-C the line "interrupted" and 130."""
    from slm import reliability  # here, not at the top: it imports UserError from this module
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        reliability.exit_at_once_on_ctrl_c()
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    finally:
        reliability.exit_at_once_on_ctrl_c()  # from here Python shuts down: a second Ctrl-C is no traceback



def usage(config_class):
    """Every key with its default, type, valid values and the comment written beside it in the dataclass."""
    lines = [f"usage: {sys.argv[0]} [config.py ...] [--key=value ...]",
             "config files hold key = literal lines; --key=value overrides win", "",
             "keys (default, [type, valid values], then what it does):"]
    for f, default, valid, comment in describe(config_class):
        name = f.name + (' (positional)' if f.metadata.get('positional') else '')
        lines.append(f"  --{name}={default!r}  [{valid}]  {comment}".rstrip())
    return '\n'.join(lines)


def markdown_table(config_class):
    """config_class's keys as a Markdown table (key | default | valid values | what it does): the docs' option
    tables, from the same source as -h."""
    def cell(text):
        return text.replace('|', r'\|')
    rows = ['| key | default | valid values | what it does |', '|---|---|---|---|']
    for f, default, valid, comment in describe(config_class):
        key = f"`{f.name}` (positional)" if f.metadata.get('positional') else f"`--{f.name}`"
        rows.append(f"| {key} | `{cell(repr(default))}` | {cell(valid)} | {cell(comment)} |")
    return '\n'.join(rows)


def describe(config_class):
    """(field, default, 'type, valid values', comment) of every field of config_class, in order."""
    comments = field_comments(config_class)
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        valid = f.metadata['valid'].describe(hints[f.name]) if 'valid' in f.metadata else ''
        yield f, default, ', '.join(filter(None, [_type_name(hints[f.name]), valid])), comments.get(f.name, '')


def field_comments(config_class):
    """{field: its comment} from the dataclass source (a dataclass that extends another documents its fields in
    both sources): the comment on the field's line, joined with the comment-only lines right under it whose
    text is indented (`#` and two or more spaces; a section heading under a field has one space)."""
    comments = {}
    for c in reversed(config_class.__mro__):
        if dataclasses.is_dataclass(c):
            comments.update(_source_comments(class_source(c)))
    return comments


def class_source(cls):
    """The source text of cls (a function of its own so that tests can change what the docs are made from)."""
    return inspect.getsource(cls)


def _source_comments(source):
    by_line = {token.start[0]: token.string[1:] for token in
               tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    comments, field = {}, None
    for number, line in enumerate(source.splitlines(), 1):
        match = re.match(r'\s+(\w+)\s*:', line)
        text = by_line.get(number, '')
        if match:
            field, comments[match[1]] = match[1], text.strip()
        elif field and line.lstrip().startswith('#') and text.startswith('  ') and text.strip():
            comments[field] = f'{comments[field]} {text.strip()}'.lstrip()
        else:
            field = None
    return comments


def _check_known(key, fields, where):
    if key not in fields:
        near = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see -h for the valid keys"
        raise UserError(f"unknown config key {where}{hint}")


# ---------------------------------------------------------------------------------------------------------
# config files: assignments of literal values, read with ast and never executed

ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
WHAT = {ast.Call: 'a function call', ast.Name: 'a name', ast.Attribute: 'an attribute', ast.JoinedStr: 'an f-string',
        ast.Import: 'an import', ast.ImportFrom: 'an import', ast.If: 'an if statement', ast.For: 'a for loop',
        ast.While: 'a while loop', ast.FunctionDef: 'a function definition', ast.ClassDef: 'a class definition',
        ast.Subscript: 'a subscript', ast.Lambda: 'a lambda', ast.With: 'a with statement', ast.Try: 'a try',
        ast.Raise: 'a raise',
        ast.AugAssign: 'an augmented assignment', ast.AnnAssign: 'an annotated assignment',
        ast.BinOp: 'an operator other than + - * / // **', ast.Set: 'a set', ast.Compare: 'a comparison',
        ast.BoolOp: 'a boolean operator', ast.IfExp: 'a conditional expression'}


class _NotLiteral(Exception):
    def __init__(self, node, what=None):
        kind = 'statement' if isinstance(node, ast.stmt) else 'expression'
        super().__init__(what or WHAT.get(type(node), f'a {type(node).__name__} {kind}'))
        self.line = getattr(node, 'lineno', None)


def _read_config_file(path):
    """{key: (value, line)} of a config file's assignments, in order; nothing in it runs."""
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except FileNotFoundError:
        raise UserError(f"config file {path} not found")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"config file {path} cannot be read: {getattr(error, 'strerror', None) or error}")
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        raise UserError(f"{path}:{error.lineno}: {error.msg}")
    except ValueError as error:  # a null byte, say
        raise UserError(f"config file {path}: {error}")
    values = {}
    for i, statement in enumerate(tree.body):
        try:
            if i == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                    and isinstance(statement.value.value, str):
                continue  # the docstring
            if not isinstance(statement, ast.Assign):
                raise _NotLiteral(statement.value if isinstance(statement, ast.Expr) else statement)
            if len(statement.targets) != 1 or not isinstance(statement.targets[0], ast.Name):
                raise _NotLiteral(statement, 'an assignment to something other than one name')
            value = _literal_value(statement.value)
        except _NotLiteral as error:
            raise UserError(f"{path}:{error.line or statement.lineno}: only assignments of literal values are"
                            f" allowed (got {error})")
        name = statement.targets[0].id
        if not name.startswith('_'):
            values.pop(name, None)  # a key assigned twice: the later one, in its place
            values[name] = (value, statement.lineno)
    return values


def _literal_value(node):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float, str)) or node.value is None:
            return node.value
        raise _NotLiteral(node, f'a {type(node.value).__name__} constant')
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal_value(item) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if None in node.keys:
            raise _NotLiteral(node, 'a ** in a dict')
        return {_literal_value(k): _literal_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _number(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                and right * left.bit_length() > 100_000:
            raise _NotLiteral(node, 'a number too large')
        try:
            return ARITHMETIC[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as error:
            raise _NotLiteral(node, f'arithmetic that fails: {error}')
    raise _NotLiteral(node)


def _number(node):
    value = _literal_value(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _NotLiteral(node, 'arithmetic on something other than numbers')
    return value


# ---------------------------------------------------------------------------------------------------------
# values

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


def _any_length(hint):
    """Whether hint is a sequence of any length: list[X], or tuple[X, ...] (not a tuple of fixed arity)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


def _convert(key, value, hint):
    """Return value as the field's type, or raise a UserError naming the key and the type it wants."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option_type in options:
        if option_type is type(None) and value is None:
            return None
        if option_type is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option_type in (int, str, bool) and type(value) is option_type:
            return value
        if typing.get_origin(option_type) in (tuple, list) and isinstance(value, (tuple, list)):
            item = (typing.get_args(option_type) or (object,))[0]
            return typing.get_origin(option_type)(value if item is object else
                                                  (_convert(key, v, item) for v in value))
        if _any_length(option_type) and value is not None:  # --counts=500: a list of one
            return _convert(key, (value,), option_type)
    raise UserError(f"--{key} wants {_type_name(hint)}, got {value!r}")


def _type_name(hint):
    return getattr(hint, '__name__', None) if not typing.get_args(hint) else str(hint).replace('typing.', '')


def _resolve(choices):
    return choices() if callable(choices) else choices


def _flat(choices):
    """The values of choices, a collection nested one deep (('auto', WINDOWINGS) -> 'auto', 'random', ...)."""
    flat = []
    for item in choices:
        flat.extend(item if isinstance(item, (tuple, list, dict, set, frozenset)) else [item])
    return flat


def _describe_choices(choices):
    """('auto', ('a', 'b')) -> 'auto or one of a, b'; ('a', 'b', 'c') -> 'a, b or c'."""
    def show(value):
        return repr(value) if value == '' else str(value)
    plain = [show(c) for c in choices if not isinstance(c, (tuple, list, dict, set, frozenset))]
    nested = [show(c) for item in choices if isinstance(item, (tuple, list, dict, set, frozenset)) for c in item]
    if nested:
        return f"{', '.join(plain)} or one of {', '.join(nested)}" if plain else f"one of {', '.join(nested)}"
    return ' or '.join([', '.join(plain[:-1]), plain[-1]]) if len(plain) > 1 else ''.join(plain)


def _matches(value, choice):
    """Whether value is choice: equal, or equal as text ('True' for True), or fits its N (a whole number)."""
    if value == choice and type(value) is type(choice) or str(value) == str(choice):
        return True
    return isinstance(choice, str) and bool(re.search(r'\bN\b', choice)) and \
        re.fullmatch(re.sub(r'\bN\b', r'\\d+', re.escape(choice)), str(value)) is not None

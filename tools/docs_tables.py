"""Regenerate the option tables in docs/*.md from the scripts' config dataclasses.

    python tools/docs_tables.py           # rewrite every stale table in place
    python tools/docs_tables.py --check   # exit 1, naming the stale tables, if any differs from the code

A table is the block between `<!-- options: MODULE.CLASS -->` and `<!-- /options -->`, for example
`<!-- options: train.TrainConfig -->`; configurator.markdown_table renders it from the class's fields and the
comments beside them, the same source as the script's -h.
"""
import glob
import importlib.util
import os
import re
import sys

import configurator


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK = re.compile(r'(<!-- options: ([\w.]+)\.(\w+) -->\n)(.*?)(<!-- /options -->)', re.S)


def docs_pages():
    return sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def table(module, name):
    """The option table of the config class name in a script: module is its path from the root, in dots (train,
    tools.bench_prepare); the script is read from its file, as `python SCRIPT -h` reads it."""
    if module not in sys.modules:  # registered, so that inspect finds the class's source (its field comments)
        spec = importlib.util.spec_from_file_location(module, os.path.join(ROOT, *module.split('.')) + '.py')
        sys.modules[module] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[module])
    return configurator.markdown_table(getattr(sys.modules[module], name))


def regenerate(text):
    """text with every options block rendered from the code now, and the names of the blocks that changed."""
    stale = []

    def render(match):
        opening, module, name, body, closing = match.groups()
        fresh = table(module, name) + '\n'
        if body != fresh:
            stale.append(f'{module}.{name}')
        return opening + fresh + closing
    return BLOCK.sub(render, text), stale


def blocks(text):
    """The MODULE.CLASS names of text's options blocks, in order."""
    return [f'{module}.{name}' for _, module, name, _, _ in BLOCK.findall(text)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    is_check = argv == ['--check']
    if argv and not is_check:
        print("usage: python tools/docs_tables.py [--check]", file=sys.stderr)
        return 2
    all_stale = []
    for path in docs_pages():
        with open(path, encoding='utf-8') as f:
            text = f.read()
        fresh, stale = regenerate(text)
        name = os.path.relpath(path, ROOT)
        all_stale += [f'{name}: {block}' for block in stale]
        if stale and not is_check:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(fresh)
            print(f"regenerated {name}: {', '.join(stale)}")
    if is_check and all_stale:
        print(f"stale option tables (run python tools/docs_tables.py): {'; '.join(all_stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

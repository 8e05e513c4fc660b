"""Draw which of the project's modules imports which, as a mermaid flowchart in docs/architecture.md.

    python tools/import_graph.py           # redraw the picture in place
    python tools/import_graph.py --check   # exit 1 if the picture differs from what the code imports now

The modules are the root's .py files (the commands, model.py, configurator.py) and slm/**/*.py, read with ast,
never run; tests/ and tools/ are left out. The picture is the block between `<!-- import-graph -->` and
`<!-- /import-graph -->`: a solid arrow is an import at a module's top, a dotted one an import made only inside a
function (when it runs: to break a cycle, or to load a heavy library late). The modules most others import
(UNDRAWN) get no arrows in, which would hide the rest; the table under the picture, generated with it, names
who imports them.
"""
import ast
import glob
import os
import re
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join('docs', 'architecture.md')
BLOCK = re.compile(r'(<!-- import-graph -->\n)(.*?)(<!-- /import-graph -->)', re.S)
BESIDE = ('configurator', 'model')  # the two modules at the root that are not commands
# What most modules stand on: their arrows in would hide the rest, so the picture draws none and the table under it
# names who imports them.
UNDRAWN = ('configurator', 'model', 'slm.runtime', 'slm.storage')
GROUPS = (  # (subgraph id, title, takes(module, its file)), each module in the first group that takes it
    ('commands', 'the commands, at the root', lambda name, file: '/' not in file and name not in BESIDE),
    ('beside', 'beside them, at the root', lambda name, file: name in BESIDE),
    ('bench', "slm/bench/: bench.py's sections", lambda name, file: file.startswith('slm/bench/')),
    ('package', 'slm/: what the commands share', lambda name, file: file.startswith('slm/')),
)


def module_paths(root=ROOT):
    """{module name: path} of the project's own modules: `train`, `slm.training`, `slm.bench.train`; a
    package's __init__.py is the package itself (`slm`, `slm.bench`)."""
    paths = glob.glob(os.path.join(root, '*.py')) + glob.glob(os.path.join(root, 'slm', '**', '*.py'), recursive=True)
    modules = {}
    for path in paths:
        parts = os.path.splitext(os.path.relpath(path, root))[0].split(os.sep)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        modules['.'.join(parts)] = path
    return modules


def imports(name, path, modules):
    """{project module that module name (at path) imports: whether at the top, not only inside a function}."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    package = name if os.path.basename(path) == '__init__.py' else name.rpartition('.')[0]
    found = {}

    def add(target, is_top):
        if target in modules and target != name:
            found[target] = found.get(target, False) or is_top

    def visit(node, is_top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):  # import slm.x.y: slm, slm.x and slm.x.y are run; the last is meant
                for alias in child.names:
                    parts = alias.name.split('.')
                    add(next((m for i in range(len(parts), 0, -1) if (m := '.'.join(parts[:i])) in modules), None),
                        is_top)
            elif isinstance(child, ast.ImportFrom):  # from slm import a: slm.a if that is a module, else slm
                base = child.module or ''
                if child.level:  # relative: from this module's package, up level - 1 packages
                    anchor = package.split('.')[:len(package.split('.')) - (child.level - 1)]
                    base = '.'.join(anchor + ([base] if base else []))
                for alias in child.names:
                    add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base, is_top)
            visit(child, is_top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    visit(tree, True)
    return found


def graph(root=ROOT):
    """{module: {imported module: is_top}} over every project module, and {module: its file from root}."""
    modules = module_paths(root)
    edges = {name: imports(name, path, modules) for name, path in sorted(modules.items())}
    return edges, {name: os.path.relpath(path, root).replace(os.sep, '/') for name, path in modules.items()}


def node_id(name):
    return name.replace('.', '_')


def label(name, file, importers):
    """What a module's node shows: its file's name (a package: its folder's), and how many import it where the
    picture draws no arrows into it."""
    shown = file.split('/')[-2] + '/' if file.endswith('/__init__.py') else file.split('/')[-1]
    return f'{shown}<br/>imported by {len(importers)}' if name in UNDRAWN else shown


def mermaid(edges, files):
    """The markdown of the picture and the table under it, for what graph() returns."""
    importers = {name: [m for m, targets in edges.items() if name in targets] for name in edges}
    lines, placed = ['```mermaid', 'flowchart TD'], set()
    for group, title, takes in GROUPS:
        members = [m for m in edges if m not in placed and takes(m, files[m])  # a package that imports nothing is no node
                   and (not files[m].endswith('/__init__.py') or edges[m] or importers[m])]
        placed |= set(members)
        if members:
            lines.append(f'    subgraph group_{group}["{title}"]')  # an id no module has (bench.py's is bench)
            lines += [f'        {node_id(m)}["{label(m, files[m], importers[m])}"]' for m in members]
            lines.append('    end')
    for source, targets in edges.items():
        for target, is_top in sorted(targets.items()):
            if target not in UNDRAWN:
                lines.append(f'    {node_id(source)} {"-->" if is_top else "-.->"} {node_id(target)}')
    lines += ['```', '', '| not drawn: the arrows into | from |', '|---|---|']
    for name in (m for m in UNDRAWN if m in edges):
        lines.append(f'| `{files[name]}` | {", ".join(f"`{files[m]}`" for m in importers[name])} |')
    return '\n'.join(lines) + '\n'


def regenerate(text, root=ROOT):
    """text with its import-graph block drawn from the code now, and whether that changed it (None: no block)."""
    match = BLOCK.search(text)
    if not match:
        return text, None
    fresh = mermaid(*graph(root))
    return text[:match.start(2)] + fresh + text[match.end(2):], match.group(2) != fresh


def main(argv=None, root=ROOT):
    argv = sys.argv[1:] if argv is None else list(argv)
    is_check = argv == ['--check']
    if argv and not is_check:
        print("usage: python tools/import_graph.py [--check]", file=sys.stderr)
        return 2
    path = os.path.join(root, PAGE)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    fresh, is_stale = regenerate(text, root)
    if is_stale is None:
        print(f"{PAGE} has no <!-- import-graph --> ... <!-- /import-graph --> block to draw in", file=sys.stderr)
        return 2
    if is_check:
        if is_stale:
            print(f"stale import graph in {PAGE} (run python tools/import_graph.py)", file=sys.stderr)
        return 1 if is_stale else 0
    if is_stale:
        with open(path, 'w', encoding='utf-8') as f:
            f.write(fresh)
        print(f"redrew the import graph in {PAGE}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

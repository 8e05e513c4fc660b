"""The house's shape: the commands at the root, everything they share in slm/, and nothing importing a command."""
import ast
import glob
import os

from conftest import ROOT


COMMANDS = ('prepare', 'train', 'sample', 'bench', 'serve', 'ablate', 'export', 'evaluate')
LIBRARIES = ('model', 'configurator')  # the two root modules the design card keeps beside the commands


def imported_modules(path):
    """The top-level names of the modules path imports (`from slm.x import y` gives slm)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split('.')[0]


def test_the_root_holds_the_commands_and_the_two_modules_beside_them():
    root = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, '*.py')))
    assert len(root) <= 10
    assert set(root) <= set(COMMANDS) | set(LIBRARIES), root


def test_no_module_but_a_test_imports_a_command():
    paths = [*glob.glob(os.path.join(ROOT, '*.py')), *glob.glob(os.path.join(ROOT, 'slm', '**', '*.py'),
                                                                recursive=True),
             *glob.glob(os.path.join(ROOT, 'tools', '*.py'))]
    offenders = {os.path.relpath(p, ROOT): sorted(set(imported_modules(p)) & set(COMMANDS)) for p in paths}
    assert {p: names for p, names in offenders.items() if names} == {}

"""The top-level packages a module imports (absolute imports only), for tests that keep a module
free of heavy dependencies."""

import ast
from pathlib import Path


def absolute_import_roots(module):
    """The first dotted name of every absolute import in `module`'s source, in order of appearance."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            roots.append(node.module.split(".")[0])
    return roots

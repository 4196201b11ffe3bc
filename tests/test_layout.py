"""The import order of the house: nothing imports upward.

From the bottom: net's core and helpers (blob, config, errors, ...), net/data,
layers, net.py, solvers; at the top tools and net/pycaffe (pycaffe's ``caffe``),
which do not import each other (docs/layout.md).
Read from the code's own import statements, including those inside functions.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: folder (relative to the repository) -> packages its modules must not import
FORBIDDEN = {
    "layers": ("numcaffe.solvers", "numcaffe.tools", "numcaffe.net.pycaffe"),
    "net/data": ("numcaffe.layers", "numcaffe.solvers", "numcaffe.tools", "numcaffe.net.pycaffe",
                 "numcaffe.net.net"),
    "net": ("numcaffe.solvers", "numcaffe.tools", "numcaffe.net.pycaffe"),   # net/pycaffe itself excepted
    "solvers": ("numcaffe.tools", "numcaffe.net.pycaffe"),
    "tools": ("numcaffe.net.pycaffe",),                                      # the two tops stay apart
    "net/pycaffe": ("numcaffe.tools",),
}


def imported_modules(path, package="numcaffe"):
    """Every module ``path`` imports (``from a import b`` gives a and a.b); ``package`` resolves relative ones."""
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def package_of(path):
    parts = ["numcaffe"] + os.path.relpath(os.path.dirname(path), ROOT).split(os.sep)
    return ".".join(parts)


def sources(folder):
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        if folder == "net" and os.path.relpath(dirpath, ROOT).startswith(os.path.join("net", "pycaffe")):
            continue
        for f in files:
            if f.endswith(".py") and not f.endswith("_pb2.py"):
                yield os.path.join(dirpath, f)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_upward_imports(folder):
    upward = [f"{os.path.relpath(path, ROOT)} imports {name}"
              for path in sources(folder) for name in imported_modules(path, package_of(path))
              if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[folder])]
    assert upward == []


def test_the_checker_sees_function_level_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from numcaffe.solvers import sgd\n    from ..tools import cli\n")
    found = set(imported_modules(str(src), "numcaffe.net.data"))
    assert {"numcaffe.solvers.sgd", "numcaffe.net.tools.cli"} <= found

"""Every usage example in a docstring of the package runs: the ``>>>`` examples are run as
doctests, and no docstring holds a Python example outside one (a ``::`` block that parses as
Python with a call or an import). Examples written as shell commands are left as they are."""

import ast
import doctest
import importlib
import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crbp_d2"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield getattr(node, "name", "<module>"), doc


def _literal_blocks(doc: str):
    """The indented blocks that follow a line ending in ``::``."""
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            j, block = i + 1, []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith(" ")):
                block.append(lines[j])
                j += 1
            yield textwrap.dedent("\n".join(block)).strip()
            i = j
        else:
            i += 1


MODULES = sorted(
    _module_name(p) for p in PACKAGE.rglob("*.py") if ">>>" in p.read_text(encoding="utf-8")
)


def test_the_package_has_doctests():
    assert "crbp_d2.recurrent.engine" in MODULES and len(MODULES) >= 3, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name files relative to the repository root
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} mentions '>>>' but has no doctest"
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}"


def test_python_examples_in_docstrings_are_doctests():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for owner, doc in _docstrings(path):
            for block in _literal_blocks(doc):
                if not block or block.startswith(">>>"):
                    continue
                try:
                    tree = ast.parse(block)
                except SyntaxError:
                    continue  # shell commands, equations, file layouts
                if any(
                    isinstance(n, (ast.Call, ast.Import, ast.ImportFrom)) for n in ast.walk(tree)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{owner}: {block.splitlines()[0]}")
    assert not offenders, "write these as '>>>' examples:\n" + "\n".join(offenders)

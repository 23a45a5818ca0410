"""The package's import graph, read from the source (AST): no cycle between modules, and no
import that climbs from a lower floor of the house to a higher one.

Floors, bottom up: the core and the shared helpers (``recurrent``, ``utils``), the
Detectron2-free generators (``contours``, ``scenes``), the two front-ends side by side
(``pathfinder``, ``rfpn``), the front-end-free benchmarks, the programs (``cli``). Imports inside
functions count; imports under ``if __name__ == "__main__":`` (an entry point, not a dependency)
or ``if TYPE_CHECKING:`` (annotations only) and the deprecated aliases of old paths
(:mod:`crbp_d2._deprecated`) do not.

    python tests/test_import_graph.py [PACKAGE_DIR]   # prints the graph's numbers
"""

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "crbp_d2"
FLOORS = {
    "recurrent": 0,
    "utils": 0,
    "_extras": 0,  # the install extras' one-line errors
    "contours": 1,
    "scenes": 1,
    "pathfinder": 2,
    "rfpn": 2,
    "tv": 2,  # the head in torchvision's Mask R-CNN
    "benchmarks": 3,
    "onnx_export": 3,  # any fixed-step head module (Detectron2's or torchvision's)
    "cli": 4,
}
# Old import paths kept for one version; each only re-exports its new module.
DEPRECATED = {
    "crbp_d2._deprecated",
    "crbp_d2.config",
    "crbp_d2.lazy",
    "crbp_d2.modeling",
    "crbp_d2.modeling.export",
    "crbp_d2.benchmarks.resume_determinism",
}


def module_names(package: Path) -> Dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (a package is its ``__init__``)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (an entry point) or ``if TYPE_CHECKING:`` (annotations
    only): imports under them are not run when the module is imported."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _imported(name: str, path: Path, tree: ast.AST, known: Set[str]) -> Set[str]:
    """The package's modules that module ``name`` imports (at any depth, but not under a
    ``__main__`` guard)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()

    def nearest_module(dotted: str) -> None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        if dotted:
            found.add(dotted)

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                nearest_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import module` names a module
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                else:
                    nearest_module(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE, deprecated: Set[str] = DEPRECATED) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (the ``deprecated`` aliases left out)."""
    files = module_names(package)
    known = set(files)
    graph = {}
    for name, path in files.items():
        if name in deprecated:
            continue
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = _imported(name, path, tree, known) - deprecated
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def room(module: str) -> str:
    """The top-level part of the package a module lives in (``crbp_d2.rfpn``, ...)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def upward_edges(graph: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    """Imports from a lower floor to a higher one (floors of :data:`FLOORS`)."""
    edges = []
    for source, targets in graph.items():
        for target in targets:
            a = FLOORS.get(room(source).split(".")[-1])
            b = FLOORS.get(room(target).split(".")[-1])
            if a is not None and b is not None and b > a:
                edges.append((source, target))
    return sorted(edges)


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_import_climbs_a_floor():
    assert upward_edges(import_graph()) == []


def test_front_ends_do_not_import_each_other():
    graph = import_graph()
    front_ends = {"crbp_d2.pathfinder", "crbp_d2.rfpn", "crbp_d2.tv"}
    crossing = [
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if room(a) != room(b) and {room(a), room(b)} <= front_ends
    ]
    assert crossing == []


def test_pathfinder_evaluation_does_not_import_its_trainer():
    graph = import_graph()
    leaning = [
        (a, b)
        for a, targets in graph.items()
        if a.startswith("crbp_d2.pathfinder.evaluation")
        for b in targets
        if b.startswith("crbp_d2.pathfinder.train")
    ]
    assert leaning == []


def test_every_room_has_a_floor():
    rooms = {room(m) for m in import_graph()} - {"crbp_d2"}
    assert {r.split(".")[-1] for r in rooms} <= set(FLOORS), rooms


def test_the_checker_sees_a_cycle_and_a_climb(tmp_path):
    """The checks can fail: a made-up package with a cycle and a core module importing cli."""
    package = tmp_path / "crbp_d2"
    for folder in ("recurrent", "cli"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "recurrent" / "a.py").write_text("from . import b\n")
    (package / "recurrent" / "b.py").write_text("def f():\n    from .a import x\n")
    (package / "recurrent" / "c.py").write_text("from ..cli import main\n")
    (package / "cli" / "main.py").write_text(
        "if __name__ == '__main__':\n    from ..recurrent import c\n"
    )
    graph = import_graph(package)
    assert cycles(graph) == [["crbp_d2.recurrent.a", "crbp_d2.recurrent.b"]]
    assert upward_edges(graph) == [("crbp_d2.recurrent.c", "crbp_d2.cli.main")]


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    graph = import_graph(root, DEPRECATED if root == PACKAGE else set())  # another tree: all
    rooms: Dict[str, Set[str]] = {}
    for source, targets in graph.items():
        rooms.setdefault(room(source), set()).update(
            room(t) for t in targets if room(t) != room(source)
        )
    print(f"modules {len(graph)}, edges {sum(len(t) for t in graph.values())}")
    print(f"module cycles {cycles(graph)}")
    print(f"upward edges {upward_edges(graph)}")
    print(
        f"rooms {len(rooms)}, room edges {sum(len(t) for t in rooms.values())}, "
        f"room cycles {cycles(rooms)}"
    )

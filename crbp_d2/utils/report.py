"""Result records -> JSON + Markdown table + PNG plot, and the README blocks they fill.

Every benchmark and analysis writes ``docs/results/NAME.json`` (a list of records), ``NAME.md``
(its table and the machine it ran on) and ``NAME.png``. README.md marks where a table goes with
``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``; :func:`update_readme_blocks` replaces
the text between the markers, so no number in the README is typed by hand.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .io import PathLike, atomic_write_json, atomic_write_text

Record = Dict[str, Any]
Plotter = Callable[[List[Record], str], None]

_BLOCK = re.compile(
    r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None
) -> str:
    """A Markdown table. ``align`` has one character per column: ``l`` or ``r`` (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} does not have one letter per column of {header}")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    stem: PathLike,
    records: List[Record],
    table: Optional[str] = None,
    plot: Optional[Plotter] = None,
    plot_path: Optional[PathLike] = None,
) -> Dict[str, str]:
    """Write ``stem.json`` (the records), ``stem.md`` (``table``, if given) and ``stem.png``
    (``plot(records, path)``, if given; ``plot_path`` instead of ``stem.png`` if given), each
    atomically. Returns {"json"|"md"|"png": path}."""
    stem = os.fspath(stem)
    paths = {"json": stem + ".json"}
    atomic_write_json(records, paths["json"])
    if table is not None:
        paths["md"] = stem + ".md"
        atomic_write_text(paths["md"], table.rstrip("\n") + "\n")
    if plot is not None:
        paths["png"] = os.fspath(plot_path) if plot_path is not None else stem + ".png"
        write_plot(records, plot, paths["png"])
    return paths


def write_plot(records: List[Record], plot: Plotter, path: PathLike) -> None:
    """``plot(records, tmp)`` into a temporary PNG beside ``path``, then rename it onto ``path``
    (creating the folder)."""
    folder, name = os.path.split(os.fspath(path))
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.splitext(name)[0]}.{os.getpid()}.png")
    try:
        plot(records, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def update_readme_blocks(readme_text: str, results_dir: PathLike) -> Tuple[str, List[str]]:
    """The README text with every results block replaced by ``results_dir/NAME.md``, and the
    names of the blocks whose table file is missing (left as they were)."""
    missing: List[str] = []

    def replace(match: re.Match) -> str:
        path = os.path.join(results_dir, match.group("name") + ".md")
        if not os.path.exists(path):
            missing.append(match.group("name"))
            return match.group(0)
        with open(path) as f:
            table = f.read().rstrip("\n") + "\n"
        return match.group(1) + table + match.group(4)

    return _BLOCK.sub(replace, readme_text), missing

"""Config helpers both front-ends share (yacs nodes; Detectron2's CfgNode is one)."""

from __future__ import annotations

import difflib
from typing import Any, Mapping


def has_key(cfg: Mapping[str, Any], dotted: str) -> bool:
    """Whether the dotted key ``A.B.C`` exists in the nested config ``cfg``."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def unknown_key_message(cfg: Mapping[str, Any], message: str, source: str) -> str:
    """``Non-existent config key: KEY (in SOURCE). Did you mean ...?`` for yacs' message (or a
    bare dotted key), with the existing keys closest to the unknown part of ``KEY``."""
    key = message.split(":", 1)[1].strip() if message.startswith("Non-existent") else message
    parts = key.split(".")
    node: Any = cfg
    known = []
    for part in parts[:-1]:  # walk to the deepest existing node
        if isinstance(node, Mapping) and part in node:
            node, known = node[part], known + [part]
        else:
            break
    hint = ""
    if isinstance(node, Mapping):
        close = difflib.get_close_matches(parts[len(known)], list(node.keys()), n=3, cutoff=0.5)
        if close:
            prefix = ".".join(known) + "." if known else ""
            hint = " Did you mean " + ", ".join(prefix + c for c in close) + "?"
    return f"Non-existent config key: {key} (in {source}).{hint}"


def yaml_error_message(path: str, error: Exception) -> str:
    """One line for a YAML syntax error in the file ``path``: what is wrong and where
    (``cannot parse x.yaml: line 4, column 1: found unexpected end of stream (while scanning a
    quoted scalar at line 2, column 12)``)."""

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if problem is None:
        return f"cannot parse {path}: {' '.join(str(error).split())} (a YAML syntax error)"
    text = f"{at(mark)}: {problem}" if mark is not None else problem
    if context:
        text += f" ({context}" + (f" at {at(context_mark)})" if context_mark else ")")
    return f"cannot parse {path}: {text} (a YAML syntax error)"

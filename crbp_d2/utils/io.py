"""Atomic file writes: a path is either absent, its old content, or the complete new content."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None], fsync: bool = True) -> None:
    """Write through ``write(binary stream)`` into a temporary sibling file, then rename it onto
    ``path`` (creating the parent folders). An interrupted write leaves ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp_path, "wb") as stream:
            write(stream)
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda stream: stream.write(text.encode()))


def to_jsonable(value: Any) -> Any:
    """``json.dump``'s ``default``: numpy scalars and arrays, tensors and paths as plain values."""
    if hasattr(value, "tolist"):  # numpy arrays / scalars, torch tensors
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN / infinite float (also inside numpy arrays, tensors, dicts, lists
    and tuples) replaced by ``None``, so that it is written as valid JSON (``null``; bare ``NaN``
    tokens are not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    return value


def json_dumps(obj: Any, indent: Optional[int] = 2) -> str:
    """``json.dumps`` of ``obj`` as valid JSON: numpy / torch values as plain ones, NaN and
    infinities as ``null`` (:func:`json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, default=to_jsonable, allow_nan=False)


def atomic_write_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """``json.dump`` of ``obj`` to ``path`` atomically (numpy values allowed; NaN and infinities
    written as ``null``)."""
    atomic_write_text(path, json_dumps(obj, indent) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically (never a half-written checkpoint)."""
    import torch

    atomic_write(path, lambda stream: torch.save(obj, stream))

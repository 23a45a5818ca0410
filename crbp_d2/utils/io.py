"""Atomic file writes: a path is either absent, its old content, or the complete new content."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Union

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


def atomic_write_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """``json.dump`` of ``obj`` to ``path`` atomically (numpy values allowed)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=to_jsonable) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically (never a half-written checkpoint)."""
    import torch

    atomic_write(path, lambda stream: torch.save(obj, stream))

"""Register the Detectron2 side (mask head, datasets) as soon as Detectron2 is imported.

``import crbp_d2`` must make the recurrent mask head resolvable from ``ROI_MASK_HEAD_REGISTRY``
(the Detectron2 project idiom), but Pathfinder users should not pay for importing Detectron2.
So registration runs right after ``detectron2.modeling`` / ``detectron2.data`` finish importing
(or at once, if they already are): every path to ``build_model`` or ``DatasetCatalog`` passes
through those packages.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Dict

# detectron2 package -> the crbp_d2 module whose import registers our parts into it
REGISTRATIONS: Dict[str, str] = {
    "detectron2.modeling": "crbp_d2.modeling",
    "detectron2.data": "crbp_d2.data",
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of a watched module to run a hook after it."""

    def __init__(self, pending: Dict[str, str]) -> None:
        self.pending = dict(pending)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        target_module = self.pending.pop(fullname)
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            importlib.import_module(target_module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    pending = {}
    for watched, registering in REGISTRATIONS.items():
        if watched in sys.modules:
            importlib.import_module(registering)
        else:
            pending[watched] = registering
    if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(pending))

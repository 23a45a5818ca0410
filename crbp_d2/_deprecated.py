"""Old import paths that keep working for one version (the Detectron2 front-end moved to
:mod:`crbp_d2.rfpn` in 0.2): each warns once with a ``DeprecationWarning`` naming the new path."""

import importlib
import sys
import warnings
from types import ModuleType

REMOVED_IN = "0.3"


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` is now ``new`` (the caller is the old module's import)."""
    warnings.warn(
        f"{old} moved to {new}; import {new} instead ({old} is removed in crbp-d2 {REMOVED_IN})",
        DeprecationWarning,
        stacklevel=3,
    )


def alias_module(old: str, new: str) -> ModuleType:
    """Make module ``old`` the module ``new`` (one object, so nothing is registered twice)."""
    warn_moved(old, new)
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module


def run_moved_program(old: str, new: str) -> int:
    """``python -m OLD``, a program that is now ``crbp_d2.cli.NEW`` (``tools/NEW.py``)."""
    name = new.rsplit(".", 1)[-1]
    warnings.warn(
        f"python -m {old} moved to tools/{name}.py (crbp-{name.replace('_', '-')}); "
        f"the old command is removed in crbp-d2 {REMOVED_IN}",
        DeprecationWarning,
        stacklevel=2,
    )
    return importlib.import_module(new).main(sys.argv[1:])

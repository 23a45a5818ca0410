"""Shared test set-up: deterministic seeds, and the Detectron2 front-end loaded once.

With Detectron2 installed, ``crbp_d2.rfpn`` (its compatibility shim, then the head's and the
datasets' registration) is imported before any test module, as a Detectron2 user's one line.
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("detectron2") is not None:
    import crbp_d2.rfpn  # noqa: F401


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield

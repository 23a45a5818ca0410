"""Shared test set-up: deterministic seeds.

Nothing Detectron2-related is imported here: the Detectron2 test modules import
``crbp_d2.config`` first themselves, as a user of the pure-Python Detectron2 install must.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield

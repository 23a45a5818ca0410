"""Shared test set-up: the compatibility shim first, deterministic seeds, float64 helpers."""

import pytest
import torch

import crbp_d2  # noqa: F401  (must come before any detectron2 import)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield

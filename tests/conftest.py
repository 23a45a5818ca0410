"""Shared test set-up: the compatibility shim first, deterministic seeds, float64 helpers."""
import crbp_d2  # noqa: F401  (must come before any detectron2 import)
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield

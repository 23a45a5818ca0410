"""Benchmarks whose records go to ``docs/results`` (JSON + Markdown table + PNG).

- :mod:`.memory`: memory and time of one training step of the Pathfinder hGRU core vs recurrent
  steps, per learning method (pure PyTorch).
- :mod:`.rfpn`: train-step time and peak memory of Panoptic FPN vs R-FPN (Detectron2).

Each configuration of a CPU run is measured in its own process (``python -m
crbp_d2.benchmarks.NAME SETTINGS_JSON``, see :func:`crbp_d2.utils.bench.run_isolated`), because a
peak RSS is a per-process maximum.
"""

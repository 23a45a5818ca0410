"""The front-end-free measures, whose records go to ``docs/results`` (JSON + Markdown + PNG):

- :mod:`.memory`: memory and time of one training step of the Pathfinder hGRU core vs recurrent
  steps, per learning method (pure PyTorch);
- :mod:`.methods`: the learning methods' gradients against exact references, time and memory;
- :mod:`.solvers`: Anderson acceleration against plain iteration at a trained fixed point.

Each configuration of a CPU run is measured in its own process (``python -m
crbp_d2.benchmarks.NAME SETTINGS_JSON``, see :func:`crbp_d2.utils.bench.run_isolated`), because a
peak RSS is a per-process maximum. The programs are in :mod:`crbp_d2.cli` (``tools/NAME.py``);
the R-FPN and Pathfinder experiments are in ``crbp_d2.rfpn.experiments`` and
``crbp_d2.pathfinder.experiments``.
"""

"""crbp-d2: contractor recurrent back-propagation (C-RBP).

- ``crbp_d2.recurrent``: the recurrent core (cells, the engine, RBP, LCP); pure PyTorch.
- ``crbp_d2.contours``: the Pathfinder contour generator (numpy/OpenCV), used by both front-ends.
- ``crbp_d2.pathfinder``: the Pathfinder front-end (no Detectron2).
- ``crbp_d2.config``, ``crbp_d2.modeling``, ``crbp_d2.data``, ``crbp_d2.evaluation``: the
  Detectron2 front-end. ``crbp_d2.config.add_crbp_config`` (which every Detectron2 user of the
  recurrent head calls) also registers the head and the built-in datasets. On top of them:
  ``crbp_d2.training`` (the Detectron2 ``Trainer``), ``crbp_d2.visualization`` (drawing
  predictions, per-step timecourses) and ``crbp_d2.evaluation.timestep_sweep``.
- ``crbp_d2.benchmarks``: the memory and R-FPN benchmarks; ``crbp_d2.utils``: atomic writes,
  result files, machine descriptions, measuring helpers.
- ``crbp_d2.cli``: the command-line programs (``tools/NAME.py``, console scripts ``crbp-NAME``).

Importing ``crbp_d2`` itself imports nothing else and patches nothing.
"""

__version__ = "0.1.0"

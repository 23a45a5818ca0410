"""crbp-d2: contractor recurrent back-propagation (C-RBP).

- ``crbp_d2.recurrent``: the recurrent core (cells, the engine, RBP, LCP); pure PyTorch.
- ``crbp_d2.contours``: the Pathfinder contour generator (numpy/OpenCV), used by both front-ends;
  ``crbp_d2.scenes``: the synthetic panoptic scenes and format helpers (no Detectron2).
- ``crbp_d2.pathfinder``: the Pathfinder front-end (no Detectron2).
- ``crbp_d2.rfpn``: the Detectron2 front-end (config, modeling, data, evaluation, train,
  experiments). ``import crbp_d2.rfpn`` loads the Detectron2 v0.6 shim, then registers the head
  and the built-in datasets.
- ``crbp_d2.benchmarks``: the front-end-free measures (memory, methods, solvers);
  ``crbp_d2.utils``: atomic writes, result files, machine descriptions, measuring helpers.
- ``crbp_d2.cli``: the command-line programs (``tools/NAME.py``, console scripts ``crbp-NAME``).

Importing ``crbp_d2`` itself imports nothing else and patches nothing.
"""

__version__ = "0.2.0"

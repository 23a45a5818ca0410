"""The Detectron2 front-end: the recurrent (R-FPN) mask head and everything around it.

``import crbp_d2.rfpn`` is the one line a Detectron2 user writes. It loads the Detectron2 v0.6
compatibility shim (:mod:`crbp_d2.rfpn._compat`: a no-op with upstream Detectron2), then
registers the head ``RecurrentMaskHead`` in ``ROI_MASK_HEAD_REGISTRY`` and the built-in synthetic
datasets in the ``DatasetCatalog``, the way PointRend and Mask2Former register by importing their
package. Every module below imports this package first, so none needs an import-order rule.

- ``config``: the head's keys (``add_crbp_config``, ``get_crbp_cfg``) and their validation;
  ``lazy_config``: the same keys for LazyConfig files.
- ``modeling/``: the head, its per-step timecourse, export, freezing all but the head.
- ``data/``: dataset registration and checks, the resumable train loader (the scenes themselves
  are in :mod:`crbp_d2.scenes`, which needs no Detectron2).
- ``evaluation/``: PQ through hotcoco, masks on ground-truth boxes, the test-step sweep.
- ``train/``: the yacs and LazyConfig trainers, the launcher, the AdamW optimiser;
  ``checkpoint``: the checkpointer that reports skipped keys; ``visualization``: images.
- ``experiments/``: the R-FPN benchmarks, the CPU protocol, the fine-tuning comparison, the CUDA
  check and the resume check.
"""

from . import _compat  # noqa: F401  (first: patches a pure-Python Detectron2 v0.6 if needed)
from . import data as _data  # noqa: F401  (registers the built-in datasets)
from . import modeling as _modeling  # noqa: F401  (registers RecurrentMaskHead)

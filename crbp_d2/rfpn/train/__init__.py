"""Training on the Detectron2 side: the yacs trainer (:mod:`.trainer`, ``tools/train_net.py``)
and the LazyConfig one (:mod:`.trainer_lazy`), the process launcher (:mod:`.launch`), the
command line they share (:mod:`.arguments`) and the AdamW optimiser (:mod:`.optimizer`)."""

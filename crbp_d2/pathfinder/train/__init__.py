"""Training Pathfinder models: the :class:`~.loop.Trainer` (:mod:`.loop`). The loss
(:mod:`crbp_d2.pathfinder.losses`) and the device / process-group / autocast set-up
(:mod:`crbp_d2.pathfinder.dist`) sit one level up, shared with ``evaluation/``."""

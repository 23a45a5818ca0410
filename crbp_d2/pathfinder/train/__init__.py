"""Training Pathfinder models: the :class:`~.loop.Trainer` (:mod:`.loop`), the loss
(:mod:`.losses`), and the device / process-group / autocast set-up (:mod:`.dist`)."""

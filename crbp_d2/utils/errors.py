"""Errors both trainers raise, so that both programs stop the same way."""


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message (one line) names the term(s) or the
    step, and what was kept (checkpoints, the last diagnostics). Both trainers raise it (the
    Detectron2 ``Trainer`` and the Pathfinder ``Trainer``); a ``FloatingPointError``, like
    Detectron2's own check, so ``cli._common.training_stops_in_one_line`` ends either program
    with one line."""

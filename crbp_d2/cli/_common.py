"""What the command-line programs share: bad input reported as one line, exit status 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Tuple, Type

# What the library raises for bad input: a missing file, an unknown config key or dataset name,
# an invalid value. Anything else is a bug and keeps its traceback.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (FileNotFoundError, KeyError, ValueError)
INPUT_ERROR_STATUS = 2  # as argparse exits for bad arguments
TRAINING_STOPPED_STATUS = 1  # training ran and stopped (a non-finite loss or state)


def report_input_error(prog: str, error: BaseException) -> int:
    """Print ``PROG: error: MESSAGE`` (one line, stderr) and return the exit status 2."""
    # str(KeyError) quotes its message; its first argument is the message itself.
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f"{prog}: error: {message}", file=sys.stderr)
    return INPUT_ERROR_STATUS


@contextmanager
def one_line_errors(
    prog: str, errors: Tuple[Type[BaseException], ...] = INPUT_ERRORS
) -> Iterator[None]:
    """Report ``errors`` raised inside the block with :func:`report_input_error` and exit with
    status 2 (``SystemExit(2)``)."""
    try:
        yield
    except errors as error:
        raise SystemExit(report_input_error(prog, error)) from None


@contextmanager
def training_stops_in_one_line(prog: str) -> Iterator[None]:
    """A non-finite loss or recurrent state (``FloatingPointError``, which names the loss term
    and the iteration) ends the program with ``PROG: error: training stopped: MESSAGE`` (one line,
    stderr; the traceback is in the training log) and exit status 1."""
    try:
        yield
    except FloatingPointError as error:
        message = " ".join(str(error).split())  # Detectron2's own message has two lines
        print(f"{prog}: error: training stopped: {message}", file=sys.stderr)
        raise SystemExit(TRAINING_STOPPED_STATUS) from None

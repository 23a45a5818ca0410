"""What the command-line programs share: bad input reported as one line, exit status 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Tuple, Type

# What the library raises for bad input: a missing file, an unknown config key or dataset name,
# an invalid value. Anything else is a bug and keeps its traceback.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (FileNotFoundError, KeyError, ValueError)
INPUT_ERROR_STATUS = 2  # as argparse exits for bad arguments


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

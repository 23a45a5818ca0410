"""What the command-line programs share: bad input reported as one line."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Tuple, Type

# What the library raises for bad input: a missing file, an unknown config key or dataset name,
# an invalid value. Anything else is a bug and keeps its traceback.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (FileNotFoundError, KeyError, ValueError)


@contextmanager
def one_line_errors(
    prog: str, errors: Tuple[Type[BaseException], ...] = INPUT_ERRORS
) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``SystemExit("PROG: error: MESSAGE")``
    (exit status 1, the message on stderr), as argparse reports bad arguments."""
    try:
        yield
    except errors as error:
        # str(KeyError) quotes its message; its first argument is the message itself.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise SystemExit(f"{prog}: error: {message}") from None

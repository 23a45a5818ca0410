"""Counts and ranges from the command line, checked in one place: ``--max-steps 40``,
``--steps 1-12``, ``--eval-steps 20,60``. Every bad value is one line naming it."""

from __future__ import annotations

import argparse
from typing import Callable, List

__all__ = ["count", "parse_counts"]


def parse_counts(text: str, minimum: int = 1, what: str = "step counts") -> List[int]:
    """``"1-30"``, ``"1,2,5"`` or a mix (``"1-3,10"``) -> the sorted unique integers; each must be
    ``>= minimum``. Raises ``ValueError`` (one line) for a non-integer, a reversed range
    (``"5-1"``: written as ``1-5``), an empty list or a value below ``minimum``."""
    values = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        low_text, dash, high_text = (
            part.partition("-") if not part.startswith("-") else ("", "", "")
        )
        try:
            if dash:
                low, high = int(low_text), int(high_text)
                if low > high:
                    raise ValueError(
                        f"{what}: the range {part!r} is reversed (write {high}-{low}), in {text!r}"
                    )
                values.update(range(low, high + 1))
            else:
                values.add(int(part))
        except ValueError as error:
            if "reversed" in str(error):
                raise
            raise ValueError(
                f"{what}: expected integers or ranges such as '1-30' or '1,2,5', got {text!r}"
            ) from None
    if not values:
        raise ValueError(f"{what}: no values in {text!r}")
    if min(values) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {text!r}")
    return sorted(values)


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum`` (else argparse's one-line error naming the
    option: ``argument --max-steps: must be an integer >= 1, got '-3'``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse

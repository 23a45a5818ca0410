"""The command line of ``tools/train_net.py`` (Detectron2's ``default_argument_parser`` plus
``--random-weights``), here so that library code which runs a training the way the program does
(:mod:`crbp_d2.rfpn.experiments.resume`) needs no import from ``crbp_d2.cli``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from detectron2.engine import default_argument_parser

# Detectron2's parser ends with a catch-all for the KEY VALUE overrides, which would swallow these
# flags when they come after an override; they are moved to the front first.
FLAGS = ("--resume", "--eval-only", "--random-weights")


def train_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` (``epilog``: its help's closing text) with
    ``--random-weights``."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="with --eval-only and no MODEL.WEIGHTS: evaluate the randomly initialised model",
    )
    return parser


def parse_train_args(
    argv: Optional[Sequence[str]] = None,
    parser: Optional[argparse.ArgumentParser] = None,
    flags: Sequence[str] = FLAGS,
) -> argparse.Namespace:
    """Parse ``argv`` with ``parser`` (default :func:`train_argument_parser`); the ``flags``
    (``--resume``, ``--eval-only``, ...) may stand anywhere on the line (also after the
    ``KEY VALUE`` overrides)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser if parser is not None else train_argument_parser()
    first = [a for a in argv if a in flags]
    return parser.parse_args(first + [a for a in argv if a not in flags])

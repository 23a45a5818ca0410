"""Panoptic predictions of a Panoptic FPN / R-FPN checkpoint on images, drawn with Detectron2's
Visualizer; ``--timecourse`` also draws the instance masks after every recurrent step (like
Fig. 3c of Linsley et al. 2020).

Example::

    python tools/demo.py --config-file configs/quick/R-FPN-R50-CRBP-synthetic.yaml \\
        --input datasets/synthetic_panoptic/val --output output/demo --timecourse \\
        --opts MODEL.WEIGHTS output/quick/R-FPN-R50-CRBP-synthetic/model_final.pth

For each image ``x.jpg`` it writes ``x_panoptic.png`` and, with ``--timecourse``,
``x_timecourse.png`` (one panel per step t = 1..T, T = the test steps or ``--steps``). The work is
:func:`crbp_d2.rfpn.visualization.run_demo`.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from ..rfpn.visualization import run_demo
from ._common import one_line_errors


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    parser.add_argument("--output", required=True, help="folder for the rendered images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--timecourse", action="store_true", help="draw masks after every step")
    parser.add_argument("--steps", type=int, default=None, help="steps of the timecourse")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--scale", type=float, default=None, help="drawing scale (default: panels >= 400 px)"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="draw the randomly initialised model when MODEL.WEIGHTS is empty",
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> List[str]:
    """Render every input of parsed ``args``; returns the written files."""
    return run_demo(
        args.config_file,
        args.input,
        args.output,
        opts=args.opts,
        confidence_threshold=args.confidence_threshold,
        timecourse=args.timecourse,
        steps=args.steps,
        max_images=args.max_images,
        scale=args.scale,
        random_weights=args.random_weights,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    from detectron2.utils.logger import setup_logger

    args = parse_args(argv)
    setup_logger(name="crbp_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    with one_line_errors("demo.py"):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

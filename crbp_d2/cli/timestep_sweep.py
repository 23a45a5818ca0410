"""PQ of one R-FPN checkpoint as a function of the recurrent steps run at test time.

The paper's stability result (Linsley et al. 2020, Fig. 5): a model trained with C-RBP stays flat
once past its training steps N, while BPTT-trained models fall apart when run longer.

Example::

    python tools/timestep_sweep.py --config-file configs/quick/R-FPN-R50-CRBP-synthetic.yaml \\
        --output output/sweep --steps 1-30 MODEL.WEIGHTS output/quick/.../model_final.pth

Writes ``timestep_sweep.csv`` (steps, PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st; with
``--segm-ap`` also AP_segm, with ``--gt-box`` also gt_box_mIoU and gt_box_mBF, the mask head on
ground-truth boxes) and ``timestep_sweep.png`` into ``--output``.

``--mode onepass`` (default) runs the model once per image at the largest step count and rebuilds
every step count's output from it (exact); ``--mode rerun`` re-runs the whole model for each step
count (the authors' procedure; T times the cost). Single process only. The work is
:func:`crbp_d2.rfpn.evaluation.timestep_sweep.run_timestep_sweep`.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from ..rfpn.evaluation.timestep_sweep import MODES, Row, parse_steps, run_timestep_sweep
from ._common import one_line_errors


def _steps(text: str) -> List[int]:
    try:
        return parse_steps(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the CSV, the plot and logs")
    parser.add_argument("--steps", type=_steps, default=parse_steps("1-30"), help="e.g. 1-30")
    parser.add_argument("--dataset", default=None, help="default: the config's DATASETS.TEST[0]")
    parser.add_argument("--mode", choices=MODES, default="onepass")
    parser.add_argument(
        "--segm-ap",
        action="store_true",
        help="also compute COCO mask AP per step count (sensitive even when the panoptic merge "
        "keeps few instances; one COCOeval per step count)",
    )
    parser.add_argument(
        "--gt-box",
        action="store_true",
        help="also score the mask head alone on the ground-truth boxes at each step count "
        "(mIoU and boundary F-score; one more pass)",
    )
    parser.add_argument("--label", default=None, help="legend label (default: config name)")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="CSV",
        help="[LABEL=]CSV of another sweep to draw in the plot (repeat for several)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> List[Row]:
    """Run the sweep of parsed ``args``; returns the rows written to the CSV."""
    return run_timestep_sweep(
        args.config_file,
        args.output,
        args.steps,
        opts=args.opts,
        dataset=args.dataset,
        mode=args.mode,
        segm_ap=args.segm_ap,
        label=args.label,
        overlays=args.overlay,
        gt_box=args.gt_box,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with one_line_errors("timestep_sweep.py"):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

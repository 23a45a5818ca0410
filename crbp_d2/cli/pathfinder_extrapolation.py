"""Pathfinder extrapolation (issue 17): trained on PF9, tested on PF9/14/20/25 at more steps.

    python tools/pathfinder_extrapolation.py                    # pending runs, then the report
    python tools/pathfinder_extrapolation.py --jobs 1 --shared-machine  # one job at a time
    python tools/pathfinder_extrapolation.py --report-only      # only rewrite the report
    python tools/pathfinder_extrapolation.py --dense            # the dense recipe (own stem)
    python tools/pathfinder_extrapolation.py --models crbp bptt cnn --seeds 0
    python tools/pathfinder_extrapolation.py --pilot NAME --pilot-model bptt \\
        MODEL.RECURRENT.KERNEL_SIZE 7
    python tools/pathfinder_extrapolation.py --smoke --out-dir /tmp/x --results /tmp/x/results

Models (configs/pathfinder/extrapolation/): C-RBP-20, RBP-20, BPTT-6, C-BPTT-6 (the hGRU), the
authors' CNN control at ~1x and ~4x the hGRU's parameters, the feed-forward hGRU (6 untied
layers); 2 seeds each. Every run trains as a 1-thread child process, is evaluated on every test
length (recurrent models at every step 1..max(3N, 60)) and writes
docs/results/pathfinder_extrapolation_runs/MODEL_sSEED.json; a run recorded with the same
settings is skipped, so the command resumes where it stopped. The report:
docs/results/pathfinder_extrapolation.{json,md,png} and _timecourse.png. KEY VALUE overrides
after the options apply to every run (and change the runs' fingerprints).
"""

from __future__ import annotations

import argparse
import os
import sys

from crbp_d2.pathfinder.config import CONFIG_DIR, REPO_ROOT, ConfigError
from crbp_d2.pathfinder.experiments.extrapolation import (
    CONFIGS,
    DENSE_STEM,
    MODEL_BY_KEY,
    SEEDS,
    STEM,
    TEST_LENGTHS,
    Settings,
    default_out_dir,
    run_all,
    run_pilot,
    train_and_evaluate,
    write_report,
)

from ._common import report_input_error

PROG = "pathfinder_extrapolation.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out-dir",
        default=None,
        help="checkpoints, logs and the data cache (default: output/pathfinder/ + the stem "
        "without its 'pathfinder_' prefix, so runs of another recipe never resume these)",
    )
    p.add_argument("--results", default=os.path.join(REPO_ROOT, "docs", "results"))
    p.add_argument("--models", nargs="+", default=list(MODEL_BY_KEY), choices=list(MODEL_BY_KEY))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--test-lengths", nargs="+", type=int, default=list(TEST_LENGTHS))
    p.add_argument("--test-size", type=int, default=128, help="test images per length")
    p.add_argument("--min-eval-steps", type=int, default=60, help="read out to max(3N, this)")
    p.add_argument("--jobs", type=int, default=2, help="1-thread runs side by side")
    p.add_argument("--data-cache", default=None, help="generated data (default OUT_DIR/data)")
    p.add_argument("--configs", default=str(CONFIGS), help="folder of MODEL.yaml configs")
    p.add_argument("--stem", default=STEM, help="results file names (default: %(default)s)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the paper-scale set-up sized for ~9 min on one GPU: configs/pathfinder/"
        "extrapolation_gpu, PF14 -> PF14/20/25, 1 seed, 1 job, stem pathfinder_extrapolation_gpu",
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="the dense recipe (10 distractors per 128-px canvas, 1,800 Adam steps; chosen by "
        "the pilots): configs/pathfinder/extrapolation_dense, stem "
        "pathfinder_extrapolation_dense",
    )
    p.add_argument(
        "--shared-machine",
        action="store_true",
        help="flag the records: other work shared the CPUs (timings are not clean)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny models and data (a seconds check)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report")
    p.add_argument("--no-report", action="store_true", help="run, but do not write the report")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--only-run", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--pilot", metavar="NAME", help="train one pilot run and record it")
    p.add_argument("--pilot-model", default="crbp", choices=list(MODEL_BY_KEY))
    p.add_argument("--pilot-note", default="", help="what the pilot tries (recorded)")
    p.add_argument(
        "--pilot-checkpoint",
        default=None,
        help="score this checkpoint instead, on its own test sets (only TEST.* overrides apply)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = p.parse_args(argv)
    if args.gpu and args.dense:
        p.error("--gpu and --dense are two set-ups; choose one")
    if args.dense:
        args.configs = str(CONFIG_DIR / "extrapolation_dense")
        args.stem = DENSE_STEM
    if args.gpu:
        args.configs = str(CONFIG_DIR / "extrapolation_gpu")
        args.stem = "pathfinder_extrapolation_gpu"
        args.test_lengths, args.seeds, args.jobs = [14, 20, 25], [0], 1
        if args.models == p.get_default("models"):
            args.models = ["crbp", "bptt", "cnn"]
        if args.test_size == p.get_default("test_size"):
            args.test_size = 256
    if args.out_dir is None:
        args.out_dir = default_out_dir(args.stem)
    for name in ("test_size", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(n < 1 for n in args.test_lengths):
        p.error(f"--test-lengths must be >= 1, got {args.test_lengths}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = Settings(
        out_dir=os.path.abspath(args.out_dir),
        results_dir=os.path.abspath(args.results),
        models=tuple(args.models),
        seeds=tuple(args.seeds),
        test_lengths=tuple(args.test_lengths),
        test_size=args.test_size,
        overrides=tuple(args.opts),
        shared_machine=args.shared_machine,
        min_eval_steps=args.min_eval_steps,
        smoke=args.smoke,
        data_cache=os.path.abspath(args.data_cache) if args.data_cache else None,
        config_dir=os.path.abspath(args.configs),
        stem=args.stem,
    )
    try:
        if args.only_run:
            model, seed = args.only_run
            train_and_evaluate(settings, model, int(seed))
            return 0
        if args.pilot:
            run_pilot(
                settings, args.pilot, args.pilot_model, args.pilot_note, args.pilot_checkpoint
            )
            return 0
        if not args.report_only:
            run_all(
                settings,
                jobs=args.jobs,
                progress=not args.no_progress,
                threads_per_job=0 if args.gpu else 1,
            )
        if not args.no_report:
            write_report(settings)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        return report_input_error(PROG, err)
    except RuntimeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        if not args.no_report:
            write_report(settings)  # what finished is still reported
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the command-line programs share: bad input reported as one line, exit status 2; output
paths checked before the work starts."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Tuple, Type

from crbp_d2.utils.run_dir import (
    DETECTRON2_OVERWRITTEN,
    DETECTRON2_RUN_FILES,
    RunDirBusyError,
    RunDirLock,
    check_output_dir,
    is_main_launcher,
    prepare_output_dir,
)

# What the library raises for bad input: a missing file, an unknown config key or dataset name,
# an invalid value. Anything else is a bug and keeps its traceback.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (FileNotFoundError, KeyError, ValueError)
INPUT_ERROR_STATUS = 2  # as argparse exits for bad arguments
TRAINING_STOPPED_STATUS = 1  # training ran and stopped (a non-finite loss or state)
INTERRUPTED_STATUS = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


def report_input_error(prog: str, error: BaseException) -> int:
    """Print ``PROG: error: MESSAGE`` (one line, stderr) and return the exit status 2."""
    # str(KeyError) quotes its message; its first argument is the message itself.
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    if "Original Traceback" in message:  # raised in a DataLoader worker: its last line is ours
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last else last
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


def writable_output_file(path: str, default_name: str) -> str:
    """The file an ``--out PATH`` option names, checked before any work is done.

    PATH is a file when it ends in ``.json`` (or ``default_name``'s suffix) and is no existing
    folder; otherwise PATH is a folder (created if missing) and the file is
    ``PATH/default_name``. Raises ``ValueError`` (one line) if the file cannot be written there:
    the folder cannot be created or written to, or the file's name is taken by a folder.
    """
    suffix = os.path.splitext(default_name)[1] or ".json"
    is_file = path.endswith(suffix) and not os.path.isdir(path) and not path.endswith(os.sep)
    target = path if is_file else os.path.join(path, default_name)
    folder = os.path.dirname(os.path.abspath(target))
    try:
        os.makedirs(folder, exist_ok=True)
        if os.path.isdir(target):
            raise IsADirectoryError(f"{target} is a folder")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write {target}: {error.strerror or error}") from None
    return target


# -- the Detectron2 programs' output folder ---------------------------------------------------

RUN_DIR_FLAGS = ("--overwrite", "--resume-or-start")


def add_run_dir_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--overwrite`` and ``--resume-or-start`` (with ``--resume``: what a folder holding a run,
    or holding none, does)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an OUTPUT_DIR that holds a run (its checkpoints, metrics.json and "
        "events files are removed first); without it such a folder is refused unless --resume",
    )
    parser.add_argument(
        "--resume-or-start",
        action="store_true",
        help="--resume if OUTPUT_DIR holds a run, else start a new one there (plain --resume "
        "refuses a folder with nothing to resume: a typo in the folder?)",
    )
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="--eval-only: evaluate even when the checkpoint leaves more than 1%% of the model's "
        "weights at their random initialisation (refused by default, listing them)",
    )
    return parser


@contextmanager
def run_dir_guard(prog: str, output_dir: str, args: argparse.Namespace) -> Iterator[None]:
    """One run per folder for ``train_net`` / ``lazyconfig_train_net``: ``output_dir`` is checked
    (a writable folder), locked for the block (:class:`crbp_d2.utils.run_dir.RunDirLock`; in the
    launcher only, its worker processes run inside it) and, for training, refused when it holds a
    run unless ``--resume`` / ``--overwrite``, or holds none under ``--resume`` unless
    ``--resume-or-start``. Faults: one line, exit status 2."""
    lock: Optional[RunDirLock] = None
    with one_line_errors(prog, INPUT_ERRORS + (OSError, RunDirBusyError)):
        check_output_dir(output_dir)
        if is_main_launcher():
            lock = RunDirLock(output_dir, prog).acquire()
    try:
        with one_line_errors(prog, INPUT_ERRORS + (OSError,)):
            if not args.eval_only:
                prepare_output_dir(
                    output_dir,
                    resume=args.resume,
                    overwrite=args.overwrite,
                    patterns=DETECTRON2_RUN_FILES,
                    removed=DETECTRON2_OVERWRITTEN,
                    fresh_ok=getattr(args, "resume_or_start", False),
                    fresh_flag="--resume-or-start",
                )
        yield
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def interrupt_stops_cleanly(
    prog: str, last_checkpoint: Callable[[], Optional[str]]
) -> Iterator[None]:
    """Ctrl-C inside the block ends the program with one line naming the last checkpoint (from
    ``last_checkpoint()``; checkpoints are written atomically, so it is whole) and exit status
    130, instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        last = last_checkpoint()
        where = (
            f"the last checkpoint is {last} (continue from it with --resume)"
            if last
            else "no checkpoint was written"
        )
        print(f"{prog}: interrupted (Ctrl-C); {where}", file=sys.stderr)
        raise SystemExit(INTERRUPTED_STATUS) from None


def detectron2_last_checkpoint(output_dir: str) -> Callable[[], Optional[str]]:
    """``output_dir``'s last checkpoint (Detectron2's ``last_checkpoint`` tag), for
    :func:`interrupt_stops_cleanly`."""

    def last() -> Optional[str]:
        try:
            with open(os.path.join(output_dir, "last_checkpoint")) as f:
                name = f.read().strip()
        except OSError:
            return None
        return os.path.join(output_dir, name) if name else None

    return last


def check_process_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--num-gpus`` and ``--num-machines`` are >= 1 and ``--machine-rank`` in range (else
    ``parser.error``: one line, status 2)."""
    if args.num_gpus < 1:
        parser.error(
            f"--num-gpus must be >= 1 (processes per machine; on the CPU, gloo workers), got "
            f"{args.num_gpus}"
        )
    if args.num_machines < 1:
        parser.error(f"--num-machines must be >= 1, got {args.num_machines}")
    if not 0 <= args.machine_rank < args.num_machines:
        parser.error(
            f"--machine-rank must be in 0..{args.num_machines - 1} (--num-machines "
            f"{args.num_machines}), got {args.machine_rank}"
        )

"""Convert a Pathfinder checkpoint written before the RNG-state change (its NumPy RNG state is
refused by the safe loader) into the current form.

    python tools/migrate_pathfinder_checkpoint.py OLD.pth NEW.pth --trust

The old file is read with ``torch.load(weights_only=False)``, which runs any code a crafted file
holds: ``--trust`` says the file is one you wrote yourself. NEW.pth is written atomically and
read back with the safe loader; the input is never replaced unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..pathfinder.migrate import MigrationError, migrate_checkpoint_file
from ._common import report_input_error

PROG = "migrate_pathfinder_checkpoint.py"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("old", metavar="OLD.pth", help="the checkpoint written before the change")
    parser.add_argument("new", metavar="NEW.pth", help="where the converted checkpoint goes")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="read OLD.pth with weights_only=False (runs any code it holds: only for files you "
        "wrote yourself); required",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace NEW.pth if it exists (even OLD.pth)"
    )
    args = parser.parse_args(argv)
    if args.trust:
        print(
            f"{PROG}: warning: reading {args.old} with torch.load(weights_only=False) (--trust): "
            "a crafted file runs its code now",
            file=sys.stderr,
        )
    try:
        done = migrate_checkpoint_file(
            args.old, args.new, trust=args.trust, overwrite=args.overwrite
        )
    except (MigrationError, OSError) as error:
        return report_input_error(PROG, error)
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())

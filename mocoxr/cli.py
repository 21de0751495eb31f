"""The ``mocoxr`` command (installed by ``pip install .``)::

    mocoxr book run --profile quick      # = python -m mocoxr.book run --profile quick
    mocoxr book build --profile quick    # (build, status, check: as python -m mocoxr.book)
    mocoxr sitecheck _build/html         # = python -m mocoxr.book.sitecheck _build/html
"""

from __future__ import annotations

import sys
from typing import Sequence

COMMANDS = {"book": "mocoxr.book.__main__", "sitecheck": "mocoxr.book.sitecheck"}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``mocoxr book ...`` to ``python -m mocoxr.book ...`` and ``mocoxr sitecheck ...``
    to ``python -m mocoxr.book.sitecheck ...``."""
    import importlib

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        if args and args[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {args[0]!r}; expected one of {sorted(COMMANDS)}",
                  file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return int(importlib.import_module(COMMANDS[args[0]]).main(args[1:], prog=f"mocoxr {args[0]}") or 0)


if __name__ == "__main__":
    sys.exit(main())

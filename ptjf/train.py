"""`python -m ptjf.train`: the same as `ptjf train`, kept so that launch scripts written for it
go on working. `ptjf.train.run` is `ptjf.commands.train.run`."""

import sys
from collections.abc import Sequence

from ptjf.commands.train import run

__all__ = ["main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    from ptjf.commands.cli import main as cli_main

    # Run as a script (argv None), library output goes to the run's log file as with `ptjf`.
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)], route_output=argv is None)


if __name__ == "__main__":
    sys.exit(main())

"""What the launchers share: splitting their own flags from ptjf's, and reading emitted sweeps.

`ptjf sweep --emit` prints a shell script of blocks, one per sweep node, each headed by
`# KIND NAME (after: DEP, …)`. The launchers run those blocks on many machines, so they read
the script back into blocks of argv lists rather than running it as one shell script.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence

_HEADER = re.compile(r"^# (shared|point) (\S+)(?: \(after: (.*)\))?$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One sweep node: its commands (argv lists starting with "ptjf"), run in order."""

    name: str
    deps: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...]


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The launcher's own flags, and the `ptjf train` arguments after the first `--`.

    A leading `ptjf train` after `--` is dropped, so both `-- --gin_file=…` and
    `-- ptjf train --gin_file=…` work.
    """
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    train = argv[i + 1 :]
    if train[:2] == ["ptjf", "train"]:
        train = train[2:]
    return argv[:i], train


def read_blocks(text: str) -> list[Block]:
    """The blocks of an emitted sweep script, in the script's (dependency) order."""
    blocks: list[Block] = []
    name, deps, commands = "", (), []

    def close() -> None:
        if commands:
            blocks.append(Block(name or f"block{len(blocks)}", deps, tuple(commands)))

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = _HEADER.match(line)
        if header:
            close()
            name, commands = header.group(2), []
            deps = tuple(d.strip() for d in (header.group(3) or "").split(",") if d.strip())
            continue
        if not line or line.startswith("#") or line == "set -e":
            continue
        argv = tuple(shlex.split(line))
        if argv[0] != "ptjf":
            raise ValueError(
                f"line {lineno} is not a ptjf command: {line!r}. Give the output of "
                "`ptjf sweep --emit` unchanged."
            )
        commands.append(argv)
    close()
    return blocks

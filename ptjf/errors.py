"""Error types: every bad input raises one of these where the value enters.

Messages say what was wrong, the value, what was expected and how to fix it. Errors are
`ValueError` subclasses (or `KeyError` for unknown names) so callers that already catch the
builtin types keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PtjfError(ValueError):
    """Base class for ptjf's user-facing errors about bad values."""


class ConfigError(PtjfError):
    """A run, stage, gin or command-line setting is invalid."""


class RatesError(PtjfError):
    """Mixing weights, sizes or sampling parameters are invalid."""


class DataError(PtjfError):
    """Input data is missing, malformed or empty."""


class CheckpointError(PtjfError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read, or what they hold is not what was saved."""


class UnknownNameError(KeyError):
    """A task, mixture, method or preset name that is not registered.

    `str()` gives the plain message (KeyError would otherwise show it quoted).
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = ""):
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        msg = f"Unknown {kind} {name!r}."
        if close:
            msg += f" Closest registered: {', '.join(close)}."
        elif self.known:
            shown = ", ".join(self.known[:12]) + (" …" if len(self.known) > 12 else "")
            msg += f" Registered: {shown}."
        else:
            msg += f" No {kind} is registered."
        if hint:
            msg += f" {hint}"
        self.message = msg
        super().__init__(msg)

    def __str__(self) -> str:
        return self.message


def closest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Registered names closest to `name`, best first (for 'did you mean' messages)."""
    return difflib.get_close_matches(name, sorted(known), n=n, cutoff=0.5)

"""A quiet terminal: ptjf's own lines on the console, library logs in a file.

TensorFlow, XLA, JAX, absl, orbax and TFDS print a dozen lines per run that read like failures
and are not (`failed call to cuInit`, `Skipping merge of OCDBT checkpoints`, `cpu_feature_guard`,
…). Much of it is C++ writing straight to file descriptor 2, which no Python setting can catch
(`TF_CPP_MIN_LOG_LEVEL` only hides some of it, and hidden lines are lost when they would have
explained a real failure). So `route_library_output` works at the descriptor level, before
TensorFlow or JAX is imported:

- fd 2 is duplicated; `sys.stderr` (ptjf's errors, tracebacks, progress lines, the `ptjf`
  loggers) is rebound to the duplicate, which is still the terminal;
- fd 2 itself is pointed at a log file, so every C++ line and every library write to fd 2 lands
  there; the root logger (absl, orbax, jax, tensorflow, Python warnings) writes there too;
- a library's Python log record at ERROR or above is still announced on the terminal in one
  ptjf line, since an error is never noise.

The file starts under the system temp dir and moves to `MODEL_DIR/logs/libraries-<process>.log`
once a command knows its model dir (`use_model_dir`). `--verbose` skips all of this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import io
import logging
import os
import sys
import tempfile
from typing import TextIO

PTJF_LOGGER = "ptjf"
"""ptjf's loggers are `ptjf` and `ptjf.*`: their records are ptjf's own lines."""

_FORMAT = "%(levelname)s:%(name)s:%(message)s"  # the shape ptjf warnings had before routing


@dataclasses.dataclass
class Routing:
    """Where output goes after `route_library_output`: the terminal stream and the log file."""

    terminal: TextIO
    """The duplicate of the original fd 2: ptjf's own lines and errors."""
    log_path: str
    """The file fd 2 points at now: every library line."""
    in_model_dir: bool = False


_routing: Routing | None = None


def routing() -> Routing | None:
    """The active routing, or None (in-process calls, `--verbose`, or not started)."""
    return _routing


def _temp_log_path() -> str:
    # Local by necessity: fd 2 is pointed at this file (`os.dup2`).
    directory = os.path.join(tempfile.gettempdir(), f"ptjf-logs-{os.getuid()}")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"libraries-{os.getpid()}.log")


def _is_ptjf(name: str) -> bool:
    return name == PTJF_LOGGER or name.startswith(PTJF_LOGGER + ".")


class _LibraryErrors(logging.Filter):
    """Lets through a library's (non-ptjf) records at ERROR or above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR and not _is_ptjf(record.name)


class _LibraryErrorFormatter(logging.Formatter):
    """One ptjf line for a library's error; the details stay in the library log."""

    def format(self, record: logging.LogRecord) -> str:
        first = (record.getMessage().splitlines() or [""])[0]
        where = _routing.log_path if _routing is not None else "the library log"
        return f"ptjf: {record.name} reported an error: {first} (details in {where})"


def route_library_output() -> Routing:
    """Keeps the terminal for ptjf and sends library output to a temp log file.

    Call it once, in the command-line entry point, before TensorFlow or JAX is imported: C++
    logging opens nothing of its own, it writes to fd 2 whenever it likes, so fd 2 must already
    be the file. Never call it in-process under pytest, whose capture owns fd 2.
    """
    global _routing
    if _routing is not None:
        return _routing
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = io.TextIOWrapper(
        io.FileIO(terminal_fd, "w", closefd=True),
        encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    path = _temp_log_path()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = terminal  # tracebacks, `print(..., file=sys.stderr)`, progress lines
    _routing = Routing(terminal=terminal, log_path=path)

    # fd 2 (the log file, whichever it is at the time) for every library's Python logging; a
    # descriptor, not a path, so storage has no part in it.
    fd2 = open(2, "w", closefd=False, buffering=1, errors="replace")  # noqa: SIM115 (lives on)
    to_file = logging.StreamHandler(fd2)
    to_file.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))
    library_errors = logging.StreamHandler(terminal)
    library_errors.addFilter(_LibraryErrors())
    library_errors.setFormatter(_LibraryErrorFormatter())
    root = logging.getLogger()
    # A handler already here would write to the terminal; with one of ours in place, a
    # library's `logging.warning(...)` no longer installs basicConfig's stderr handler.
    root.handlers = [to_file, library_errors]
    root.setLevel(logging.INFO)

    ptjf = logging.getLogger(PTJF_LOGGER)
    own = logging.StreamHandler(terminal)
    own.setLevel(logging.WARNING)  # as before: ptjf's INFO lines are for the file
    own.setFormatter(logging.Formatter(_FORMAT))
    ptjf.addHandler(own)  # and it propagates to the file, for context

    logging.captureWarnings(True)  # Python warnings → `py.warnings` logger → the file
    # A fatal signal (an XLA check failure aborts) still shows a Python traceback on the
    # terminal; the C++ message itself is in the log.
    faulthandler.enable(file=terminal)
    return _routing


def use_model_dir(model_dir: str, process_index: int = 0) -> str | None:
    """Moves the library log to `MODEL_DIR/logs/libraries-<process_index>.log`.

    What the temp file holds so far is appended there, and fd 2 now points at it; the temp file
    is removed. The file fd 2 writes to is always local (a descriptor needs one): for a remote
    model dir (gs://) the temp file stays fd 2's, and each call copies what it holds so far to
    `MODEL_DIR/logs/` through the storage layer (the command calls it again when it ends).
    Returns the log's path, or None when there is no routing or the move was not possible.
    """
    from ptjf import storage

    if _routing is None or _routing.in_model_dir:
        return None if _routing is None else _routing.log_path
    if storage.is_remote(model_dir):
        remote = storage.join(model_dir, "logs", f"libraries-{process_index}.log")
        try:
            with open(_routing.log_path, "rb") as local:  # the local file fd 2 points at
                storage.write_bytes(remote, local.read())
        except OSError:
            return None  # an unwritable model dir is reported by the command itself
        return remote
    # A local model dir (the remote case returned above): fd 2 is pointed at a file in it, and
    # `os.dup2` needs a local file, so this is os, not storage, by necessity.
    directory = os.path.join(storage.absolute(model_dir), "logs")
    target = os.path.join(directory, f"libraries-{process_index}.log")
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return None  # an unwritable model dir is reported by the command itself
    old = _routing.log_path
    with open(old, "rb") as src:  # the local temp file fd 2 pointed at until now
        os.write(fd, src.read())  # what came before the switch…
        os.dup2(fd, 2)
        os.write(fd, src.read())  # …and what landed between the read and the switch
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(old)
    _routing.log_path = target
    _routing.in_model_dir = True
    return target


def say_where_logs_are(prefix: str) -> None:
    """One ptjf line naming the library log (after an error: it may say more)."""
    if _routing is not None:
        print(f"{prefix}: library logs: {_routing.log_path}", file=_routing.terminal, flush=True)

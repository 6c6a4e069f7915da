"""Where a run's numbers go: `MODEL_DIR/metrics.jsonl`, TensorBoard, and the terminal.

`metrics.jsonl` is the run's result of record (`ptjf report` and `ptjf demo` read it): one JSON
object per eval, flushed and fsync'd as it is written so a killed run loses no finished eval.
The file is strict JSON: non-finite floats are written as the strings "NaN", "Infinity" and
"-Infinity" (bare `NaN` tokens are not JSON and break jq, JavaScript and most loaders), and
`read_metrics` turns exactly those strings back into floats.

TensorBoard (`MODEL_DIR/tb`) gets every numeric leaf of an eval record as a scalar, tagged by
its key path (`validation/bible_translate_en_fr/loss`), and the training scalars of each log
step under `train/`. Training scalars also go to `MODEL_DIR/train_metrics.jsonl` (one line per log step, the
trainer's `log_every`; flushed, not fsync'd: losing the last few on a crash is harmless), so a
run without TensorBoard still has its training curves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import numpy as np

from ptjf.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
TENSORBOARD_DIR = "tb"
# Fields of an eval record not sent to TensorBoard: the step is its x axis, wall-clock time
# would only clutter the dashboard, and `train` repeats what `write_train` wrote at that step.
_NOT_SCALARS = frozenset({"global_step", "time", "train"})
_NONFINITE_TO_JSON = {math.inf: "Infinity", -math.inf: "-Infinity"}
_JSON_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# --- JSON conversion --------------------------------------------------------------------------


def to_json_value(x: Any) -> Any:
    """`x` as plain JSON data: numpy/JAX scalars → Python numbers, non-finite floats → strings."""
    if isinstance(x, Mapping):
        return {str(k): to_json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json_value(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return _float_to_json(float(x))
    if hasattr(x, "__array__") or isinstance(x, np.generic):
        a = np.asarray(x)
        if a.ndim == 0:
            return to_json_value(a.item())
        return to_json_value(a.tolist())
    raise TypeError(f"Metric value {x!r} of type {type(x).__name__} cannot be written to JSON.")


def _float_to_json(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    return _NONFINITE_TO_JSON.get(x, x)


def from_json_value(x: Any) -> Any:
    """Inverse of `to_json_value` for non-finite floats ("NaN" → nan, "Infinity" → inf)."""
    if isinstance(x, dict):
        return {k: from_json_value(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_json_value(v) for v in x]
    if isinstance(x, str):
        return _JSON_TO_NONFINITE.get(x, x)
    return x


def numeric_leaves(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every number in a nested record; tags join the key path with '/'."""
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from numeric_leaves(value, tag + "/")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, (int, float)):
            yield tag, float(value)
        elif isinstance(value, str) and value in _JSON_TO_NONFINITE:
            yield tag, _JSON_TO_NONFINITE[value]


# --- writing ----------------------------------------------------------------------------------


class MetricsWriter:
    """Appends eval records to `MODEL_DIR/metrics.jsonl` and scalars to TensorBoard.

    Appending (never truncating) keeps the records of earlier attempts of a resumed run; a
    reader that wants one record per step keeps the last one per (stage, stage_step).
    """

    def __init__(self, model_dir: str, *, tensorboard: bool = True):
        self.model_dir = os.fspath(model_dir)
        self.path = os.path.join(self.model_dir, METRICS_FILE)
        self.train_path = os.path.join(self.model_dir, TRAIN_METRICS_FILE)
        try:
            os.makedirs(self.model_dir, exist_ok=True)
            self._eval_file = _open_for_append(self.path)
            self._train_file = _open_for_append(self.train_path)
        except OSError as e:
            raise ConfigError(
                f"Cannot write metrics to {self.path}: {e.strerror or e}. MODEL_DIR must be a "
                "writable directory (it is created if missing); pass another one with "
                "--gin.MODEL_DIR=/path/to/run."
            ) from e
        self._tb = None
        if tensorboard:
            tf = _tensorflow_on_cpu()
            from tensorflow.core.framework import summary_pb2

            # `tf.summary.scalar` lives in the tensorboard package, which TensorFlow no longer
            # installs; the core `tf.summary.write` with the scalars plugin's metadata writes
            # the same event (a float32 scalar tagged for TensorBoard's "scalars" dashboard).
            metadata = summary_pb2.SummaryMetadata()
            metadata.plugin_data.plugin_name = "scalars"
            self._tf = tf
            self._scalar_metadata = metadata
            self._tb = tf.summary.create_file_writer(os.path.join(self.model_dir, TENSORBOARD_DIR))

    def write_eval(self, record: Mapping[str, Any]) -> None:
        """Appends one eval record (must carry `global_step`) and writes its numeric leaves."""
        if "global_step" not in record:
            raise ValueError(f"An eval record needs a 'global_step'; got keys {sorted(record)}.")
        data = to_json_value(record)
        self._eval_file.write(json.dumps(data, allow_nan=False) + "\n")
        self._eval_file.flush()
        os.fsync(self._eval_file.fileno())
        step = int(data["global_step"])
        curves = {k: v for k, v in data.items() if k not in _NOT_SCALARS}
        self._write_scalars(step, list(numeric_leaves(curves)))

    def write_train(self, global_step: int, scalars: Mapping[str, Any]) -> None:
        """Training scalars of one log step: TensorBoard under `train/`, and train_metrics.jsonl."""
        data = to_json_value(scalars)
        line = {"global_step": int(global_step), "time": time.time(), **data}
        self._train_file.write(json.dumps(line, allow_nan=False) + "\n")
        self._train_file.flush()
        self._write_scalars(int(global_step), list(numeric_leaves(data, "train/")))

    def _write_scalars(self, step: int, leaves: list[tuple[str, float]]) -> None:
        if self._tb is None:
            return
        with self._tb.as_default(), self._tf.device("/CPU:0"):
            for tag, value in leaves:
                tensor = self._tf.constant(value, self._tf.float32)
                self._tf.summary.write(tag, tensor, step=step, metadata=self._scalar_metadata)
        self._tb.flush()

    def close(self) -> None:
        for f in (self._eval_file, self._train_file):
            if not f.closed:
                f.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullMetricsWriter:
    """The writer of every process but the first in a multi-host run: writes nothing, so the
    run's metrics files have one author."""

    def write_eval(self, record: Mapping[str, Any]) -> None:
        del record

    def write_train(self, global_step: int, scalars: Mapping[str, Any]) -> None:
        del global_step, scalars

    def close(self) -> None:
        pass


def _tensorflow_on_cpu():
    from ptjf.data.tf_cpu import tensorflow_on_cpu

    return tensorflow_on_cpu()


def _open_for_append(path: str) -> IO[str]:
    """Opens `path` for appending, first ending a line a killed run left unfinished.

    Without the newline the next record would be glued to the broken line, and the reader
    would drop both.
    """
    needs_newline = False
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the writer until close()
    if needs_newline:
        f.write("\n")
        f.flush()
    return f


# --- reading ----------------------------------------------------------------------------------


def read_metrics(path_or_dir: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl (or of `DIR/metrics.jsonl`), in file order.

    A line that is not a JSON object — typically the last line of a killed run, cut mid-write —
    is skipped with a warning naming the file and line number; it never stops a report.
    """
    return read_metrics_and_broken_lines(path_or_dir)[0]


def read_metrics_and_broken_lines(path_or_dir: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """`read_metrics`, plus the numbers of the lines it skipped (a report says how many)."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        raise DataError(
            f"No metrics file at {path}: the run has not evaluated yet, or the path is not a "
            f"MODEL_DIR (which holds {METRICS_FILE})."
        )
    records: list[dict] = []
    broken: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                record, why = None, e.msg
            else:
                why = "not a JSON object"
            if not isinstance(record, dict):
                broken.append(number)
                _warn(
                    f"{path}:{number}: skipping a broken metrics line ({why}); a run killed "
                    "mid-write leaves one."
                )
                continue
            records.append(from_json_value(record))
    return records, broken


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


# --- the terminal -----------------------------------------------------------------------------


def format_eta(seconds: float) -> str:
    """A compact duration: "12s", "3m05s", "1h02m" ("?" when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(x: float, unit: str = "tok/s") -> str:
    """Three significant digits with a k/M/G prefix: "950 tok/s", "1.23k tok/s", "45.6M tok/s"."""
    if x is None or not math.isfinite(x):
        return f"? {unit}"
    prefixes = ["", "k", "M", "G", "T"]
    i = 0
    value = float(x)
    while abs(value) >= 1000 and i < len(prefixes) - 1:
        value /= 1000
        i += 1
    text = _three_digits(value)
    if text in ("1000", "-1000") and i < len(prefixes) - 1:  # 999.6 rounds up into the next prefix
        value /= 1000
        i += 1
        text = _three_digits(value)
    return f"{text}{prefixes[i]} {unit}"


def _three_digits(v: float) -> str:
    a = abs(v)
    if a >= 100 or v == 0:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class ProgressDisplay:
    """Progress of one stage: a redrawn bar on a terminal, periodic plain lines elsewhere.

    On a terminal each `update` redraws one line with `\\r`. In logs (CI, files, SLURM output)
    carriage returns make a mess, so a plain line is written at the first update, the last step,
    and otherwise when `log_every` steps or `log_seconds` seconds have passed since the last one.
    The ETA uses the rate measured since the first update (the first update comes after the
    first compiled step, so compile time does not skew it).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        stage_name: str,
        stream: IO[str] | None = None,
        is_tty: bool | None = None,
        log_every: int = 100,
        log_seconds: float = 60.0,
        width: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps = int(total_steps)
        self.stage_name = stage_name
        self.stream = sys.stderr if stream is None else stream
        if is_tty is None:
            isatty = getattr(self.stream, "isatty", None)
            is_tty = bool(isatty and isatty())
        self.is_tty = is_tty
        self.log_every = max(1, int(log_every))
        self.log_seconds = log_seconds
        self.width = width
        self.clock = clock
        self._start: tuple[int, float] | None = None
        self._last_logged: tuple[int, float] | None = None
        self._drawn = 0

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the rate measured so far, or None before a rate exists."""
        if self._start is None:
            return None
        first_step, first_time = self._start
        elapsed = self.clock() - first_time
        if step <= first_step or elapsed <= 0:
            return None
        return (self.total_steps - step) * elapsed / (step - first_step)

    def line(self, step: int, loss: float | None, tokens_per_sec: float | None) -> str:
        """The text of one progress line (no `\\r`, no newline)."""
        total = max(self.total_steps, 1)
        parts = [self.stage_name, f"{step}/{self.total_steps}"]
        if self.is_tty:
            filled = min(self.width, max(0, self.width * step // total))
            parts.insert(1, "[" + "#" * filled + "." * (self.width - filled) + "]")
        parts.append(f"{100 * step / total:.0f}%")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if tokens_per_sec is not None:
            parts.append(format_rate(tokens_per_sec))
        parts.append(f"ETA {format_eta(self.eta_seconds(step))}")
        return " ".join(parts)

    def update(
        self, step: int, loss: float | None = None, tokens_per_sec: float | None = None
    ) -> None:
        now = self.clock()
        if self._start is None:
            self._start = (step, now)
        if self.is_tty:
            text = self.line(step, loss, tokens_per_sec)
            pad = " " * max(0, self._drawn - len(text))  # wipe a longer previous line
            self.stream.write("\r" + text + pad)
            self._drawn = len(text)
            self.stream.flush()
            return
        last = self._last_logged
        due = (
            last is None
            or step >= self.total_steps
            or step - last[0] >= self.log_every
            or now - last[1] >= self.log_seconds
        )
        if due:
            self.stream.write(self.line(step, loss, tokens_per_sec) + "\n")
            self.stream.flush()
            self._last_logged = (step, now)

    def close(self) -> None:
        """Ends the terminal line so later output starts on a fresh one."""
        if self.is_tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0

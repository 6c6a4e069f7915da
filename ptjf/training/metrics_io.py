"""Where a run's numbers go: `MODEL_DIR/metrics.jsonl` (or its parts on an object store), TensorBoard.

`metrics.jsonl` is the run's result of record (`ptjf report` and `ptjf demo` read it): one JSON
object per eval, written at once so a killed run loses no finished eval.
The file is strict JSON: non-finite floats are written as the strings "NaN", "Infinity" and
"-Infinity" (bare `NaN` tokens are not JSON and break jq, JavaScript and most loaders), and
`read_metrics` turns exactly those strings back into floats.

TensorBoard (`MODEL_DIR/tb`) gets every numeric leaf of an eval record as a scalar, tagged by
its key path (`validation/bible_translate_en_fr/loss`), and the training scalars of each log
step under `train/`. Training scalars also go to `MODEL_DIR/train_metrics.jsonl` (one line per
log step, the trainer's `log_every`; not fsync'd: losing the last few on a crash is harmless),
so a run without TensorBoard still has its training curves.

On local disk each log is one file, appended to. An object store has no append, so on `gs://`
each log is a series of objects, `metrics.jsonl.parts/00000000.jsonl`, `00000001.jsonl`, …, one
per flush (see `MetricsWriter`); readers (`read_metrics`) read the file, then the parts in
sequence order, whichever exist.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import numpy as np

from ptjf import storage
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


# --- the log as parts (object stores) ---------------------------------------------------------

PARTS_SUFFIX = ".parts"
_PART_DIGITS = 8
_PART_EXT = ".jsonl"
_READ_THREADS = 16


def parts_dir(log_path: str | os.PathLike) -> str:
    """The directory of a log's parts: `MODEL_DIR/metrics.jsonl` → `MODEL_DIR/metrics.jsonl.parts`."""
    return os.fspath(log_path).rstrip("/") + PARTS_SUFFIX


def part_name(sequence: int) -> str:
    """The name of part number `sequence` (from 0): "00000042.jsonl". Zero-padded so a listing
    sorts in order; readers order by the number itself, so a 9-digit part still comes last."""
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise ValueError(f"A part's sequence number is an integer >= 0; got {sequence!r}.")
    return f"{sequence:0{_PART_DIGITS}d}{_PART_EXT}"


def part_sequence(name: str) -> int | None:
    """The sequence number in a part's name; None for any other name (a temporary file, a
    stray object), which readers and writers ignore."""
    if not name.endswith(_PART_EXT):
        return None
    stem = name[: -len(_PART_EXT)]
    if not stem or not stem.isascii() or not stem.isdigit():
        return None
    return int(stem)


def ordered_parts(names: Iterable[str]) -> list[str]:
    """The part names among `names`, in sequence order (other names left out)."""
    numbered = [(part_sequence(n), n) for n in names]
    return [n for _, n in sorted((s, n) for s, n in numbered if s is not None)]


def next_part_sequence(names: Iterable[str]) -> int:
    """The sequence number a writer's first part gets: one past the highest among `names`."""
    numbers = [s for s in map(part_sequence, names) if s is not None]
    return max(numbers) + 1 if numbers else 0


def log_sources(log_path: str | os.PathLike) -> list[str]:
    """The files and objects that hold a log's lines, in reading order: the log file itself (a
    local run appends to it), then its parts in sequence order (a run on an object store writes
    one per flush). [] when there are neither."""
    path = storage.check_uri(os.fspath(log_path))
    sources = [path] if storage.isfile(path) else []
    directory = parts_dir(path)
    sources += [storage.join(directory, n) for n in ordered_parts(storage.listdir(directory))]
    return sources


def metrics_log_path(path_or_dir: str | os.PathLike) -> str:
    """The log a reader reads: `DIR/metrics.jsonl` for a directory, else the path itself (a
    metrics.jsonl or train_metrics.jsonl, which may exist only as its parts)."""
    path = storage.check_uri(os.fspath(path_or_dir))
    if storage.isdir(path):
        return storage.join(path, METRICS_FILE)
    return path


def has_metrics(path_or_dir: str | os.PathLike) -> bool:
    """Whether a run directory (or a log path) has a metrics log, as a file or as parts."""
    return bool(log_sources(metrics_log_path(path_or_dir)))


# --- writing ----------------------------------------------------------------------------------


class _AppendLog:
    """A log on local disk: one file, appended to line by line (flushed, fsync'd on request)."""

    def __init__(self, path: str):
        self._file = _open_for_append(path)

    def write(self, line: str, *, durable: bool) -> None:
        self._file.write(line)
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())

    def pending(self) -> int:
        return 0  # every line is in the file as soon as it is written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class _PartsLog:
    """A log on an object store, which has no append: lines are buffered and each flush writes
    them as one new object `<log>.parts/<sequence>.jsonl`, never rewritten afterwards.

    Numbering continues after the highest part already there, so a resumed run adds to the log
    of the attempts before it. A part is created only where no object is (`create_exclusive`):
    should a stale writer of the same run still be alive, neither overwrites the other's parts.
    A failed upload keeps the lines buffered for the next flush.
    """

    def __init__(self, path: str):
        self.dir = parts_dir(path)
        self._next = next_part_sequence(storage.listdir(self.dir))
        self._lines: list[str] = []

    def write(self, line: str, *, durable: bool) -> None:
        del durable  # a part is whole once written; `flush` decides when
        self._lines.append(line)

    def pending(self) -> int:
        return len(self._lines)

    def flush(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8")
        while not storage.create_exclusive(storage.join(self.dir, part_name(self._next)), data):
            self._next += 1  # taken (another writer of the run): the next number
        self._next += 1
        self._lines.clear()

    def close(self) -> None:
        self.flush()


class MetricsWriter:
    """Writes eval records to `MODEL_DIR/metrics.jsonl`, training scalars to
    `train_metrics.jsonl`, and both to TensorBoard.

    Local disk: each log is one file, appended to (never truncated), so a resumed run keeps the
    records of its earlier attempts; a reader that wants one record per step keeps the last one
    per (stage, stage_step). An eval record is fsync'd as it is written.

    Object store (`gs://` MODEL_DIR; or a local one that already holds parts): each log is a
    series of objects `<log>.parts/<sequence>.jsonl` (`_PartsLog`). Every eval record is written
    at once as its own part; training scalars are buffered and written with the next eval, at
    close, and whenever `train_flush_records` of them or `train_flush_seconds` have gathered.
    TensorBoard events are written to a local staging directory and copied, whole, to
    `MODEL_DIR/tb/` at each of those flushes and at close (TensorFlow's own GCS client cannot be
    pointed elsewhere than Google's endpoint, so it is not used).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        train_flush_records: int = 100,
        train_flush_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model_dir = storage.check_uri(os.fspath(model_dir))
        self.path = storage.join(self.model_dir, METRICS_FILE)
        self.train_path = storage.join(self.model_dir, TRAIN_METRICS_FILE)
        self.remote = storage.is_remote(self.model_dir)
        self.train_flush_records = max(1, int(train_flush_records))
        self.train_flush_seconds = float(train_flush_seconds)
        self._clock = clock
        self._closed = False
        self._eval_log: _AppendLog | _PartsLog
        self._train_log: _AppendLog | _PartsLog
        if self.remote:
            storage.check_writable(
                self.model_dir,
                "metrics",
                "MODEL_DIR must be a writable directory; pass another one with "
                "--gin.MODEL_DIR=gs://BUCKET/path/to/run (or a local path).",
            )
            self._eval_log, self._train_log = _PartsLog(self.path), _PartsLog(self.train_path)
        else:
            try:
                os.makedirs(self.model_dir, exist_ok=True)
                if any(os.path.isdir(parts_dir(p)) for p in (self.path, self.train_path)):
                    # A run copied from an object store: appending to a file would put the
                    # new records before the parts in reading order, so the parts go on.
                    self._eval_log = _PartsLog(self.path)
                    self._train_log = _PartsLog(self.train_path)
                else:
                    self._eval_log = _AppendLog(self.path)
                    self._train_log = _AppendLog(self.train_path)
            except OSError as e:
                raise ConfigError(
                    f"Cannot write metrics to {self.path}: {e.strerror or e}. MODEL_DIR must be "
                    "a writable directory (it is created if missing); pass another one with "
                    "--gin.MODEL_DIR=/path/to/run."
                ) from e
        self._train_flushed_at = clock()
        self._tb = None
        self._tb_staging: str | None = None
        self._tb_mirrored: dict[str, tuple[int, int]] = {}
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
            if self.remote:
                self._tb_staging = tempfile.mkdtemp(prefix="ptjf-tb-")
                self._tb = tf.summary.create_file_writer(self._tb_staging)
            else:
                self._tb = tf.summary.create_file_writer(
                    os.path.join(self.model_dir, TENSORBOARD_DIR)
                )

    def write_eval(self, record: Mapping[str, Any]) -> None:
        """Writes one eval record (must carry `global_step`) and its numeric leaves, at once."""
        if "global_step" not in record:
            raise ValueError(f"An eval record needs a 'global_step'; got keys {sorted(record)}.")
        data = to_json_value(record)
        self._train_log.flush()  # the training scalars up to this eval go first
        self._eval_log.write(json.dumps(data, allow_nan=False) + "\n", durable=True)
        self._eval_log.flush()
        self._train_flushed_at = self._clock()
        step = int(data["global_step"])
        curves = {k: v for k, v in data.items() if k not in _NOT_SCALARS}
        self._write_scalars(step, list(numeric_leaves(curves)))
        self._mirror_tensorboard()

    def write_train(self, global_step: int, scalars: Mapping[str, Any]) -> None:
        """Training scalars of one log step: TensorBoard under `train/`, and train_metrics.jsonl."""
        data = to_json_value(scalars)
        line = {"global_step": int(global_step), "time": time.time(), **data}
        self._train_log.write(json.dumps(line, allow_nan=False) + "\n", durable=False)
        self._write_scalars(int(global_step), list(numeric_leaves(data, "train/")))
        pending = self._train_log.pending()
        if pending and (
            pending >= self.train_flush_records
            or self._clock() - self._train_flushed_at >= self.train_flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Writes what is buffered (training scalars, TensorBoard's staged events) to MODEL_DIR."""
        self._train_log.flush()
        self._eval_log.flush()
        self._train_flushed_at = self._clock()
        self._mirror_tensorboard()

    def _write_scalars(self, step: int, leaves: list[tuple[str, float]]) -> None:
        if self._tb is None:
            return
        with self._tb.as_default(), self._tf.device("/CPU:0"):
            for tag, value in leaves:
                tensor = self._tf.constant(value, self._tf.float32)
                self._tf.summary.write(tag, tensor, step=step, metadata=self._scalar_metadata)
        self._tb.flush()

    def _mirror_tensorboard(self) -> None:
        """Copies the staged event files that changed since the last copy to `MODEL_DIR/tb/`."""
        if self._tb_staging is None:
            return
        for rel in storage.walk_files(self._tb_staging):
            local = os.path.join(self._tb_staging, rel)
            st = os.stat(local)
            key = (st.st_size, st.st_mtime_ns)
            if self._tb_mirrored.get(rel) == key:
                continue
            with open(local, "rb") as f:
                data = f.read()
            storage.write_bytes(storage.join(self.model_dir, TENSORBOARD_DIR, rel), data)
            self._tb_mirrored[rel] = key

    def close(self) -> None:
        """Writes what is buffered and releases the files (the staging directory too)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._train_log.close()
            self._eval_log.close()
            if self._tb is not None:
                self._tb.close()
                self._tb = None
                self._mirror_tensorboard()
        finally:
            if self._tb_staging is not None:
                shutil.rmtree(self._tb_staging, ignore_errors=True)
                self._tb_staging = None

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

    def flush(self) -> None:
        pass

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
    """The records of a run's metrics log (`DIR/metrics.jsonl`, or the log named), in order.

    The log is the file, then its parts (`metrics.jsonl.parts/`, written on object stores) in
    sequence order; local paths and `gs://` alike. A path to train_metrics.jsonl reads that log
    the same way. A line that is not a JSON object — typically the last line of a killed run,
    cut mid-write — is skipped with a warning naming the file and line number; it never stops a
    report.
    """
    return read_metrics_and_broken_lines(path_or_dir)[0]


def read_train_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The training scalars a run logged (`DIR/train_metrics.jsonl`, file then parts)."""
    return read_metrics(storage.join(os.fspath(run_dir), TRAIN_METRICS_FILE))


def read_metrics_and_broken_lines(path_or_dir: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """`read_metrics`, plus the numbers of the lines it skipped (a report says how many).

    Lines are numbered through the whole log: the file's first, then each part's in turn (the
    warning names the file or part, and the line within it).
    """
    path = metrics_log_path(path_or_dir)
    sources = log_sources(path)
    if not sources:
        raise DataError(
            f"No metrics file at {path}: the run has not evaluated yet, or the path is not a "
            f"MODEL_DIR (which holds {METRICS_FILE}, or its parts {METRICS_FILE}{PARTS_SUFFIX}/)."
        )
    records: list[dict] = []
    broken: list[int] = []
    offset = 0
    for source, data in zip(sources, _read_all(sources), strict=True):
        got, bad, lines = parse_log(data, source, offset)
        records += got
        broken += bad
        offset += lines
    return records, broken


def _read_all(sources: Sequence[str]) -> list[bytes]:
    """The bytes of every source, in order; an object store's parts are fetched concurrently."""
    if len(sources) > 1 and any(storage.is_remote(s) for s in sources):
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(sources))) as pool:
            return list(pool.map(storage.read_bytes, sources))
    return [storage.read_bytes(s) for s in sources]


def parse_log(data: bytes, source: str, offset: int = 0) -> tuple[list[dict], list[int], int]:
    """(records, broken line numbers, lines) of one file or part of a log.

    Broken lines are numbered `offset` + their line number in `source`; the warning for each
    names `source` and the line within it. Lines are split as a text file reads them.
    """
    records: list[dict] = []
    broken: list[int] = []
    number = 0
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record, why = None, e.msg
        else:
            why = "not a JSON object"
        if not isinstance(record, dict):
            broken.append(offset + number)
            _warn(
                f"{source}:{number}: skipping a broken metrics line ({why}); a run killed "
                "mid-write leaves one."
            )
            continue
        records.append(from_json_value(record))
    return records, broken, number


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)

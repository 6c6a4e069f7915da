"""The position of a training stream, saved with every checkpoint, so resuming costs no replay.

A stream is a tf.data pipeline (`ptjf.data.batches`); its iterator state — counters, seed
generators, the few examples in flight in prefetch and packing buffers — is serialized with
tf.data's own iterator checkpointing (T5X saves the same thing as its `dataset` item). Restoring
it reads those bytes and nothing else, so resuming at step 10^6 costs what resuming at step 10^3
costs. ptjf's in-memory sources permute each epoch by index instead of through a shuffle buffer
(`ptjf.data.sources`), which keeps the state at tens of kilobytes to a few megabytes per shard.

The state is saved per input shard (`train.input_shards`), not per host: a run resumed on
another number of hosts reads the same shard files in another grouping.

Each shard's bytes carry a SHA-256 header, and a checkpoint's input state carries a descriptor
of the stream that wrote it (mixture, tasks, rates, seed, lengths, packing, batch size, shards,
vocabulary). A resume whose stream differs is refused, naming each difference, rather than
silently reading another stream's position.

Replay (re-reading and discarding the batches before the checkpoint, today's fallback) is
kept for streams that tf.data cannot checkpoint (a `tf.py_function` or a Python generator in a
task's source or preprocessors) and for checkpoints saved without an input state; it logs the
number of batches and an estimate of the time first.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ptjf.errors import CheckpointError, DataError

log = logging.getLogger("ptjf.data")

FORMAT = 1
_DIGEST = 32  # bytes of the SHA-256 header of a shard file
# A replay's estimate is timed over batches 9 to 24 (the first fill the pipeline's buffers).
_ESTIMATE_BATCHES = 8
RESUME_MODES = ("restore", "replay")


def shard_file(shard: int, num_shards: int) -> str:
    """The name of input shard `shard`'s state file in a checkpoint's input-state folder."""
    return f"shard-{shard:05d}-of-{num_shards:05d}.state"


def encode(payload: bytes) -> bytes:
    """`payload` behind its SHA-256, so a damaged or truncated file is caught on read."""
    return hashlib.sha256(payload).digest() + payload


def decode(blob: bytes, where: str) -> bytes:
    """The payload of `encode`, checked; raises CheckpointError naming `where` if damaged."""
    digest, payload = blob[:_DIGEST], blob[_DIGEST:]
    if len(blob) < _DIGEST or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"The input-stream state {where} is damaged (its SHA-256 does not match its "
            f"{len(payload)} bytes): the file was altered or cut short after the save."
        )
    return payload


def describe(
    config: Any,
    task_names: Sequence[str],
    rates: Mapping[str, float],
    *,
    input_shards: int,
    vocabulary: str | None,
    schedule: Any = None,
) -> dict[str, Any]:
    """What a saved position is a position of: every setting that changes the stream.

    `config` is the stage's `DatasetConfig`; `vocabulary` the SHA-256 of the SentencePiece
    model (None when it has no model file); `schedule` its bound rate schedule, if any (a
    stream without one has no "rate_schedule" entry, as before schedules existed).
    """
    out = {
        "format": FORMAT,
        "mixture_or_task_name": config.mixture_or_task_name,
        "tasks": list(task_names),
        "rates": {t: round(float(r), 12) for t, r in rates.items()},
        "seed": config.seed,
        "split": config.split,
        "shuffle": config.shuffle,
        "pack": config.pack,
        "task_feature_lengths": dict(config.task_feature_lengths),
        "batch_size": config.batch_size,
        "input_shards": input_shards,
        "vocabulary": vocabulary,
    }
    if schedule is not None:
        out["rate_schedule"] = schedule.describe()
    return out


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per setting whose saved value differs from the run's, e.g.
    "rates: saved {'a': 0.5, 'b': 0.5}, this run {'a': 0.8, 'b': 0.2}"."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: saved {saved.get(key)!r}, this run {current.get(key)!r}")
    return out


def check_matches(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raises DataError naming every difference between the saved stream and this run's."""
    diff = differences(saved, current)
    if not diff:
        return
    hint = ""
    if any(line.startswith("input_shards") for line in diff):
        hint = (
            " With train.input_shards=None every host is one shard, so a new number of hosts "
            "is a new stream; fix train.input_shards (e.g. to the largest host count you use) "
            "so that the stream does not depend on the hosts."
        )
    raise DataError(
        f"The input stream saved in {where} is not this run's stream:\n  "
        + "\n  ".join(diff)
        + "\nRestoring it would read another stream's position. Run with the settings it was "
        "saved with, or pass --gin.train.resume_input=\"'replay'\" to start this run's stream "
        "and skip the batches of the steps already trained (slow: every skipped batch is built)."
        + hint
    )


def _reason(e: BaseException) -> str:
    """TensorFlow's message without its op and function decorations."""
    text = (getattr(e, "message", None) or str(e)).strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S)
    return (text.splitlines() or [type(e).__name__])[0].rstrip(".")


class ShardStream(Iterator[dict[str, np.ndarray]]):
    """The batches of one input shard as numpy arrays, with a position that can be saved.

    `save()` returns the tf.data iterator state after the batches taken so far; a stream built
    from the same pipeline and `restore`d from it yields exactly what this one yields next.
    """

    def __init__(self, dataset: tf.data.Dataset, description: str = "input stream"):
        self._dataset = dataset
        self._iterator = iter(dataset)
        self.description = description
        self.taken = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.taken += 1
        return {k: v.numpy() for k, v in batch.items()}

    def save(self) -> bytes:
        """The iterator state; raises DataError if tf.data cannot checkpoint this pipeline."""
        try:
            state = self._iterator._save()  # tf.data's iterator-to-bytes (private API)
            return bytes(state.numpy())
        except (tf.errors.OpError, ValueError, TypeError) as e:
            raise DataError(
                f"tf.data cannot save the position of {self.description}: {_reason(e)}. A "
                "`tf.py_function`, `tf.numpy_function` or Python generator in a task's source "
                "or preprocessors has state tf.data cannot write; resuming will replay."
            ) from e

    def restore(self, state: bytes, position: int) -> None:
        """Moves the stream to the saved `state`, the position after `position` batches."""
        try:
            self._iterator._restore(tf.constant(state))
        except (tf.errors.OpError, ValueError) as e:
            raise DataError(
                f"The saved position of {self.description} does not fit its pipeline "
                f"({_reason(e)}). "
                "The task's preprocessors or source changed since the checkpoint was written; "
                "pass --gin.train.resume_input=\"'replay'\" to skip the trained batches instead."
            ) from e
        self.taken = position

    def replay(self, batches: int) -> float:
        """Reads and discards `batches` batches (the fallback); returns the seconds it took.

        Logs the number of batches and an estimate of the time, from the rate of the batches
        after the first few (those include filling the pipeline's buffers).
        """
        start = time.perf_counter()
        warm = measured = None
        for i in range(batches):
            next(self._iterator)
            if i + 1 == _ESTIMATE_BATCHES:
                warm = time.perf_counter()
            elif i + 1 == 3 * _ESTIMATE_BATCHES and batches > 6 * _ESTIMATE_BATCHES:
                measured = time.perf_counter()
                rate = 2 * _ESTIMATE_BATCHES / max(measured - warm, 1e-9)
                log.warning(
                    "%s: replaying %d batches to reach the checkpoint's position; about %.0f s "
                    "more at the %.1f batches/s of batches %d-%d.",
                    self.description,
                    batches,
                    (batches - i - 1) / rate,
                    rate,
                    _ESTIMATE_BATCHES + 1,
                    i + 1,
                )
        self.taken += batches
        return time.perf_counter() - start


class HostStream(Iterator[dict[str, np.ndarray]]):
    """This host's rows of every global batch: its input shards' batches stacked in order."""

    def __init__(self, shards: Mapping[int, ShardStream]):
        self.shards = dict(sorted(shards.items()))

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(s) for s in self.shards.values()]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def save(self) -> dict[int, bytes]:
        """{input shard: iterator state} for this host's shards."""
        return {i: s.save() for i, s in self.shards.items()}

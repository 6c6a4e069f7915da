"""What a stage does before its first step, overlapped and timed.

A stage needs three things before step 1: its state (initialised or restored), its first batch
(the tf.data pipeline warmed up: files read, shuffle buffers filled, examples packed) and its
compiled train step. None needs another's result: the step compiles from shapes alone
(`abstract_batch` and the state's shardings), so the trainer builds the state on the main thread
while the step compiles and the first batch is read on two background threads. XLA's compiler
and tf.data release the GIL, so on a two-core machine the three mostly overlap; the time to the
first step is about the longest of them rather than their sum.

`Timeline` records when each phase finished, counted from the start of the process (read from
/proc where there is one), so the log and the run summary say what "launch to first step" cost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import jax
import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

# SeqIO's EncDec features the train step reads, all int32 as the input pipeline makes them.
UNPACKED_FEATURES = {
    "encoder_input_tokens": "inputs",
    "decoder_input_tokens": "targets",
    "decoder_target_tokens": "targets",
    "decoder_loss_weights": "targets",
}
PACKED_FEATURES = {
    **UNPACKED_FEATURES,
    "encoder_segment_ids": "inputs",
    "decoder_segment_ids": "targets",
    "encoder_positions": "inputs",
    "decoder_positions": "targets",
}


def process_start_time() -> float:
    """`time.time()` when this process started (Linux /proc), else when ptjf was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # Fields after the command name (which may hold spaces) start at state, field 3.
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22: start time in clock ticks after boot
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        import ptjf

        return ptjf.IMPORT_TIME


class Timeline:
    """Seconds from the process's start to the end of each named phase."""

    def __init__(self, origin: float | None = None):
        self.origin = process_start_time() if origin is None else origin
        self.marks: dict[str, float] = {}

    def mark(self, phase: str) -> float:
        self.marks[phase] = time.time() - self.origin
        return self.marks[phase]

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.marks.items())


class Background(Generic[T]):
    """`fn(*args, **kwargs)` on a daemon thread; `result()` waits and re-raises its error.

    A daemon thread, so a run that stops on an error elsewhere does not wait for a compile.
    """

    def __init__(
        self,
        fn: Callable[..., T],
        *args: Any,
        name: str = "ptjf-startup",
        start: bool = True,
        **kwargs: Any,
    ):
        """`start=False` waits for `start()` (or `result()`), to begin when the cores are free."""
        self._result: T | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0

        def target() -> None:
            start = time.perf_counter()
            try:
                self._result = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller of result()
                self._error = e
            self.seconds = time.perf_counter() - start

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._started = False
        if start:
            self.start()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def result(self) -> T:
        self.start()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


def abstract_batch(
    lengths: Mapping[str, int], batch_size: int, pack: bool, sharding_of: Callable[[tuple], Any]
) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the train step will see, as shapes: what it compiles for.

    `sharding_of(shape)` places each feature (the partitioner's `batch_sharding`).
    """
    features = PACKED_FEATURES if pack else UNPACKED_FEATURES
    out = {}
    for name, length_key in features.items():
        shape = (batch_size, lengths[length_key])
        out[name] = jax.ShapeDtypeStruct(shape, np.dtype(np.int32), sharding=sharding_of(shape))
    return out


def signature(tree: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of every leaf: compares a real batch with `abstract_batch`."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [
        (jax.tree_util.keystr(path), tuple(leaf.shape), str(np.dtype(leaf.dtype)))
        for path, leaf in leaves
    ]

"""Preemption: on SIGTERM finish the step, save, and exit 0 so the same command resumes.

Cloud TPU (and most schedulers) send SIGTERM some time before taking a machine away. The
trainer asks `PreemptionWatch.requested(step)` after every step:

* one process: a SIGTERM handler sets a flag; the step in flight finishes first (the handler
  only records the signal), then the trainer saves that step and stops;
* several processes: a signal may reach only some hosts, yet all of them must save the same
  step together. JAX's preemption sync manager (started by `jax.distributed.initialize`) agrees
  on that step across processes; `multihost_utils.reached_preemption_sync_point` says when it
  is reached.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax

log = logging.getLogger(__name__)


class Preempted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the step loop after the preemption checkpoint is written."""

    def __init__(self, stage: str, step: int):
        super().__init__(f"preempted in stage {stage!r} after step {step}")
        self.stage = stage
        self.step = step


class PreemptionWatch:
    """Context manager: watches for SIGTERM while a run trains, restores the old handler after."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._signals = signals
        self._previous: dict[int, object] = {}
        self._flag = threading.Event()
        self._multiprocess = False

    def __enter__(self) -> PreemptionWatch:
        self._multiprocess = jax.process_count() > 1
        if self._multiprocess:
            return self  # JAX's own notifier listens for the signal on every process
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM will not save a checkpoint")
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if not self._flag.is_set():
            log.warning("signal %d: the current step finishes, then a checkpoint is saved", signum)
        self._flag.set()

    def requested(self, step: int) -> bool:
        """Whether to save and stop after `step` (every process gets the same answer)."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._flag.is_set()

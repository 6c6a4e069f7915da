"""Peer watchdog: when a host of a multi-process run dies, the others stop, naming it.

Without it, the survivors of a lost host wait inside the next collective until JAX's own
heartbeat gives up (a native abort, minutes later by default). Here each process bumps a
counter in the coordination service's key-value store every `interval_s` seconds and watches
everyone else's; a peer whose counter has not moved for `timeout_s` seconds (by this host's
clock, so clock skew between hosts does not matter) is lost: this process prints which one and
exits with `EXIT_PEER_LOST`. If the store itself is gone, the coordinator (process 0) is lost.

A process that finishes normally marks itself done, so a peer still evaluating or saving
does not mistake it for a dead one. The thread only reads and writes a few keys; it never
touches the devices.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: rerun the same command on every host to resume
_PREFIX = "ptjf/watchdog"


class PeerWatchdog:
    """Heartbeats through `client` (JAX's DistributedRuntimeClient) and watches the peers'."""

    def __init__(
        self,
        client: Any,
        process_index: int,
        process_count: int,
        *,
        timeout_s: float = 60.0,
        interval_s: float = 2.0,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._me = process_index
        self._count = process_count
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._on_lost = on_lost or exit_lost
        self._clock = clock
        self._beats = 0
        self._seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.verdict: str | None = None
        self._lost = threading.Event()

    # --- one round, testable without threads -----------------------------------------------
    def beat(self) -> None:
        self._beats += 1
        self._client.key_value_set(f"{_PREFIX}/beat/{self._me}", str(self._beats), True)

    def check(self) -> str | None:
        """A message naming the lost peer, or None while everyone is alive (or done)."""
        try:
            beats = dict(self._client.key_value_dir_get(f"{_PREFIX}/beat/"))
            done = {k for k, _ in self._client.key_value_dir_get(f"{_PREFIX}/done/")}
        except Exception as e:  # the store lives in process 0
            return (
                f"lost the coordinator (process 0): its key-value store stopped answering "
                f"({type(e).__name__}: {e})"
            )
        now = self._clock()
        for peer in range(self._count):
            if peer == self._me or f"{_PREFIX}/done/{peer}" in done:
                continue
            value = beats.get(f"{_PREFIX}/beat/{peer}", "")
            last_value, since = self._seen.get(peer, (None, now))
            if value != last_value:
                self._seen[peer] = (value, now)
            elif now - since > self.timeout_s:
                return (
                    f"lost process {peer} of {self._count}: no heartbeat for "
                    f"{now - since:.0f} s (its host died, was preempted or was killed)"
                )
        return None

    def mark_done(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):  # the coordinator may already be gone at exit
            self._client.key_value_set(f"{_PREFIX}/done/{self._me}", "1", True)

    # --- the thread ------------------------------------------------------------------------
    def start(self) -> PeerWatchdog:
        self._thread = threading.Thread(target=self._run, name="ptjf-peer-watchdog", daemon=True)
        self._thread.start()
        atexit.register(self.mark_done)
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # check() reports an unreachable store
                self.beat()
            lost = self.check()
            if lost and not self._stop.is_set():
                self.verdict = lost
                self._lost.set()
                self._on_lost(lost)
                return

    def wait_for_verdict(self) -> str | None:
        """After a failed collective: the lost peer's name once the watchdog is sure (at most
        one timeout away), or None if every peer keeps beating."""
        self._lost.wait(self.timeout_s + 3 * self.interval_s)
        return self.verdict


def exit_lost(message: str) -> None:
    """Stop at once: the main thread may be blocked in a collective that will never finish."""
    print(
        f"ptjf: error: {message}. Stopping this process (exit {EXIT_PEER_LOST}); rerun the same "
        "command on every host to resume from the last checkpoint.",
        file=sys.stderr,
        flush=True,
    )
    log.error("%s", message)
    os._exit(EXIT_PEER_LOST)

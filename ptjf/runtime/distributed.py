"""Multi-host start-up: one `jax.distributed.initialize` per process, before anything else.

Every process of a multi-host run executes the same `ptjf train`; they find each other through
a coordinator (process 0's address). Where the coordinates come from, first match wins:

1. flags (`--coordinator_address HOST:PORT --process_count N --process_index I`, T5X's names),
   for any cluster and for a localhost run of several processes;
2. a Cloud TPU VM pod slice (more than one worker in `TPU_WORKER_HOSTNAMES`) or a SLURM step of
   more than one task: JAX reads the coordinator, count and rank from the environment;
3. otherwise one process, and nothing is initialised.

On CPU, collectives between processes go through gloo (JAX's default for CPU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping

from ptjf.errors import ConfigError
from ptjf.runtime.watchdog import PeerWatchdog, exit_lost

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where this process stands in the run; `None` fields are left to JAX's auto-detection."""

    coordinator_address: str | None = None
    process_count: int | None = None
    process_index: int | None = None
    initialization_timeout_s: int = 300
    peer_timeout_s: float = 60.0
    """A peer silent this long is lost: this process stops, naming it (`ptjf.runtime.watchdog`)."""

    def __post_init__(self) -> None:
        given = [
            self.coordinator_address is not None,
            self.process_count is not None,
            self.process_index is not None,
        ]
        if not self.peer_timeout_s > 0:
            raise ConfigError(
                f"--peer_timeout_s={self.peer_timeout_s!r} must be > 0 (seconds a silent host "
                "is waited for before the others stop)."
            )
        if any(given) and not all(given):
            raise ConfigError(
                "Multi-process flags must come together: --coordinator_address HOST:PORT, "
                "--process_count N and --process_index I (got "
                f"coordinator_address={self.coordinator_address!r}, "
                f"process_count={self.process_count!r}, process_index={self.process_index!r})."
            )
        if self.coordinator_address is not None:
            host, _, port = self.coordinator_address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(
                    f"--coordinator_address={self.coordinator_address!r} is not HOST:PORT "
                    "(e.g. 10.0.0.2:1234, process 0's host and a free port)."
                )
            if self.process_count < 1:  # type: ignore[operator]
                raise ConfigError(f"--process_count={self.process_count} must be >= 1.")
            if not 0 <= self.process_index < self.process_count:  # type: ignore[operator]
                raise ConfigError(
                    f"--process_index={self.process_index} is out of range for "
                    f"--process_count={self.process_count}: expected 0 <= index < count."
                )


def cluster_from_environment(env: Mapping[str, str] | None = None) -> str | None:
    """'tpu_pod' or 'slurm' when the environment describes a multi-process job, else None."""
    env = os.environ if env is None else env
    workers = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(workers) > 1:
        return "tpu_pod"
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
        return "slurm"
    return None


_initialized = False
_watchdog: PeerWatchdog | None = None


def initialize(config: DistributedConfig, env: Mapping[str, str] | None = None) -> bool:
    """Starts the multi-process runtime when the flags or the environment ask for it.

    Returns whether it did. Must run before any JAX computation (the first device query fixes
    the process's view of the cluster).
    """
    global _initialized
    import jax

    if _initialized:
        return True
    if config.coordinator_address is not None:
        if config.process_count == 1:
            return False
        kwargs = dict(
            coordinator_address=config.coordinator_address,
            num_processes=config.process_count,
            process_id=config.process_index,
        )
    else:
        cluster = cluster_from_environment(env)
        if cluster is None:
            return False
        kwargs = {}
        log.info("multi-process run detected from the environment (%s)", cluster)
    try:
        jax.distributed.initialize(
            initialization_timeout=config.initialization_timeout_s,
            # JAX's own heartbeat aborts natively; ptjf's watchdog names the lost host first.
            heartbeat_timeout_seconds=int(max(100, 2 * config.peer_timeout_s)),
            **kwargs,
        )
    except Exception as e:
        where = kwargs.get("coordinator_address", "the cluster's coordinator")
        raise ConfigError(
            f"Could not start the multi-process run through {where}: {e}. Check that every "
            "process was started with the same --coordinator_address and --process_count, a "
            "distinct --process_index, and that process 0's port is reachable."
        ) from e
    _initialized = True
    if jax.process_count() > 1:
        from jax._src import distributed as jax_distributed

        global _watchdog
        _watchdog = PeerWatchdog(
            jax_distributed.global_state.client,
            jax.process_index(),
            jax.process_count(),
            timeout_s=config.peer_timeout_s,
            interval_s=min(2.0, config.peer_timeout_s / 4),
        ).start()
    log.info(
        "process %d of %d; %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """Process 0 writes the run's shared files (metrics, TensorBoard, config.gin)."""
    import jax

    return jax.process_index() == 0


def stop_after_failure(error: BaseException, exit_code: int, *, traceback: bool = False) -> None:
    """In a multi-process run whose main thread failed, exits at once; returns otherwise.

    A failed collective usually means a peer died: the watchdog names it (within its timeout),
    else the error is the reason. Exiting with `os._exit` skips JAX's shutdown barrier, which
    would wait minutes for the peer that is gone.
    """
    if not _initialized:
        return
    if traceback:
        import traceback as tb

        tb.print_exception(error)
    verdict = _watchdog.wait_for_verdict() if _watchdog is not None else None
    if verdict:  # the watchdog thread exits with this message too, whichever comes first
        exit_lost(verdict)
    print(
        f"ptjf: error: process {_process_index()} stops: {type(error).__name__}: {error}; "
        "rerun the same command on every host to resume from the last checkpoint.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(exit_code)


def _process_index() -> int:
    import jax

    return jax.process_index()

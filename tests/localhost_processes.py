"""Starting `ptjf train` as several processes on localhost, for the multi-host tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_train(
    model_dir: Path,
    port: int,
    index: int,
    *,
    files: Sequence[str],
    bindings: Sequence[str],
    flags: Sequence[str] = (),
    count: int = 2,
) -> subprocess.Popen:
    """Process `index` of `count` of one `ptjf train` run; output captured as text."""
    argv = [
        sys.executable,
        "-m",
        "ptjf.commands.cli",
        "train",
        f"--coordinator_address=127.0.0.1:{port}",
        f"--process_count={count}",
        f"--process_index={index}",
        *flags,
        *(f"--gin_file={f}" for f in files),
        f"--gin.MODEL_DIR='{model_dir}'",
        *(f"--gin.{b.replace(' ', '')}" for b in bindings),
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_steps(metrics: Path, procs: Sequence[subprocess.Popen], steps: int) -> None:
    """Until `metrics` (train_metrics.jsonl) has `steps` lines, every process still running."""
    deadline = time.monotonic() + 240
    while not metrics.exists() or len(metrics.read_text().splitlines()) < steps:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the processes did not start training in 240 s"
        time.sleep(0.1)

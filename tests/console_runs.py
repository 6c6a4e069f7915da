"""Running `ptjf` as a program, as a user does, and telling its lines from a library's.

A library line is one shaped like a library's log output: a C++ glog line (`I0000 00:00:…`,
`E1203 …`), absl's `WARNING: All log messages before absl::InitializeLog()`, Python logging's
default shape for a non-ptjf logger (`WARNING:absl:…`), a Python warning (`…Warning: …`), or
one of the known texts listed below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

LIBRARY_LINE = [
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]"),  # glog (TF, XLA, JAX C++)
    re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):(?!ptjf(\.|:))[\w.]+:"),  # other loggers
    re.compile(r"^\S+:\d+: \w*Warning: "),  # a Python warning
    re.compile(r"absl::InitializeLog"),
]
LIBRARY_TEXT = [
    "cuInit",
    "cuda_platform",
    "cpu_feature_guard",
    "oneDNN custom operations",
    "Could not find cuda drivers",
    "Skipping merge of OCDBT",
    "Given directory is read only",
    "CheckpointManagerOptions",
    "TF-TRT",
    "tf.data",
    "being cached",  # tf.data: "…did not fully read the dataset being cached…"
    "tensorflow_datasets",
    "TensorFlow binary is optimized",
]


def library_lines(text: str) -> list[str]:
    """The lines of `text` that a library printed (by the definition above)."""
    return [
        line
        for line in text.splitlines()
        if line.strip()
        and (any(p.search(line) for p in LIBRARY_LINE) or any(t in line for t in LIBRARY_TEXT))
    ]


def run_ptjf(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PTJF_DATA_DIR=os.environ["PTJF_DATA_DIR"])
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: ptjf sets its own
    return subprocess.run(
        [sys.executable, "-m", "ptjf.commands.cli", *args],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )

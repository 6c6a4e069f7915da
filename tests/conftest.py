"""Shared test set-up: quiet TensorFlow, a fresh ptjf cache per session, CPU-only JAX."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The benchmarks' data builders (mc4_like: a made-up c4/multilingual in TFDS format) serve the
# tests too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # An empty cache, as on a fresh machine: vocabularies are built once per test session.
    if "PTJF_DATA_DIR" not in os.environ:
        import tempfile

        os.environ["PTJF_DATA_DIR"] = tempfile.mkdtemp(prefix="ptjf-test-cache-")


@pytest.fixture(scope="session")
def bible_vocab():
    """The embedded Bible problem's vocabulary (built on first use in the session)."""
    import ptjf.tasks  # noqa: F401
    import seqio

    return seqio.get_mixture_or_task("bible_translate_en_fr").output_features["targets"].vocabulary


@pytest.fixture(autouse=True)
def fresh_gin_config():
    """Each test starts with no gin bindings and an unlocked config: a run parsed by one test
    (its CheckpointConfig, its TFDS_DATA_DIR, …) must not fill another test's defaults."""
    import gin

    gin.clear_config()
    yield


@pytest.fixture(scope="session")
def gcs_emulator():
    """A GCS API on 127.0.0.1 (fake-gcs-server), started once per session, stopped after it;
    this process's storage clients and every child process are pointed at it."""
    from gcs_emulator import GcsEmulator, point_clients_at

    emulator = GcsEmulator().start()
    point_clients_at(emulator)
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A fresh bucket on the emulator, as `gs://NAME`."""
    return f"gs://{gcs_emulator.bucket()}"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory, bible_vocab):
    """`ptjf demo --quick` run once as a program, as a user runs it: (its completed process,
    stdout and stderr together; its model dir). Shared by the demo's and the console's tests."""
    from console_runs import run_ptjf

    tmp = tmp_path_factory.mktemp("quick_demo")
    model_dir = tmp / "demo"
    return run_ptjf(["demo", "--quick", "--model_dir", str(model_dir)], tmp), model_dir

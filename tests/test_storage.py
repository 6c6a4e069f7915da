"""ptjf.storage against local disk and a GCS API on 127.0.0.1 (fake-gcs-server)."""

from __future__ import annotations

import threading

import pytest

from ptjf import storage
from ptjf.errors import ConfigError


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    """A writable directory, on local disk and in a fresh emulated bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_bucket") + "/root"


@pytest.mark.parametrize(
    "bad, fix",
    [
        ("gs:/bucket/run", "gs://bucket/run"),
        ("gcs://bucket/run", "gs://bucket/run"),
        ("GS:/bucket", "gs://bucket"),
    ],
)
def test_mistyped_schemes_are_refused_with_the_fix(bad, fix):
    with pytest.raises(ConfigError, match=f"did you mean '{fix}'"):
        storage.check_uri(bad)


@pytest.mark.parametrize("bad", ["s3://bucket/run", "gs://", "gs:///run"])
def test_unsupported_or_bucketless_uris_are_refused(bad):
    with pytest.raises(ConfigError, match=bad.split(":")[0]):
        storage.check_uri(bad)


def test_local_paths_pass_unchanged():
    assert storage.check_uri("runs/demo") == "runs/demo"
    assert storage.check_uri("/tmp/x:y") == "/tmp/x:y"


def test_join_dirname_basename_keep_the_scheme():
    assert storage.join("gs://b/run/", "pt", "0") == "gs://b/run/pt/0"
    assert storage.dirname("gs://b/run/pt") == "gs://b/run"
    assert storage.basename("gs://b/run/pt/") == "pt"
    assert storage.join("/a", "b") == "/a/b"


def test_write_read_list_remove(root):
    storage.write_text(storage.join(root, "a", "x.txt"), "héllo")
    storage.write_bytes(storage.join(root, "a", "y.bin"), b"\x00\x01")
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "héllo"
    assert storage.listdir(storage.join(root, "a")) == ["x.txt", "y.bin"]
    assert storage.isdir(storage.join(root, "a"))
    assert storage.isfile(storage.join(root, "a", "y.bin"))
    assert storage.size(storage.join(root, "a", "y.bin")) == 2
    storage.write_text(storage.join(root, "a", "x.txt"), "replaced")
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "replaced"
    storage.remove(storage.join(root, "a", "x.txt"))
    assert storage.listdir(storage.join(root, "a")) == ["y.bin"]
    assert storage.listdir(storage.join(root, "missing")) == []
    storage.rmtree(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a"))


def test_create_exclusive_has_one_winner(root):
    target = storage.join(root, "vocab.model")
    assert storage.create_exclusive(target, b"first")
    assert not storage.create_exclusive(target, b"second")
    assert storage.read_bytes(target) == b"first"


def test_create_exclusive_races_publish_one_whole_object(root):
    target = storage.join(root, "raced.model")
    wins: list[int] = []

    def build(i: int) -> None:
        if storage.create_exclusive(target, bytes([i]) * 100_000):
            wins.append(i)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert storage.read_bytes(target) == bytes([wins[0]]) * 100_000


def test_copy_move_and_link_trees(root, tmp_path):
    src = storage.join(root, "src")
    storage.write_text(storage.join(src, "d", "f1"), "1")
    storage.write_text(storage.join(src, "f2"), "2")
    files, linked = storage.link_or_copy_tree(src, storage.join(root, "linked"))
    assert files == 2
    assert linked == (not storage.is_remote(root))
    assert storage.read_text(storage.join(root, "linked", "d", "f1")) == "1"
    storage.move(src, storage.join(root, "moved"))
    assert not storage.exists(src)
    assert sorted(storage.walk_files(storage.join(root, "moved"))) == ["d/f1", "f2"]
    # between local disk and the bucket, both ways
    local = str(tmp_path / "copied")
    assert storage.copy_tree(storage.join(root, "moved"), local) == 2
    assert (tmp_path / "copied" / "d" / "f1").read_text() == "1"


def test_check_writable_passes_and_leaves_nothing(root):
    storage.check_writable(root, "the run", "fix it")
    assert storage.listdir(root) == []


def test_a_missing_bucket_is_named_before_anything_is_written(gcs_emulator):
    with pytest.raises(ConfigError, match=r"bucket gs://no-such-bucket-x does not exist.*--gin"):
        storage.check_writable("gs://no-such-bucket-x/run", "MODEL_DIR", "Pass --gin.MODEL_DIR.")


def test_an_unwritable_local_path_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        ConfigError, match=r"Cannot write MODEL_DIR at .*a-file/run: not a directory"
    ):
        storage.check_writable(str(blocker / "run"), "MODEL_DIR", "Pass another.")
    assert blocker.read_text() == ""


def test_local_copy_of_a_remote_file(gcs_bucket, tmp_path):
    storage.write_bytes(f"{gcs_bucket}/v/m.model", b"model")
    local = storage.local_copy(f"{gcs_bucket}/v/m.model", tmp_path)
    with open(local, "rb") as f:
        assert f.read() == b"model"
    assert storage.local_copy(local, tmp_path) == local


@pytest.fixture
def forbidding_gcs(gcs_emulator, monkeypatch):
    """A GCS endpoint on 127.0.0.1 that answers every request as GCS does a caller without
    rights to the bucket (403 with GCS's JSON error body)."""
    import http.server
    import json

    import gcsfs

    body = json.dumps(
        {
            "error": {
                "code": 403,
                "message": "ci@project.iam.gserviceaccount.com does not have "
                "storage.objects.create access to the Google Cloud Storage object.",
                "errors": [{"reason": "forbidden", "domain": "global"}],
            }
        }
    ).encode()

    class Forbid(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - http.server names

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbid)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield
    server.shutdown()
    monkeypatch.undo()
    gcsfs.GCSFileSystem.clear_instance_cache()


def test_permission_denied_is_named_with_the_role_to_grant(forbidding_gcs):
    with pytest.raises(ConfigError, match=r"permission denied on gs://locked-bucket.*objectAdmin"):
        storage.check_writable("gs://locked-bucket/run", "MODEL_DIR", "Pass --gin.MODEL_DIR.")


def test_local_writes_get_the_mode_a_plain_open_would(tmp_path):
    target = tmp_path / "report.md"
    storage.write_text(str(target), "x")
    (tmp_path / "plain").write_text("x")
    assert target.stat().st_mode == (tmp_path / "plain").stat().st_mode

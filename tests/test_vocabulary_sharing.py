"""One vocabulary per pod: a shared directory (local or gs://, on the GCS emulator) that the
builder publishes into and every other process loads from, and the check that every process
tokenizes with the same model."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import seqio

from ptjf import storage
from ptjf.data import vocabularies as V
from ptjf.data import vocabulary_checksums as C
from ptjf.errors import ConfigError, DataError

CORPUS = [f"the quick brown fox {i} jumps over the lazy dog number {i % 7}" for i in range(400)]
OTHER = [f"a slow green turtle {i} walks under the busy cat called {i % 5}" for i in range(400)]
SPEC = V.VocabularySpec(name="shared", vocab_size=60, corpus_id="shared-v1")


@pytest.fixture(autouse=True)
def no_sharing(monkeypatch):
    """Each test starts and ends with no shared directory set, in code or in the environment."""
    monkeypatch.delenv("PTJF_VOCAB_DIR", raising=False)
    monkeypatch.delenv("PTJF_VOCAB_WAIT_S", raising=False)
    V.set_shared_dir(None)
    yield
    V.set_shared_dir(None)


@pytest.fixture(params=["local", "gcs"])
def shared(request, tmp_path) -> str:
    """A shared vocabulary directory, on local disk and in a fresh emulated bucket."""
    if request.param == "local":
        return str(tmp_path / "shared")
    return request.getfixturevalue("gcs_bucket") + "/run/vocabularies"


def host(monkeypatch, tmp_path: Path, name: str) -> Path:
    """Switches this process to another host's (empty) local cache."""
    cache = tmp_path / f"host-{name}"
    monkeypatch.setenv("PTJF_DATA_DIR", str(cache))
    return cache


class Counting:
    """A corpus function that counts its calls (one per SentencePiece training)."""

    def __init__(self, lines=CORPUS):
        self.calls = 0
        self.lines = lines

    def __call__(self):
        self.calls += 1
        return self.lines


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_builder_publishes_and_another_host_loads_it_without_training(
    shared, tmp_path, monkeypatch
):
    host(monkeypatch, tmp_path, "0")
    V.set_shared_dir(shared, is_builder=lambda: True)
    built = Counting()
    vocab0 = V.CachedSentencePieceVocabulary(SPEC, built)
    path0 = Path(vocab0.sentencepiece_model_file)
    assert built.calls == 1
    assert storage.listdir(shared) == [path0.name]  # one model, no temporary file
    published = storage.read_bytes(storage.join(shared, path0.name))
    assert published == path0.read_bytes()

    cache1 = host(monkeypatch, tmp_path, "1")
    V.set_shared_dir(shared, is_builder=lambda: False)
    loaded = Counting()
    vocab1 = V.CachedSentencePieceVocabulary(SPEC, loaded)
    path1 = Path(vocab1.sentencepiece_model_file)
    assert loaded.calls == 0  # SentencePiece was not trained on this host
    assert path1.parent == cache1 / "vocab" and path1.name == path0.name
    assert path1.read_bytes() == published
    assert C.model_checksum(vocab1) == C.model_checksum(vocab0) == sha256(published)
    assert vocab1.encode("the lazy dog") == vocab0.encode("the lazy dog")


def test_the_environment_variable_names_the_shared_dir(tmp_path, monkeypatch):
    host(monkeypatch, tmp_path, "0")
    monkeypatch.setenv("PTJF_VOCAB_DIR", str(tmp_path / "env-shared"))
    assert V.shared_dir() == str(tmp_path / "env-shared")
    path = V.ensure_model(SPEC, Counting(), builder=True)
    assert (tmp_path / "env-shared" / path.name).read_bytes() == path.read_bytes()
    # set_shared_dir wins over the environment
    V.set_shared_dir(str(tmp_path / "code-shared"))
    assert V.shared_dir() == str(tmp_path / "code-shared")


def test_without_a_shared_dir_every_process_builds_its_own_cache(tmp_path, monkeypatch):
    cache = host(monkeypatch, tmp_path, "0")

    def refuse(*args):
        raise AssertionError("a shared directory was used with none set")

    monkeypatch.setattr(V.storage, "create_exclusive", refuse)
    monkeypatch.setattr(V.storage, "read_bytes", refuse)
    corpus = Counting()
    # A non-builder builds too: without a shared directory nobody waits for anyone.
    path = V.ensure_model(SPEC, corpus, builder=False, wait_s=0.01)
    assert corpus.calls == 1 and path.parent == cache / "vocab"


def test_the_shared_model_replaces_a_hosts_own_and_a_cached_one_is_published(tmp_path, monkeypatch):
    shared = str(tmp_path / "shared")
    # Host 0 built this model earlier, without a shared directory: it is published as is.
    host(monkeypatch, tmp_path, "0")
    own0 = V.ensure_model(SPEC, Counting()).read_bytes()
    corpus = Counting()
    V.set_shared_dir(shared)
    V.ensure_model(SPEC, corpus, builder=True)
    assert corpus.calls == 0
    assert storage.read_bytes(storage.join(shared, SPEC.model_path().name)) == own0
    # Host 1 holds a model of its own under the same name (built apart, other bytes): the
    # shared one replaces it.
    host(monkeypatch, tmp_path, "1")
    SPEC.model_path().parent.mkdir(parents=True)
    SPEC.model_path().write_bytes(V.train_sentencepiece(SPEC, OTHER))
    path = V.ensure_model(SPEC, Counting(), builder=False, wait_s=1)
    assert path.read_bytes() == own0


def _race(args: tuple[str, str, str, int]) -> tuple[str, str, bool]:
    """One builder of two racing: trains a model (its own corpus, so the two differ), waits
    until the other has trained too, then publishes."""
    cache, shared, barrier, index = args
    os.environ["PTJF_DATA_DIR"] = cache
    train, create = V.train_sentencepiece, V.storage.create_exclusive
    own: list[bytes] = []
    won: list[bool] = []

    def train_then_wait(spec, corpus):
        own.append(train(spec, corpus))
        Path(barrier, str(index)).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(barrier)) < 2:
            assert time.monotonic() < deadline, "the other builder did not train"
            time.sleep(0.02)
        return own[-1]

    def create_exclusive(path, data):
        won.append(create(path, data))
        return won[-1]

    V.train_sentencepiece = train_then_wait
    V.storage.create_exclusive = create_exclusive
    V.set_shared_dir(shared, is_builder=lambda: True, wait_s=60)
    path = V.ensure_model(SPEC, lambda: CORPUS if index == 0 else OTHER)
    return sha256(own[0]), sha256(path.read_bytes()), won == [True]


def test_two_concurrent_builders_publish_one_model(shared, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    jobs = [(str(tmp_path / f"host-{i}"), shared, str(barrier), i) for i in (0, 1)]
    with mp.get_context("spawn").Pool(2) as pool:
        (own0, final0, won0), (own1, final1, won1) = pool.map(_race, jobs)
    assert own0 != own1  # each trained its own model …
    assert sorted([won0, won1]) == [False, True]  # … exactly one published …
    [name] = storage.listdir(shared)
    published = sha256(storage.read_bytes(storage.join(shared, name)))
    assert published == (own0 if won0 else own1)
    assert final0 == final1 == published  # … and both use the published one.


def test_a_non_builder_times_out_naming_the_path(shared, tmp_path, monkeypatch):
    host(monkeypatch, tmp_path, "1")
    V.set_shared_dir(shared, is_builder=lambda: False, wait_s=0.5)
    corpus = Counting()
    start = time.monotonic()
    remote = storage.join(shared, SPEC.model_path().name)
    with pytest.raises(DataError, match="waited 0 s for the builder") as info:
        V.ensure_model(SPEC, corpus)
    assert remote in str(info.value) and "PTJF_VOCAB_WAIT_S" in str(info.value)
    assert 0.5 <= time.monotonic() - start < 20
    assert corpus.calls == 0 and not SPEC.model_path().exists()
    # A model of the same vocabulary under another hash: the builder's configuration differs.
    other = V.VocabularySpec(name="shared", vocab_size=60, corpus_id="shared-v2")
    storage.write_bytes(storage.join(shared, other.model_path().name), b"x")
    with pytest.raises(DataError, match=f"holds {other.model_path().name}: .* another spec"):
        V.ensure_model(SPEC, corpus, wait_s=0.2)


def test_a_published_file_that_is_not_a_model_is_named(tmp_path, monkeypatch):
    host(monkeypatch, tmp_path, "0")
    shared = str(tmp_path / "shared")
    storage.write_bytes(storage.join(shared, SPEC.model_path().name), b"not a model")
    V.set_shared_dir(shared, is_builder=lambda: True)
    with pytest.raises(DataError, match=r"is not a SentencePiece model.*Delete the file"):
        V.ensure_model(SPEC, Counting())


def test_a_mistyped_shared_dir_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    host(monkeypatch, tmp_path, "0")
    with pytest.raises(ConfigError, match="did you mean 'gs://x/vocab'"):
        V.set_shared_dir("gcs://x/vocab")
    monkeypatch.setenv("PTJF_VOCAB_DIR", "gcs://x/vocab")
    corpus = Counting()
    with pytest.raises(ConfigError, match=r"PTJF_VOCAB_DIR: 'gcs://x/vocab'.*did you mean"):
        V.ensure_model(SPEC, corpus, builder=True)
    assert corpus.calls == 0


@pytest.mark.parametrize("builder", [True, False])
def test_a_missing_bucket_is_a_config_error_before_building_or_waiting(
    builder, gcs_emulator, tmp_path, monkeypatch
):
    host(monkeypatch, tmp_path, "0")
    V.set_shared_dir("gs://no-such-vocab-bucket/v", is_builder=lambda: builder, wait_s=5)
    corpus = Counting()
    start = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"bucket gs://no-such-vocab-bucket does not exist.*VOCAB"
    ):
        V.ensure_model(SPEC, corpus)
    assert corpus.calls == 0 and time.monotonic() - start < 5


def test_an_unwritable_local_shared_dir_is_a_config_error(tmp_path, monkeypatch):
    host(monkeypatch, tmp_path, "0")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    V.set_shared_dir(str(blocker / "vocab"), is_builder=lambda: True)
    corpus = Counting()
    with pytest.raises(
        ConfigError,
        match=r"Cannot (read|write) .*the shared vocabulary directory .*not a directory",
    ):
        V.ensure_model(SPEC, corpus)
    assert corpus.calls == 0


# --- the checksum check -----------------------------------------------------------------------


def test_model_checksum_is_the_model_files_sha256(tmp_path, monkeypatch):
    host(monkeypatch, tmp_path, "0")
    cached = V.CachedSentencePieceVocabulary(SPEC, lambda: CORPUS)
    path = cached.sentencepiece_model_file
    plain = seqio.SentencePieceVocabulary(path)
    assert C.model_checksum(cached) == C.model_checksum(plain) == sha256(Path(path).read_bytes())
    other = tmp_path / "other.model"
    other.write_bytes(V.train_sentencepiece(SPEC, OTHER))
    assert C.model_checksum(seqio.SentencePieceVocabulary(str(other))) != C.model_checksum(plain)
    with pytest.raises(DataError, match="not a SentencePiece vocabulary"):
        C.model_checksum(seqio.ByteVocabulary())
    with pytest.raises(DataError, match="does not exist"):
        C.model_checksum(seqio.SentencePieceVocabulary(str(tmp_path / "missing.model")))
    # One process: the check is the checksum; vocabularies without a model are skipped.
    assert C.check_same_on_every_host(cached) == C.model_checksum(cached)
    features = {
        "inputs": seqio.Feature(vocabulary=seqio.ByteVocabulary()),
        "targets": seqio.Feature(vocabulary=cached),
    }
    assert C.check_features_on_every_host(features) == {"targets": C.model_checksum(cached)}


def test_differing_checksums_name_the_processes_and_the_fix():
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    C.compare_checksums([a, a, a])
    with pytest.raises(DataError, match=r"process\(es\) 2 of 4 tokenize with another") as info:
        C.compare_checksums([a, a, b, a], "targets")
    assert "VOCAB_DIR" in str(info.value) and "PTJF_VOCAB_DIR" in str(info.value)
    assert str(info.value).startswith("targets:")
    with pytest.raises(DataError, match=r"process\(es\) 1, 2 of 3 .*sha256 bbbbbbbbbbbb, cccc"):
        C.compare_checksums([a, b, c])
    with pytest.raises(DataError, match=r"process\(es\) 1 could not read"):
        C.compare_checksums([a, C._FAILED, a])


_CHECK = textwrap.dedent(
    """
    import sys
    import jax
    import seqio
    from ptjf.data import vocabulary_checksums as C
    from ptjf.errors import DataError

    port, index, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)
    try:
        print("CHECKSUM", C.check_same_on_every_host(seqio.SentencePieceVocabulary(model)))
    except DataError as e:
        print("ERROR", e)
    """
)


def test_two_processes_with_different_models_both_stop_naming_process_1(tmp_path):
    from localhost_processes import free_port

    models = [tmp_path / "m0.model", tmp_path / "m1.model", tmp_path / "m2.model"]
    models[0].write_bytes(V.train_sentencepiece(SPEC, CORPUS))
    models[1].write_bytes(models[0].read_bytes())
    models[2].write_bytes(V.train_sentencepiece(SPEC, OTHER))

    def run(first: Path, second: Path) -> list[str]:
        port = str(free_port())
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHECK, port, str(i), str(m)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i, m in enumerate([first, second])
        ]
        outs = [p.communicate(timeout=180)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        return [
            next(line for line in out.splitlines() if line.startswith(("CHECKSUM", "ERROR")))
            for out in outs
        ]

    same = run(models[0], models[1])
    assert same == [f"CHECKSUM {sha256(models[0].read_bytes())}"] * 2
    different = run(models[0], models[2])
    for line in different:
        assert line.startswith("ERROR vocabulary (") and "process(es) 1 of 2" in line, different


@pytest.mark.parametrize("value", ["gs://bucket/cache", "gs:/bucket/cache"])
def test_a_bucket_as_the_local_cache_is_refused_naming_the_shared_dir(value, monkeypatch):
    monkeypatch.setenv("PTJF_DATA_DIR", value)
    with pytest.raises(ConfigError, match=r"must be a local directory.*train.vocab_dir"):
        V.data_dir()

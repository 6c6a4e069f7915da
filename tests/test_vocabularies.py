from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from ptjf.data import vocabularies as V
from ptjf.errors import DataError

CORPUS = [f"the quick brown fox {i} jumps over the lazy dog number {i % 7}" for i in range(400)]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PTJF_DATA_DIR", str(tmp_path))
    return tmp_path


def test_built_once_cached_and_keyed_by_spec(cache):
    calls = []

    def corpus():
        calls.append(1)
        return CORPUS

    spec = V.VocabularySpec(name="toy", vocab_size=60, corpus_id="toy-v1")
    path = V.ensure_model(spec, corpus)
    assert path.is_file() and path.parent == cache / "vocab"
    assert V.ensure_model(spec, corpus) == path
    assert len(calls) == 1
    other = V.VocabularySpec(name="toy", vocab_size=60, corpus_id="toy-v2")
    assert other.model_path() != path
    assert spec.model_path("fingerprint-a") != spec.model_path("fingerprint-b")
    assert not list((cache / "vocab").glob("*.tmp"))


def test_seqio_conventions_pad_eos_unk_and_extra_ids(cache):
    spec = V.VocabularySpec(name="toy", vocab_size=60, extra_ids=10)
    vocab = V.CachedSentencePieceVocabulary(spec, lambda: CORPUS)
    assert vocab.vocab_size == 70
    assert vocab.tokenizer.pad_id() == 0
    assert vocab.eos_id == 1
    assert vocab.unk_id == 2
    ids = vocab.encode("the lazy dog")
    assert vocab.decode(ids) == "the lazy dog"
    # Sentinels sit at the end, <extra_id_0> last, as SeqIO's span corruption expects.
    assert vocab.encode("<extra_id_0>")[-1] == 69
    assert V.padded_vocab_size(vocab) == 128


def test_lazy_until_used_and_equal_by_spec(cache):
    spec = V.VocabularySpec(name="lazy", vocab_size=60)

    def boom():
        raise AssertionError("corpus read at construction")

    a = V.CachedSentencePieceVocabulary(spec, boom)
    b = V.CachedSentencePieceVocabulary(spec, boom)
    assert a == b  # compared without building
    assert not (cache / "vocab").exists()
    c = V.CachedSentencePieceVocabulary(V.VocabularySpec(name="lazy", vocab_size=61), boom)
    assert a != c


def test_empty_corpus_and_bad_spec_are_clear_errors(cache):
    with pytest.raises(DataError, match="corpus for vocabulary 'empty' is empty"):
        V.ensure_model(V.VocabularySpec(name="empty", vocab_size=60), lambda: ["", "  "])
    with pytest.raises(DataError, match="vocab_size=4 is too small"):
        V.VocabularySpec(name="x", vocab_size=4)
    with pytest.raises(DataError, match="smaller vocab_size"):
        V.ensure_model(V.VocabularySpec(name="huge", vocab_size=5000), lambda: CORPUS)
    assert not list((cache / "vocab").glob("huge*.model"))


def _build(args):
    cache, name = args
    os.environ["PTJF_DATA_DIR"] = cache
    spec = V.VocabularySpec(name=name, vocab_size=60)
    return str(V.ensure_model(spec, lambda: CORPUS))


def test_two_processes_build_one_complete_model(cache):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.map(_build, [(str(cache), "race"), (str(cache), "race")])
    assert paths[0] == paths[1]
    models = list((cache / "vocab").glob("race-*.model"))
    assert len(models) == 1
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(models[0]))
    assert sp.get_piece_size() == 60


def test_unwritable_cache_dir_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PTJF_DATA_DIR", str(blocker / "sub"))
    with pytest.raises(DataError, match="PTJF_DATA_DIR"):
        V.ensure_model(V.VocabularySpec(name="x", vocab_size=60), lambda: CORPUS)


def _build_sampled(cache: str) -> bytes:
    os.environ["PTJF_DATA_DIR"] = cache
    spec = V.VocabularySpec(name="det", vocab_size=60, max_sentences=150)
    return V.ensure_model(spec, lambda: CORPUS).read_bytes()


def test_same_corpus_gives_the_same_model_in_every_process(tmp_path):
    # The corpus (400 lines) is larger than max_sentences, so the build samples it.
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        a, b = pool.map(_build_sampled, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert a == b

"""SentencePiece vocabularies trained from a task's own training text, cached on disk.

The paper trains one SentencePiece model per NMT problem on that problem's data (App. A.1) and
one for mC4 on a temperature-sampled corpus (App. B). ptjf does the same: a vocabulary is a
`VocabularySpec` (what to build) plus a corpus function (the text to build it from). The model
is built on first use, once, under `PTJF_DATA_DIR` (default `~/.cache/ptjf`), in a file named
after a hash of everything it was built from; it is written to a temporary file and renamed,
under a file lock, so concurrent processes never see a half-written model and build it once.

On a pod the hosts do not share that cache, and SentencePiece training is not guaranteed to
give every host the same bytes, so a multi-host run names one shared directory (`train.vocab_dir`,
`set_shared_dir`, `$PTJF_VOCAB_DIR`; local or gs://): process 0 builds each model and
publishes it there (create-if-absent, so there is never a second one), the other processes
wait for it and copy it into their local cache, and `check_same_on_every_host` confirms before
the first step that every process tokenizes with the same model.

Ids follow SeqIO's conventions: pad 0, eos 1, unk 2, no bos, and `extra_ids` sentinel ids at
the end of the vocabulary (`<extra_id_0>` is the last id) for span corruption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import sentencepiece as spm
import seqio

from ptjf import sampling, storage
from ptjf.data.tf_cpu import tensorflow_on_cpu
from ptjf.errors import ConfigError, DataError

CorpusFn = Callable[[], Iterable[str]]
# Bumped whenever the way a model is built changes, so that older cached files are not reused.
_BUILD_VERSION = 2
FingerprintFn = Callable[[], str]
log = logging.getLogger(__name__)


def data_dir() -> Path:
    """ptjf's cache root: `$PTJF_DATA_DIR`, else `~/.cache/ptjf`. It is each host's own local
    cache (file locks, compilation cache): a bucket belongs in `train.vocab_dir` instead."""
    value = os.environ.get("PTJF_DATA_DIR")
    if value and ("://" in value or value.startswith(("gs:", "gcs:"))):
        raise ConfigError(
            f"PTJF_DATA_DIR={value!r}: the cache must be a local directory (each host keeps its "
            "own). To share one vocabulary between hosts, pass --gin.train.vocab_dir="
            "'gs://BUCKET/vocabularies' (or set PTJF_VOCAB_DIR)."
        )
    return Path(value or Path.home() / ".cache" / "ptjf")


@dataclasses.dataclass(frozen=True)
class VocabularySpec:
    """What a SentencePiece model is built from and how.

    `name` identifies the problem (e.g. "bible"); `corpus_id` names the text it is trained on
    (with a version), so that a change of data gives a new file rather than a stale one.
    """

    name: str
    vocab_size: int = 8000
    corpus_id: str = ""
    model_type: str = "unigram"
    character_coverage: float = 0.9995
    max_sentences: int = 300_000
    extra_ids: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 16:
            raise DataError(f"VocabularySpec.vocab_size={self.vocab_size} is too small; use >= 16.")
        if self.model_type not in ("unigram", "bpe", "char", "word"):
            raise DataError(
                f"VocabularySpec.model_type={self.model_type!r}; use unigram, bpe, char or word."
            )
        if self.extra_ids < 0:
            raise DataError(f"VocabularySpec.extra_ids={self.extra_ids} must be >= 0.")

    def key(self, fingerprint: str = "") -> str:
        fields = dataclasses.asdict(self) | {
            "fingerprint": fingerprint,
            "spm": spm.__version__,
            "build": _BUILD_VERSION,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def model_path(self, fingerprint: str = "") -> Path:
        return data_dir() / "vocab" / f"{self.name}-{self.vocab_size}-{self.key(fingerprint)}.model"


def _quotas(rates: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to `total` and proportional to `rates` (largest remainder)."""
    exact = {k: r * total for k, r in rates.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    by_remainder = sorted(rates, key=lambda k: (counts[k] - exact[k], k))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _cycled(language: str, texts: CorpusFn) -> Iterator[str]:
    """The language's non-blank texts, started over whenever they run out (a language smaller
    than its share is up-sampled, as temperature sampling does when it trains)."""
    while True:
        n = 0
        for text in texts():
            if text and text.strip():
                n += 1
                yield text
        if n == 0:
            raise DataError(
                f"The vocabulary corpus of language {language!r} is empty: its training split "
                "gave no text."
            )


def temperature_corpus(
    texts_by_language: Mapping[str, CorpusFn],
    sizes: Mapping[str, float],
    tau: float,
    total_sentences: int,
    seed: int = 0,
    unit: str = "characters",
) -> Iterator[str]:
    """A vocabulary corpus whose languages appear at their temperature-sampling rates.

    The paper trains the mC4 vocabulary on "a corpus sampled from the training data using
    temperature sampling with τ = 3.33" (App. B): without it a 64k vocabulary spends almost all
    its pieces on English. Language l contributes exactly round(q_l × total_sentences)
    sentences, q = `temperature_rates(sizes, tau)` (largest remainder, so the counts sum to
    `total_sentences`), taken in order from `texts_by_language[l]()` and started over when they
    run out. The languages are interleaved in an order drawn from `seed`, so any prefix of
    the corpus keeps the shares. Deterministic: the same inputs give the same sentences.
    """
    if set(texts_by_language) != set(sizes):
        raise DataError(
            f"temperature_corpus: texts are given for {sorted(texts_by_language)} but sizes "
            f"for {sorted(sizes)}; give both for the same languages."
        )
    if not isinstance(total_sentences, int) or total_sentences < 1:
        raise DataError(
            f"temperature_corpus: total_sentences={total_sentences!r}; expected an integer >= 1."
        )
    languages = sorted(sizes)
    rates = sampling.temperature_rates({lang: sizes[lang] for lang in languages}, tau, unit)
    quotas = _quotas(rates, total_sentences)
    order = np.repeat(np.arange(len(languages)), [quotas[lang] for lang in languages])
    np.random.default_rng(seed).shuffle(order)
    streams = [_cycled(lang, texts_by_language[lang]) for lang in languages]
    for index in order:
        yield next(streams[index])


def train_sentencepiece(spec: VocabularySpec, corpus: Iterable[str]) -> bytes:
    """Trains a SentencePiece model on `corpus` and returns its serialized bytes."""
    sentences = [s for s in corpus if s and s.strip()]
    if not sentences:
        raise DataError(
            f"The corpus for vocabulary {spec.name!r} is empty; the task's training split has "
            "no text to build a vocabulary from."
        )
    if len(sentences) > spec.max_sentences:
        # Sample here rather than with SentencePiece's input_sentence_size, whose sampling is
        # seeded per process: the same corpus must always give the same model.
        keep = np.random.default_rng(spec.seed).choice(
            len(sentences), spec.max_sentences, replace=False
        )
        sentences = [sentences[i] for i in np.sort(keep)]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=spec.vocab_size,
            model_type=spec.model_type,
            character_coverage=spec.character_coverage,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(
            f"SentencePiece could not build vocabulary {spec.name!r} with vocab_size="
            f"{spec.vocab_size} from {len(sentences)} sentences: {e}. (A corpus too small for "
            "the vocabulary size needs a smaller vocab_size.)"
        ) from None
    return model.getvalue()


# --- where models live: the local cache, and a directory shared by every host of a pod ------

DEFAULT_WAIT_S = 3600.0
"""How long a process that does not build a vocabulary waits for the builder to publish it:
an hour, as SentencePiece on a large corpus (mC4's 2M sentences, 64k pieces) takes tens of
minutes on one host."""


@dataclasses.dataclass(frozen=True)
class _Sharing:
    directory: str | None = None
    wait_s: float | None = None
    is_builder: Callable[[], bool] | None = None


_sharing = _Sharing()
_checked_dirs: set[tuple[str, bool]] = set()
_WHAT = "the shared vocabulary directory (train.vocab_dir / PTJF_VOCAB_DIR)"
_FIX = "Set --gin.train.vocab_dir or PTJF_VOCAB_DIR to a directory every host can reach."


def set_shared_dir(
    path: str | os.PathLike | None,
    *,
    wait_s: float | None = None,
    is_builder: Callable[[], bool] | None = None,
) -> str | None:
    """Makes every process of a run use one copy of each vocabulary, kept under `path`
    (a local directory every host sees, or `gs://BUCKET/...`); `None` clears the setting.

    With it set, `ensure_model` takes the model from `<path>/<the cache file's name>`: one
    process (the builder: `is_builder()`, by default `jax.process_index() == 0`) builds a
    missing model and publishes it, and every other process waits for it (up to `wait_s`,
    default `$PTJF_VOCAB_WAIT_S`, else `DEFAULT_WAIT_S`) and copies it into its local cache.
    Unset (and `$PTJF_VOCAB_DIR` unset), each process builds into its local cache, as a
    single-host run does. A mistyped URI (`gcs://…`) is refused here; whether the directory
    can be read and written is checked before the first model is built or waited for.
    Returns the directory as given, its scheme checked.
    """
    global _sharing
    checked = None if path is None else storage.check_uri(path)
    if wait_s is not None and not wait_s > 0:
        raise ConfigError(f"set_shared_dir: wait_s={wait_s!r} must be > 0 (seconds).")
    _sharing = _Sharing(checked, wait_s, is_builder)
    return checked


def shared_dir() -> str | None:
    """The shared vocabulary directory: `set_shared_dir`'s, else `$PTJF_VOCAB_DIR`, else None."""
    if _sharing.directory is not None:
        return _sharing.directory
    env = os.environ.get("PTJF_VOCAB_DIR")
    if not env:
        return None
    try:
        return storage.check_uri(env)
    except ConfigError as e:
        raise ConfigError(f"PTJF_VOCAB_DIR: {e}") from None


def _wait_s() -> float:
    if _sharing.wait_s is not None:
        return _sharing.wait_s
    env = os.environ.get("PTJF_VOCAB_WAIT_S")
    if not env:
        return DEFAULT_WAIT_S
    try:
        value = float(env)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"PTJF_VOCAB_WAIT_S={env!r}; expected a number of seconds > 0.")
    return value


def _is_builder() -> bool:
    if _sharing.is_builder is not None:
        return bool(_sharing.is_builder())
    import jax

    return jax.process_index() == 0


def ensure_model(
    spec: VocabularySpec,
    corpus_fn: CorpusFn,
    fingerprint: str = "",
    *,
    builder: bool | None = None,
    wait_s: float | None = None,
) -> Path:
    """The cached model file for `spec`, building it (once, atomically) when missing.

    With a shared directory (`set_shared_dir`, `$PTJF_VOCAB_DIR`), the file is a local copy
    of the shared model, which only the builder process builds (see `set_shared_dir`);
    `builder` and `wait_s` override that setting's for this call.
    """
    shared = shared_dir()
    if shared is None:
        return _ensure_local(spec, corpus_fn, fingerprint)
    return _ensure_shared(
        spec,
        corpus_fn,
        fingerprint,
        shared,
        _is_builder() if builder is None else builder,
        _wait_s() if wait_s is None else wait_s,
    )


def _make_cache_dir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create the vocabulary cache directory {str(path.parent)!r} ({e.strerror}); "
            "set PTJF_DATA_DIR to a writable directory."
        ) from None


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """Held by one process of a host at a time, for building `path` (the local cache file)."""
    with open(path.parent / (path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_local(spec: VocabularySpec, corpus_fn: CorpusFn, fingerprint: str) -> Path:
    """The model in this host's cache, built under a file lock by the first process to ask."""
    path = spec.model_path(fingerprint)
    if path.is_file():
        return path
    _make_cache_dir(path)
    with _cache_lock(path):
        if path.is_file():  # another process built it while we waited
            return path
        data = train_sentencepiece(spec, corpus_fn())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _ensure_shared(
    spec: VocabularySpec,
    corpus_fn: CorpusFn,
    fingerprint: str,
    shared: str,
    builder: bool,
    wait_s: float,
) -> Path:
    """The shared model, copied into this host's cache; built and published by the builder.

    The builder publishes with `storage.create_exclusive`: of two builders racing, one
    publishes and the other drops its own model for the published one, so a shared directory
    never holds a second or half-written model, and every host ends with the same bytes.
    """
    local = spec.model_path(fingerprint)
    remote = storage.join(shared, local.name)
    data = _read_published(remote, spec)
    if data is None and builder:
        _check_shared_dir(shared, write=True)
        _make_cache_dir(local)
        with _cache_lock(local):  # one build per host, as without a shared directory
            data = _read_published(remote, spec)
            if data is None:
                # A model this host built before (same spec and corpus) is published as is.
                own = local.read_bytes() if local.is_file() else None
                own = own or train_sentencepiece(spec, corpus_fn())
                if storage.create_exclusive(remote, own):
                    log.info("Published vocabulary %r at %s.", spec.name, remote)
                    data = own
                else:
                    log.info("Another process published vocabulary %r first; using it.", spec.name)
                    data = _read_published(remote, spec)
                    if data is None:
                        raise DataError(
                            f"Vocabulary {spec.name!r}: publishing {remote} failed because an "
                            "object is there, yet it cannot be read; check the directory's "
                            "permissions and delete the object if it is not a model."
                        )
    if data is None:
        _check_shared_dir(shared, write=False)
        data = _wait_for_published(remote, spec, wait_s)
    _install(local, data)
    return local


def _read_published(remote: str, spec: VocabularySpec) -> bytes | None:
    """The shared model's bytes, checked to be a model of `spec`; None when it is not there."""
    try:
        data = storage.read_bytes(remote)
    except FileNotFoundError:
        return None
    except Exception as e:  # every client's error, turned into one message
        raise ConfigError(
            f"Cannot read vocabulary {spec.name!r} from {_WHAT} at {remote}: "
            f"{storage.describe_error(e, remote)} {_FIX}"
        ) from None
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception:
        sp = None
    if sp is None or sp.get_piece_size() != spec.vocab_size:
        what = "not a SentencePiece model" if sp is None else f"{sp.get_piece_size()} pieces"
        raise DataError(
            f"The shared vocabulary file {remote} ({len(data)} bytes) is {what}; "
            f"vocabulary {spec.name!r} needs a model of {spec.vocab_size} pieces. Delete the "
            "file so that it is built again, or point train.vocab_dir / PTJF_VOCAB_DIR elsewhere."
        )
    return data


def _check_shared_dir(shared: str, write: bool) -> None:
    """A missing bucket, or a directory the builder cannot write, is a ConfigError now rather
    than a failed publish after a long build, or an hour's wait."""
    if (shared, write) in _checked_dirs:
        return
    if write:
        storage.check_writable(shared, _WHAT, _FIX)
    elif storage.is_remote(shared):
        bucket = "gs://" + shared[len(storage.GCS) :].split("/", 1)[0]
        if not storage.exists(bucket):
            reason = storage.describe_error(FileNotFoundError(bucket), shared)
            raise ConfigError(f"Cannot read {_WHAT} at {shared}: {reason} {_FIX}")
    _checked_dirs.add((shared, write))


def _wait_for_published(remote: str, spec: VocabularySpec, wait_s: float) -> bytes:
    start = time.monotonic()
    pause = 0.1
    log.info("Waiting up to %.0f s for vocabulary %r at %s.", wait_s, spec.name, remote)
    while True:
        data = _read_published(remote, spec)
        if data is not None:
            return data
        left = wait_s - (time.monotonic() - start)
        if left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, 5.0)
    name = storage.basename(remote)
    prefix = f"{spec.name}-{spec.vocab_size}-"
    others = [
        n
        for n in storage.listdir(storage.dirname(remote))
        if n.startswith(prefix) and n.endswith(".model")
    ]
    found = (
        f" The directory holds {', '.join(others)}: a model of the same vocabulary built from "
        "another spec or corpus, so the builder's task configuration differs from this "
        "process's."
        if others
        else ""
    )
    raise DataError(
        f"Vocabulary {spec.name!r}: waited {wait_s:.0f} s for the builder (process 0) to "
        f"publish {remote}, and it is not there.{found} Check process 0's log (did it fail or "
        "stop?), that every process has the same train.vocab_dir / PTJF_VOCAB_DIR and task "
        f"configuration (the file name {name} is a hash of the vocabulary's spec and corpus), "
        "and that process 0 can write there; a long build needs a longer wait: "
        "PTJF_VOCAB_WAIT_S or vocabularies.set_shared_dir(..., wait_s=...)."
    )


def _install(local: Path, data: bytes) -> None:
    """`data` as the local cache file (rewritten atomically only when it differs)."""
    if local.is_file() and local.read_bytes() == data:
        return
    _make_cache_dir(local)
    storage.write_bytes(local, data)


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A `seqio.SentencePieceVocabulary` whose local model file is found on first use
    (`_locate`), so that registering a task reads, builds and downloads nothing."""

    def _locate(self) -> str:
        raise NotImplementedError

    def _ensure(self) -> str:
        if not self._sentencepiece_model_file:
            self._sentencepiece_model_file = self._locate()
        return self._sentencepiece_model_file

    def _model_context(self):
        self._ensure()
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        return self._ensure()

    def __getstate__(self):
        self._ensure()
        return super().__getstate__()


class CachedSentencePieceVocabulary(LazySentencePieceVocabulary):
    """A `seqio.SentencePieceVocabulary` whose model is built from a corpus on first use.

    Nothing is read or trained until the vocabulary is used (tokenising, `vocab_size`), so
    registering tasks is free. Two instances are equal when their specs and fingerprints are.
    """

    def __init__(
        self,
        spec: VocabularySpec,
        corpus_fn: CorpusFn,
        fingerprint_fn: FingerprintFn | None = None,
    ):
        super().__init__(sentencepiece_model_file="", extra_ids=spec.extra_ids)
        self._spec = spec
        self._corpus_fn = corpus_fn
        self._fingerprint_fn = fingerprint_fn or (lambda: "")

    @property
    def spec(self) -> VocabularySpec:
        return self._spec

    def _locate(self) -> str:
        # The model is often first needed while tf.data traces a tokenizing map; a corpus
        # read through tf.data (a TFDS split) must then run eagerly, outside that graph.
        with tensorflow_on_cpu().init_scope():
            return str(ensure_model(self._spec, self._corpus_fn, self._fingerprint_fn()))

    def __getstate__(self):
        state = super().__getstate__()
        # The corpus closures are only needed to build the model, which now exists.
        state.pop("_corpus_fn", None)
        state.pop("_fingerprint_fn", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._corpus_fn = lambda: []
        self._fingerprint_fn = lambda: ""

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, CachedSentencePieceVocabulary):
            return self._spec == other._spec and self._fingerprint_fn() == other._fingerprint_fn()
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self._spec)

    def __str__(self) -> str:
        return f"CachedSentencePieceVocabulary({self._spec.name}, size={self._spec.vocab_size})"


def padded_vocab_size(vocab: seqio.Vocabulary, multiple: int = 128) -> int:
    """The model's embedding size: the vocabulary rounded up to a multiple (T5X pads to 128)."""
    n = vocab.vocab_size
    return -(-n // multiple) * multiple

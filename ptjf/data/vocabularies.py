"""SentencePiece vocabularies trained from a task's own training text, cached on disk.

The paper trains one SentencePiece model per NMT problem on that problem's data (App. A.1) and
one for mC4 on a temperature-sampled corpus (App. B). ptjf does the same: a vocabulary is a
`VocabularySpec` (what to build) plus a corpus function (the text to build it from). The model
is built on first use, once, under `PTJF_DATA_DIR` (default `~/.cache/ptjf`), in a file named
after a hash of everything it was built from; it is written to a temporary file and renamed,
under a file lock, so concurrent processes never see a half-written model and build it once.

Ids follow SeqIO's conventions: pad 0, eos 1, unk 2, no bos, and `extra_ids` sentinel ids at
the end of the vocabulary (`<extra_id_0>` is the last id) for span corruption.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import sentencepiece as spm
import seqio

from ptjf import sampling
from ptjf.data.tf_cpu import tensorflow_on_cpu
from ptjf.errors import DataError

CorpusFn = Callable[[], Iterable[str]]
# Bumped whenever the way a model is built changes, so that older cached files are not reused.
_BUILD_VERSION = 2
FingerprintFn = Callable[[], str]


def data_dir() -> Path:
    """ptjf's cache root: `$PTJF_DATA_DIR`, else `~/.cache/ptjf`."""
    return Path(os.environ.get("PTJF_DATA_DIR") or Path.home() / ".cache" / "ptjf")


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


def ensure_model(spec: VocabularySpec, corpus_fn: CorpusFn, fingerprint: str = "") -> Path:
    """The cached model file for `spec`, building it (once, atomically) when missing."""
    path = spec.model_path(fingerprint)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create the vocabulary cache directory {str(path.parent)!r} ({e.strerror}); "
            "set PTJF_DATA_DIR to a writable directory."
        ) from None
    with open(path.parent / (path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


class CachedSentencePieceVocabulary(seqio.SentencePieceVocabulary):
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

    def _ensure(self) -> str:
        if not self._sentencepiece_model_file:
            # The model is often first needed while tf.data traces a tokenizing map; a corpus
            # read through tf.data (a TFDS split) must then run eagerly, outside that graph.
            with tensorflow_on_cpu().init_scope():
                path = ensure_model(self._spec, self._corpus_fn, self._fingerprint_fn())
            self._sentencepiece_model_file = str(path)
        return self._sentencepiece_model_file

    def _model_context(self):
        self._ensure()
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        return self._ensure()

    def __getstate__(self):
        self._ensure()
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

"""One vocabulary per pod: before the first step every host checks that it tokenizes with the
same SentencePiece model as process 0 (the SHA-256 of the model file's bytes), so a host that
built or loaded another model stops the run instead of training on other token ids."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import seqio

from ptjf import storage
from ptjf.data.vocabularies import CachedSentencePieceVocabulary
from ptjf.errors import DataError

_FAILED = "0" * 64  # the digest a process contributes when it cannot read its model


def model_checksum(vocab: seqio.Vocabulary) -> str:
    """The sha256 (hex) of the SentencePiece model file `vocab` tokenizes with: what
    `sha256sum` prints for that file. A `CachedSentencePieceVocabulary` is built (or fetched
    from the shared directory) first; a plain `seqio.SentencePieceVocabulary` is read from its
    `sentencepiece_model_file` (local or gs://)."""
    if not isinstance(vocab, seqio.SentencePieceVocabulary):
        raise DataError(
            f"model_checksum: {vocab!r} is a {type(vocab).__name__}, not a SentencePiece "
            "vocabulary; only a SentencePiece model has a file to compare."
        )
    path = vocab.sentencepiece_model_file
    if not path:
        raise DataError(f"model_checksum: {_describe(vocab)} names no SentencePiece model file.")
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise DataError(
            f"model_checksum: the SentencePiece model {path!r} of {_describe(vocab)} does not "
            "exist."
        ) from None
    return hashlib.sha256(data).hexdigest()


def check_same_on_every_host(vocab: seqio.Vocabulary) -> str:
    """`model_checksum(vocab)`, after checking that every process of the run has the same one.

    With more than one JAX process this is a collective (`process_allgather`): call it on every
    process at the same point, e.g. before the first step. Raises DataError, on every
    process, naming the processes whose model differs from process 0's (or that could not read
    theirs). With one process it only returns the checksum.
    """
    return check_features_on_every_host({"vocabulary": vocab})["vocabulary"]


def check_features_on_every_host(
    features: Mapping[str, seqio.Feature | seqio.Vocabulary],
) -> dict[str, str]:
    """`check_same_on_every_host` for each SentencePiece vocabulary of `features` (a task's
    `output_features`, or names to vocabularies), in one collective; other vocabularies (bytes,
    pass-through) are skipped. Returns {name: checksum}."""
    import jax

    vocabs = {
        name: getattr(f, "vocabulary", f)
        for name, f in sorted(features.items())
        if isinstance(getattr(f, "vocabulary", f), seqio.SentencePieceVocabulary)
    }
    if jax.process_count() == 1:
        return {name: model_checksum(v) for name, v in vocabs.items()}
    mine: dict[str, str] = {}
    error: Exception | None = None
    for name, vocab in vocabs.items():
        try:
            mine[name] = model_checksum(vocab)
        except Exception as e:  # still joins the gather, so that no process waits forever
            error = error or e
            mine[name] = _FAILED
    if not vocabs:
        return {}
    from jax.experimental import multihost_utils

    local = np.array([list(bytes.fromhex(d)) for d in mine.values()], dtype=np.int32)
    every = np.asarray(multihost_utils.process_allgather(local))
    every = every.reshape(jax.process_count(), len(vocabs), 32)
    if error is not None:
        raise error
    for column, name in enumerate(vocabs):
        digests = [bytes(row[column].astype(np.uint8).tolist()).hex() for row in every]
        compare_checksums(digests, f"{name} ({_describe(vocabs[name])})")
    return mine


def compare_checksums(digests: Sequence[str], what: str = "the vocabulary") -> None:
    """Raises DataError when `digests` (process i's model checksum at index i) are not all
    process 0's, naming the processes that differ, and the fix."""
    failed = [i for i, d in enumerate(digests) if d == _FAILED]
    if failed:
        raise DataError(
            f"{what}: process(es) {_indexes(failed)} could not read their SentencePiece model "
            "(see their logs); every process must load the same vocabulary."
        )
    reference = digests[0]
    differ = [i for i, d in enumerate(digests) if d != reference]
    if not differ:
        return
    seen = sorted({digests[i] for i in differ})
    shown = ", ".join(d[:12] for d in seen[:4]) + (" …" if len(seen) > 4 else "")
    raise DataError(
        f"{what}: process(es) {_indexes(differ)} of {len(digests)} tokenize with another "
        f"SentencePiece model than process 0 (sha256 {shown} against {reference[:12]}): each "
        "host built or loaded its own, so the same text gives different ids on different hosts. "
        "Give the run one shared vocabulary directory, which process 0 builds into and every "
        "other process loads from: --gin.train.vocab_dir='gs://BUCKET/vocabularies' (or the "
        "environment variable PTJF_VOCAB_DIR), the same on every host."
    )


def _describe(vocab: seqio.Vocabulary) -> str:
    """A vocabulary for a message (seqio's own str() loads the model to show its md5)."""
    if isinstance(vocab, CachedSentencePieceVocabulary):
        return str(vocab)
    return f"{type(vocab).__name__}({getattr(vocab, '_sentencepiece_model_file', '')!r})"


def _indexes(indexes: Sequence[int], limit: int = 16) -> str:
    shown = ", ".join(str(i) for i in indexes[:limit])
    return shown + (f" and {len(indexes) - limit} more" if len(indexes) > limit else "")

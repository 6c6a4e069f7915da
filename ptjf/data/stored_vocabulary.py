"""A SentencePiece model the user already has, at a path on local disk or in a bucket.

T5X users register tasks with their checkpoint's own vocabulary, often
`gs://…/sentencepiece.model`. SeqIO's `SentencePieceVocabulary` would read such a path through
TensorFlow's GCS client; this one reads it through `ptjf.storage` (the client every other path
of a run uses), once per process, into the local cache under a name that includes the model's
SHA-256, and hands SeqIO that local file. A missing model is named at first use, with the fix.
"""

from __future__ import annotations

import hashlib
import os

from ptjf import storage
from ptjf.data.vocabularies import LazySentencePieceVocabulary, data_dir
from ptjf.errors import DataError

# T5X's and SeqIO's usual sentinel count for span corruption (`<extra_id_0>` … `<extra_id_99>`).
DEFAULT_EXTRA_IDS = 100


class StoredSentencePieceVocabulary(LazySentencePieceVocabulary):
    """`seqio.SentencePieceVocabulary` for a model at `path` (local or gs://)."""

    def __init__(self, path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
        super().__init__(sentencepiece_model_file="", extra_ids=extra_ids)
        self._source = storage.check_uri(path)

    @property
    def source(self) -> str:
        return self._source

    def _locate(self) -> str:
        return local_model_file(self._source)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoredSentencePieceVocabulary):
            return (self._source, self.extra_ids) == (other._source, other.extra_ids)
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash((self._source, self.extra_ids))

    def __str__(self) -> str:
        return f"StoredSentencePieceVocabulary({self._source}, extra_ids={self.extra_ids})"


def local_model_file(path: str) -> str:
    """A local file with the bytes of the SentencePiece model at `path`: `path` itself on local
    disk, else a copy in ptjf's cache named by the model's SHA-256."""
    if not storage.is_remote(path):
        if not os.path.isfile(path):
            raise _missing(path)
        return path
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise _missing(path) from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    local = os.path.join(
        os.fspath(data_dir()), "stored-vocabularies", f"{digest}-{storage.basename(path)}"
    )
    if not os.path.isfile(local):
        storage.write_bytes(local, data)
    return local


def _missing(path: str) -> DataError:
    return DataError(
        f"The vocabulary's SentencePiece model {path!r} does not exist. Pass the path of an "
        "existing .model file (local or gs://), e.g. the one the checkpoint was trained with, "
        "or leave vocabulary=None to build one from the task's training text."
    )

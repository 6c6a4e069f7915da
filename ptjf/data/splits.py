"""Deterministic train/validation/test splits and nested subsamples, keyed by example ids.

Splits are a pure function of an example's key (e.g. a Bible verse `book:chapter:verse`), so
every language pair built from aligned verses gets the *same* split: a verse held out for
En→Fr validation is never trained on through En→Tl. Subsamples are nested (the 450 pairs of a
small task are a subset of the 2,000 of a larger one), so studies that vary a task's size vary
only that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ptjf.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Percentages of keys in validation and test; the rest is train (about 96/2/2 by default)."""

    validation_percent: int = 2
    test_percent: int = 2
    salt: str = "ptjf-split-v1"

    def __post_init__(self) -> None:
        v, t = self.validation_percent, self.test_percent
        if v < 0 or t < 0 or v + t >= 100:
            raise DataError(
                f"SplitSpec(validation_percent={v}, test_percent={t}) leaves no training data "
                "or is negative; use non-negative percentages that sum to less than 100."
            )


def _bucket(key: str, salt: str, modulo: int) -> int:
    digest = hashlib.sha1(f"{salt}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % modulo


def split_of(key: str, spec: SplitSpec = SplitSpec()) -> str:
    """The split ('train', 'validation' or 'test') a key belongs to; stable across runs."""
    b = _bucket(key, spec.salt, 100)
    if b < spec.validation_percent:
        return "validation"
    if b < spec.validation_percent + spec.test_percent:
        return "test"
    return "train"


def subsample(keys: Iterable[str], n: int | None, salt: str = "ptjf-subsample-v1") -> list[str]:
    """The first `n` keys by a salted hash order: deterministic and nested in `n`.

    `n=None` keeps every key. Asking for more keys than exist is an error rather than a
    silent shortfall, since the task's size is what the experiment varies.
    """
    unique = sorted(set(keys))
    if n is None:
        return unique
    if n <= 0:
        raise DataError(f"train_size={n} must be a positive number of examples (or None for all).")
    if n > len(unique):
        raise DataError(
            f"train_size={n} is larger than the {len(unique)} examples available; "
            f"use train_size <= {len(unique)} or None for all."
        )
    ranked = sorted(unique, key=lambda k: (hashlib.sha1(f"{salt}|{k}".encode()).digest(), k))
    return sorted(ranked[:n])


def partition(keys: Sequence[str], spec: SplitSpec = SplitSpec()) -> dict[str, list[str]]:
    """Keys grouped by split, each list in input order."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for k in keys:
        out[split_of(k, spec)].append(k)
    return out

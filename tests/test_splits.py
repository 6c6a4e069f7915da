from __future__ import annotations

import collections

import pytest

from ptjf.data.splits import SplitSpec, partition, split_of, subsample
from ptjf.errors import DataError

KEYS = [
    f"{b:02d}:{c:03d}:{v:03d}" for b in range(1, 30) for c in range(1, 20) for v in range(1, 40)
]


def test_split_is_deterministic_and_about_96_2_2():
    first = [split_of(k) for k in KEYS]
    assert first == [split_of(k) for k in KEYS]
    counts = collections.Counter(first)
    n = len(KEYS)
    assert abs(counts["train"] / n - 0.96) < 0.01
    assert abs(counts["validation"] / n - 0.02) < 0.005
    assert abs(counts["test"] / n - 0.02) < 0.005


def test_partition_covers_every_key_once():
    parts = partition(KEYS)
    assert sorted(k for keys in parts.values() for k in keys) == sorted(KEYS)
    assert set(parts["train"]).isdisjoint(parts["validation"])


def test_split_spec_changes_proportions_and_rejects_nonsense():
    spec = SplitSpec(validation_percent=10, test_percent=10)
    counts = collections.Counter(split_of(k, spec) for k in KEYS)
    assert abs(counts["validation"] / len(KEYS) - 0.10) < 0.01
    with pytest.raises(DataError, match="leaves no training data"):
        SplitSpec(validation_percent=60, test_percent=40)


def test_subsample_is_nested_deterministic_and_sorted():
    small, large = subsample(KEYS, 450), subsample(KEYS, 2000)
    assert len(small) == 450 and len(large) == 2000
    assert set(small) <= set(large)
    assert small == subsample(list(reversed(KEYS)), 450)
    assert small == sorted(small)
    assert subsample(KEYS, None) == sorted(KEYS)


def test_subsample_refuses_more_than_available_and_nonpositive():
    with pytest.raises(DataError, match=r"larger than the 3 examples"):
        subsample(["a", "b", "c"], 4)
    with pytest.raises(DataError, match="positive"):
        subsample(["a"], 0)

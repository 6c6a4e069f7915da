"""Pareto dominance and fronts (paper §2): hand-worked examples and a brute-force property."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptjf.errors import DataError
from ptjf.experiments.pareto import dominates, front_curve, pareto_front, pareto_front_records

NAN = float("nan")


def _dominates_ref(a, b) -> bool:
    """Independent pure-Python reading of the paper's definition."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def test_dominates_definition():
    assert dominates([1, 2], [1, 3])
    assert not dominates([1, 3], [1, 2])
    assert not dominates([1, 2], [1, 2])  # equal: nowhere strictly better
    assert not dominates([1, 3], [2, 2])  # a trade-off: neither dominates
    assert not dominates([2, 2], [1, 3])
    assert dominates([0.5], [1.0])
    assert not dominates([NAN, 0.0], [1.0, 1.0])
    assert not dominates([0.0, 0.0], [NAN, 1.0])


def test_dominates_length_mismatch():
    with pytest.raises(DataError, match=r"len\(a\)=2, len\(b\)=3"):
        dominates([1, 2], [1, 2, 3])


def test_front_2d_hand_example():
    points = [(1, 5), (2, 3), (3, 4), (4, 1), (5, 5), (2.5, 2)]
    # (3,4) is dominated by (2,3); (5,5) by (1,5), (2,3), (4,1) and (2.5,2).
    assert pareto_front(points) == [0, 1, 3, 5]
    assert front_curve(points) == [(1.0, 5.0), (2.0, 3.0), (2.5, 2.0), (4.0, 1.0)]


def test_ties_on_one_objective():
    assert pareto_front([(1, 2), (1, 3)]) == [0]
    assert pareto_front([(1, 3), (1, 2)]) == [1]
    assert pareto_front([(1, 3), (2, 3)]) == [0]
    assert pareto_front([(1, 2), (1, 2)]) == [0, 1]


def test_duplicates_of_front_points_all_kept_and_of_dominated_all_dropped():
    points = [(2, 2), (1, 3), (2, 2), (3, 3), (3, 3), (1, 3)]
    assert pareto_front(points) == [0, 1, 2, 5]
    assert front_curve(points) == [(1.0, 3.0), (1.0, 3.0), (2.0, 2.0), (2.0, 2.0)]


def test_three_objectives_hand_example():
    points = [
        (1, 2, 3),  # 0 front
        (2, 1, 3),  # 1 front: better than 0 on task 2
        (1, 2, 4),  # 2 dominated by 0 (worse on task 3 only)
        (3, 3, 1),  # 3 front: best on task 3
        (2, 2, 3),  # 4 dominated by 0 (worse on task 1 only) and by 1
        (3, 3, 2),  # 5 dominated by 3
        (1, 2, 3),  # 6 duplicate of 0: kept
    ]
    assert pareto_front(points) == [0, 1, 3, 6]


def test_one_objective_keeps_all_minima():
    assert pareto_front([[3.0], [1.0], [2.0], [1.0]]) == [1, 3]
    assert pareto_front([[7.5]]) == [0]


def test_nan_rows_never_on_front_and_never_dominate():
    # (0, nan) would dominate (1, 1) on its finite part; as a diverged run it must not.
    assert pareto_front([(0.0, NAN), (1.0, 1.0)]) == [1]
    assert pareto_front([(NAN, 0.0), (1.0, 1.0), (2.0, NAN), (0.5, 2.0), (2.0, 2.0)]) == [1, 3]
    assert pareto_front([(NAN, NAN), (NAN, 1.0)]) == []
    assert front_curve([(NAN, 0.0), (1.0, 1.0)]) == [(1.0, 1.0)]


def test_infinite_loss_compares_as_a_number():
    assert pareto_front([(math.inf, 0.0), (1.0, 1.0), (math.inf, 1.0)]) == [0, 1]


def test_empty_input():
    assert pareto_front([]) == []
    assert front_curve([]) == []
    assert pareto_front_records([], ["a"]) == []


def test_inconsistent_lengths_name_index_and_lengths():
    with pytest.raises(DataError, match=r"points\[2\] has 3 objectives but points\[0\] has 2"):
        pareto_front([(1, 2), (2, 1), (0, 0, 0)])


def test_empty_point_and_non_numeric_rejected():
    with pytest.raises(DataError, match=r"points\[1\]"):
        pareto_front([(1, 2), ()])
    with pytest.raises(DataError, match=r"points\[0\].*'x'"):
        pareto_front([("x", 1)])


def test_front_curve_requires_two_objectives():
    with pytest.raises(DataError, match=r"exactly 2 objectives.*got 3"):
        front_curve([(1, 2, 3)])


def test_records_front_returns_same_records_in_order():
    runs = [
        {"name": "a", "loss/high": 1.0, "loss/low": 5.0},
        {"name": "b", "loss/high": 2.0, "loss/low": 6.0},
        {"name": "c", "loss/high": 3.0, "loss/low": 1.0},
        {"name": "d", "loss/high": NAN, "loss/low": 0.1},
    ]
    front = pareto_front_records(runs, ["loss/high", "loss/low"])
    assert [r["name"] for r in front] == ["a", "c"]
    assert front[0] is runs[0]
    # Only the named objectives count: d's NaN high-resource loss is not looked at here.
    assert [r["name"] for r in pareto_front_records(runs, ["loss/low"])] == ["d"]
    # Generators are accepted.
    assert [r["name"] for r in pareto_front_records(iter(runs), ["loss/high"])] == ["a"]


def test_records_missing_key_names_index_and_key():
    runs = [{"loss/high": 1.0, "loss/low": 2.0}, {"loss/high": 0.5}]
    with pytest.raises(DataError, match=r"records\[1\] has no key 'loss/low'"):
        pareto_front_records(runs, ["loss/high", "loss/low"])


def test_records_bad_objectives_and_values():
    with pytest.raises(DataError, match="non-empty list of record keys"):
        pareto_front_records([{"a": 1.0}], "a")
    with pytest.raises(DataError, match="non-empty list of record keys"):
        pareto_front_records([{"a": 1.0}], [])
    with pytest.raises(DataError, match=r"records\[0\]\['a'\] = 'high' is not a number"):
        pareto_front_records([{"a": "high"}], ["a"])


def test_many_points_across_blocks_match_brute_force():
    rng = random.Random(0)
    points = [(rng.randint(0, 30), rng.randint(0, 30), rng.randint(0, 30)) for _ in range(600)]
    expected = [i for i, p in enumerate(points) if not any(_dominates_ref(q, p) for q in points)]
    assert pareto_front(points) == expected


_values = st.one_of(st.integers(0, 4).map(float), st.just(NAN))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda k: st.lists(st.lists(_values, min_size=k, max_size=k), max_size=25)
    )
)
def test_front_properties(points):
    front = pareto_front(points)
    front_set = set(front)
    finite = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    assert front == sorted(front_set)
    assert front_set <= set(finite)
    for i in front:
        assert not any(_dominates_ref(points[j], points[i]) for j in finite)
    for i in set(finite) - front_set:
        assert any(_dominates_ref(points[j], points[i]) for j in front)
    if points and len(points[0]) == 2:
        curve = front_curve(points)
        assert curve == sorted(curve)
        assert sorted(curve) == sorted((points[i][0], points[i][1]) for i in front)
        assert all(b[1] <= a[1] for a, b in itertools.pairwise(curve))

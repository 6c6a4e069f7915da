"""Tests for ptjf.sampling: hand-worked values, every error path, and property tests."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptjf.errors import RatesError, UnknownNameError
from ptjf.sampling import (
    UniMaxAllocation,
    epochs_seen,
    parse_sizes,
    parse_weights,
    proportional_rates,
    rates_for,
    scalarization_grid,
    simplex_grid,
    static_rates,
    temperature_rates,
    uniform_rates,
    unimax_rates,
)

# Paper, Table 2: mC4 sizes in billions of characters.
MC4 = {"en": 13396.0, "hi": 75.0, "gu": 3.6, "gd": 0.8, "sw": 4.1}


def _reference_temperature(sizes: dict[str, float], tau: float) -> dict[str, float]:
    """Eq. 3–4 written out literally, with no log-space trick."""
    total = sum(sizes.values())
    p = {k: v / total for k, v in sizes.items()}
    q = {k: v ** (1 / tau) for k, v in p.items()}
    norm = sum(q.values())
    return {k: v / norm for k, v in q.items()}


# ----------------------------------------------------------------------------------------------
# static


def test_static_rates_normalise():
    assert static_rates({"fr": 3, "ro": 1}) == {"fr": 0.75, "ro": 0.25}
    assert static_rates({"fr": 0.9, "ro": 0.1}) == pytest.approx({"fr": 0.9, "ro": 0.1}, abs=1e-15)


def test_static_rates_allow_single_zero_weight():
    assert static_rates({"fr": 2.0, "ro": 0.0, "zh": 2.0}) == {"fr": 0.5, "ro": 0.0, "zh": 0.5}


def test_static_rates_huge_weights_do_not_overflow():
    assert static_rates({"a": 1e308, "b": 1e308}) == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize(
    ("weights", "fragments"),
    [
        ({}, ["No weights"]),
        ({"fr": 1.0, "ro": -0.5}, ["'ro'", "-0.5"]),
        ({"fr": 1.0, "ro": math.nan}, ["'ro'", "nan"]),
        ({"fr": math.inf, "ro": 1.0}, ["'fr'", "inf"]),
        ({"fr": 0.0, "ro": 0}, ["rates that sum to zero"]),
        ({"fr": "0.9", "ro": 0.1}, ["'fr'", "'0.9'", "str"]),
        ({"fr": True}, ["'fr'", "bool"]),
        ({"": 1.0}, ["non-empty"]),
    ],
)
def test_static_rates_errors(weights, fragments):
    with pytest.raises(RatesError) as info:
        static_rates(weights)
    for fragment in fragments:
        assert fragment in str(info.value)


# ----------------------------------------------------------------------------------------------
# temperature


def test_temperature_two_tasks_by_hand():
    # Q ∝ D^{1/τ}: sizes 1 and 4 at τ = 2 give weights 1 and 2.
    rates = temperature_rates({"lo": 1.0, "hi": 4.0}, 2.0)
    assert rates == pytest.approx({"lo": 1 / 3, "hi": 2 / 3}, rel=1e-14)
    # Sizes 1 and 8 at τ = 3 give weights 1 and 2 as well.
    rates = temperature_rates({"lo": 1.0, "hi": 8.0}, 3.0)
    assert rates == pytest.approx({"lo": 1 / 3, "hi": 2 / 3}, rel=1e-14)


def test_temperature_mc4_table2_tau_3_33():
    rates = temperature_rates(MC4, 3.33, unit="characters")
    assert rates == pytest.approx(_reference_temperature(MC4, 3.33), rel=1e-12)
    # Pinned to 6 decimals: English falls from 99.4% (proportional) to about 70%.
    assert rates == pytest.approx(
        {"en": 0.695725, "hi": 0.146618, "gu": 0.058907, "gd": 0.037498, "sw": 0.061253},
        abs=1e-6,
    )
    assert list(rates) == list(MC4)


@pytest.mark.parametrize("tau", [1.43, 2.0, 5.0])
def test_temperature_mc4_other_paper_taus(tau):
    assert temperature_rates(MC4, tau) == pytest.approx(_reference_temperature(MC4, tau), rel=1e-12)


def test_temperature_tau_one_is_proportional():
    total = sum(MC4.values())
    expected = {k: v / total for k, v in MC4.items()}
    assert temperature_rates(MC4, 1) == pytest.approx(expected, rel=1e-12)
    assert proportional_rates(MC4) == pytest.approx(expected, rel=1e-12)


def test_temperature_infinite_tau_is_uniform():
    assert temperature_rates(MC4, math.inf) == {k: 0.2 for k in MC4}


def test_temperature_extreme_values_stay_finite():
    # Literal eq. 3–4 underflows here (1e-300 ** 1 / total); the log-space form does not.
    rates = temperature_rates({"a": 1e-300, "b": 1e300}, 1e6)
    assert rates["a"] == pytest.approx(0.5 - 0.5 * math.tanh(600 * math.log(10) / 2e6), rel=1e-9)
    assert sum(rates.values()) == pytest.approx(1.0, abs=1e-15)
    # A tiny τ puts all the mass on the largest task instead of producing NaN.
    assert temperature_rates({"a": 1.0, "b": 2.0, "c": 2.0}, 1e-300) == {
        "a": 0.0,
        "b": 0.5,
        "c": 0.5,
    }


@pytest.mark.parametrize(
    ("sizes", "tau", "unit", "fragments"),
    [
        (MC4, 0.0, "examples", ["tau", "0.0"]),
        (MC4, -1.0, "examples", ["tau", "-1.0"]),
        (MC4, math.nan, "examples", ["tau", "nan"]),
        (MC4, "3.33", "examples", ["tau", "'3.33'"]),
        ({}, 2.0, "tokens", ["No sizes", "tokens"]),
        ({"en": 10.0, "gd": 0.0}, 2.0, "characters", ["'gd'", "0.0", "characters"]),
        ({"en": 10.0, "gd": -1.0}, 2.0, "examples", ["'gd'", "-1.0"]),
        ({"en": math.nan, "gd": 1.0}, 2.0, "examples", ["'en'", "nan"]),
        ({"en": math.inf}, 2.0, "examples", ["'en'", "inf"]),
        ({"en": None}, 2.0, "examples", ["'en'", "None"]),
        (MC4, 2.0, "bytes", ["'bytes'", "examples, characters, tokens"]),
    ],
)
def test_temperature_errors(sizes, tau, unit, fragments):
    with pytest.raises(RatesError) as info:
        temperature_rates(sizes, tau, unit=unit)
    for fragment in fragments:
        assert fragment in str(info.value)


# ----------------------------------------------------------------------------------------------
# UniMax


def test_unimax_capped_language_leftover_flows_to_larger_ones():
    # Budget 15 over 3 tasks is 5 each; 'a' may take only 2 × 1 = 2, so the 3 it leaves are
    # shared by 'b' and 'c': 13 / 2 = 6.5 each (below b's cap 8).
    result = unimax_rates({"c": 10.0, "a": 1.0, "b": 4.0}, budget=15.0, max_epochs=2.0)
    assert isinstance(result, UniMaxAllocation)
    assert result.allocation == {"c": 6.5, "a": 2.0, "b": 6.5}
    assert result.rates == pytest.approx({"c": 6.5 / 15, "a": 2 / 15, "b": 6.5 / 15}, rel=1e-15)
    assert result.epochs == pytest.approx({"c": 0.65, "a": 2.0, "b": 1.625}, rel=1e-15)
    assert list(result.rates) == ["c", "a", "b"]
    assert result.capped == ("a",)


def test_unimax_two_capped_languages():
    # Shares: 30/3 = 10 > cap 1 → 1; 29/2 = 14.5 > cap 2 → 2; the rest, 27, goes to 'c'.
    result = unimax_rates({"a": 1.0, "b": 2.0, "c": 100.0}, budget=30.0, max_epochs=1.0)
    assert result.allocation == {"a": 1.0, "b": 2.0, "c": 27.0}
    assert result.rates == pytest.approx({"a": 1 / 30, "b": 2 / 30, "c": 27 / 30}, rel=1e-15)
    assert result.capped == ("a", "b")


def test_unimax_small_budget_is_uniform():
    result = unimax_rates(MC4, budget=3.0, max_epochs=4.0)
    assert result.rates == pytest.approx({k: 0.2 for k in MC4}, rel=1e-15)
    assert result.capped == ()


def test_unimax_budget_equal_to_cap_uses_every_task_fully():
    result = unimax_rates({"a": 1.0, "b": 2.0, "c": 3.0}, budget=12.0, max_epochs=2.0)
    assert result.allocation == {"a": 2.0, "b": 4.0, "c": 6.0}
    assert result.epochs == {"a": 2.0, "b": 2.0, "c": 2.0}
    assert result.rates == pytest.approx({"a": 1 / 6, "b": 1 / 3, "c": 1 / 2}, rel=1e-15)
    assert result.capped == ("a", "b", "c")


def test_unimax_budget_over_cap_raises_with_both_numbers():
    with pytest.raises(RatesError) as info:
        unimax_rates({"a": 1.0, "b": 2.0, "c": 3.0}, budget=12.5, max_epochs=2.0)
    message = str(info.value)
    for fragment in ("12.5", "12.0", "Lower the budget", "raise max_epochs"):
        assert fragment in message


def test_unimax_ties_are_deterministic():
    a = unimax_rates({"y": 1.0, "x": 1.0, "z": 50.0}, budget=20.0, max_epochs=3.0)
    b = unimax_rates({"z": 50.0, "x": 1.0, "y": 1.0}, budget=20.0, max_epochs=3.0)
    assert a.allocation == {"y": 3.0, "x": 3.0, "z": 14.0}
    assert b.allocation == {"z": 14.0, "x": 3.0, "y": 3.0}


@pytest.mark.parametrize(
    ("sizes", "budget", "max_epochs", "fragments"),
    [
        ({"a": 1.0}, 0.0, 1.0, ["budget", "0.0"]),
        ({"a": 1.0}, -5.0, 1.0, ["budget", "-5.0"]),
        ({"a": 1.0}, math.inf, 1.0, ["budget", "inf"]),
        ({"a": 1.0}, 1.0, 0.0, ["max_epochs", "0.0"]),
        ({"a": 1.0}, 1.0, math.nan, ["max_epochs", "nan"]),
        ({"a": 1.0, "b": 0.0}, 1.0, 1.0, ["'b'", "0.0"]),
        ({}, 1.0, 1.0, ["No sizes"]),
    ],
)
def test_unimax_errors(sizes, budget, max_epochs, fragments):
    with pytest.raises(RatesError) as info:
        unimax_rates(sizes, budget, max_epochs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unimax_allocation_is_frozen():
    result = unimax_rates({"a": 1.0}, 1.0, 1.0)
    with pytest.raises(AttributeError):
        result.budget = 2.0


# ----------------------------------------------------------------------------------------------
# epochs, grids


def test_epochs_seen():
    epochs = epochs_seen({"fr": 0.9, "ro": 0.1}, {"fr": 40_853_298, "ro": 610_320}, 1_000_000)
    assert epochs == pytest.approx({"fr": 900_000 / 40_853_298, "ro": 100_000 / 610_320})


@pytest.mark.parametrize(
    ("rates", "sizes", "total", "fragments"),
    [
        ({"fr": 1.0}, {"fr": 1.0, "ro": 2.0}, 10, ["no rate for ['ro']"]),
        ({"fr": 0.5, "ro": 0.5}, {"fr": 1.0}, 10, ["no size for ['ro']"]),
        ({"fr": -0.1}, {"fr": 1.0}, 10, ["'fr'", "-0.1"]),
        ({"fr": 1.0}, {"fr": 0.0}, 10, ["'fr'", "0.0"]),
        ({"fr": 1.0}, {"fr": 1.0}, -1, ["total_examples", "-1"]),
        ({"fr": 1.0}, {"fr": 1.0}, math.nan, ["total_examples", "nan"]),
    ],
)
def test_epochs_seen_errors(rates, sizes, total, fragments):
    with pytest.raises(RatesError) as info:
        epochs_seen(rates, sizes, total)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_scalarization_grid_paper_values():
    grid = scalarization_grid()
    assert grid[0] == (0.1, 0.9)
    assert grid[-1] == (0.9, 0.1)
    assert [high for high, _ in grid] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert all(high + low == 1.0 for high, low in grid)
    assert scalarization_grid(1) == [(0.5, 0.5)]
    assert scalarization_grid(3) == [(0.25, 0.75), (0.5, 0.5), (0.75, 0.25)]


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_scalarization_grid_errors(n):
    with pytest.raises(RatesError, match="n ≥ 1"):
        scalarization_grid(n)


def test_simplex_grid_two_tasks_equals_scalarization_grid():
    assert simplex_grid(2, 10) == scalarization_grid(9)


def test_simplex_grid_three_tasks():
    assert simplex_grid(3, 4) == [(0.25, 0.25, 0.5), (0.25, 0.5, 0.25), (0.5, 0.25, 0.25)]
    with_boundary = simplex_grid(3, 2, include_boundary=True)
    assert with_boundary == [
        (0.0, 0.0, 1.0),
        (0.0, 0.5, 0.5),
        (0.0, 1.0, 0.0),
        (0.5, 0.0, 0.5),
        (0.5, 0.5, 0.0),
        (1.0, 0.0, 0.0),
    ]
    assert len(simplex_grid(4, 10)) == math.comb(9, 3)
    assert simplex_grid(1, 5) == [(1.0,)]


@pytest.mark.parametrize(
    ("k", "resolution", "fragment"),
    [
        (0, 10, "k ≥ 1"),
        (2, 0, "resolution ≥ 1"),
        (2.0, 10, "k ≥ 1"),
        (4, 3, "No grid point"),
        (10, 400, "lower the resolution"),
    ],
)
def test_simplex_grid_errors(k, resolution, fragment):
    with pytest.raises(RatesError, match=fragment):
        simplex_grid(k, resolution)


# ----------------------------------------------------------------------------------------------
# parsing and dispatch


def test_parse_sizes():
    assert parse_sizes("en=13396,hi=75,gu=3.6,gd=0.8,sw=4.1") == MC4
    assert parse_sizes(" en = 1e3 , hi=2 ") == {"en": 1000.0, "hi": 2.0}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("en13396", ["'en13396'", "name=value"]),
        ("en=abc", ["'en=abc'", "'abc' is not a number"]),
        ("en=1,hi=2,en=3", ["'en'", "twice"]),
        ("", ["No sizes"]),
        ("   ", ["No sizes"]),
        ("en=1,,hi=2", ["item 2"]),
        ("=5", ["'=5'"]),
        ("en=", ["'en='"]),
        ("en=1,hi=0", ["'hi'", "0.0"]),
        ("en=1,hi=nan", ["'hi'", "nan"]),
    ],
)
def test_parse_sizes_errors(text, fragments):
    with pytest.raises(RatesError) as info:
        parse_sizes(text)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_parse_weights_allows_zero_but_not_negative():
    assert parse_weights("fr=0.9,ro=0") == {"fr": 0.9, "ro": 0.0}
    with pytest.raises(RatesError, match="'ro'"):
        parse_weights("fr=0.9,ro=-1")


def test_rates_for_each_method():
    assert rates_for("static", weights={"fr": 3, "ro": 1}) == {"fr": 0.75, "ro": 0.25}
    assert rates_for("temperature", sizes=MC4, tau=3.33) == temperature_rates(MC4, 3.33)
    assert rates_for("proportional", sizes={"a": 1.0, "b": 3.0}) == {"a": 0.25, "b": 0.75}
    assert rates_for("uniform", sizes=MC4) == {k: 0.2 for k in MC4}
    assert rates_for("uniform", weights={"a": 5, "b": 0}) == {"a": 0.5, "b": 0.5}
    assert rates_for("unimax", sizes={"c": 10.0, "a": 1.0, "b": 4.0}, budget=15.0, max_epochs=2.0)[
        "a"
    ] == pytest.approx(2 / 15)
    assert rates_for("static", weights={"fr": 1, "ro": 1}, sizes={"fr": 5.0, "ro": 1.0}) == {
        "fr": 0.5,
        "ro": 0.5,
    }


def test_rates_for_unknown_method_names_closest():
    with pytest.raises(UnknownNameError) as info:
        rates_for("temprature", sizes=MC4, tau=2.0)
    assert "temperature" in str(info.value)
    assert info.value.kind == "sampling method"


@pytest.mark.parametrize(
    ("method", "kwargs", "fragments"),
    [
        ("static", {}, ["'static'", "weights"]),
        ("temperature", {"sizes": MC4}, ["'temperature'", "tau"]),
        ("temperature", {"tau": 2.0}, ["'temperature'", "sizes"]),
        ("proportional", {}, ["sizes"]),
        ("unimax", {"sizes": MC4, "budget": 10.0}, ["max_epochs"]),
        ("unimax", {"sizes": MC4, "max_epochs": 1.0}, ["budget"]),
        ("uniform", {}, ["task names"]),
        ("proportional", {"sizes": MC4, "tau": 3.33}, ["does not use tau", "temperature"]),
        ("temperature", {"sizes": MC4, "tau": 2.0, "weights": {"en": 1}}, ["weights"]),
        ("static", {"weights": {"fr": 1}, "sizes": {"ro": 1.0}}, ["same tasks"]),
        ("uniform", {"sizes": {"a": 0.0}}, ["'a'", "0.0"]),
    ],
)
def test_rates_for_argument_errors(method, kwargs, fragments):
    with pytest.raises(RatesError) as info:
        rates_for(method, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_uniform_rates_errors():
    with pytest.raises(RatesError, match="No tasks"):
        uniform_rates([])
    with pytest.raises(RatesError, match="repeat"):
        uniform_rates(["a", "a"])


# ----------------------------------------------------------------------------------------------
# properties

_size = st.floats(min_value=1e-6, max_value=1e12, allow_nan=False, allow_infinity=False)
_sizes = st.lists(_size, min_size=1, max_size=8).map(
    lambda values: {f"t{i}": v for i, v in enumerate(values)}
)
_tau = st.floats(min_value=0.05, max_value=1e6, allow_nan=False)


def _assert_distribution(rates: dict[str, float]) -> None:
    assert all(r >= 0 for r in rates.values())
    assert math.fsum(rates.values()) == pytest.approx(1.0, abs=1e-9)


def _assert_monotone(rates: dict[str, float], sizes: dict[str, float]) -> None:
    ordered = sorted(sizes, key=sizes.__getitem__)
    for small, large in itertools.pairwise(ordered):
        assert rates[large] >= rates[small]


def _kl_to_uniform(rates: dict[str, float]) -> float:
    k = len(rates)
    return math.fsum(r * math.log(r * k) for r in rates.values() if r > 0)


@settings(max_examples=150, deadline=None)
@given(sizes=_sizes, tau=_tau)
def test_property_temperature_is_monotone_distribution(sizes, tau):
    rates = temperature_rates(sizes, tau)
    _assert_distribution(rates)
    _assert_monotone(rates, sizes)


@settings(max_examples=150, deadline=None)
@given(sizes=_sizes, taus=st.lists(_tau, min_size=2, max_size=2))
def test_property_larger_tau_moves_towards_uniform(sizes, taus):
    low, high = sorted(taus)
    near = temperature_rates(sizes, low)
    far = temperature_rates(sizes, high)
    spread = max(near.values()) - min(near.values())
    assert max(far.values()) - min(far.values()) <= spread + 1e-12
    assert _kl_to_uniform(far) <= _kl_to_uniform(near) + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.floats(1e-3, 1e6), min_size=1, max_size=8).map(
        lambda values: {f"t{i}": v for i, v in enumerate(values)}
    )
)
def test_property_tau_limits(sizes):
    total = math.fsum(sizes.values())
    proportional = {k: v / total for k, v in sizes.items()}
    assert temperature_rates(sizes, 1.0) == pytest.approx(proportional, rel=1e-9, abs=1e-15)
    assert temperature_rates(sizes, math.inf) == pytest.approx(
        {k: 1 / len(sizes) for k in sizes}, rel=1e-12
    )


@settings(max_examples=150, deadline=None)
@given(
    sizes=_sizes,
    max_epochs=st.floats(min_value=0.01, max_value=100.0),
    fraction=st.floats(min_value=1e-6, max_value=1.0),
)
def test_property_unimax(sizes, max_epochs, fraction):
    budget = fraction * math.fsum(max_epochs * v for v in sizes.values())
    result = unimax_rates(sizes, budget, max_epochs)
    _assert_distribution(result.rates)
    _assert_monotone(result.rates, sizes)
    for name, size in sizes.items():
        assert result.allocation[name] <= max_epochs * size
        assert result.epochs[name] == pytest.approx(result.allocation[name] / size, rel=1e-12)
    assert math.fsum(result.allocation.values()) == pytest.approx(budget, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.floats(min_value=0.0, max_value=1e300), min_size=1, max_size=8).filter(
        lambda values: max(values) > 0
    )
)
def test_property_static_rates_keep_proportions(weights):
    named = {f"t{i}": w for i, w in enumerate(weights)}
    rates = static_rates(named)
    _assert_distribution(rates)
    top = max(weights)
    for name, w in named.items():
        assert rates[name] == pytest.approx(w / top * rates[max(named, key=named.get)], rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 4), resolution=st.integers(1, 12), boundary=st.booleans())
def test_property_simplex_grid(k, resolution, boundary):
    if not boundary and resolution < k:
        with pytest.raises(RatesError, match="No grid point"):
            simplex_grid(k, resolution)
        return
    grid = simplex_grid(k, resolution, include_boundary=boundary)
    floor = 0 if boundary else 1
    assert len(grid) == math.comb(resolution - floor * k + k - 1, k - 1)
    assert grid == sorted(grid)
    assert len(set(grid)) == len(grid)
    for point in grid:
        assert len(point) == k
        assert math.fsum(point) == pytest.approx(1.0, abs=1e-9)
        assert all(c >= 1 / resolution - 1e-9 for c in point) or boundary

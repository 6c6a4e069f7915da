"""ptjf.experiments.seeds, pure: spreads over seeds, and dominance only beyond the spread."""

from __future__ import annotations

import math

import pytest

from ptjf.experiments.results import Run
from ptjf.experiments.seeds import (
    Spread,
    better_beyond_spread,
    dominates_beyond_spread,
    fewest_seeds,
    group_configs,
)

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom


def _run(method: str, seed: int, hi: float, lo: float, *, low_rate: float = 0.5) -> Run:
    info = {
        "kind": "point",
        "method": method,
        "name": f"{method}-r{low_rate}-s{seed}",
        "low_rate": low_rate,
        "rates": {"hi": 1 - low_rate, "lo": low_rate},
        "learning_rate": 0.001,
        "seed": seed,
        "tasks": ["hi", "lo"],
    }
    record = {"global_step": 100, "validation": {"hi": {"loss": hi}, "lo": {"loss": lo}}}
    return Run(f"/sweep/points/{info['name']}", info["name"], info, (record,))


def test_spread_of_three_values_exactly():
    s = Spread((1.0, 2.0, 4.0))
    mean = 7 / 3
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
    half = T_975_2 * std / math.sqrt(3)
    assert s.n == 3
    assert s.mean == pytest.approx(mean, rel=1e-12)
    assert (s.min, s.max) == (1.0, 4.0)
    assert s.std == pytest.approx(std, rel=1e-12)
    low, high = s.ci95
    assert low == pytest.approx(mean - half, rel=1e-9)
    assert high == pytest.approx(mean + half, rel=1e-9)
    assert not s.diverged


def test_below_three_seeds_has_no_interval():
    assert Spread((1.0, 2.0)).ci95 is None
    assert Spread((1.0,)).ci95 is None
    assert math.isnan(Spread((1.0,)).std)


def test_a_nan_seed_is_diverged_and_has_no_mean():
    s = Spread((1.0, math.nan, 2.0))
    assert s.diverged
    assert math.isnan(s.mean) and math.isnan(s.min) and math.isnan(s.max)
    assert s.ci95 is None
    assert Spread(()).diverged


def test_better_beyond_spread_needs_separated_ranges():
    assert better_beyond_spread(Spread((1.0, 1.1, 1.2)), Spread((1.3, 1.4, 1.5)))
    assert not better_beyond_spread(Spread((1.0, 1.35, 1.2)), Spread((1.3, 1.4, 1.5)))
    # Touching ranges (a.max == b.min) are not separated.
    assert not better_beyond_spread(Spread((1.0, 1.1, 1.3)), Spread((1.3, 1.4, 1.5)))
    # One seed on either side: nothing to measure the spread with.
    assert not better_beyond_spread(Spread((1.0,)), Spread((2.0, 2.1, 2.2)))
    assert not better_beyond_spread(Spread((1.0, 1.1)), Spread((2.0,)))
    assert not better_beyond_spread(Spread((1.0, math.nan)), Spread((2.0, 2.1)))


def test_dominates_beyond_spread_needs_every_task():
    a = group_configs([_run("ptjf", s, 2.0 + s / 100, 3.0 + s / 100) for s in range(3)])[0]
    b = group_configs([_run("scalarization", s, 2.5 + s / 100, 3.5 + s / 100) for s in range(3)])
    c = group_configs([_run("scalarization", s, 1.5 + s / 100, 3.5 + s / 100) for s in range(3)])
    assert dominates_beyond_spread(a, b[0], ["hi", "lo"])
    assert not dominates_beyond_spread(b[0], a, ["hi", "lo"])
    # Better on lo only: not dominance.
    assert not dominates_beyond_spread(a, c[0], ["hi", "lo"])
    assert dominates_beyond_spread(a, c[0], ["lo"])
    assert not dominates_beyond_spread(a, b[0], [])


def test_group_configs_groups_seeds_keeps_methods_apart_and_orders_by_rate():
    runs = [
        _run("scalarization", 1, 2.0, 3.0, low_rate=0.8),
        _run("ptjf", 0, 2.0, 3.0, low_rate=0.5),
        _run("scalarization", 0, 2.0, 3.0, low_rate=0.2),
        _run("scalarization", 0, 2.0, 3.0, low_rate=0.8),
        _run("ptjf", 1, 2.0, 3.0, low_rate=0.5),
        _run("scalarization", 1, 2.0, 3.0, low_rate=0.2),
    ]
    configs = group_configs(runs)
    assert [(c.method, c.info["low_rate"], c.seeds) for c in configs] == [
        ("ptjf", 0.5, (0, 1)),
        ("scalarization", 0.2, (0, 1)),
        ("scalarization", 0.8, (0, 1)),
    ]
    assert configs[1].label == "scalarization r=0.2"
    assert fewest_seeds(configs) == 2
    assert fewest_seeds([]) == 0

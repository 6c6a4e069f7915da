"""The demo's verdict, exactly, on fabricated summarize() rows."""

from __future__ import annotations

import math

import pytest

from ptjf.errors import DataError
from ptjf.experiments.verdict import (
    Comparison,
    compare_losses,
    decide,
    format_comparison,
    format_verdict,
    overfit_of,
)

HIGH, LOW = "en_fr", "en_tl_low"
METHODS = ("ptjf", "scalarization")


def rows(ptjf: dict[str, tuple[float, float]], scal: dict[str, tuple[float, float]]) -> list:
    """summarize()-shaped rows from {task: (best, final)} per method."""
    out = []
    for method, losses in (("ptjf", ptjf), ("scalarization", scal)):
        for task, (best, final) in losses.items():
            out.append(
                {
                    "method": method,
                    "task": task,
                    "best": best,
                    "best_step": 100,
                    "final": final,
                    "final_step": 200,
                    "examples_seen": 10,
                }
            )
    return out


def leaders(v) -> dict[tuple[str, str], str | None]:
    return {(c.task, c.measure): c.leader for c in v.comparisons}


def test_mixed_result_names_each_task_leader_with_margin_and_percent():
    v = decide(
        rows({HIGH: (4.0, 4.0), LOW: (4.5, 4.5)}, {HIGH: (5.0, 5.0), LOW: (4.4, 4.6)}),
        METHODS,
        LOW,
    )
    assert leaders(v) == {
        (HIGH, "best"): "ptjf",
        (HIGH, "final"): "ptjf",
        (LOW, "best"): "scalarization",
        (LOW, "final"): "ptjf",
    }
    high_best = v.comparisons[0]
    assert high_best == Comparison(HIGH, "best", (("ptjf", 4.0), ("scalarization", 5.0)), "ptjf",
                                   1.0, 20.0)  # fmt: skip
    low_best = v.comparisons[2]
    assert low_best.margin == pytest.approx(0.1)
    assert low_best.percent == pytest.approx(100 * 0.1 / 4.5)
    assert v.dominant == {"best": None, "final": "ptjf"}
    assert v.dominates is None
    text = format_verdict(v)
    assert (
        "Domination: neither method dominates (at best: mixed; at final: ptjf ahead on every task)"
        in text
    )
    assert (
        "best   ptjf 4.0000 vs scalarization 5.0000: ptjf ahead by 1.0000 nats (20.0% lower)"
        in text
    )
    # Scalarization's En→Tl rose 0.2 nats after its minimum; PTJF's did not.
    assert [(o.method, o.overfit) for o in v.overfits] == [("ptjf", False), ("scalarization", True)]
    assert "scalarization: overfit (best 4.4000, final 4.6000, +0.2000 nats)" in text
    assert "ptjf: no overfitting (best 4.5000, final 4.5000, +0.0000 nats)" in text


@pytest.mark.parametrize("winner", METHODS)
def test_domination_either_way(winner):
    good, bad = {HIGH: (4.0, 4.1), LOW: (4.2, 4.3)}, {HIGH: (4.5, 4.6), LOW: (4.7, 4.8)}
    v = decide(rows(good, bad) if winner == "ptjf" else rows(bad, good), METHODS, LOW)
    assert v.dominant == {"best": winner, "final": winner}
    assert v.dominates == winner
    loser = next(m for m in METHODS if m != winner)
    assert (
        f"Domination: {winner} dominates {loser} (ahead on every task, at best and at final)."
        in format_verdict(v)
    )


def test_ties_within_the_margin_are_no_lead_and_no_domination():
    v = decide(
        rows({HIGH: (4.0, 4.0), LOW: (4.5, 4.5)}, {HIGH: (4.0, 4.0), LOW: (4.6, 4.6)}),
        METHODS,
        LOW,
    )
    assert leaders(v)[HIGH, "best"] is None and leaders(v)[HIGH, "final"] is None
    assert leaders(v)[LOW, "best"] == "ptjf"
    # Ahead on one task and tied on the other: better, but not better on every task.
    assert v.dominant == {"best": None, "final": None}
    assert format_comparison(v.comparisons[0]).endswith(": tie (within 0.0000 nats)")
    tie = compare_losses(HIGH, "best", ("a", 4.0), ("b", 4.0009))
    assert tie.leader is None
    assert compare_losses(HIGH, "best", ("a", 4.0), ("b", 4.0011)).leader == "a"
    assert compare_losses(HIGH, "best", ("a", 4.0), ("b", 4.0009), tie_margin=0).leader == "a"


def test_a_nan_loss_is_behind_every_number_and_cannot_overfit_or_not():
    v = decide(
        rows({HIGH: (4.0, math.nan), LOW: (4.5, math.nan)}, {HIGH: (4.2, 4.2), LOW: (4.6, 4.6)}),
        METHODS,
        LOW,
    )
    assert leaders(v) == {
        (HIGH, "best"): "ptjf",
        (HIGH, "final"): "scalarization",
        (LOW, "best"): "ptjf",
        (LOW, "final"): "scalarization",
    }
    final = v.comparisons[1]
    assert math.isnan(final.margin) and math.isnan(final.percent)
    assert format_comparison(final) == (
        "final  ptjf NaN vs scalarization 4.2000: scalarization ahead (ptjf diverged: NaN)"
    )
    assert v.dominant == {"best": "ptjf", "final": "scalarization"}
    assert v.dominates is None
    assert v.overfits[0].overfit is None
    assert "ptjf: cannot tell (best 4.5000, final NaN)" in format_verdict(v)
    both = compare_losses(HIGH, "final", ("a", math.nan), ("b", math.nan))
    assert both.leader is None
    assert format_comparison(both).endswith("both diverged (NaN), no leader")


def test_one_method_missing_says_so():
    only_ptjf = rows({HIGH: (4.0, 4.0), LOW: (4.5, 4.5)}, {})
    with pytest.raises(DataError, match=r"^No verdict: scalarization has no validation losses"):
        decide(only_ptjf, METHODS, LOW)
    with pytest.raises(DataError, match=r"ptjf and scalarization have no validation losses"):
        decide([], METHODS, LOW)


def test_mismatched_tasks_duplicates_and_unknown_low_task_are_errors():
    with pytest.raises(DataError, match="both need every task"):
        decide(rows({HIGH: (4.0, 4.0), LOW: (4.5, 4.5)}, {HIGH: (4.0, 4.0)}), METHODS, LOW)
    twice = rows({HIGH: (4.0, 4.0)}, {HIGH: (4.0, 4.0)})
    with pytest.raises(DataError, match="Two rows for method 'ptjf'"):
        decide(twice + twice[:1], METHODS, HIGH)
    with pytest.raises(DataError, match="low-resource task 'nope'"):
        decide(twice, METHODS, "nope")


def test_rows_of_other_methods_are_ignored():
    extra = rows({HIGH: (1.0, 1.0)}, {})
    extra[0]["method"] = "restart"
    base = rows({HIGH: (4.0, 4.0)}, {HIGH: (4.5, 4.5)})
    assert decide(base + extra, METHODS, HIGH) == decide(base, METHODS, HIGH)


def test_overfit_margin_is_strict():
    assert overfit_of("m", LOW, 4.0, 4.01, margin=0.01).overfit is False
    assert overfit_of("m", LOW, 4.0, 4.0101, margin=0.01).overfit is True
    assert overfit_of("m", LOW, 4.0, 4.0101, margin=0.02).overfit is False
    assert overfit_of("m", LOW, 4.0, 4.5).rise == 0.5

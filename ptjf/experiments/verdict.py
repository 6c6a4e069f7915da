"""Which of two methods won, computed from the demo's numbers rather than read off a table.

Input: `ptjf.commands.demo.summarize` rows, one per (method, task) with the task's `best`
(lowest) and `final` (last eval's) validation loss. Per task and measure (best, final) the method
with the lower loss is ahead, by a margin in nats and in percent of the other's loss; within
`tie_margin` nats it is a tie. A diverged loss (NaN) is behind every number. A method *dominates*
at a measure when it is ahead on every task (strictly: a tie on one task means no domination).
The low-resource task *overfit* when its final loss exceeds its best by more than
`overfit_margin` nats: the loss turned back up after its minimum.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ptjf.errors import DataError

MEASURES = ("best", "final")
TIE_MARGIN = 1e-3  # nats: below the table's printed precision that matters
OVERFIT_MARGIN = 0.01  # nats: a rise smaller than eval noise is not overfitting


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One task at one measure: both losses, the leader (None for a tie or two NaNs), its margin
    in nats (NaN when the other diverged) and the margin as % of the other method's loss."""

    task: str
    measure: str
    losses: tuple[tuple[str, float], tuple[str, float]]
    leader: str | None
    margin: float
    percent: float


@dataclasses.dataclass(frozen=True)
class Overfit:
    """One method's low-resource task: best and final loss, their difference, and whether it
    exceeds the margin (None when either loss is NaN)."""

    method: str
    task: str
    best: float
    final: float
    rise: float
    overfit: bool | None


@dataclasses.dataclass(frozen=True)
class Verdict:
    methods: tuple[str, str]
    low_resource: str
    tie_margin: float
    overfit_margin: float
    comparisons: tuple[Comparison, ...]
    dominant: Mapping[str, str | None]  # measure → the method ahead on every task, or None
    overfits: tuple[Overfit, ...]

    @property
    def dominates(self) -> str | None:
        """The method that dominates at best and at final alike, if one does."""
        winners = {self.dominant[m] for m in MEASURES}
        return winners.pop() if len(winners) == 1 else None


def compare_losses(
    task: str,
    measure: str,
    a: tuple[str, float],
    b: tuple[str, float],
    tie_margin: float = TIE_MARGIN,
) -> Comparison:
    """The leader of two (method, loss) pairs on one task; NaN is behind any number."""
    (name_a, la), (name_b, lb) = a, b
    la, lb = float(la), float(lb)
    nan_a, nan_b = math.isnan(la), math.isnan(lb)
    if nan_a or nan_b:
        leader = None if nan_a and nan_b else (name_b if nan_a else name_a)
        return Comparison(task, measure, (a, b), leader, math.nan, math.nan)
    margin = abs(la - lb)
    if margin <= tie_margin:
        return Comparison(task, measure, (a, b), None, margin, _percent(margin, max(la, lb)))
    leader, other = (name_a, lb) if la < lb else (name_b, la)
    return Comparison(task, measure, (a, b), leader, margin, _percent(margin, other))


def _percent(margin: float, other: float) -> float:
    return 100.0 * margin / other if other not in (0.0, math.inf, -math.inf) else math.nan


def overfit_of(
    method: str, task: str, best: float, final: float, margin: float = OVERFIT_MARGIN
) -> Overfit:
    """Whether `task`'s validation loss ended more than `margin` nats above its minimum."""
    best, final = float(best), float(final)
    rise = final - best
    verdict = None if math.isnan(rise) else rise > margin
    return Overfit(method, task, best, final, rise, verdict)


def decide(
    rows: Sequence[Mapping[str, Any]],
    methods: tuple[str, str],
    low_resource: str,
    *,
    tie_margin: float = TIE_MARGIN,
    overfit_margin: float = OVERFIT_MARGIN,
) -> Verdict:
    """The verdict on `methods` from summarize() rows; rows of other methods are ignored.

    Raises DataError when a method has no rows, the methods cover different tasks, a (method,
    task) appears twice, or `low_resource` is not among the tasks: a verdict on partial numbers
    would name a winner it cannot know.
    """
    by_key: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        if r["method"] not in methods:
            continue
        key = (r["method"], r["task"])
        if key in by_key:
            raise DataError(f"Two rows for method {key[0]!r}, task {key[1]!r}; expected one.")
        by_key[key] = r
    tasks = {m: [t for (mm, t) in by_key if mm == m] for m in methods}
    missing = [m for m in methods if not tasks[m]]
    if missing:
        raise DataError(
            f"No verdict: {' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
            "validation losses (no eval record in metrics.jsonl: did the run finish?). Rerun "
            "`ptjf demo` to train what is missing."
        )
    if set(tasks[methods[0]]) != set(tasks[methods[1]]):
        raise DataError(
            f"No verdict: {methods[0]} has losses for {sorted(tasks[methods[0]])} but "
            f"{methods[1]} for {sorted(tasks[methods[1]])}; both need every task."
        )
    if low_resource not in tasks[methods[0]]:
        raise DataError(
            f"No verdict: the low-resource task {low_resource!r} is not among the tasks "
            f"{sorted(tasks[methods[0]])}."
        )
    comparisons = tuple(
        compare_losses(
            task,
            measure,
            *((m, float(by_key[m, task][measure])) for m in methods),
            tie_margin=tie_margin,
        )
        for task in tasks[methods[0]]
        for measure in MEASURES
    )
    dominant = {measure: _dominant(comparisons, measure) for measure in MEASURES}
    overfits = tuple(
        overfit_of(
            m,
            low_resource,
            by_key[m, low_resource]["best"],
            by_key[m, low_resource]["final"],
            overfit_margin,
        )
        for m in methods
    )
    return Verdict(
        methods, low_resource, tie_margin, overfit_margin, comparisons, dominant, overfits
    )


def _dominant(comparisons: Sequence[Comparison], measure: str) -> str | None:
    leaders = {c.leader for c in comparisons if c.measure == measure}
    return leaders.pop() if len(leaders) == 1 and None not in leaders else None


# --- text -------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return "NaN" if math.isnan(x) else f"{x:.4f}"


def format_comparison(c: Comparison) -> str:
    """ "best   ptjf 4.3918 vs scalarization 4.7173: ptjf ahead by 0.3255 nats (6.9% lower)"."""
    (ma, la), (mb, lb) = c.losses
    head = f"{c.measure:<5}  {ma} {_num(la)} vs {mb} {_num(lb)}: "
    if c.leader is None:
        if math.isnan(c.margin):
            return head + "both diverged (NaN), no leader"
        return head + f"tie (within {c.margin:.4f} nats)"
    if math.isnan(c.margin):
        loser = mb if c.leader == ma else ma
        return head + f"{c.leader} ahead ({loser} diverged: NaN)"
    return head + f"{c.leader} ahead by {c.margin:.4f} nats ({c.percent:.1f}% lower)"


def format_overfit(o: Overfit) -> str:
    """ "scalarization: overfit (best 4.2890, final 4.3390, +0.0500 nats)"."""
    losses = f"best {_num(o.best)}, final {_num(o.final)}"
    if o.overfit is None:
        return f"{o.method}: cannot tell ({losses})"
    word = "overfit" if o.overfit else "no overfitting"
    return f"{o.method}: {word} ({losses}, {o.rise:+.4f} nats)"


def format_verdict(v: Verdict) -> str:
    """The verdict as plain lines: per task, domination, overfitting of the low-resource task."""
    lines = [f"Verdict (validation loss in nats, lower is better; within {v.tie_margin:g}: a tie):"]
    for task in dict.fromkeys(c.task for c in v.comparisons):
        role = "low-resource" if task == v.low_resource else "high-resource"
        lines.append(f"  {task} ({role})")
        lines += [f"    {format_comparison(c)}" for c in v.comparisons if c.task == task]
    a, b = v.methods
    if v.dominates is not None:
        loser = b if v.dominates == a else a
        lines.append(
            f"  Domination: {v.dominates} dominates {loser} "
            "(ahead on every task, at best and at final)."
        )
    else:
        parts = [
            f"at {m}: {v.dominant[m] + ' ahead on every task' if v.dominant[m] else 'mixed'}"
            for m in MEASURES
        ]
        lines.append(f"  Domination: neither method dominates ({'; '.join(parts)}).")
    lines.append(f"  Overfitting of {v.low_resource} (final − best > {v.overfit_margin:g} nats):")
    lines += [f"    {format_overfit(o)}" for o in v.overfits]
    return "\n".join(lines)

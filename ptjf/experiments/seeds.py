"""Seeds as spread: a sweep's points grouped over seeds, and dominance only beyond the spread.

A *configuration* is everything a sweep point is but its seed: method, rates (or τ, or UniMax's
cap), learning rate and pre-training length N1. Its seeds differ in initialisation and data
order alike (each seed has its own shared pre-training), so the spread over seeds is what a
rerun could move a number by.

Per configuration, task and measure (a run's final or best validation loss) `Spread` holds the
seeds' values, their mean, min and max, and with ≥ 3 seeds a 95% interval for the mean
(Student's t). Fronts are drawn at the means.

The rule for "better" and "dominates" (stated in report.md, `DOMINANCE_RULE`): configuration A
is better than B on a task *beyond the spread* when every seed of A is lower than every seed of B
(A's max < B's min). With 3 seeds each this happens by chance, when the methods are equal,
with probability 1 / C(6, 3) = 1/20 per task — a rank test at the 5% level. A dominates B when
it is better beyond the spread on every task. One seed on either side is never beyond the
spread: there is nothing to measure the spread with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from ptjf.experiments.results import Run, methods, points_of, run_point

MEASURES = ("final", "best")
MIN_SEEDS_FOR_INTERVAL = 3
DOMINANCE_RULE = (
    "A configuration is better than another on a task only when every seed of it is better "
    "than every seed of the other (its worst seed beats the other's best: the min–max ranges "
    "do not overlap); with 3 seeds each, equal methods pass this by chance with probability "
    "1/20 per task. It dominates when it is better in this sense on every task. With one "
    "seed on either side nothing is beyond the spread."
)


@dataclasses.dataclass(frozen=True)
class Spread:
    """One number over seeds: the values, their mean, range and (n ≥ 3) 95% interval."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def finite(self) -> tuple[float, ...]:
        return tuple(v for v in self.values if math.isfinite(v))

    @property
    def diverged(self) -> bool:
        """A seed without a finite value (NaN: diverged, or no eval of the task)."""
        return len(self.finite) < self.n or self.n == 0

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values and not self.diverged else math.nan

    @property
    def min(self) -> float:
        return min(self.values) if self.values and not self.diverged else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.values and not self.diverged else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (NaN below 2 seeds)."""
        if self.n < 2 or self.diverged:
            return math.nan
        return float(np.std(self.values, ddof=1))

    @property
    def ci95(self) -> tuple[float, float] | None:
        """The 95% interval for the mean (Student's t, n − 1 degrees of freedom), from 3 seeds."""
        if self.n < MIN_SEEDS_FOR_INTERVAL or self.diverged:
            return None
        half = float(stats.t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)


def better_beyond_spread(a: Spread, b: Spread) -> bool:
    """Whether every seed of `a` is lower than every seed of `b` (needs ≥ 2 seeds each)."""
    if a.n < 2 or b.n < 2 or a.diverged or b.diverged:
        return False
    return a.max < b.min


@dataclasses.dataclass(frozen=True)
class Config:
    """A sweep point over its seeds: what it is, and its runs (one per seed)."""

    method: str
    settings: tuple[tuple[str, Any], ...]  # (name, value) of every swept axis but the seed
    runs: tuple[Run, ...]
    lr_swept: bool = dataclasses.field(default=False, compare=False)  # label the learning rate

    @property
    def seeds(self) -> tuple[Any, ...]:
        return tuple(r.info.get("seed") for r in self.runs)

    @property
    def info(self) -> Mapping[str, Any]:
        return dict(self.settings)

    @property
    def label(self) -> str:
        """E.g. "ptjf r=0.5 N1=600 lr=0.002"."""
        short = {"low_rate": "r", "tau": "τ", "max_epochs": "cap", "pretrain_steps": "N1"}
        parts = [self.method]
        for key, value in self.settings:
            if value is None or key == "rates" or (key == "learning_rate" and not self.lr_swept):
                continue
            name = short.get(key, "lr" if key == "learning_rate" else key)
            parts.append(f"{name}={_fmt(value)}")
        return " ".join(parts)

    def spread(self, task: str, measure: str = "final", split: str = "validation") -> Spread:
        """The task's loss over this configuration's seeds."""
        return Spread(tuple(run_point(r, split, [task], measure)[0] for r in self.runs))

    def means(
        self, tasks: Sequence[str], measure: str = "final", split: str = "validation"
    ) -> list[float]:
        """The mean loss per task: the configuration's point on a front."""
        return [self.spread(t, measure, split).mean for t in tasks]


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


SWEPT = ("low_rate", "tau", "max_epochs", "learning_rate", "pretrain_steps", "rates")


def settings_of(run: Run) -> tuple[tuple[str, Any], ...]:
    """The run's swept axes but its seed, hashable (rates as sorted (task, rate) pairs)."""
    out = []
    for key in SWEPT:
        value = run.info.get(key)
        if key == "rates" and isinstance(value, Mapping):
            total = sum(float(v) for v in value.values()) or 1.0
            value = tuple(sorted((str(t), round(float(v) / total, 9)) for t, v in value.items()))
        elif isinstance(value, float):
            value = round(value, 12)
        out.append((key, value))
    return tuple(out)


def group_configs(runs: Sequence[Run]) -> list[Config]:
    """The points of `runs` grouped over seeds, in method order then sweep order (rate, N1)."""
    lrs = {r.info.get("learning_rate") for r in runs if r.kind != "shared"}
    out = []
    for method in methods(runs):
        groups: dict[tuple, list[Run]] = {}
        for run in points_of(runs, method):
            groups.setdefault(settings_of(run), []).append(run)
        for settings, members in groups.items():
            members.sort(key=lambda r: (str(r.info.get("seed")), r.name))
            out.append(Config(method, settings, tuple(members), lr_swept=len(lrs) > 1))
    return sorted(out, key=lambda c: (methods(runs).index(c.method), _order(c)))


def _order(config: Config) -> tuple:
    info = config.info
    return tuple(
        (0, float(info[k])) if isinstance(info.get(k), (int, float)) else (1, 0.0)
        for k in ("low_rate", "tau", "max_epochs", "pretrain_steps", "learning_rate")
    )


def dominates_beyond_spread(
    a: Config, b: Config, tasks: Sequence[str], measure: str = "final", split: str = "validation"
) -> bool:
    """Whether `a` is better than `b` beyond the spread on every task (`DOMINANCE_RULE`)."""
    return bool(tasks) and all(
        better_beyond_spread(a.spread(t, measure, split), b.spread(t, measure, split))
        for t in tasks
    )


def fewest_seeds(configs: Sequence[Config]) -> int:
    """The smallest number of seeds of any configuration (0 for none)."""
    return min((len(c.runs) for c in configs), default=0)

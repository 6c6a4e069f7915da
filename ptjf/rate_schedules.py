"""Mixing rates that change within a stage: piecewise-constant, linear, or a temperature τ(step).

The paper holds each stage's rates fixed; its appendix C also decays the high-resource rate
linearly, and temperature "cooldowns" lower τ as training goes on. A `RateSchedule` says which
rates the stream samples with at each step of a stage. It is evaluated as `rates_at(step)`, a
pure function of the stage-local step returning normalised rates {task: r} (Σ r = 1):

* `PiecewiseRates(points=[(0, {...}), (s1, {...}), …])`: the rates of the last point at or
  before the step. The first point is at step 0.
* `LinearRates(start_step, end_step, start_rates, end_rates)`: start_rates until start_step,
  then a straight line to end_rates at end_step, end_rates afterwards.
* `TemperatureSchedule(points=[(0, 5.0), (1000, 1.43)], sizes=None)`: τ(step) linear between
  the points and constant outside them; rates are `ptjf.sampling.temperature_rates(sizes,
  τ(step))`. `sizes` default to the stage's mixture's sizes (its own, or counted from data).

Every check that needs no data runs when the schedule is built (gin builds it while parsing);
the checks against a stage (points inside its steps, task names of its mixture) run when the
run's settings are checked, before the first step. Every schedule reduces to a `Curve` (knots
and values), which `ptjf.data.mixing` evaluates inside the tf.data graph with the same rule
as `rates_at` here, so the stream samples with the rates this module reports.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from ptjf import sampling
from ptjf.errors import RatesError, closest


def _is_int(value: object) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def _check_steps(steps: Sequence[object], where: str) -> tuple[int, ...]:
    for s in steps:
        if not _is_int(s) or s < 0:
            raise RatesError(
                f"{where}: step {s!r} is not an integer >= 0; schedule steps are stage-local "
                "step counts (0 is the stage's first batch)."
            )
    out = tuple(int(s) for s in steps)
    for a, b in itertools.pairwise(out):
        if b <= a:
            raise RatesError(
                f"{where}: steps {list(out)} are not strictly increasing ({a} then {b}); give "
                "each point a later step than the one before it."
            )
    return out


def _check_rates(rates: object, where: str) -> dict[str, float]:
    """Validated, normalised rates of one point (negative, non-finite and all-zero refused)."""
    if not isinstance(rates, Mapping) or not rates:
        raise RatesError(
            f"{where}: rates {rates!r} must be a non-empty mapping from task name to weight, "
            "e.g. {'high': 0.9, 'low': 0.1}."
        )
    for name, value in rates.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise RatesError(f"{where}: the rate of {name!r} is {value!r}; expected a number >= 0.")
        if value < 0:
            raise RatesError(
                f"{where}: the rate of {name!r} is negative ({value!r}); rates must be >= 0 "
                "(0 leaves a task out at that point)."
            )
    if not any(float(v) > 0 for v in rates.values()):
        raise RatesError(
            f"{where}: the rates {dict(rates)!r} sum to zero; give at least one task a "
            "positive rate at every point."
        )
    try:
        return sampling.static_rates(rates)
    except RatesError as e:
        raise RatesError(f"{where}: {e}") from None


def _same_tasks(points: Sequence[tuple[object, Mapping[str, float]]], where: str) -> None:
    first_step, first = points[0]
    for step, rates in points[1:]:
        if set(rates) != set(first):
            only_first = sorted(set(first) - set(rates))
            only_here = sorted(set(rates) - set(first))
            raise RatesError(
                f"{where}: the point at step {step} names other tasks than the one at step "
                f"{first_step} (only at step {first_step}: {only_first}; only at step {step}: "
                f"{only_here}); give every point a rate for the same tasks (0 leaves a task out)."
            )


def _check_tau(tau: object, where: str) -> float:
    if not isinstance(tau, numbers.Real) or isinstance(tau, bool) or not math.isfinite(tau):
        raise RatesError(f"{where}: τ={tau!r} is not a finite number; expected τ > 0.")
    if tau <= 0:
        raise RatesError(
            f"{where}: τ={tau!r} is <= 0; a temperature must be > 0 at every point (1 gives "
            "proportional rates, larger values flatten them)."
        )
    return float(tau)


@dataclasses.dataclass(frozen=True)
class Curve:
    """A schedule as knots: the form both `rates_at` and the tf.data stream evaluate.

    Between knots the value is held (`hold`) or linear; before the first and after the last it
    is constant. `values` are rates [P, K] over `tasks`, or τ [P] when `log_sizes` is set
    (rates = softmax(log_sizes / τ), i.e. temperature sampling).
    """

    tasks: tuple[str, ...]
    steps: np.ndarray
    values: np.ndarray
    hold: bool
    log_sizes: np.ndarray | None = None

    def value_at(self, step: int) -> np.ndarray:
        """The knot value at `step` (the rule `ptjf.data.mixing` mirrors in the graph)."""
        last = len(self.steps) - 1
        i = int(np.searchsorted(self.steps, step, side="right")) - 1
        lo, hi = max(i, 0), min(i + 1, last)
        if self.hold or i < 0:
            hi = lo
        width = max(int(self.steps[hi] - self.steps[lo]), 1)
        frac = min(max((step - int(self.steps[lo])) / width, 0.0), 1.0)
        return self.values[lo] + frac * (self.values[hi] - self.values[lo])

    def rates_at(self, step: int) -> np.ndarray:
        value = self.value_at(step)
        if self.log_sizes is None:
            return value / value.sum()
        logits = (self.log_sizes - self.log_sizes.max()) / float(value)
        weights = np.exp(logits)
        return weights / weights.sum()


class RateSchedule(abc.ABC):
    """Rates as a pure function of the stage-local step; see the module docstring."""

    @property
    @abc.abstractmethod
    def steps(self) -> tuple[int, ...]:
        """The steps the schedule names (its points)."""

    @property
    @abc.abstractmethod
    def tasks(self) -> tuple[str, ...] | None:
        """The tasks it gives rates for; None when they come from the stage's mixture."""

    @abc.abstractmethod
    def curve(self) -> Curve:
        """The schedule's knots (a `TemperatureSchedule` needs its sizes: `bind` first)."""

    @abc.abstractmethod
    def bind(
        self, tasks: Sequence[str], sizes: Callable[[], Mapping[str, float]] | None = None
    ) -> RateSchedule:
        """This schedule over exactly `tasks` (the stage's mixture, in its order): a task it
        leaves out gets rate 0; a task it names that is not in `tasks` is an error naming the
        closest. `sizes` gives the mixture's sizes where the schedule needs them."""

    def rates_at(self, step: int) -> dict[str, float]:
        """Normalised rates {task: r} at stage step `step` (>= 0)."""
        if not _is_int(step) or step < 0:
            raise RatesError(f"rates_at(step={step!r}): expected an integer step >= 0.")
        curve = self.curve()
        return {t: float(r) for t, r in zip(curve.tasks, curve.rates_at(int(step)), strict=True)}

    def check_stage(self, num_steps: int, where: str) -> None:
        """Every point inside the stage's steps 0 … num_steps-1."""
        outside = [s for s in self.steps if not 0 <= s < num_steps]
        if outside:
            raise RatesError(
                f"{where}: the rate schedule names step(s) {outside} outside the stage's steps "
                f"[0, {num_steps}) (the stage has {num_steps} steps; its batches are steps 0 … "
                f"{num_steps - 1}). Move the points inside the stage, or lengthen the stage."
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (the stream descriptor saved with input positions)."""
        curve = self.curve()
        out = {
            "kind": type(self).__name__,
            "tasks": list(curve.tasks),
            "steps": [int(s) for s in curve.steps],
            "values": np.round(curve.values, 12).tolist(),
            "hold": curve.hold,
        }
        if curve.log_sizes is not None:
            out["log_sizes"] = np.round(curve.log_sizes, 12).tolist()
        return out

    def active_tasks(self) -> list[str]:
        """The tasks with a positive rate at some step (the others are never read)."""
        curve = self.curve()
        if curve.log_sizes is not None:
            return list(curve.tasks)
        positive = (curve.values > 0).any(axis=0)
        return [t for t, p in zip(curve.tasks, positive, strict=True) if p]


def _unknown(names: Sequence[str], tasks: Sequence[str], where: str) -> None:
    unknown = [n for n in names if n not in tasks]
    if unknown:
        hints = "; ".join(f"{n!r}: closest {closest(n, tasks) or 'none'}" for n in unknown)
        raise RatesError(
            f"{where}: the rate schedule names task(s) {unknown} that are not tasks of the "
            f"stage's mixture ({hints}). Its tasks are {list(tasks)}."
        )


def _rates_curve(
    steps: Sequence[int], rates: Sequence[Mapping[str, float]], tasks: Sequence[str], hold: bool
) -> Curve:
    values = np.array([[r.get(t, 0.0) for t in tasks] for r in rates], dtype=np.float64)
    return Curve(tuple(tasks), np.asarray(steps, dtype=np.int64), values, hold)


@gin.configurable("PiecewiseRates")
@dataclasses.dataclass(frozen=True)
class PiecewiseRates(RateSchedule):
    """Piecewise-constant rates: `points` = [(start_step, {task: weight}), …], first at 0.

    Weights are normalised per point; every point names the same tasks. In gin:
    `PiecewiseRates.points = [(0, {'high': 1.0, 'low': 0.0}), (500, {'high': 0.5, 'low': 0.5})]`.
    """

    points: Sequence[tuple[int, Mapping[str, float]]] = ()
    _tasks: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = "PiecewiseRates"
        points = list(self.points)
        if not points:
            raise RatesError(
                f"{where}.points is empty; give (start_step, rates) pairs, the first at step 0, "
                "e.g. [(0, {'high': 1.0, 'low': 0.0}), (500, {'high': 0.5, 'low': 0.5})]."
            )
        for p in points:
            if not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2:
                raise RatesError(f"{where}: point {p!r} is not a (start_step, rates) pair.")
        steps = _check_steps([p[0] for p in points], where)
        if steps[0] != 0:
            raise RatesError(
                f"{where}: the first point starts at step {steps[0]}, not 0; the rates before "
                "it would be undefined. Start the first point at step 0."
            )
        rates = [
            _check_rates(p[1], f"{where} point at step {s}")
            for s, p in zip(steps, points, strict=True)
        ]
        _same_tasks(list(zip(steps, rates, strict=True)), where)
        object.__setattr__(self, "points", tuple(zip(steps, rates, strict=True)))

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(s for s, _ in self.points)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks or tuple(self.points[0][1])

    def curve(self) -> Curve:
        return _rates_curve(self.steps, [r for _, r in self.points], self.tasks, hold=True)

    def bind(self, tasks, sizes=None) -> PiecewiseRates:
        _unknown(list(self.points[0][1]), list(tasks), "PiecewiseRates")
        return dataclasses.replace(self, _tasks=tuple(tasks))


@gin.configurable("LinearRates")
@dataclasses.dataclass(frozen=True)
class LinearRates(RateSchedule):
    """Rates moving linearly from `start_rates` (at `start_step`) to `end_rates` (at `end_step`),
    constant outside [start_step, end_step]; both normalised, naming the same tasks."""

    start_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    end_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    start_step: int = 0
    end_step: int = 0
    _tasks: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = "LinearRates"
        start, end = _check_steps([self.start_step, self.end_step], where)
        a = _check_rates(self.start_rates, f"{where}.start_rates")
        b = _check_rates(self.end_rates, f"{where}.end_rates")
        _same_tasks([(start, a), (end, b)], where)
        object.__setattr__(self, "start_rates", a)
        object.__setattr__(self, "end_rates", b)
        object.__setattr__(self, "start_step", start)
        object.__setattr__(self, "end_step", end)

    @property
    def steps(self) -> tuple[int, ...]:
        return (self.start_step, self.end_step)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks or tuple(self.start_rates)

    def curve(self) -> Curve:
        return _rates_curve(self.steps, [self.start_rates, self.end_rates], self.tasks, hold=False)

    def bind(self, tasks, sizes=None) -> LinearRates:
        _unknown(list(self.start_rates), list(tasks), "LinearRates")
        return dataclasses.replace(self, _tasks=tuple(tasks))


@gin.configurable("TemperatureSchedule")
@dataclasses.dataclass(frozen=True)
class TemperatureSchedule(RateSchedule):
    """Temperature sampling with τ(step) linear between `points` [(step, τ), …] and constant
    outside them (e.g. a cooldown [(0, 5.0), (1000, 1.43)]). `sizes` ({task: size}) default to
    the stage's mixture's sizes when the stage binds the schedule."""

    points: Sequence[tuple[int, float]] = ()
    sizes: Mapping[str, float] | None = None
    _tasks: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = "TemperatureSchedule"
        points = list(self.points)
        if not points:
            raise RatesError(
                f"{where}.points is empty; give (step, τ) pairs, e.g. [(0, 5.0), (1000, 1.43)]."
            )
        for p in points:
            if not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2:
                raise RatesError(f"{where}: point {p!r} is not a (step, τ) pair.")
        steps = _check_steps([p[0] for p in points], where)
        taus = [
            _check_tau(p[1], f"{where} point at step {s}")
            for s, p in zip(steps, points, strict=True)
        ]
        object.__setattr__(self, "points", tuple(zip(steps, taus, strict=True)))
        if self.sizes is not None:
            sampling.temperature_rates(self.sizes, 1.0)  # sizes finite and > 0
            object.__setattr__(self, "sizes", {t: float(v) for t, v in self.sizes.items()})

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(s for s, _ in self.points)

    @property
    def tasks(self) -> tuple[str, ...] | None:
        if self._tasks is not None:
            return self._tasks
        return None if self.sizes is None else tuple(self.sizes)

    def curve(self) -> Curve:
        if self.sizes is None:
            raise RatesError(
                "TemperatureSchedule has no sizes: give TemperatureSchedule.sizes, or use it as "
                "a Stage.rate_schedule, which takes the sizes of the stage's mixture."
            )
        tasks = self.tasks
        # Tasks without a size are left out (rate 0): a size of 0 has log −inf, weight 0.
        with np.errstate(divide="ignore"):
            log_sizes = np.log(np.array([self.sizes.get(t, 0.0) for t in tasks], np.float64))
        return Curve(
            tuple(tasks),
            np.asarray(self.steps, dtype=np.int64),
            np.asarray([tau for _, tau in self.points], dtype=np.float64),
            hold=False,
            log_sizes=log_sizes,
        )

    def active_tasks(self) -> list[str]:
        return [t for t in self.curve().tasks if t in self.sizes]

    def bind(self, tasks, sizes=None) -> TemperatureSchedule:
        if self.sizes is not None:
            _unknown(list(self.sizes), list(tasks), "TemperatureSchedule.sizes")
            return dataclasses.replace(self, _tasks=tuple(tasks))
        if sizes is None:
            raise RatesError(
                "TemperatureSchedule has no sizes and none were given for the stage's tasks; "
                "give TemperatureSchedule.sizes."
            )
        given = dict(sizes())
        return dataclasses.replace(
            self, sizes={t: float(given[t]) for t in tasks}, _tasks=tuple(tasks)
        ).checked()

    def checked(self) -> TemperatureSchedule:
        sampling.temperature_rates(self.sizes, 1.0)
        return self

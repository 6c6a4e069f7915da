"""Mixing rates: the arithmetic behind every baseline's data mixture.

All the paper's single-stage baselines and the fine-tuning stage of PTJF sample task i with a
rate r_i (r_i ≥ 0, Σ r_i = 1). This module turns what a user knows (hand-set weights, dataset
sizes and a temperature τ, a UniMax budget) into those rates, and back into the epochs each task
would see. Everything is a pure function of its arguments (numpy only), so `ptjf.tasks` can build
SeqIO mixtures from it and `ptjf rates` can print it without touching a device.

Every bad value raises `RatesError` where it enters, naming the task and the value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ptjf.errors import RatesError, UnknownNameError

SIZE_UNITS: tuple[str, ...] = ("examples", "characters", "tokens")
METHODS: tuple[str, ...] = ("static", "temperature", "unimax", "proportional", "uniform")

# A budget within this relative distance of Σ max_epochs × size is float noise from the caller's
# own arithmetic (e.g. summing caps in another order), not a request to raise the cap.
_BUDGET_RTOL = 1e-12
# simplex_grid refuses to enumerate more points than this: a sweep that large is a typo.
_MAX_GRID_POINTS = 1_000_000
# Grid coordinates are rounded so that 0.1 is exactly 0.1 and not 0.1000000000000000055…
_GRID_DIGITS = 10


# ----------------------------------------------------------------------------------------------
# validation


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_unit(unit: str) -> None:
    if unit not in SIZE_UNITS:
        raise RatesError(
            f"Unknown size unit {unit!r}; expected one of {', '.join(SIZE_UNITS)} "
            "(what the sizes count). Pass unit='examples', 'characters' or 'tokens'."
        )


def _check_names(values: Mapping[str, object], what: str) -> None:
    if not isinstance(values, Mapping):
        raise RatesError(
            f"{what.capitalize()} must be a mapping from task name to number, got "
            f"{type(values).__name__} {values!r}."
        )
    if not values:
        raise RatesError(f"No {what} given: expected at least one task, e.g. {{'en': 1.0}}.")
    for name in values:
        if not isinstance(name, str) or not name:
            raise RatesError(f"Task names in the {what} must be non-empty strings, got {name!r}.")


def _check_sizes(sizes: Mapping[str, float], unit: str = "examples") -> np.ndarray:
    """Validated sizes as float64, in the mapping's order. Sizes must be finite and > 0."""
    _check_names(sizes, f"sizes (in {unit})")
    out = []
    for name, size in sizes.items():
        if not _is_real(size):
            raise RatesError(
                f"Size of task {name!r} is {size!r} ({type(size).__name__}); expected a positive "
                f"number of {unit}."
            )
        size = float(size)
        if not math.isfinite(size) or size <= 0:
            raise RatesError(
                f"Size of task {name!r} is {size!r} {unit}; sizes must be finite and > 0. "
                "Drop tasks that have no data, or give their real size."
            )
        out.append(size)
    return np.asarray(out, dtype=np.float64)


def _check_positive(value: object, what: str, allow_inf: bool = False) -> float:
    if not _is_real(value):
        raise RatesError(f"{what} must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        expected = "> 0 (math.inf allowed)" if allow_inf else "finite and > 0"
        raise RatesError(f"{what} is {value!r}; expected {expected}.")
    return value


# ----------------------------------------------------------------------------------------------
# rates


def static_rates(weights: Mapping[str, float]) -> dict[str, float]:
    """Scalarization / static sampling rates (paper eq. 1–2): r_i = w_i / Σ_j w_j.

    Sampling task i with probability r_i makes the expected loss Σ_i r_i L_i, i.e. the
    scalarized objective. A zero weight switches a task off; the weights must not all be zero.
    """
    _check_names(weights, "weights")
    values = []
    for name, weight in weights.items():
        if not _is_real(weight):
            raise RatesError(
                f"Weight of task {name!r} is {weight!r} ({type(weight).__name__}); expected a "
                "number ≥ 0."
            )
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise RatesError(
                f"Weight of task {name!r} is {weight!r}; weights must be finite and ≥ 0 "
                "(0 switches a task off)."
            )
        values.append(weight)
    top = max(values)
    if top == 0:
        raise RatesError(
            f"All weights are zero ({dict(weights)!r}), which gives rates that sum to zero; "
            "give at least one task a positive weight."
        )
    # Divide by the largest first so that huge weights cannot overflow the sum.
    scaled = [w / top for w in values]
    total = math.fsum(scaled)
    return {name: w / total for name, w in zip(weights, scaled, strict=True)}


def temperature_rates(
    sizes: Mapping[str, float], tau: float, unit: str = "examples"
) -> dict[str, float]:
    """Temperature sampling (paper eq. 3–4): P_i = D_i / Σ_j D_j, Q_i = P_i^{1/τ} / Σ_j P_j^{1/τ}.

    τ = 1 gives proportional rates, τ → ∞ (`math.inf` allowed) uniform ones, τ > 1 up-samples
    small tasks (mT5 and the paper's mC4 runs use τ = 3.33). `unit` says what the sizes count.

    Since Q_i ∝ D_i^{1/τ}, the rates are a softmax of log(D_i)/τ; computing them that way keeps
    sizes spanning many orders of magnitude, tiny τ and huge τ free of overflow and underflow.
    """
    _check_unit(unit)
    tau = _check_positive(tau, "Temperature tau", allow_inf=True)
    log_sizes = np.log(_check_sizes(sizes, unit))
    # Subtracting the max before dividing keeps every logit ≤ 0 even when 1/τ is astronomically
    # large, so the result degrades to "all mass on the largest tasks" instead of NaN.
    with np.errstate(over="ignore", divide="ignore"):
        logits = (log_sizes - log_sizes.max()) / tau
    weights = np.exp(logits)
    rates = weights / weights.sum()
    return {name: float(r) for name, r in zip(sizes, rates, strict=True)}


def proportional_rates(sizes: Mapping[str, float], unit: str = "examples") -> dict[str, float]:
    """Proportional sampling r_i = D_i / Σ_j D_j (temperature sampling with τ = 1)."""
    return temperature_rates(sizes, 1.0, unit)


def uniform_rates(names: Iterable[str]) -> dict[str, float]:
    """Uniform sampling r_i = 1/K over the K named tasks (temperature sampling with τ = ∞)."""
    names = list(names)
    if not names:
        raise RatesError("No tasks given for uniform rates: expected at least one task name.")
    for name in names:
        if not isinstance(name, str) or not name:
            raise RatesError(f"Task names must be non-empty strings, got {name!r}.")
    if len(set(names)) != len(names):
        raise RatesError(f"Task names for uniform rates repeat: {names!r}; give each once.")
    return {name: 1.0 / len(names) for name in names}


@dataclass(frozen=True)
class UniMaxAllocation:
    """Result of `unimax_rates`: per-task rates, budget allocation (in the sizes' unit), epochs.

    `rates` is the plain mapping a mixture needs; `allocation[t] / sizes[t] == epochs[t]` and no
    entry of `epochs` exceeds `max_epochs`.
    """

    rates: dict[str, float]
    allocation: dict[str, float]
    epochs: dict[str, float]
    budget: float
    max_epochs: float

    @property
    def capped(self) -> tuple[str, ...]:
        """Tasks whose allocation hit the epoch cap (their leftover went to larger tasks)."""
        return tuple(
            name for name, ep in self.epochs.items() if ep >= self.max_epochs * (1 - 1e-12)
        )


def unimax_rates(
    sizes: Mapping[str, float], budget: float, max_epochs: float, unit: str = "examples"
) -> UniMaxAllocation:
    """UniMax (Chung et al. 2023, "UniMax: Fairer and more effective language sampling", Alg. 1).

    Visit tasks from smallest to largest (ties broken by name). With B' the budget not yet
    assigned and m the number of tasks not yet visited, task i gets
        a_i = min(B' / m, max_epochs × D_i),
    so a task that would repeat its data more than `max_epochs` times is capped and what it
    leaves flows to the larger tasks. Rates are r_i = a_i / budget; epochs are a_i / D_i.

    `budget` is the total amount of training data (same unit as the sizes). A budget above
    Σ_i max_epochs × D_i cannot be met without repeating some task more than allowed, so it is an
    error rather than a silent raise of the cap.
    """
    _check_unit(unit)
    budget = _check_positive(budget, f"UniMax budget (in {unit})")
    max_epochs = _check_positive(max_epochs, "UniMax max_epochs")
    values = _check_sizes(sizes, unit)
    names = list(sizes)
    caps = {name: max_epochs * float(d) for name, d in zip(names, values, strict=True)}
    total_cap = math.fsum(caps.values())
    if budget > total_cap * (1 + _BUDGET_RTOL):
        raise RatesError(
            f"UniMax budget {budget!r} {unit} exceeds the most the tasks can supply, "
            f"max_epochs × Σ sizes = {max_epochs!r} × {math.fsum(values.tolist())!r} = "
            f"{total_cap!r} {unit}. Lower the budget to at most {total_cap!r} or raise "
            "max_epochs."
        )
    order = sorted(zip(values.tolist(), names, strict=True))
    allocation: dict[str, float] = {}
    remaining = budget
    for index, (_, name) in enumerate(order):
        left = len(order) - index
        share = remaining / left
        if share < caps[name]:
            # Once a task is below its cap, every larger task is too and gets the same share
            # (shares never decrease); assigning it at once keeps ties exactly equal in floats.
            # The max() guards the capped→uncapped hand-over against a one-ulp dip.
            previous = allocation[order[index - 1][1]] if index else 0.0
            share = max(share, min(previous, caps[name]))
            for _, rest in order[index:]:
                allocation[rest] = share
            break
        allocation[name] = caps[name]
        remaining -= caps[name]
    allocation = {name: allocation[name] for name in names}
    return UniMaxAllocation(
        rates={name: a / budget for name, a in allocation.items()},
        allocation=allocation,
        epochs={name: allocation[name] / float(d) for name, d in zip(names, values, strict=True)},
        budget=budget,
        max_epochs=max_epochs,
    )


def epochs_seen(
    rates: Mapping[str, float], sizes: Mapping[str, float], total_examples: float
) -> dict[str, float]:
    """Epochs task i sees when `total_examples` are drawn at rates r: e_i = r_i × total / D_i.

    `total_examples` and the sizes must count the same thing (examples, characters or tokens).
    This is what `ptjf rates` shows: a low-resource task at several epochs is where the paper's
    static-sampling runs start to overfit.
    """
    _check_names(rates, "rates")
    values = _check_sizes(sizes)
    total = float(total_examples) if _is_real(total_examples) else total_examples
    if not _is_real(total) or not math.isfinite(total) or total < 0:
        raise RatesError(f"total_examples is {total_examples!r}; expected a finite number ≥ 0.")
    missing = [name for name in rates if name not in sizes]
    extra = [name for name in sizes if name not in rates]
    if missing or extra:
        raise RatesError(
            f"Rates and sizes must name the same tasks; no size for {missing!r}, no rate for "
            f"{extra!r}. Give a size for every task that has a rate."
        )
    size_of = dict(zip(sizes, values.tolist(), strict=True))
    out = {}
    for name, rate in rates.items():
        if not _is_real(rate) or not math.isfinite(float(rate)) or rate < 0:
            raise RatesError(f"Rate of task {name!r} is {rate!r}; expected a finite number ≥ 0.")
        out[name] = float(rate) * total / size_of[name]
    return out


# ----------------------------------------------------------------------------------------------
# grids


def scalarization_grid(n: int = 9) -> list[tuple[float, float]]:
    """The paper's two-task sweep: pairs (w_high, w_low) = (i/(n+1), 1 - i/(n+1)), i = 1..n.

    Ordered by increasing high-resource weight, as the paper sweeps the En→Fr sampling rate over
    {i/10}_{i=1..9}: n = 9 gives (0.1, 0.9), (0.2, 0.8), …, (0.9, 0.1). Values are rounded to 10
    decimals so that 0.1 is the float 0.1 and w_high + w_low == 1.
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise RatesError(f"scalarization_grid needs an integer n ≥ 1 (grid points), got {n!r}.")
    return [
        (round(i / (n + 1), _GRID_DIGITS), round((n + 1 - i) / (n + 1), _GRID_DIGITS))
        for i in range(1, n + 1)
    ]


def simplex_grid(
    k: int, resolution: int, include_boundary: bool = False
) -> list[tuple[float, ...]]:
    """All K-task weight vectors with entries in {0, 1/R, …, 1} summing to 1 (R = resolution).

    Entries are strictly positive unless `include_boundary`, so every task is trained. Order is
    lexicographic, ascending in the first task's weight, then the second's, …; hence
    simplex_grid(2, 10) == scalarization_grid(9) with the high-resource task first.
    """
    for what, value in (("k", k), ("resolution", resolution)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise RatesError(f"simplex_grid needs an integer {what} ≥ 1, got {value!r}.")
    k, resolution = int(k), int(resolution)
    low = 0 if include_boundary else 1
    if low * k > resolution:
        raise RatesError(
            f"No grid point: {k} tasks each need a weight ≥ 1/{resolution}, which sums to more "
            f"than 1. Use resolution ≥ {k} or include_boundary=True."
        )
    # Stars and bars: units left after the floor, spread over k tasks.
    count = math.comb(resolution - low * k + k - 1, k - 1)
    if count > _MAX_GRID_POINTS:
        raise RatesError(
            f"simplex_grid(k={k}, resolution={resolution}) has {count} points, more than "
            f"{_MAX_GRID_POINTS}; lower the resolution."
        )

    points: list[tuple[float, ...]] = []

    def extend(prefix: tuple[int, ...], left: int) -> None:
        if len(prefix) == k - 1:
            points.append(tuple(round(c / resolution, _GRID_DIGITS) for c in (*prefix, left)))
            return
        tasks_after = k - len(prefix) - 1
        for c in range(low, left - low * tasks_after + 1):
            extend((*prefix, c), left - c)

    extend((), resolution)
    return points


# ----------------------------------------------------------------------------------------------
# parsing and dispatch


def _parse_pairs(text: str, what: str, check: Callable[[dict[str, float]], object]) -> dict:
    if not isinstance(text, str) or not text.strip():
        raise RatesError(
            f"No {what} given ({text!r}); expected name=value pairs separated by commas, "
            "e.g. 'en=13396,hi=75'."
        )
    out: dict[str, float] = {}
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not item or not sep or not name or not value:
            raise RatesError(
                f"Bad {what} item {item!r} (item {position} of {text!r}); expected name=value, "
                "e.g. 'en=13396'."
            )
        try:
            number = float(value)
        except ValueError:
            raise RatesError(
                f"Bad {what} item {item!r}: {value!r} is not a number; expected name=value, "
                "e.g. 'en=13396'."
            ) from None
        if name in out:
            raise RatesError(f"Task {name!r} appears twice in the {what} {text!r}; give it once.")
        out[name] = number
    check(out)
    return out


def parse_sizes(text: str) -> dict[str, float]:
    """Parse the CLI's `--sizes en=13396,hi=75,gu=3.6` into {task: size}; sizes must be > 0."""
    return _parse_pairs(text, "sizes", _check_sizes)


def parse_weights(text: str) -> dict[str, float]:
    """Parse the CLI's `--weights en=0.9,ro=0.1` into {task: weight}; weights must be ≥ 0."""
    return _parse_pairs(text, "weights", static_rates)


def rates_for(
    method: str,
    *,
    sizes: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    tau: float | None = None,
    budget: float | None = None,
    max_epochs: float | None = None,
    unit: str = "examples",
) -> dict[str, float]:
    """Rates for a method name, as gin configs and `ptjf rates` name them.

    static: weights (sizes optional, must name the same tasks); temperature: sizes, tau;
    proportional: sizes (τ = 1); uniform: sizes or weights (only their names are used);
    unimax: sizes, budget, max_epochs. An argument the method does not use is an error, so that
    `--method proportional --tau 3.33` is not silently ignored. `unit` says what sizes count.
    """
    needs = {
        "static": ("weights",),
        "temperature": ("sizes", "tau"),
        "proportional": ("sizes",),
        "uniform": (),
        "unimax": ("sizes", "budget", "max_epochs"),
    }
    if method not in needs:
        raise UnknownNameError(
            "sampling method", method, METHODS, hint="Use one of the names listed."
        )
    given = {
        "sizes": sizes,
        "weights": weights,
        "tau": tau,
        "budget": budget,
        "max_epochs": max_epochs,
    }
    for arg in needs[method]:
        if given[arg] is None:
            raise RatesError(f"Sampling method {method!r} needs {arg}; pass {arg}=… .")
    allowed = set(needs[method]) | {"static": {"sizes"}, "uniform": {"sizes", "weights"}}.get(
        method, set()
    )
    for arg, value in given.items():
        if value is not None and arg not in allowed:
            users = [m for m, args in needs.items() if arg in args]
            raise RatesError(
                f"Sampling method {method!r} does not use {arg}={value!r}; drop it, or choose a "
                f"method that does ({', '.join(users) or 'none'})."
            )
    if method == "static":
        rates = static_rates(weights)
        if sizes is not None:
            _check_sizes(sizes, unit)
        if sizes is not None and set(sizes) != set(weights):
            raise RatesError(
                f"Weights name tasks {sorted(weights)!r} but sizes name {sorted(sizes)!r}; "
                "give both for the same tasks."
            )
        return rates
    if method == "temperature":
        return temperature_rates(sizes, tau, unit)
    if method == "proportional":
        return proportional_rates(sizes, unit)
    if method == "unimax":
        return unimax_rates(sizes, budget, max_epochs, unit).rates
    source = sizes if sizes is not None else weights
    if source is None:
        raise RatesError("Sampling method 'uniform' needs the task names; pass sizes (or weights).")
    if sizes is not None:
        _check_sizes(sizes, unit)
    else:
        static_rates(weights)
    return uniform_rates(list(source))

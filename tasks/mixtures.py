"""Mixtures whose rates come from `ptjf.sampling`: static weights, temperature, UniMax.

A mixture names its tasks and how to rate them — `static` weights (scalarization),
`proportional`, `uniform`, `temperature` (τ) or `unimax` over the tasks' sizes, which are
counted from the data on first use unless given. The spec is kept beside SeqIO's registry so
`ptjf rates`, sweeps and gin (`@mixture_rates()`) can recompute rates by another method.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import gin
import seqio

from ptjf import sampling
from ptjf.errors import ConfigError, RatesError, UnknownNameError

from .registration import _LOCK, _remove_existing, task_size


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """How a mixture's rates are made (kept beside SeqIO's registry for `ptjf rates`)."""

    name: str
    tasks: tuple[str, ...]
    method: str
    weights: Mapping[str, float] | None = None
    tau: float | None = None
    budget: float | None = None
    max_epochs: float | None = None
    sizes: Mapping[str, float] | None = None
    size_unit: str = "examples"

    def resolved_sizes(self) -> dict[str, float]:
        if self.sizes is not None:
            return {t: float(self.sizes[t]) for t in self.tasks}
        return {t: float(task_size(t)) for t in self.tasks}

    def rates(self) -> dict[str, float]:
        needs_sizes = self.method not in ("static", "uniform")
        return sampling.rates_for(
            self.method,
            sizes=self.resolved_sizes() if needs_sizes else dict.fromkeys(self.tasks, 1.0),
            weights=self.weights,
            tau=self.tau,
            budget=self.budget,
            max_epochs=self.max_epochs,
        )


_MIXTURES: dict[str, MixtureSpec] = {}


def mixture_spec(name: str) -> MixtureSpec:
    if name not in _MIXTURES:
        raise UnknownNameError("ptjf mixture", name, _MIXTURES)
    return _MIXTURES[name]


def register_mixture(
    name: str,
    tasks: Sequence[str],
    *,
    method: str = "static",
    weights: Mapping[str, float] | None = None,
    tau: float | None = None,
    budget: float | None = None,
    max_epochs: float | None = None,
    sizes: Mapping[str, float] | None = None,
    size_unit: str = "examples",
    overwrite: bool = False,
) -> seqio.Mixture:
    """Registers a SeqIO mixture whose rates come from `ptjf.sampling`.

    `method`: "static" (normalised `weights`, scalarization), "proportional", "uniform",
    "temperature" (`tau`) or "unimax" (`budget`, `max_epochs`). Size-based rates use `sizes`
    when given (in `size_unit`), else the tasks' training-split sizes, counted on first use.
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ConfigError(f"Mixture {name!r} names no tasks; give at least one task name.")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"Mixture {name!r} names a task twice: {list(tasks)}.")
    for t in tasks:
        if t not in seqio.TaskRegistry.names():
            raise UnknownNameError(
                "task", t, seqio.TaskRegistry.names(), hint=f"(in mixture {name!r})"
            )
    if weights is not None and set(weights) != set(tasks):
        raise RatesError(
            f"Mixture {name!r}: weights are given for {sorted(weights)} but the tasks are "
            f"{sorted(tasks)}; give one weight per task."
        )
    if method == "static" and weights is None:
        raise RatesError(f"Mixture {name!r}: method 'static' needs weights (one per task).")
    vocabs = {t: seqio.get_mixture_or_task(t).output_features["targets"].vocabulary for t in tasks}
    first = vocabs[tasks[0]]
    different = [t for t in tasks[1:] if vocabs[t] != first]
    if different:
        raise ConfigError(
            f"Mixture {name!r}: tasks {different} use a different vocabulary from {tasks[0]!r}; "
            "tasks mixed together must share one vocabulary — register them under the same "
            "problem= (or pass the same vocabulary=)."
        )
    spec = MixtureSpec(name, tasks, method, weights, tau, budget, max_epochs, sizes, size_unit)
    # Check what can be checked before any data is read (weights, τ, budget, method name).
    if method in ("static", "uniform"):
        spec.rates()
    elif method == "unimax":
        for arg in ("budget", "max_epochs"):
            value = getattr(spec, arg)
            if value is None or not value > 0:
                raise RatesError(f"Mixture {name!r}: unimax needs {arg} > 0, got {value!r}.")
    else:
        sampling.rates_for(method, sizes=dict.fromkeys(tasks, 1.0), tau=tau)
    with _LOCK:
        _remove_existing(name, overwrite)
        rates = functools.cache(spec.rates)
        mixture = seqio.MixtureRegistry.add(name, [(t, _rate_of(rates, t)) for t in tasks])
        _MIXTURES[name] = spec
    return mixture


def _rate_of(rates: Callable[[], dict[str, float]], task: str) -> Callable[[seqio.Task], float]:
    return lambda _task: rates()[task]


def mixture_rates(name: str) -> dict[str, float]:
    """The rates of a registered ptjf mixture, in task order."""
    return mixture_spec(name).rates()


def derive_mixture(base: str, weights: Mapping[str, float], name: str | None = None) -> str:
    """Registers (once) a static-rate variant of mixture `base`, e.g. one point of a rate grid.

    Returns its name, `<base>@<task>=<w>,…` unless given; used by stage plans and sweeps.
    """
    spec = mixture_spec(base)
    extra = set(weights) - set(spec.tasks)
    if extra:
        raise RatesError(
            f"Weights name {sorted(extra)}, which are not tasks of mixture {base!r} "
            f"({list(spec.tasks)})."
        )
    rates = sampling.static_rates({t: float(weights.get(t, 0.0)) for t in spec.tasks})
    name = name or base + "@" + ",".join(f"{t}={rates[t]:.6g}" for t in spec.tasks)
    with _LOCK:
        if name in _MIXTURES and _MIXTURES[name].weights == rates:
            return name
        register_mixture(name, spec.tasks, method="static", weights=rates, overwrite=True)
    return name


@gin.configurable("mixture_rates")
def rates_by(
    mixture: str,
    method: str = "temperature",
    *,
    tau: float | None = None,
    budget: float | None = None,
    max_epochs: float | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Rates of a registered mixture's tasks by another method (gin: `@mixture_rates()`).

    Lets a run file turn any mixture into, say, its τ = 3.33 temperature variant for a stage's
    `rates` without registering a new mixture; sizes are the tasks' training-split sizes (or
    the mixture's given sizes).
    """
    spec = mixture_spec(mixture)
    needs_sizes = method not in ("static", "uniform")
    return sampling.rates_for(
        method,
        sizes=spec.resolved_sizes() if needs_sizes else None,
        weights=weights if method != "uniform" else (weights or dict.fromkeys(spec.tasks, 1.0)),
        tau=tau,
        budget=budget,
        max_epochs=max_epochs,
        unit=spec.size_unit,
    )

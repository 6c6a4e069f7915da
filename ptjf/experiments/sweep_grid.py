"""The grid an experiment sweeps (gin `Sweep`), refused before anything runs if it is bad.

Its own module so that both the DAG expansion (`sweep_dag`) and `sweep` can import it: every
check of a grid lives here, on the dataclass, so a bad `Sweep.*` binding fails when gin builds
it, with the fix in the message. The methods and what each sweeps: see `ptjf.experiments.sweep`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from ptjf.errors import ConfigError, UnknownNameError, closest

METHODS = (
    "ptjf",
    "scalarization",
    "restart",
    "temperature",
    "unimax",
    "transfer",
    "rate_schedule",
    "temperature_cooldown",
    "ptjf_multi",
)
NEEDS_RATES = ("ptjf", "scalarization", "restart", "rate_schedule", "ptjf_multi")
NEEDS_PRETRAIN = ("ptjf", "restart", "transfer", "ptjf_multi")
# Methods whose rates change linearly over the stage's N steps (a schedule needs two steps).
SCHEDULED = ("rate_schedule", "temperature_cooldown")


# Registered as ptjf.experiments.sweep.Sweep: experiment gin files `import ptjf.experiments.sweep`.
@gin.configurable("Sweep", module="ptjf.experiments.sweep")
@dataclasses.dataclass(frozen=True)
class Sweep:
    """An experiment's grid (gin name `Sweep`), bound in the experiment's gin file.

    high_task / low_task: the two tasks of `mixture` (the paper's two-task NMT study).
    rates: the grid of the low-resource task's sampling rate in the joint stage (the high-resource
        task gets 1 - r); a mapping {task: weight} gives a whole point of a K-task grid instead.
    learning_rates, seeds: crossed with everything (each stage of a point uses the rate).
    total_steps: N, every method's total number of steps. pretrain_steps: the N1 grid (PTJF,
        transfer, restart); each fine-tunes for N - N1.
    taus: temperature sampling's τ grid. unimax_max_epochs: UniMax's epoch caps.
    cooldown_taus: temperature_cooldown's (τ at step 0, τ at step N − 1), each > 0.
    pretrain_rates: ptjf_multi's pre-training, {high-resource task: weight} over tasks of
        `mixture` (including high_task, not low_task), e.g. {"en_fr": 0.5, "en_es": 0.5}.
    unimax_budget: UniMax's budget in the mixture's own size unit (e.g. characters for mC4);
        None gives N · batch_size examples, for mixtures sized in examples.
    bindings: gin bindings added to every point's command (e.g. "EVAL_BLEU = True").
    """

    name: str
    mixture: str
    high_task: str
    low_task: str
    total_steps: int
    methods: Sequence[str] = ("ptjf", "scalarization", "restart")
    rates: Sequence[float | Mapping[str, float]] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    learning_rates: Sequence[float] = (5e-4,)
    seeds: Sequence[int] = (0,)
    pretrain_steps: Sequence[int] = ()
    taus: Sequence[float] = (3.33,)
    unimax_max_epochs: Sequence[float] = (1.0,)
    unimax_budget: float | None = None
    cooldown_taus: Sequence[float] = (5.0, 1.43)
    pretrain_rates: Mapping[str, float] | None = None
    batch_size: int | None = None
    sweep_dir: str | None = None
    bindings: Sequence[str] = ()

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise UnknownNameError(
                    "sweep method",
                    method,
                    METHODS,
                    hint="Set Sweep.methods to methods ptjf runs.",
                )
        if not self.methods:
            raise ConfigError("Sweep.methods is empty: name at least one method, e.g. ['ptjf'].")
        if self.high_task == self.low_task:
            raise ConfigError(
                f"Sweep.high_task and Sweep.low_task are both {self.high_task!r}; name two tasks."
            )
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int):
            raise ConfigError(f"Sweep.total_steps={self.total_steps!r} must be an integer.")
        if self.total_steps < 1:
            raise ConfigError(f"Sweep.total_steps={self.total_steps} must be >= 1.")
        wanted = set(self.methods)

        def need(field: str, values: Sequence[Any], why: Sequence[str]) -> None:
            users = sorted(wanted & set(why))
            if users and not list(values):
                raise ConfigError(
                    f"Sweep.{field} is empty, but methods {users} need it: the grid has no "
                    f"points. Give at least one value, e.g. Sweep.{field} = [...]."
                )

        need("rates", self.rates, NEEDS_RATES)
        need("pretrain_steps", self.pretrain_steps, NEEDS_PRETRAIN)
        need("taus", self.taus, ("temperature",))
        need("unimax_max_epochs", self.unimax_max_epochs, ("unimax",))
        need("learning_rates", self.learning_rates, METHODS)
        need("seeds", self.seeds, METHODS)
        for n1 in self.pretrain_steps:
            if isinstance(n1, bool) or not isinstance(n1, int) or not 1 <= n1 < self.total_steps:
                raise ConfigError(
                    f"Sweep.pretrain_steps has {n1!r}: each N1 must be an integer with "
                    f"1 <= N1 < total_steps={self.total_steps}, leaving N - N1 fine-tuning steps."
                )
        for r in self.rates:
            weights = self.rate_weights(r)
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ConfigError(
                    f"Sweep.rates has {r!r}: rates must be >= 0 and not all 0 (a low-resource "
                    "rate r in (0, 1), or a mapping of task weights)."
                )
        if "unimax" in wanted and self.unimax_budget is None and not self.batch_size:
            raise ConfigError(
                "UniMax needs a budget: bind Sweep.unimax_budget (in the mixture's size unit) or "
                "Sweep.batch_size = %BATCH_SIZE (a budget of total_steps × batch_size examples)."
            )
        scheduled = sorted(wanted & set(SCHEDULED))
        if scheduled and self.total_steps < 2:
            raise ConfigError(
                f"Sweep.total_steps={self.total_steps}, but methods {scheduled} move their "
                "rates linearly from step 0 to the last step, which needs at least 2 steps. "
                "Give Sweep.total_steps >= 2."
            )
        if "rate_schedule" in wanted:
            for r in self.rates:
                if isinstance(r, Mapping):
                    raise ConfigError(
                        f"Sweep.rates has {dict(r)!r}, which the rate_schedule method cannot "
                        "realise: its rule moves the low-resource rate linearly so that its "
                        "average over the run is the grid's low-resource rate r (the examples "
                        "of static sampling at r), and a mapping of task weights has no single "
                        "low-resource rate. Give rate_schedule a grid of rates r in (0, 1), or "
                        "run the mapping grid in a sweep without rate_schedule."
                    )
        if "temperature_cooldown" in wanted:
            self._check_cooldown()
        self._check_pretrain_rates(wanted)

    def _check_cooldown(self) -> None:
        taus = list(self.cooldown_taus)
        if len(taus) != 2:
            raise ConfigError(
                f"Sweep.cooldown_taus={taus!r} must be two temperatures (τ at the first step, "
                "τ at the last), e.g. Sweep.cooldown_taus = (5.0, 1.43)."
            )
        for tau in taus:
            if (
                isinstance(tau, bool)
                or not isinstance(tau, int | float)
                or not math.isfinite(tau)
                or tau <= 0
            ):
                raise ConfigError(
                    f"Sweep.cooldown_taus={taus!r} has τ={tau!r}: temperature_cooldown needs "
                    "each τ finite and > 0 (τ = 1 samples in proportion to the tasks' sizes, "
                    "larger τ flattens the rates), e.g. Sweep.cooldown_taus = (5.0, 1.43)."
                )

    def _check_pretrain_rates(self, wanted: set[str]) -> None:
        if self.pretrain_rates is None:
            if "ptjf_multi" in wanted:
                raise ConfigError(
                    "Sweep.methods has 'ptjf_multi', which pre-trains on several high-resource "
                    "tasks, but Sweep.pretrain_rates is not set. Bind the pre-training's tasks "
                    "and rates, e.g. Sweep.pretrain_rates = {'bible_translate_en_fr': 0.5, "
                    "'bible_translate_en_es': 0.5} (tasks of Sweep.mixture, Sweep.high_task "
                    "among them)."
                )
            return
        if "ptjf_multi" not in wanted:
            raise ConfigError(
                "Sweep.pretrain_rates is set, but no method in Sweep.methods uses it (only "
                "'ptjf_multi' pre-trains on several tasks). Add 'ptjf_multi' to Sweep.methods, "
                "or remove Sweep.pretrain_rates."
            )
        rates = self.pretrain_rates
        if not isinstance(rates, Mapping) or not rates:
            raise ConfigError(
                f"Sweep.pretrain_rates={rates!r} must be a non-empty mapping from high-resource "
                "task to weight, e.g. {'bible_translate_en_fr': 0.5, 'bible_translate_en_es': "
                "0.5}."
            )
        for task, w in rates.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
                raise ConfigError(
                    f"Sweep.pretrain_rates gives {task!r} the weight {w!r}; expected a number >= 0."
                )
            if w < 0:
                raise ConfigError(
                    f"Sweep.pretrain_rates gives {task!r} a negative weight ({w!r}); weights "
                    "must be >= 0."
                )
        if sum(float(w) for w in rates.values()) <= 0:
            raise ConfigError(
                f"Sweep.pretrain_rates={dict(rates)!r} sums to zero, so the pre-training would "
                "sample no task. Give the high-resource tasks positive weights, e.g. 0.5 each."
            )
        if self.low_task in rates:
            raise ConfigError(
                f"Sweep.pretrain_rates names the low-resource task {self.low_task!r}: PTJF "
                "pre-trains on high-resource tasks only and meets the low-resource task in the "
                f"joint stage. Remove {self.low_task!r} from Sweep.pretrain_rates."
            )
        if self.high_task not in rates:
            raise ConfigError(
                f"Sweep.pretrain_rates={dict(rates)!r} leaves out Sweep.high_task "
                f"{self.high_task!r}; ptjf_multi's pre-training extends the high-resource "
                f"task with others. Add {self.high_task!r} to Sweep.pretrain_rates."
            )
        positive = [t for t, w in rates.items() if w > 0]
        if len(positive) < 2:
            raise ConfigError(
                f"Sweep.pretrain_rates={dict(rates)!r} gives only {positive} a positive weight: "
                "that pre-training is the ptjf method's. Give ptjf_multi two or more "
                "high-resource tasks, or use the method 'ptjf'."
            )
        known = _mixture_tasks(self.mixture)
        unknown = [t for t in rates if t not in known]
        if unknown:
            hints = "; ".join(f"{t!r}: closest {closest(t, known) or 'none'}" for t in unknown)
            raise ConfigError(
                f"Sweep.pretrain_rates names task(s) {unknown} that are not tasks of the "
                f"sweep's mixture {self.mixture!r} ({hints}). Its tasks are {known}; name "
                "tasks of Sweep.mixture (the joint stage mixes them with the low-resource task), "
                "or register a mixture holding them and bind Sweep.mixture to it."
            )

    def pretrain_weights(self) -> dict[str, float]:
        """ptjf_multi's pre-training rates, normalised (tasks with weight 0 left out)."""
        rates = self.pretrain_rates or {}
        total = sum(float(w) for w in rates.values())
        return {str(t): round(float(w) / total, 12) for t, w in rates.items() if w > 0}

    def multi_weights(self, rate: float | Mapping[str, float]) -> dict[str, float]:
        """ptjf_multi's joint rates for a grid value: r → the low task at r, the pre-training's
        tasks sharing 1 − r in their pre-training proportions; a mapping as it is."""
        if isinstance(rate, Mapping):
            return self.rate_weights(rate)
        r = self.rate_weights(rate)[self.low_task]
        out = {t: round((1.0 - r) * w, 12) for t, w in self.pretrain_weights().items()}
        out[self.low_task] = r
        return out

    def schedule_rates(self, rate: float) -> tuple[dict[str, float], dict[str, float]]:
        """rate_schedule's (start, end) rates for the grid's low-resource rate r: the low rate
        runs linearly from max(0, 2r − 1) to min(1, 2r), so its average over the run is r."""
        r = self.rate_weights(rate)[self.low_task]
        start, end = max(0.0, 2 * r - 1), min(1.0, 2 * r)
        return (
            {self.high_task: round(1.0 - start, 12), self.low_task: round(start, 12)},
            {self.high_task: round(1.0 - end, 12), self.low_task: round(end, 12)},
        )

    def rate_weights(self, rate: float | Mapping[str, float]) -> dict[str, float]:
        """A grid value as task weights: r → {high: 1 - r, low: r}; a mapping as it is."""
        if isinstance(rate, Mapping):
            return {str(k): float(v) for k, v in rate.items()}
        r = float(rate)
        if not 0.0 < r < 1.0:
            raise ConfigError(
                f"Sweep.rates has {rate!r}: a low-resource sampling rate must lie in (0, 1) "
                "(0 or 1 would drop a task; use the transfer method for fine-tuning on one task)."
            )
        return {self.high_task: 1.0 - r, self.low_task: r}


def _mixture_tasks(name: str) -> list[str]:
    """The tasks of the registered mixture (or task) `name`, registering ptjf's tasks first."""
    from ptjf import tasks as ptasks

    provider = ptasks.get_task_or_mixture(name)
    if hasattr(provider, "tasks"):
        return [t.name for t in provider.tasks]
    return [provider.name]

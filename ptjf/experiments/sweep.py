"""Sweeps: an experiment's grid expanded into a DAG of stage runs that share their stage 1.

An experiment is methods × sampling rates × learning rates × seeds × pre-training lengths (the
paper traces each method's trade-off front over a grid of rates). Expanded naively, every PTJF
point would pre-train on the high-resource task again; but all PTJF (and transfer) points with
the same pre-training — learning rate, seed, length — start from the *same* stage-1 checkpoint.
So the sweep runs each distinct pre-training once, as a `shared/` run stopped after its first
stage (`train.last_stage`), and forks every point from its checkpoint with the stage switch
(`ptjf switch --copy_metrics`, which also copies the parent's eval history so each point's
metrics.jsonl is a full history). The restart baseline forks the same way from the
scalarization point with the same rate, at step N1 (paper §4.1: "resets the optimizer state
and learning rate schedule in the middle of training for the static sampling baseline"), which
therefore keeps that checkpoint (`CheckpointConfig.keep_steps`).

Methods (`Sweep.methods`), every one `Sweep.total_steps` = N steps in all:

* `scalarization` (static rates, one point per grid rate), `temperature` (τ per `Sweep.taus`),
  `unimax` (per `Sweep.unimax_max_epochs`): one stage of N steps.
* `ptjf`, `transfer`, `restart`: N1 steps (`Sweep.pretrain_steps`), then N − N1 after a stage
  switch; `ptjf` and `transfer` fork from a shared pre-training on `high_task`.
* `ptjf_multi`: PTJF whose shared pre-training trains on several high-resource tasks at
  `Sweep.pretrain_rates` (run file runs/ptjf_multi.gin); its joint stage mixes those tasks and
  the low one, the low-resource task at the grid rate r and the high tasks sharing 1 − r in
  their pre-training proportions. Its own pre-training, not ptjf's: a sweep can run both.
* `rate_schedule`: one stage whose rates move linearly (`LinearRates`, runs/rate_schedule.gin)
  from a start to an end vector, the high-resource rate decaying (paper App. C). Per grid rate
  r the low-resource rate goes from max(0, 2r − 1) at step 0 to min(1, 2r) at step N − 1, so
  its average over the N steps is exactly r: each task gets the same expected number of
  examples as scalarization at r, and the two methods' fronts compare like with like (only
  the order of the examples differs). r ≤ 0.5 starts on the high-resource task alone (low 0)
  and ends at low 2r; r > 0.5 starts at low 2r − 1 and ends on the low-resource task alone.
  It needs scalar rates r in (0, 1) (a mapping of K task weights has no single low rate).
* `temperature_cooldown`: one stage with τ linear from `Sweep.cooldown_taus[0]` at step 0 to
  `[1]` at step N − 1 over the mixture's sizes (`TemperatureSchedule`,
  runs/temperature_cooldown.gin); one point per learning rate and seed, like `temperature`.

Everything here is pure: `expand` turns a `Sweep` into `Node`s, each with the exact `ptjf`
command lines it runs; `ptjf.experiments.runner` executes or emits them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from ptjf import storage
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
RUN_FILES = {
    "ptjf": "runs/ptjf.gin",
    "scalarization": "runs/scalarization.gin",
    "restart": "runs/restart.gin",
    "temperature": "runs/temperature.gin",
    "unimax": "runs/temperature.gin",
    "transfer": "runs/transfer.gin",
    "rate_schedule": "runs/rate_schedule.gin",
    "temperature_cooldown": "runs/temperature_cooldown.gin",
    "ptjf_multi": "runs/ptjf_multi.gin",
}
# The stage each forked method starts with `ptjf switch` (its first stage comes from a parent).
FORK_STAGE = {"ptjf": "joint", "ptjf_multi": "joint", "restart": "restart", "transfer": "finetune"}
NEEDS_RATES = ("ptjf", "scalarization", "restart", "rate_schedule", "ptjf_multi")
NEEDS_PRETRAIN = ("ptjf", "restart", "transfer", "ptjf_multi")
# Methods whose rates change linearly over the stage's N steps (a schedule needs two steps).
SCHEDULED = ("rate_schedule", "temperature_cooldown")
POINT_FILE = "point.json"
DONE_FILE = "DONE"
SWEEP_FILE = "sweep.json"


@gin.configurable("Sweep")
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


@dataclasses.dataclass(frozen=True)
class Node:
    """One run of the DAG: a shared pre-training or a point of the grid.

    commands: argv lists (each starting with "ptjf") run in order; `deps` must be done first.
    skip_if_exists: per command, a path whose presence means the command already ran (the
        switch of a fork), so reruns resume instead of failing.
    """

    name: str
    kind: str  # "shared" or "point"
    directory: str
    info: dict[str, Any]
    commands: tuple[tuple[str, ...], ...]
    deps: tuple[str, ...] = ()
    skip_if_exists: tuple[str | None, ...] = ()


def _mixture_tasks(name: str) -> list[str]:
    """The tasks of the registered mixture (or task) `name`, registering ptjf's tasks first."""
    from ptjf import tasks as ptasks

    provider = ptasks.get_task_or_mixture(name)
    if hasattr(provider, "tasks"):
        return [t.name for t in provider.tasks]
    return [provider.name]


def _g(x: float) -> str:
    return f"{x:g}"


def _rate_label(weights: Mapping[str, float], sweep: Sweep) -> str:
    if set(weights) == {sweep.high_task, sweep.low_task}:
        total = sum(weights.values())
        return "r" + _g(round(weights[sweep.low_task] / total, 6))
    return "w" + "_".join(_g(weights[t]) for t in sorted(weights))


def _literal(value: Any) -> str:
    """A gin literal for a binding's value (strings quoted, mappings and tuples as Python)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple | list):
        inner = ", ".join(_literal(v) for v in value)
        return "(" + inner + ("," if len(value) == 1 else "") + ")"
    if value is None:
        return "None"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _train_argv(
    run_file: str, gin_files: Sequence[str], bindings: Mapping[str, Any], extra: Sequence[str]
) -> tuple[str, ...]:
    argv = ["ptjf", "train", f"--gin_file={run_file}"]
    argv += [f"--gin_file={f}" for f in gin_files]
    argv += [f"--gin.{b.split('=', 1)[0].strip()}={b.split('=', 1)[1].strip()}" for b in extra]
    argv += [f"--gin.{k}={_literal(v)}" for k, v in bindings.items()]
    return tuple(argv)


def expand(sweep: Sweep, sweep_dir: str, gin_files: Sequence[str]) -> list[Node]:
    """The sweep's DAG: shared pre-trainings first, then points, each with its commands."""
    extra = list(sweep.bindings)
    for b in extra:
        if "=" not in b:
            raise ConfigError(f"Sweep.bindings has {b!r}; each must read 'NAME = VALUE'.")
    n = sweep.total_steps
    nodes: dict[str, Node] = {}
    directories: dict[str, str] = {}

    def add(node: Node) -> None:
        clash = directories.get(node.directory)
        if clash is not None:
            raise ConfigError(
                f"Two points of sweep {sweep.name!r} would write to the same directory "
                f"{node.directory}: {clash!r} and {node.name!r}. Remove the repeated value "
                "from the grid (e.g. 0.3 and 0.30 in Sweep.rates)."
            )
        directories[node.directory] = node.name
        nodes[node.name] = node

    # A K-task grid names its tasks in its weight mappings: every task but the high one is low;
    # ptjf_multi's pre-training tasks are high too. Every point of a sweep lists the same tasks.
    high_tasks = [sweep.high_task]
    high_tasks += [t for t in sweep.pretrain_rates or {} if t not in high_tasks]
    tasks = [sweep.high_task, sweep.low_task, *high_tasks[1:]]
    for r in sweep.rates:
        tasks += [t for t in sweep.rate_weights(r) if t not in tasks]
    pretrain_weights = sweep.pretrain_weights() if sweep.pretrain_rates is not None else None

    def base_info(method: str, lr: float, seed: int) -> dict[str, Any]:
        return {
            "kind": "point",
            "method": method,
            "sweep": sweep.name,
            "tasks": list(tasks),
            "high_tasks": list(high_tasks),
            "low_tasks": [t for t in tasks if t not in high_tasks],
            "rates": None,
            "low_rate": None,
            "tau": None,
            "max_epochs": None,
            "learning_rate": float(lr),
            "seed": int(seed),
            "pretrain_steps": None,
            "total_steps": n,
            "parent": None,
        }

    def point_dir(name: str) -> str:
        return storage.join(sweep_dir, "points", name)

    def fork(
        method: str, name: str, parent: Node, stage: str, n1: int, point: tuple, **kw: Any
    ) -> None:
        """Adds a point that starts from `parent`'s stage-`stage` checkpoint at step `n1`."""
        lr, seed, common = point
        weights = kw.pop("weights", None)
        bindings = common | {
            "MODEL_DIR": point_dir(name),
            "PRETRAIN_STEPS": n1,
            "FINETUNE_STEPS": n - n1,
            **kw,
        }
        info = base_info(method, lr, seed) | {
            "name": name,
            "pretrain_steps": n1,
            "parent": parent.directory,
        }
        if weights is not None:
            bindings["MIXTURE_RATES"] = weights
            info["rates"] = weights
            info["low_rate"] = weights.get(sweep.low_task, 0.0) / sum(weights.values())
        add(
            _fork(
                name,
                method,
                point_dir(name),
                info,
                parent,
                stage,
                n1,
                gin_files,
                bindings,
                extra,
            )
        )

    restart_forks = sorted(set(sweep.pretrain_steps)) if "restart" in sweep.methods else []
    for lr in sweep.learning_rates:
        for seed in sweep.seeds:
            suffix = f"lr{_g(lr)}-s{seed}"
            common = {"LEARNING_RATE": float(lr), "SEED": int(seed)}
            # --- shared pre-trainings: one per (lr, seed, N1) that a forked method uses.
            forked = [m for m in ("ptjf", "transfer") if m in sweep.methods]
            for n1 in sweep.pretrain_steps if forked else ():
                name = f"pretrain-n{n1}-{suffix}"
                directory = storage.join(sweep_dir, "shared", name)
                info = base_info("pretrain", lr, seed) | {
                    "kind": "shared",
                    "name": name,
                    "pretrain_steps": n1,
                }
                bindings = common | {
                    "MODEL_DIR": directory,
                    "PRETRAIN_STEPS": n1,
                    "FINETUNE_STEPS": n - n1,
                    "train.last_stage": "pretrain",
                }
                argv = _train_argv(RUN_FILES["ptjf"], gin_files, bindings, extra)
                add(Node(name, "shared", directory, info, (argv,), (), (None,)))
            # ptjf_multi's own pre-training: the mixture at Sweep.pretrain_rates.
            for n1 in sweep.pretrain_steps if "ptjf_multi" in sweep.methods else ():
                name = f"pretrain_multi-n{n1}-{suffix}"
                directory = storage.join(sweep_dir, "shared", name)
                info = base_info("pretrain", lr, seed) | {
                    "kind": "shared",
                    "name": name,
                    "pretrain_steps": n1,
                    "pretrain_rates": pretrain_weights,
                }
                bindings = common | {
                    "MODEL_DIR": directory,
                    "PRETRAIN_STEPS": n1,
                    "FINETUNE_STEPS": n - n1,
                    "PRETRAIN_RATES": pretrain_weights,
                    "train.last_stage": "pretrain",
                }
                argv = _train_argv(RUN_FILES["ptjf_multi"], gin_files, bindings, extra)
                add(Node(name, "shared", directory, info, (argv,), (), (None,)))

            # --- one-stage methods.
            for r in sweep.rates if ({"scalarization", "restart"} & set(sweep.methods)) else ():
                weights = sweep.rate_weights(r)
                label = _rate_label(weights, sweep)
                name = f"scalarization-{label}-{suffix}"
                info = base_info("scalarization", lr, seed) | {
                    "name": name,
                    "rates": weights,
                    "low_rate": weights.get(sweep.low_task, 0.0) / sum(weights.values()),
                }
                bindings = common | {
                    "MODEL_DIR": point_dir(name),
                    "TRAIN_STEPS": n,
                    "MIXTURE_RATES": weights,
                }
                if restart_forks:
                    bindings["CheckpointConfig.keep_steps"] = tuple(restart_forks)
                argv = _train_argv(RUN_FILES["scalarization"], gin_files, bindings, extra)
                add(Node(name, "point", point_dir(name), info, (argv,), (), (None,)))

            for tau in sweep.taus if "temperature" in sweep.methods else ():
                name = f"temperature-t{_g(tau)}-{suffix}"
                info = base_info("temperature", lr, seed) | {"name": name, "tau": float(tau)}
                bindings = common | {"MODEL_DIR": point_dir(name), "TRAIN_STEPS": n, "TAU": tau}
                argv = _train_argv(RUN_FILES["temperature"], gin_files, bindings, extra)
                add(Node(name, "point", point_dir(name), info, (argv,), (), (None,)))

            for cap in sweep.unimax_max_epochs if "unimax" in sweep.methods else ():
                name = f"unimax-e{_g(cap)}-{suffix}"
                info = base_info("unimax", lr, seed) | {"name": name, "max_epochs": float(cap)}
                bindings = common | {
                    "MODEL_DIR": point_dir(name),
                    "TRAIN_STEPS": n,
                    "mixture_rates.method": "unimax",
                    "mixture_rates.tau": None,
                    "mixture_rates.budget": float(
                        sweep.unimax_budget
                        if sweep.unimax_budget is not None
                        else n * (sweep.batch_size or 0)
                    ),
                    "mixture_rates.max_epochs": float(cap),
                }
                argv = _train_argv(RUN_FILES["unimax"], gin_files, bindings, extra)
                add(Node(name, "point", point_dir(name), info, (argv,), (), (None,)))

            for r in sweep.rates if "rate_schedule" in sweep.methods else ():
                start, end = sweep.schedule_rates(r)
                low_rate = sweep.rate_weights(r)[sweep.low_task]
                name = f"rate_schedule-r{_g(round(low_rate, 6))}-{suffix}"
                info = base_info("rate_schedule", lr, seed) | {
                    "name": name,
                    # The rates averaged over the run: the expected share of each task's
                    # examples, the same as scalarization's at r.
                    "rates": sweep.rate_weights(r),
                    "low_rate": low_rate,
                    "start_rates": start,
                    "end_rates": end,
                }
                bindings = common | {
                    "MODEL_DIR": point_dir(name),
                    "TRAIN_STEPS": n,
                    "SCHEDULE_START_RATES": start,
                    "SCHEDULE_END_RATES": end,
                    "SCHEDULE_END_STEP": n - 1,
                }
                argv = _train_argv(RUN_FILES["rate_schedule"], gin_files, bindings, extra)
                add(Node(name, "point", point_dir(name), info, (argv,), (), (None,)))

            if "temperature_cooldown" in sweep.methods:
                t0, t1 = (float(t) for t in sweep.cooldown_taus)
                name = f"temperature_cooldown-t{_g(t0)}-{_g(t1)}-{suffix}"
                info = base_info("temperature_cooldown", lr, seed) | {
                    "name": name,
                    "tau": f"{_g(t0)}→{_g(t1)}",
                    "tau_start": t0,
                    "tau_end": t1,
                }
                bindings = common | {
                    "MODEL_DIR": point_dir(name),
                    "TRAIN_STEPS": n,
                    "TAU_START": t0,
                    "TAU_END": t1,
                    "SCHEDULE_END_STEP": n - 1,
                }
                argv = _train_argv(RUN_FILES["temperature_cooldown"], gin_files, bindings, extra)
                add(Node(name, "point", point_dir(name), info, (argv,), (), (None,)))

            # --- forked methods: a switch from the parent's checkpoint, then the point's run.
            for n1 in sweep.pretrain_steps:
                pre = nodes.get(f"pretrain-n{n1}-{suffix}")
                for r in sweep.rates if "ptjf" in sweep.methods else ():
                    weights = sweep.rate_weights(r)
                    name = f"ptjf-{_rate_label(weights, sweep)}-n{n1}-{suffix}"
                    fork("ptjf", name, pre, "pretrain", n1, (lr, seed, common), weights=weights)
                multi = nodes.get(f"pretrain_multi-n{n1}-{suffix}")
                for r in sweep.rates if "ptjf_multi" in sweep.methods else ():
                    weights = sweep.multi_weights(r)
                    if isinstance(r, Mapping):
                        label = _rate_label(weights, sweep)
                    else:
                        label = "r" + _g(round(weights[sweep.low_task], 6))
                    name = f"ptjf_multi-{label}-n{n1}-{suffix}"
                    fork(
                        "ptjf_multi",
                        name,
                        multi,
                        "pretrain",
                        n1,
                        (lr, seed, common),
                        weights=weights,
                        PRETRAIN_RATES=pretrain_weights,
                    )
                    nodes[name].info["pretrain_rates"] = pretrain_weights
                if "transfer" in sweep.methods:
                    fork(
                        "transfer",
                        f"transfer-n{n1}-{suffix}",
                        pre,
                        "pretrain",
                        n1,
                        (lr, seed, common),
                    )
                    nodes[f"transfer-n{n1}-{suffix}"].info.update(
                        rates={sweep.low_task: 1.0}, low_rate=1.0
                    )
                for r in sweep.rates if "restart" in sweep.methods else ():
                    weights = sweep.rate_weights(r)
                    label = _rate_label(weights, sweep)
                    parent = nodes[f"scalarization-{label}-{suffix}"]
                    name = f"restart-{label}-n{n1}-{suffix}"
                    fork(
                        "restart",
                        name,
                        parent,
                        "joint",
                        n1,
                        (lr, seed, common),
                        weights=weights,
                        FIRST_DECAY_STEPS=n,
                    )
    return list(nodes.values())


def _fork(
    name: str,
    method: str,
    directory: str,
    info: dict[str, Any],
    parent: Node,
    parent_stage: str,
    step: int,
    gin_files: Sequence[str],
    bindings: Mapping[str, Any],
    extra: Sequence[str],
) -> Node:
    """A point that starts from `parent`'s checkpoint at `step` through the stage switch."""
    target = storage.join(directory, FORK_STAGE[method])
    source = storage.join(parent.directory, parent_stage, str(step))
    train = _train_argv(RUN_FILES[method], gin_files, bindings, extra)
    switch = (
        "ptjf",
        "switch",
        f"--from={source}",
        f"--to={target}",
        f"--stage={FORK_STAGE[method]}",
        "--copy_metrics",
        *train[2:],
    )
    return Node(name, "point", directory, info, (switch, train), (parent.name,), (target, None))


def ordered(nodes: Sequence[Node]) -> list[Node]:
    """Nodes in an order where every node comes after its dependencies (stable)."""
    by_name = {n.name: n for n in nodes}
    out: list[Node] = []
    seen: set[str] = set()

    def visit(node: Node) -> None:
        if node.name in seen:
            return
        seen.add(node.name)
        for dep in node.deps:
            visit(by_name[dep])
        out.append(node)

    for node in nodes:
        visit(node)
    return out


def sweep_record(sweep: Sweep, gin_files: Sequence[str], nodes: Sequence[Node]) -> dict:
    """What `sweep.json` holds: the grid as given and every node with its commands."""
    grid = dataclasses.asdict(sweep)
    grid["rates"] = [dict(r) if isinstance(r, Mapping) else r for r in sweep.rates]
    return {
        "sweep": json.loads(json.dumps(grid, default=list)),
        "gin_files": list(gin_files),
        "nodes": [
            {
                "name": n.name,
                "kind": n.kind,
                "directory": n.directory,
                "deps": list(n.deps),
                "commands": [list(c) for c in n.commands],
            }
            for n in nodes
        ],
    }

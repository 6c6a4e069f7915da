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

Everything here is pure: `expand` turns a `Sweep` into `Node`s, each with the exact `ptjf`
command lines it runs; `ptjf.experiments.runner` executes or emits them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from ptjf import storage
from ptjf.errors import ConfigError, UnknownNameError

METHODS = ("ptjf", "scalarization", "restart", "temperature", "unimax", "transfer")
RUN_FILES = {
    "ptjf": "runs/ptjf.gin",
    "scalarization": "runs/scalarization.gin",
    "restart": "runs/restart.gin",
    "temperature": "runs/temperature.gin",
    "unimax": "runs/temperature.gin",
    "transfer": "runs/transfer.gin",
}
# The stage each forked method starts with `ptjf switch` (its first stage comes from a parent).
FORK_STAGE = {"ptjf": "joint", "restart": "restart", "transfer": "finetune"}
NEEDS_RATES = ("ptjf", "scalarization", "restart")
NEEDS_PRETRAIN = ("ptjf", "restart", "transfer")
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

    # A K-task grid names its tasks in its weight mappings: every task but the high one is low.
    tasks = [sweep.high_task, sweep.low_task]
    for r in sweep.rates:
        tasks += [t for t in sweep.rate_weights(r) if t not in tasks]

    def base_info(method: str, lr: float, seed: int) -> dict[str, Any]:
        return {
            "kind": "point",
            "method": method,
            "sweep": sweep.name,
            "tasks": list(tasks),
            "high_tasks": [sweep.high_task],
            "low_tasks": [t for t in tasks if t != sweep.high_task],
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

            # --- forked methods: a switch from the parent's checkpoint, then the point's run.
            for n1 in sweep.pretrain_steps:
                pre = nodes.get(f"pretrain-n{n1}-{suffix}")
                for r in sweep.rates if "ptjf" in sweep.methods else ():
                    weights = sweep.rate_weights(r)
                    name = f"ptjf-{_rate_label(weights, sweep)}-n{n1}-{suffix}"
                    fork("ptjf", name, pre, "pretrain", n1, (lr, seed, common), weights=weights)
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

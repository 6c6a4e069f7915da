"""A `Sweep` expanded into its DAG: shared pre-trainings, then points, each with its commands.

Pure: `expand` turns a grid into `Node`s holding the exact `ptjf train` / `ptjf switch` command
lines they run (every binding written as a gin literal), `ordered` sorts them so that each runs
after its parents; `ptjf.experiments.runner` executes or emits them. Why nodes share stage 1
and fork through the stage switch: see `ptjf.experiments.sweep`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ptjf import storage
from ptjf.errors import ConfigError
from ptjf.experiments.sweep_grid import Sweep

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

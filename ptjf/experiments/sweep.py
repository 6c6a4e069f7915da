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

Everything here is pure: `Sweep` (the grid and its checks) is in `sweep_grid`, `expand` (the
grid as `Node`s, each with the exact `ptjf` command lines it runs) in `sweep_dag`; this module
names the sweep directory's files and writes `sweep.json`, and `ptjf.experiments.runner`
executes or emits the nodes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

from ptjf.experiments.sweep_dag import FORK_STAGE, RUN_FILES, Node, expand, ordered
from ptjf.experiments.sweep_dag import _literal as _literal
from ptjf.experiments.sweep_grid import (
    METHODS,
    NEEDS_PRETRAIN,
    NEEDS_RATES,
    SCHEDULED,
    Sweep,
)

__all__ = [
    "DONE_FILE",
    "FORK_STAGE",
    "METHODS",
    "NEEDS_PRETRAIN",
    "NEEDS_RATES",
    "POINT_FILE",
    "RUN_FILES",
    "SCHEDULED",
    "SWEEP_FILE",
    "Node",
    "Sweep",
    "expand",
    "ordered",
    "sweep_record",
]

POINT_FILE = "point.json"
DONE_FILE = "DONE"
SWEEP_FILE = "sweep.json"


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

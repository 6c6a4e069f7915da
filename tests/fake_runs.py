"""A hand-written sweep for the report's tests: every loss is chosen so fronts can be worked out.

Tasks: "hi" (high-resource) and "lo" (low-resource). Final validation losses (hi, lo):

    scalarization  r0.2 (2.0, 3.0)   r0.5 (2.5, 2.6)   r0.8 (2.6, 2.7)   → front {r0.2, r0.5}
    ptjf (N1=100)  r0.2 (2.1, 2.5)   r0.5 (2.2, 2.3)
    ptjf (N1=200)  r0.5 (2.15, 2.45) r0.8 NaN                            → front {the 3 finite}
    restart        r0.2 (2.05, 2.9)  r0.5 (2.4, 2.8)   r0.8 (2.3, 2.85)  → front {all three}

Over all points the front is {scalarization r0.2, restart r0.2, and the 3 finite ptjf points}.
scalarization r0.8 overfits: its best lo loss (2.4 at step 100) is below its final one.
scalarization r0.5 was resumed: step 100 appears twice (2.9 first, 2.55 after the resume).
restart r0.8's file ends in a line cut mid-write. Training-subset losses are validation − 0.5.

`add_bleu` appends validation BLEU (hi, lo) at each run's final eval, as `ptjf eval` does
(larger is better; restart and the diverged ptjf r0.8 are not scored):

    scalarization  r0.2 (30, 10)   r0.5 (25, 15)   r0.8 (20, 14)         → front {r0.2, r0.5}
    ptjf           r0.2 (29, 16)   r0.5 (28, 18)   r0.5-n200 (27, 17)    → front {r0.2, r0.5}

scalarization r0.8 also has BLEU (15, 21) at step 100: its best lo BLEU, above every final one.
"""

from __future__ import annotations

import csv
import json
import os
import warnings

TASKS = ("hi", "lo")
BROKEN_TAIL = '{"stage": "joint", "stage_index": 1, "stage_st'

# name: (method, rate, N1, [(stage, index, stage_step, global_step, hi, lo, seen_hi, seen_lo)])
_PRE = [("pretrain", 0, 0, 0, 9.0, 9.0, 0, 0), ("pretrain", 0, 100, 100, 2.5, 6.0, 1000, 0)]
_PRE200 = [*_PRE[:1], ("pretrain", 0, 200, 200, 2.4, 6.1, 2000, 0)]
POINTS = {
    "scalarization-r0.2": (
        "scalarization",
        0.2,
        None,
        [
            ("joint", 0, 0, 0, 9.0, 9.0, 0, 0),
            ("joint", 0, 100, 100, 3.0, 4.0, 800, 200),
            ("joint", 0, 200, 200, 2.0, 3.0, 1600, 400),
        ],
    ),
    "scalarization-r0.5": (
        "scalarization",
        0.5,
        None,
        [
            ("joint", 0, 0, 0, 9.0, 9.0, 0, 0),
            ("joint", 0, 100, 100, 3.5, 2.9, 500, 500),
            ("joint", 0, 100, 100, 3.25, 2.55, 500, 500),  # the resumed attempt's record
            ("joint", 0, 200, 200, 2.5, 2.6, 1000, 1000),
        ],
    ),
    "scalarization-r0.8": (
        "scalarization",
        0.8,
        None,
        [
            ("joint", 0, 0, 0, 9.0, 9.0, 0, 0),
            ("joint", 0, 100, 100, 3.5, 2.4, 200, 800),
            ("joint", 0, 200, 200, 2.6, 2.7, 400, 1600),
        ],
    ),
    "ptjf-r0.2": (
        "ptjf",
        0.2,
        100,
        [
            *_PRE,
            ("joint", 1, 0, 100, 2.5, 6.0, 1000, 0),
            ("joint", 1, 100, 200, 2.1, 2.5, 1800, 200),
        ],
    ),
    "ptjf-r0.5": (
        "ptjf",
        0.5,
        100,
        [
            *_PRE,
            ("joint", 1, 0, 100, 2.5, 6.0, 1000, 0),
            ("joint", 1, 100, 200, 2.2, 2.3, 1500, 500),
        ],
    ),
    "ptjf-r0.5-n200": (
        "ptjf",
        0.5,
        200,
        [
            *_PRE200,
            ("joint", 1, 0, 200, 2.4, 6.1, 2000, 0),
            ("joint", 1, 50, 250, 2.15, 2.45, 2050, 50),
        ],
    ),
    "ptjf-r0.8": (
        "ptjf",
        0.8,
        200,
        [
            *_PRE200,
            ("joint", 1, 0, 200, 2.4, 6.1, 2000, 0),
            ("joint", 1, 50, 250, "NaN", "NaN", 2100, 400),
        ],
    ),
    "restart-r0.2": (
        "restart",
        0.2,
        100,
        [
            ("joint", 0, 0, 0, 9.0, 9.0, 0, 0),
            ("joint", 0, 100, 100, 3.0, 4.0, 800, 200),
            ("restart", 1, 100, 200, 2.05, 2.9, 1600, 400),
        ],
    ),
    "restart-r0.5": (
        "restart",
        0.5,
        100,
        [
            ("joint", 0, 0, 0, 9.0, 9.0, 0, 0),
            ("joint", 0, 100, 100, 3.5, 2.9, 500, 500),
            ("restart", 1, 100, 200, 2.4, 2.8, 1000, 1000),
        ],
    ),
    "restart-r0.8": (
        "restart",
        0.8,
        100,
        [
            ("joint", 0, 0, 0, 9.0, 9.0, 0, 0),
            ("joint", 0, 100, 100, 3.5, 2.4, 200, 800),
            ("restart", 1, 100, 200, 2.3, 2.85, 400, 1600),
        ],
    ),
}
SHARED = {"pretrain-n100": _PRE, "pretrain-n200": _PRE200}
FRONT = {
    "scalarization": {"scalarization-r0.2", "scalarization-r0.5"},
    "ptjf": {"ptjf-r0.2", "ptjf-r0.5", "ptjf-r0.5-n200"},
    "restart": {"restart-r0.2", "restart-r0.5", "restart-r0.8"},
}
OVERALL_FRONT = {"scalarization-r0.2", "restart-r0.2", "ptjf-r0.2", "ptjf-r0.5", "ptjf-r0.5-n200"}


def _scores(loss, examples: float) -> dict:
    return {"loss": loss, "accuracy": 0.5, "tokens": 10 * examples, "examples": examples}


def record(stage, index, stage_step, global_step, hi, lo, seen_hi, seen_lo) -> dict:
    """An eval record as the trainer writes it (NaN losses as the string "NaN")."""

    def train(x):
        return x if isinstance(x, str) else x - 0.5

    return {
        "stage": stage,
        "stage_index": index,
        "stage_step": stage_step,
        "global_step": global_step,
        "time": 1.7e9 + global_step,
        "examples_seen": {"hi": seen_hi, "lo": seen_lo},
        "tokens_seen": {"hi": 10 * seen_hi, "lo": 10 * seen_lo},
        "validation": {"hi": _scores(hi, 20.0), "lo": _scores(lo, 20.0)},
        "train_subset": {"hi": _scores(train(hi), 8.0), "lo": _scores(train(lo), 8.0)},
        "train": {"loss": 1.0},
    }


def write_run(directory, history, info: dict | None = None, *, tail: str = "", done=True) -> str:
    """A run directory: metrics.jsonl from `history` (+ a broken `tail`), point.json, DONE."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metrics.jsonl"), "w", encoding="utf-8") as f:
        for h in history:
            f.write(json.dumps(record(*h)) + "\n")
        f.write(tail)
    if info is not None:
        with open(os.path.join(directory, "point.json"), "w", encoding="utf-8") as f:
            json.dump(info, f)
        if done:
            with open(os.path.join(directory, "DONE"), "w", encoding="utf-8") as f:
                f.write("{}")
    return str(directory)


def _info(name, kind, method, rate, n1) -> dict:
    return {
        "name": name,
        "kind": kind,
        "method": method,
        "sweep": "fake",
        "tasks": list(TASKS),
        "high_tasks": ["hi"],
        "low_tasks": ["lo"],
        "rates": None if rate is None else {"hi": 1 - rate, "lo": rate},
        "low_rate": rate,
        "tau": None,
        "learning_rate": 0.001,
        "seed": 0,
        "pretrain_steps": n1,
        "total_steps": 200,
        "parent": None,
    }


def write_sweep(root) -> str:
    """The sweep of the module docstring under `root`; returns its directory."""
    sweep = os.path.join(root, "sweep")
    os.makedirs(sweep, exist_ok=True)
    with open(os.path.join(sweep, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump({"sweep": {"name": "fake"}, "nodes": []}, f)
    for name, history in SHARED.items():
        n1 = int(name.removeprefix("pretrain-n"))
        info = _info(name, "shared", "pretrain", None, n1)
        write_run(os.path.join(sweep, "shared", name), history, info)
    for name, (method, rate, n1, history) in POINTS.items():
        tail = BROKEN_TAIL if name == "restart-r0.8" else ""
        info = _info(name, "point", method, rate, n1)
        write_run(os.path.join(sweep, "points", name), history, info, tail=tail)
    return sweep


BLEU = {
    "scalarization-r0.2": (30.0, 10.0),
    "scalarization-r0.5": (25.0, 15.0),
    "scalarization-r0.8": (20.0, 14.0),
    "ptjf-r0.2": (29.0, 16.0),
    "ptjf-r0.5": (28.0, 18.0),
    "ptjf-r0.5-n200": (27.0, 17.0),
}
BLEU_FRONT = {
    "scalarization": {"scalarization-r0.2", "scalarization-r0.5"},
    "ptjf": {"ptjf-r0.2", "ptjf-r0.5"},
}


def _append_bleu(directory, history_row, hi: float, lo: float) -> None:
    r = record(*history_row) | {"bleu": {"hi": hi, "lo": lo}, "posthoc": True}
    with open(os.path.join(directory, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(r) + "\n")


def add_bleu(sweep) -> None:
    """Appends the BLEU records of the module docstring to `write_sweep`'s points."""
    for name, (hi, lo) in BLEU.items():
        _append_bleu(os.path.join(sweep, "points", name), POINTS[name][3][-1], hi, lo)
    overfit = POINTS["scalarization-r0.8"][3][1]  # step 100
    _append_bleu(os.path.join(sweep, "points", "scalarization-r0.8"), overfit, 15.0, 21.0)


def quiet(fn, *args, **kwargs):
    """`fn(...)` with numpy's RuntimeWarnings (means of NaN losses) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def read_csv(path):
    """A CSV file's rows as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

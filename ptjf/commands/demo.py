"""`ptjf demo` (`make demo`): PTJF and scalarization on the embedded Bible data, compared.

Runs `runs/ptjf.gin` and `runs/scalarization.gin` with `experiments/bible_demo.gin` (the same
total steps and the same En→Tl rate), then prints each method's best and final validation loss
per task from the runs' metrics.jsonl, a verdict computed from those numbers
(`ptjf.experiments.verdict`), and writes `MODEL_DIR/report.md` with loss curves and the
trade-off plane (`ptjf.experiments.demo_report`). Rerunning resumes or skips finished runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ptjf import storage
from ptjf.errors import DataError
from ptjf.experiments import demo_report, verdict
from ptjf.experiments.results import clean_records
from ptjf.training.metrics_io import read_metrics

METHODS = {"ptjf": "runs/ptjf.gin", "scalarization": "runs/scalarization.gin"}
EXPERIMENT = "experiments/bible_demo.gin"
HIGH_RESOURCE_TASK = "bible_translate_en_fr"  # as in experiments/bible_demo.gin
LOW_RESOURCE_TASK = "bible_translate_en_tl_low"
QUICK = [
    "DEMO_TOTAL_STEPS = 6",
    "PRETRAIN_STEPS = 3",
    "FINETUNE_STEPS = 3",
    "WARMUP_STEPS = 1",
    "EVAL_PERIOD = 3",
    "BATCH_SIZE = 8",
    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 32}",
    "train.max_eval_examples = 16",
    "train.train_eval_examples = 16",
    "train.log_every = 1",
]


def summarize(runs: Mapping[str, str]) -> list[dict]:
    """Best and final validation loss per (method, task) from each run's metrics.jsonl."""
    rows = []
    for method, model_dir in runs.items():
        records = [r for r in read_metrics(model_dir) if "validation" in r]
        if not records:
            continue
        final = records[-1]
        for task in final["validation"]:
            losses = [
                (r["validation"][task]["loss"], r["global_step"])
                for r in records
                if task in r["validation"]
            ]
            best, best_step = min(losses, key=lambda x: (math.isnan(x[0]), x[0]))
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "best": best,
                    "best_step": best_step,
                    "final": final["validation"][task]["loss"],
                    "final_step": final["global_step"],
                    "examples_seen": final["examples_seen"].get(task, 0),
                }
            )
    return rows


def format_summary(rows: Sequence[dict]) -> str:
    header = f"{'method':<14} {'task':<26} {'best val loss':>13} {'at step':>8} {'final':>8} {'examples seen':>14}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['method']:<14} {r['task']:<26} {r['best']:>13.4f} {r['best_step']:>8d} "
            f"{r['final']:>8.4f} {r['examples_seen']:>14d}"
        )
    return "\n".join(lines)


def run_demo(model_dir: str = "runs/demo", *, quick: bool = False) -> list[dict]:
    """Trains both methods (resuming finished work) and prints the comparison."""
    from ptjf.commands import train

    runs = {m: storage.absolute(storage.join(model_dir, m)) for m in METHODS}
    for method, run_file in METHODS.items():
        print(f"== {method}: {run_file} + {EXPERIMENT} → {runs[method]}", flush=True)
        bindings = [f"MODEL_DIR = '{runs[method]}'"] + (QUICK if quick else [])
        train.run([run_file, EXPERIMENT], bindings)
    rows = summarize(runs)
    table = format_summary(rows)
    text = verdict_text(rows)
    print()
    print(table)
    print()
    print(text)
    print()
    for method, path in runs.items():
        print(
            f"{method}: metrics {storage.join(path, 'metrics.jsonl')}, TensorBoard "
            f"{storage.join(path, 'tb')}, checkpoints {storage.join(path, '<stage>')}/"
        )
    report = demo_report.write_report(
        storage.absolute(model_dir),
        runs={m: clean_records(read_metrics(path)) for m, path in runs.items()},
        rows=rows,
        high=HIGH_RESOURCE_TASK,
        low=LOW_RESOURCE_TASK,
        verdict=text,
        table=table,
    )
    print(f"report: {report.path}")
    for figure in report.figures:
        print(f"  figure: {figure}")
    for reason in report.skipped:
        print(f"  not drawn: {reason}")
    return rows


def verdict_text(rows: Sequence[dict]) -> str:
    """The verdict on PTJF vs scalarization, or why there is none (a method without evals)."""
    try:
        decided = verdict.decide(rows, ("ptjf", "scalarization"), LOW_RESOURCE_TASK)
    except DataError as e:
        return str(e)
    return verdict.format_verdict(decided)

"""`ptjf report DIR...`: one table of every eval, each method's Pareto front, the figures.

Reads runs from local directories or `gs://` and writes into OUT (default `<first DIR>/report`),
local or `gs://` too:

* `results.csv`: every eval of every run in long format (one row per run, eval, split, task).
* `points.csv`: one row per run — final and best validation and training losses per task,
  examples and tokens seen, and whether the run is on its method's front and on the front of
  all points.
* `configs.csv`: one row per configuration (a sweep point over its seeds): each task's loss as
  mean, min, max and 95% interval, its front flag at the means, and which configurations of
  other methods dominate it beyond the spread (`ptjf.experiments.report_seeds`).
* `report.md`: the configurations over seeds ("Over seeds"), the fronts, each method's best
  low-resource run, what that run saw, notes on broken, unfinished or diverged runs, and the
  figures (`ptjf.experiments.plots`). When evals carry BLEU (EVAL_BLEU = True, or `ptjf eval`
  on final checkpoints), also each method's best low-resource BLEU and the BLEU fronts
  (`ptjf.experiments.plots_bleu`).

A run's *point* is its final eval (the paper's convention: "each point corresponds to the final
performance of a model") or, with `--point best`, each task's best eval (early stopping per
task). Fronts are over all K tasks' validation losses; a shared pre-training is part of its
points' histories, not a point of any method, so it is on no front.

Runs that differ in a setting no sweep axis covers (model size, batch size, …; their
config.gin) are refused before anything is written (`ptjf.experiments.settings`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ptjf import storage
from ptjf.errors import DataError
from ptjf.experiments import figures as report_figures
from ptjf.experiments import plots
from ptjf.experiments.claims import Claim, judge, render_claims, study_kind
from ptjf.experiments.plots_bleu import bleu_at, has_bleu, run_bleu
from ptjf.experiments.report_seeds import configs_table, seeds_markdown
from ptjf.experiments.results import (
    TABLE_COLUMNS,
    Roles,
    Run,
    best_point,
    best_runs,
    final_point,
    final_seen,
    front_flags,
    load_runs,
    methods,
    points_of,
    results_table,
    run_point,
    split_losses,
    task_roles,
    write_csv,
)
from ptjf.experiments.seeds import DOMINANCE_RULE, fewest_seeds, group_configs
from ptjf.experiments.settings import check_comparable

POINTS = ("final", "best")


# --- tables -----------------------------------------------------------------------------------


def points_table(runs: Sequence[Run], roles: Roles, point: str = "final") -> list[dict]:
    """One row per run: what it is, its losses per task, what it saw, and its front flags."""
    tasks = roles.tasks
    on_method_front = front_flags(runs, tasks, point)
    on_front = front_flags(runs, tasks, point, by_method=False)
    with_bleu = has_bleu(runs)
    rows = []
    for run, mine, overall in zip(runs, on_method_front, on_front, strict=True):
        info = run.info
        row: dict[str, Any] = {
            "run": run.name,
            "method": run.method,
            "kind": run.kind,
            "finished": run.done,
            "low_rate": info.get("low_rate"),
            "tau": info.get("tau"),
            "learning_rate": info.get("learning_rate"),
            "seed": info.get("seed"),
            "pretrain_steps": info.get("pretrain_steps"),
            "global_step": run.records[-1]["global_step"] if run.records else None,
        }
        columns = {
            "final_val_loss": final_point(run, "validation", tasks),
            "best_val_loss": best_point(run, "validation", tasks),
            "final_train_loss": final_point(run, "train_subset", tasks),
            "best_train_loss": best_point(run, "train_subset", tasks),
        }
        for prefix, values in columns.items():
            for task, value in zip(tasks, values, strict=True):
                row[f"{prefix}/{task}"] = value
        for what in ("examples_seen", "tokens_seen"):
            seen = final_seen(run, what)
            for task in tasks:
                row[f"{what}/{task}"] = seen.get(task)
        if with_bleu:
            for task, value in zip(tasks, run_bleu(run, tasks, point), strict=True):
                row[f"bleu/{task}"] = value
        row["on_front"] = mine
        row["on_overall_front"] = overall
        rows.append(row)
    return rows


def best_low_rows(runs: Sequence[Run], roles: Roles, point: str = "final") -> list[dict]:
    """Per low-resource task and method: the run with the lowest validation loss on the task.

    A method whose runs all diverged gets a row with run None, so the table still lists it.
    """
    rows = []
    for low in roles.low or roles.tasks:
        for method in methods(runs):
            candidates = []
            for run in points_of(runs, method):
                (loss,) = run_point(run, "validation", [low], point)
                if not math.isnan(loss):
                    candidates.append((loss, run))
            if not candidates:
                rows.append({"task": low, "method": method, "run": None, "loss": math.nan})
                continue
            loss, run = min(candidates, key=lambda c: c[0])
            others = run_point(run, "validation", roles.high, point)
            rows.append(
                {
                    "task": low,
                    "method": method,
                    "run": run.name,
                    "rate": run.task_rate(low),
                    "pretrain_steps": run.info.get("pretrain_steps"),
                    "loss": loss,
                    "step": _step_of(run, low, point),
                    "high_losses": dict(zip(roles.high, others, strict=True)),
                }
            )
    return rows


def _step_of(run: Run, task: str, point: str) -> int | None:
    """The global step of the eval that gives the run's point for `task`."""
    losses = [(s, y) for s, y in split_losses(run, "validation", task) if not math.isnan(y)]
    if not losses:
        return None
    if point == "best":
        return min(losses, key=lambda sy: sy[1])[0]
    return split_losses(run, "validation", task)[-1][0]


def best_bleu_rows(runs: Sequence[Run], roles: Roles, point: str = "final") -> list[dict]:
    """Per low-resource task and method: the run with the highest validation BLEU on the task.

    A method none of whose runs has BLEU on the task gets a row with run None (not scored yet:
    `ptjf eval --sweep_dir` scores final checkpoints).
    """
    rows = []
    for low in roles.low or roles.tasks:
        for method in methods(runs):
            candidates = []
            for run in points_of(runs, method):
                step, bleu = bleu_at(run, low, point)
                if not math.isnan(bleu):
                    candidates.append((bleu, step, run))
            if not candidates:
                rows.append({"task": low, "method": method, "run": None, "bleu": math.nan})
                continue
            bleu, step, run = max(candidates, key=lambda c: c[0])
            highs = run_bleu(run, roles.high, point)
            rows.append(
                {
                    "task": low,
                    "method": method,
                    "run": run.name,
                    "rate": run.task_rate(low),
                    "pretrain_steps": run.info.get("pretrain_steps"),
                    "bleu": bleu,
                    "step": step,
                    "high_bleu": dict(zip(roles.high, highs, strict=True)),
                }
            )
    return rows


# --- formatting -------------------------------------------------------------------------------


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return str(x)


def _rate(x: float | str | None) -> str:
    """A rate or τ; a string as it is (a τ cooldown's "5→1.43")."""
    if x is None:
        return "—"
    return x if isinstance(x, str) else f"{x:.3g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(":--" if i == 0 else "--:" for i in range(len(header))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """A plain aligned table for the terminal: the first `left` columns (names) left-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i < left else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _best_table(
    rows: Sequence[Mapping],
    roles: Roles,
    *,
    metric: str,
    key: str,
    high_key: str,
    missing: tuple[str, str],
    digits: int = 4,
) -> tuple[list[str], list[list]]:
    """Header and cells of a best-low-resource table (loss or BLEU; markdown and terminal)."""
    high = list(roles.high) if roles.low else []
    header = ["task", "method", "run", "rate", "N1", metric, "step"]
    header += [f"{metric} {t}" for t in high]
    body = []
    for r in rows:
        if r["run"] is None:
            run, value = missing
            body.append([r["task"], r["method"], run, "—", "—", value, "—"] + ["—"] * len(high))
            continue
        body.append(
            [
                r["task"],
                r["method"],
                r["run"],
                _rate(r["rate"]),
                _num(r["pretrain_steps"]),
                _num(r[key], digits),
                _num(r["step"]),
            ]
            + [_num(r[high_key].get(t), digits) for t in high]
        )
    return header, body


def _best_low_table(rows: Sequence[Mapping], roles: Roles) -> tuple[list[str], list[list]]:
    return _best_table(
        rows,
        roles,
        metric="val loss",
        key="loss",
        high_key="high_losses",
        missing=("(all diverged)", "nan"),
    )


def _best_bleu_table(rows: Sequence[Mapping], roles: Roles) -> tuple[list[str], list[list]]:
    return _best_table(
        rows,
        roles,
        metric="BLEU",
        key="bleu",
        high_key="high_bleu",
        missing=("(no BLEU)", "—"),
        digits=2,
    )


# --- report.md --------------------------------------------------------------------------------


def _notes(runs: Sequence[Run], roles: Roles, point: str) -> list[str]:
    notes = []
    broken = [(r, n) for r in runs for n in r.broken_lines]
    if broken:
        where = ", ".join(f"`{r.path}:{n}`" for r, n in broken)
        plural = "s" if len(broken) > 1 else ""
        notes.append(
            f"Skipped {len(broken)} broken metrics line{plural} (a run killed mid-write leaves "
            f"one): {where}."
        )
    else:
        notes.append("No broken metrics lines.")
    unfinished = [r.name for r in runs if r.done is False and r.records]
    if unfinished:
        notes.append(
            f"{len(unfinished)} sweep run(s) have no DONE file (still running, or failed: see "
            f"their sweep.log); their final point is their latest eval: {', '.join(unfinished)}."
        )
    empty = [r.name for r in runs if not r.records]
    if empty:
        notes.append(f"Runs without an eval record yet (left out): {', '.join(empty)}.")
    diverged = [
        r.name
        for r in runs
        if r.records and r.kind != "shared"
        if any(math.isnan(x) for x in final_point(r, "validation", roles.tasks))
    ]
    if diverged:
        where = "on no front" if point == "final" else "their best evals may still be on a front"
        notes.append(
            f"Diverged (a NaN validation loss at the last eval; {where}): "
            + ", ".join(diverged)
            + "."
        )
    return notes


def _front_sections(runs: Sequence[Run], roles: Roles, point: str) -> list[str]:
    tasks = roles.tasks
    flags = front_flags(runs, tasks, point)
    out = []
    for method in methods(runs):
        members = [
            (run, flag)
            for run, flag in zip(runs, flags, strict=True)
            if run.method == method and flag is not None
        ]
        front = [run for run, flag in members if flag]
        front.sort(key=lambda r: run_point(r, "validation", tasks, point))
        out.append(f"### {method} ({len(front)} of {len(members)} points on the front)\n")
        header = ["run", "low rate", "τ", "learning rate", "seed", "N1"]
        header += [f"val loss {t}" for t in tasks]
        body = []
        for run in front:
            info = run.info
            body.append(
                [
                    run.name,
                    _rate(info.get("low_rate")),
                    _rate(info.get("tau")),
                    _rate(info.get("learning_rate")),
                    _num(info.get("seed")),
                    _num(info.get("pretrain_steps")),
                ]
                + [_num(x) for x in run_point(run, "validation", tasks, point)]
            )
        out.append(markdown_table(header, body) if body else "_No point with finite losses._")
        out.append("")
    return out


def render_markdown(
    runs: Sequence[Run],
    roles: Roles,
    *,
    dirs: Sequence[str],
    point: str,
    figures: Sequence[plots.FigureFile] | None,
    lead: Sequence[str] = (),
) -> str:
    """The text of report.md; `lead` lines (e.g. computed verdicts) come right after the
    title."""
    usable = [r for r in runs if r.records]
    kinds = {k: sum(r.kind == k for r in runs) for k in ("point", "shared", "run")}
    point_text = (
        "its final eval (`--point final`)"
        if point == "final"
        else "each task's best eval (`--point best`)"
    )
    lines = [
        "# ptjf report",
        "",
        *lead,
        *([""] if lead else []),
        "## Runs",
        "",
        f"Runs from {', '.join(f'`{d}`' for d in dirs)}: {len(runs)} runs "
        f"({kinds['point']} sweep points, {kinds['shared']} shared pre-trainings, "
        f"{kinds['run']} other runs).",
        f"High-resource task(s): {', '.join(f'`{t}`' for t in roles.high) or '—'}; "
        f"low-resource task(s): {', '.join(f'`{t}`' for t in roles.low) or '—'}.",
        f"A run's point is {point_text}. Every eval is in `results.csv`; one row per run, with "
        "front flags, in `points.csv`.",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {n}" for n in _notes(runs, roles, point)]
    lines += ["", *seeds_markdown(group_configs(usable), roles.tasks, point)]
    lines += [
        "## Pareto front per method",
        "",
        f"Validation losses over all {len(roles.tasks)} tasks. A point is on its method's front "
        "when no other point of the method is at least as good on every task and better on one "
        "(paper §2). Shared pre-trainings are on no front.",
        "",
    ]
    lines += _front_sections(usable, roles, point)
    lines += [
        "## Best low-resource validation loss per method",
        "",
        *_best_low_markdown(usable, roles, point),
        "",
        "## Examples seen by each method's best run",
        "",
        "Each method's run with the lowest low-resource validation loss; counts at its last eval.",
        "",
        _seen_markdown(usable, roles, point),
        "",
    ]
    if has_bleu(usable):
        header, body = _best_bleu_table(best_bleu_rows(usable, roles, point), roles)
        lines += [
            "## Best BLEU per method",
            "",
            "Validation corpus BLEU (beam search, sacrebleu) at each run's "
            + ("last eval with BLEU" if point == "final" else "best BLEU eval per task")
            + "; the run with the highest low-resource BLEU per method. `ptjf eval "
            "--sweep_dir` scores the final checkpoints of a sweep trained without BLEU.",
            "",
            markdown_table(header, body),
            "",
        ]
    lines += ["## Figures", ""]
    if figures is None:
        lines.append("Not drawn (`--no_figures`).")
    for fig in figures or ():
        if fig.path:
            lines += [f"### {fig.title}", "", f"![{fig.title}]({fig.file})", ""]
    skipped = [f for f in figures or () if not f.path]
    if skipped:
        lines += ["### Not drawn", ""]
        lines += [f"- `{f.file}`: {f.skipped}." for f in skipped]
    return "\n".join(lines).rstrip() + "\n"


def _best_low_markdown(runs: Sequence[Run], roles: Roles, point: str) -> list[str]:
    header, body = _best_low_table(best_low_rows(runs, roles, point), roles)
    return [markdown_table(header, body)]


def _seen_markdown(runs: Sequence[Run], roles: Roles, point: str) -> str:
    best = best_runs(runs, roles.low or roles.tasks, point)
    header = ["method", "run"]
    header += [f"examples {t}" for t in roles.tasks] + [f"tokens {t}" for t in roles.tasks]
    body = []
    for method, run in best.items():
        examples, tokens = final_seen(run, "examples_seen"), final_seen(run, "tokens_seen")
        body.append(
            [method, run.name]
            + [_num(examples.get(t)) for t in roles.tasks]
            + [_num(tokens.get(t)) for t in roles.tasks]
        )
    return markdown_table(header, body) if body else "_No method has a run with finite losses._"


# --- the entry point --------------------------------------------------------------------------


def write_report(
    dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    point: str = "final",
    figures: bool = True,
    sizes: Mapping[str, float] | Callable[[Sequence[str]], Mapping[str, float]] | None = None,
) -> str:
    """Writes results.csv, points.csv, configs.csv, report.md and the figures into `out`;
    returns a summary.

    `out` defaults to `<first dir>/report`. `sizes` (training examples per task, or a function
    of the tasks that returns them) tells a high + low study from a high + high one for the
    verdicts; without it those claims are not tested. The summary (for the terminal) is the
    verdicts, the best low-resource validation loss per method and where the report went.
    """
    if point not in POINTS:
        raise DataError(f"point={point!r}: choose 'final' (each run's last eval) or 'best'.")
    dirs = [os.fspath(d) for d in ([dirs] if isinstance(dirs, (str, os.PathLike)) else dirs)]
    if not dirs:
        raise DataError("No directories given: pass sweep directories or MODEL_DIRs.")
    out = storage.check_uri(os.fspath(out) if out is not None else storage.join(dirs[0], "report"))
    runs = load_runs(dirs)
    usable = [r for r in runs if r.records]
    if not usable:
        raise DataError(
            f"The {len(runs)} run(s) under {', '.join(dirs)} have no eval record yet "
            "(metrics.jsonl is empty or unreadable); rerun the report after their first eval."
        )
    check_comparable(usable)  # before OUT exists: a refused report leaves nothing behind
    roles = task_roles(usable)
    configs = group_configs(usable)
    task_sizes = sizes(roles.tasks) if callable(sizes) else sizes
    claims = judge(configs, roles, task_sizes, point)
    lead = render_claims(
        claims,
        kind=study_kind(roles, task_sizes),
        seeds=fewest_seeds(configs),
        measure=point,
        rule=DOMINANCE_RULE,
    )
    storage.makedirs(out)
    write_csv(results_table(usable), storage.join(out, "results.csv"), TABLE_COLUMNS)
    write_csv(points_table(usable, roles, point), storage.join(out, "points.csv"))
    rows = configs_table(configs, roles.tasks, point)
    write_csv(rows, storage.join(out, "configs.csv"), () if rows else ("method", "label"))
    drawn = report_figures.draw_figures(usable, roles, out, point=point) if figures else None
    text = render_markdown(runs, roles, dirs=dirs, point=point, figures=drawn, lead=lead)
    report_path = storage.join(out, "report.md")
    storage.write_text(report_path, text)
    return _summary(runs, usable, roles, point, report_path, drawn, claims)


def _summary(
    runs: Sequence[Run],
    usable: Sequence[Run],
    roles: Roles,
    point: str,
    report_path: str,
    drawn: Sequence[plots.FigureFile] | None,
    claims: Sequence[Claim] = (),
) -> str:
    n_figs = sum(1 for f in drawn or () if f.path)
    header, body = _best_low_table(best_low_rows(usable, roles, point), roles)
    lines = [
        f"Best low-resource validation loss per method ({point} point of each run):",
        text_table(header, body, left=3),
        "",
        f"Report: {report_path} ({len(runs)} runs; results.csv, points.csv, configs.csv, "
        f"{n_figs} figures).",
    ]
    if has_bleu(usable):
        header, body = _best_bleu_table(best_bleu_rows(usable, roles, point), roles)
        lines[2:2] = ["", "Best low-resource BLEU per method:", text_table(header, body, left=3)]
    tested = [c for c in claims if c.verdict is not None]
    if tested:
        verdicts = ["Verdicts (report.md gives the numbers behind them):"]
        verdicts += [f"  {c.number}. {c.verdict}: {c.statement}" for c in tested] + [""]
        lines[-1:-1] = verdicts
    broken = sum(len(r.broken_lines) for r in runs)
    if broken:
        lines.append(f"Skipped {broken} broken metrics line(s); report.md names them.")
    return "\n".join(lines)

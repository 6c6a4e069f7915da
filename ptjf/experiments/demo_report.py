"""`ptjf demo`'s report: loss curves, the trade-off plane and report.md, from numbers given.

Functions take eval records / summarize() rows and write PNGs through `plots.save_figure` (local
or `gs://`), so they are testable on fabricated data and draw without a display.

* `curves_figure`: one task, validation (solid) and training-subset (dashed) loss against global
  step, every method on the same axes: the gap between the two is overfitting, and a rising
  validation curve is its cost.
* `tradeoff_figure`: each method's final point and best point on the plane x = high-resource
  validation loss, y = low-resource validation loss (lower-left is better on both). The best
  point takes each task's own minimum, which may come from different evals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.lines import Line2D

from ptjf import storage
from ptjf.experiments.plots import NoData, method_styles, new_figure, safe_name, save_figure

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
_SPLITS = (("validation", "-", "validation"), ("train_subset", "--", "training subset"))
_SIZE = (7.0, 4.8)  # inches: room for long task names in titles and labels
MEASURES = ("final", "best")


def loss_points(
    records: Sequence[Mapping[str, Any]], split: str, task: str
) -> list[tuple[int, float]]:
    """(global_step, loss) of every record that scored `task` on `split`, finite losses only."""
    out = []
    for r in records:
        scores = (r.get(split) or {}).get(task)
        if isinstance(scores, Mapping) and "loss" in scores:
            loss = float(scores["loss"])
            if math.isfinite(loss):
                out.append((int(r["global_step"]), loss))
    return out


def stage_switches(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Global steps at which the records' stage changes (PTJF's pre-train → joint switch)."""
    steps, previous = [], None
    for r in records:
        stage = r.get("stage")
        if previous is not None and stage != previous:
            steps.append(int(r["global_step"]))
        previous = stage
    return steps


def curves_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], task: str, path: str) -> str:
    """Validation and training-subset loss of `task` vs global step for every method."""
    styles = method_styles(list(runs))
    fig, [[ax]] = new_figure(1, 1)
    fig.set_size_inches(*_SIZE)
    for method, records in runs.items():
        color = styles[method][0]
        for split, linestyle, label in _SPLITS:
            pts = loss_points(records, split, task)
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    color=color,
                    linestyle=linestyle,
                    marker=".",
                    label=f"{method}, {label}",
                )
        for step in stage_switches(records):
            ax.axvline(step, color=color, linestyle=":", linewidth=0.8)
    if not ax.lines:
        raise NoData(f"no method has a finite loss on {task} at any eval")
    ax.set_xlabel("global step", fontsize=8)
    ax.set_ylabel("loss (nats per token)", fontsize=8)
    ax.set_title(
        f"{task}\nsolid: validation, dashed: training subset (the gap: overfitting); "
        "dotted: stage switch",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def tradeoff_figure(rows: Sequence[Mapping[str, Any]], high: str, low: str, path: str) -> str:
    """Each method's final (filled) and best (hollow) validation losses, high on x, low on y."""
    losses = {(r["method"], r["task"]): r for r in rows}
    names = list(dict.fromkeys(r["method"] for r in rows))
    styles = method_styles(names)
    fig, [[ax]] = new_figure(1, 1)
    fig.set_size_inches(*_SIZE)
    drawn = 0
    for method in names:
        if (method, high) not in losses or (method, low) not in losses:
            continue
        color, marker = styles[method]
        points = {
            m: (float(losses[method, high][m]), float(losses[method, low][m])) for m in MEASURES
        }
        same = points["best"] == points["final"]
        for measure, face, offset in (("final", color, (6, 4)), ("best", "none", (6, -10))):
            x, y = points[measure]
            if math.isfinite(x) and math.isfinite(y):
                ax.scatter([x], [y], marker=marker, s=70, edgecolors=color, facecolors=face)
                if measure == "final" or not same:
                    label = f"{method} final = best" if same else f"{method} {measure}"
                    ax.annotate(
                        label, (x, y), fontsize=7, xytext=offset, textcoords="offset points"
                    )
                drawn += 1
    if not drawn:
        raise NoData(f"no method has finite validation losses on both {high} and {low}")
    handles = [
        Line2D([], [], linestyle="", marker=styles[m][1], color=styles[m][0], label=m)
        for m in names
    ] + [
        Line2D([], [], linestyle="", marker="o", color="gray", label="final (last eval)"),
        Line2D([], [], linestyle="", marker="o", color="gray", markerfacecolor="none",
               label="best (each task's minimum)"),
    ]  # fmt: skip
    ax.legend(handles=handles, fontsize=7)
    ax.set_xlabel(f"validation loss, {high} (high-resource)", fontsize=8)
    ax.set_ylabel(f"validation loss, {low} (low-resource)", fontsize=8)
    ax.set_title("Trade-off plane (lower-left is better on both tasks)", fontsize=9)
    return save_figure(fig, path)


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """Where the report went: report.md, the figures drawn, and the figures skipped and why."""

    path: str
    figures: tuple[str, ...]
    skipped: tuple[str, ...] = ()


def write_report(
    model_dir: str,
    *,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    rows: Sequence[Mapping[str, Any]],
    high: str,
    low: str,
    verdict: str,
    table: str,
) -> DemoReport:
    """Draws the figures under `model_dir/figures/` and writes `model_dir/report.md`: the
    verdict first, then the table, then the figures (linked by relative path)."""
    fig_dir = storage.join(model_dir, FIGURES_DIR)
    storage.makedirs(fig_dir)
    tasks = list(dict.fromkeys(r["task"] for r in rows)) or [high, low]
    planned = [
        (f"curves_{safe_name(t)}.png", f"Loss curves: {t}", curves_figure, (runs, t)) for t in tasks
    ] + [("tradeoff.png", "Trade-off plane", tradeoff_figure, (rows, high, low))]
    body = ["# `ptjf demo`: PTJF vs scalarization", "", "```", verdict, "```", ""]
    body += ["## Validation loss per task", "", "```", table, "```", ""]
    figures, skipped = [], []
    for name, title, draw, args in planned:
        body += [f"## {title}", ""]
        try:
            figures.append(draw(*args, storage.join(fig_dir, name)))
            body += [f"![{title}]({FIGURES_DIR}/{name})", ""]
        except NoData as e:
            skipped.append(f"{name}: {e}")
            body += [f"Not drawn: {e}.", ""]
    path = storage.join(model_dir, REPORT_FILE)
    storage.write_text(path, "\n".join(body))
    return DemoReport(path, tuple(figures), tuple(skipped))

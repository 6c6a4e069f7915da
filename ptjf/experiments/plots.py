"""The paper's figures from a sweep's runs (matplotlib, no display needed).

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot, so drawing needs
no GUI backend and leaves no global state behind (a report inside a notebook or a test run
draws the same files). A figure whose data is missing is not drawn: its function raises
`NoData` with the reason, which the report prints in place of the figure.

Conventions follow the paper: trade-off fronts put the high-resource task's loss on x and the
low-resource task's on y, validation left and training right (Fig. 1-2, 10-13), with the
restart baseline's points bordered in black; rates as colours (Fig. 14-19); examples seen vs
loss on log-log axes for each method's best run (Fig. 3, 20-25); transfer learning's forgetting
(Fig. 6); best loss vs pre-training length (Fig. 9). BLEU fronts (App. A.5) are drawn by
`ptjf.experiments.plots_bleu`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
from collections.abc import Sequence

from matplotlib import cm, colormaps, colors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ptjf import storage
from ptjf.experiments.pareto import front_curve
from ptjf.experiments.report_seeds import seed_points
from ptjf.experiments.results import (
    SPLITS,
    Roles,
    Run,
    best_runs,
    methods,
    points_of,
    run_point,
    split_losses,
)
from ptjf.experiments.seeds import group_configs

_COLORS = {
    "ptjf": "tab:red",
    "scalarization": "tab:blue",
    "restart": "tab:green",
    "temperature": "tab:orange",
    "unimax": "tab:purple",
    "transfer": "tab:brown",
    "rate_schedule": "tab:cyan",
    "temperature_cooldown": "tab:olive",
    "ptjf_multi": "tab:pink",
}
_SPARE_COLORS = ("tab:gray", "gold", "navy", "teal", "salmon", "indigo")
_MARKERS = {
    "ptjf": "^",
    "scalarization": "o",
    "restart": "s",
    "temperature": "D",
    "unimax": "P",
    "transfer": "X",
    "rate_schedule": "v",
    "temperature_cooldown": "<",
    "ptjf_multi": "*",
}
_SPARE_MARKERS = (">", "h", "p", "d", "8", "H")
_SPLIT_LABEL = {"validation": "validation", "train_subset": "training subset"}
_PANEL = (4.4, 3.4)  # inches per panel: small files, quick to draw
_DPI = 100


class NoData(Exception):  # noqa: N818 - a reason to skip a figure, not an error
    """The runs lack what a figure shows; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class FigureFile:
    """One figure of the report: its file name, what it shows, and where it went or why not."""

    file: str
    title: str
    path: str | None = None
    skipped: str | None = None


# --- styles and small helpers -----------------------------------------------------------------


def method_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per method: the paper's methods fixed, others from spare ones."""
    out = {}
    for i, m in enumerate(n for n in names if n not in _COLORS):
        out[m] = (_SPARE_COLORS[i % len(_SPARE_COLORS)], _SPARE_MARKERS[i % len(_SPARE_MARKERS)])
    for m in names:
        if m in _COLORS:
            out[m] = (_COLORS[m], _MARKERS[m])
    return out


def safe_name(task: str) -> str:
    """A task name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def new_figure(nrows: int, ncols: int) -> tuple[Figure, list[list]]:
    """A figure of nrows × ncols panels of the report's size, without pyplot."""
    # Constrained layout places titles, legends and colorbars without overlaps.
    fig = Figure(
        figsize=(_PANEL[0] * ncols, _PANEL[1] * nrows + 0.5), dpi=_DPI, layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [list(row) for row in axes]


def save_figure(fig: Figure, path: str) -> str:
    """Writes the figure at the report's resolution, to a local file or `gs://` (drawn in
    memory, then uploaded whole); returns `path`."""
    if storage.is_remote(path):
        data = io.BytesIO()
        fig.savefig(data, dpi=_DPI, format=os.path.splitext(path)[1].lstrip(".") or "png")
        storage.write_bytes(path, data.getvalue())
    else:
        fig.savefig(path, dpi=_DPI)
    return path


def high_label(roles: Roles) -> str:
    """The x axis's task: the high-resource task, or the mean of several."""
    if len(roles.high) == 1:
        return roles.high[0]
    return "mean of " + ", ".join(roles.high)


def _xy(run: Run, split: str, roles: Roles, low: str, point: str) -> tuple[float, float]:
    """(high-resource loss, loss of `low`) at the run's point; the mean over several high tasks."""
    highs = run_point(run, split, roles.high, point)
    (y,) = run_point(run, split, [low], point)
    return sum(highs) / len(highs), y


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def _point_label(point: str) -> str:
    return "final eval of each run" if point == "final" else "each task's best eval of each run"


def _needs_two_roles(roles: Roles) -> None:
    if not roles.high or not roles.low:
        raise NoData(
            "the runs have a single task; a trade-off front needs a high- and a low-resource task"
        )


# --- trade-off fronts -------------------------------------------------------------------------


def plot_fronts(runs: Sequence[Run], roles: Roles, path: str, *, point: str = "final") -> str:
    """Each method's points and its front (`front_curve`), validation left, training right.

    A method whose configurations have ≥ 2 seeds is drawn at its configurations' means with
    the seeds' min–max as error bars on both axes, its front through the means.
    """
    _needs_two_roles(roles)
    names = methods(runs)
    styles = method_styles(names)
    configs = group_configs(runs)
    fig, axes = new_figure(len(roles.low), len(SPLITS))
    drawn = 0
    for row, low in enumerate(roles.low):
        for col, split in enumerate(SPLITS):
            ax = axes[row][col]
            for m in names:
                color, marker = styles[m]
                mine = [c for c in configs if c.method == m]
                if any(len(c.runs) >= 2 for c in mine):
                    pts = _draw_seed_points(
                        ax, seed_points(mine, split, roles, low, point), m, styles
                    )
                else:
                    pts = [_xy(r, split, roles, low, point) for r in points_of(runs, m)]
                    pts = [p for p in pts if _finite(*p)]
                    if pts:
                        edge = {"edgecolors": "black", "linewidths": 1.2} if m == "restart" else {}
                        ax.scatter(
                            *zip(*pts, strict=True), c=color, marker=marker, s=30, label=m, **edge
                        )
                if not pts:
                    continue
                drawn += 1
                curve = front_curve(pts)
                ax.plot(*zip(*curve, strict=True), color=color, linewidth=1.2, alpha=0.8)
            ax.set_title(f"{_SPLIT_LABEL[split]}: {low}", fontsize=9)
            ax.set_xlabel(f"{_SPLIT_LABEL[split]} loss, {high_label(roles)}", fontsize=8)
            ax.set_ylabel(f"{_SPLIT_LABEL[split]} loss, {low}", fontsize=8)
            if ax.collections or ax.containers:
                ax.legend(fontsize=7)
    if not drawn:
        raise NoData("no run has finite losses on both the high- and the low-resource task")
    fig.suptitle(f"Trade-off fronts per method ({_point_label(point)})", fontsize=10)
    return save_figure(fig, path)


def _draw_seed_points(ax, points, method: str, styles) -> list[tuple[float, float]]:
    """Configurations at their means with min–max error bars; returns the means (the front's
    points)."""
    color, marker = styles[method]
    edge = "black" if method == "restart" else color
    for i, p in enumerate(points):
        xerr, yerr = p.errors()
        ax.errorbar(
            [p.x.mean],
            [p.y.mean],
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            color=color,
            markeredgecolor=edge,
            markersize=5,
            elinewidth=0.8,
            capsize=2,
            label=method if i == 0 else None,
        )
    return [(p.x.mean, p.y.mean) for p in points]


def plot_fronts_by_rate(
    runs: Sequence[Run], roles: Roles, path: str, *, point: str = "final"
) -> str:
    """The fronts' points coloured by the low-resource sampling rate, shaped by method."""
    _needs_two_roles(roles)
    names = methods(runs)
    styles = method_styles(names)
    rates = [
        rate
        for low in roles.low
        for m in names
        for r in points_of(runs, m)
        if (rate := r.task_rate(low)) is not None
    ]
    if not rates:
        raise NoData("no point has a sampling rate for a low-resource task (point.json low_rate)")
    norm = colors.Normalize(min(rates), max(rates) if max(rates) > min(rates) else min(rates) + 1)
    cmap = colormaps["viridis"]
    fig, axes = new_figure(len(roles.low), len(SPLITS))
    drawn = 0
    for row, low in enumerate(roles.low):
        for col, split in enumerate(SPLITS):
            ax = axes[row][col]
            for m in names:
                _, marker = styles[m]
                for r in points_of(runs, m):
                    x, y = _xy(r, split, roles, low, point)
                    if not _finite(x, y):
                        continue
                    rate = r.task_rate(low)
                    face = "lightgray" if rate is None else cmap(norm(rate))
                    edge = "black" if m == "restart" else "none"
                    ax.scatter([x], [y], color=face, marker=marker, s=36, edgecolors=edge)
                    drawn += 1
            ax.set_title(f"{_SPLIT_LABEL[split]}: {low}", fontsize=9)
            ax.set_xlabel(f"{_SPLIT_LABEL[split]} loss, {high_label(roles)}", fontsize=8)
            ax.set_ylabel(f"{_SPLIT_LABEL[split]} loss, {low}", fontsize=8)
            handles = [
                Line2D([], [], linestyle="", marker=styles[m][1], color="gray", label=m)
                for m in names
            ]
            if any(r.task_rate(low) is None for m in names for r in points_of(runs, m)):
                handles.append(_no_rate_handle())
            ax.legend(handles=handles, fontsize=7)
        bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[row])
        bar.set_label(f"sampling rate of {low}", fontsize=8)
    if not drawn:
        raise NoData("no run has finite losses on both the high- and the low-resource task")
    fig.suptitle(
        f"Trade-off points by low-resource sampling rate ({_point_label(point)})", fontsize=10
    )
    return save_figure(fig, path)


def _no_rate_handle() -> Line2D:
    return Line2D([], [], linestyle="", marker="s", color="lightgray", label="no fixed rate")


# --- efficiency, transfer, pre-training length, curves ----------------------------------------


def plot_efficiency(
    runs: Sequence[Run], roles: Roles, task: str, path: str, *, point: str = "final"
) -> str:
    """Examples seen of `task` vs its validation loss (log-log) for each method's best run."""
    best = best_runs(runs, roles.low or roles.tasks, point)
    if not best:
        raise NoData("no method has a run with finite low-resource validation losses")
    styles = method_styles(list(best))
    fig, [[ax]] = new_figure(1, 1)
    for m, run in best.items():
        pts = [(x, y) for x, y in _seen_vs_loss(run, task) if x > 0 and _finite(y) and y > 0]
        if pts:
            color, marker = styles[m]
            ax.plot(
                *zip(*pts, strict=True), color=color, marker=marker, ms=3, label=f"{m}: {run.name}"
            )
    if not ax.lines:
        raise NoData(f"no best run saw any {task} example before an eval with a finite loss")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 4.2, not 4.2×10⁰, on a narrow loss range
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"{task} examples seen", fontsize=8)
    ax.set_ylabel(f"validation loss, {task}", fontsize=8)
    ax.set_title(f"Data efficiency on {task}\n(each method's best low-resource run)", fontsize=9)
    ax.legend(fontsize=6)
    return save_figure(fig, path)


def _seen_vs_loss(run: Run, task: str) -> list[tuple[float, float]]:
    """(examples of `task` seen, its validation loss) at each eval that scored it."""
    out = []
    for r in run.records:
        scores = (r.get("validation") or {}).get(task)
        if isinstance(scores, dict) and "loss" in scores:
            seen = float((r.get("examples_seen") or {}).get(task) or 0)
            out.append((seen, _as_float(scores["loss"])))
    return out


def _as_float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _loss_curves(ax, run: Run, task: str, split: str, **style) -> None:
    pts = [(s, y) for s, y in split_losses(run, split, task) if _finite(y)]
    if pts:
        ax.plot(*zip(*pts, strict=True), **style)


def plot_transfer(runs: Sequence[Run], roles: Roles, path: str, *, point: str = "final") -> str:
    """Best transfer run (fine-tune on the low-resource task alone) vs best PTJF run (Fig. 6)."""
    if not points_of(runs, "transfer"):
        raise NoData("no transfer points (sweep method 'transfer')")
    best = best_runs(runs, roles.low or roles.tasks, point)
    chosen = [(m, best[m]) for m in ("transfer", "ptjf") if m in best]
    if not any(m == "transfer" for m, _ in chosen):
        raise NoData("every transfer point diverged (no finite low-resource validation loss)")
    styles = method_styles([m for m, _ in chosen])
    fig, axes = new_figure(1, len(roles.tasks))
    for ax, task in zip(axes[0], roles.tasks, strict=True):
        for m, run in chosen:
            _loss_curves(ax, run, task, "validation", color=styles[m][0], label=f"{m}: {run.name}")
        n1 = dict(chosen)["transfer"].info.get("pretrain_steps")
        if n1:
            ax.axvline(n1, color="gray", linestyle="--", linewidth=0.8, label="end of pre-training")
        role = "low" if task in roles.low else "high"
        ax.set_title(f"{task} ({role}-resource)", fontsize=9)
        ax.set_xlabel("global step", fontsize=8)
        ax.set_ylabel("validation loss", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("Fine-tuning on the low-resource task alone vs joint fine-tuning", fontsize=10)
    return save_figure(fig, path)


def plot_pretrain_length(
    runs: Sequence[Run], roles: Roles, path: str, *, point: str = "final"
) -> str:
    """Each task's best PTJF validation loss vs pre-training steps N1 (Fig. 9)."""
    ptjf = [
        r
        for r in points_of(runs, "ptjf")
        if r.info.get("pretrain_steps") is not None
        and _finite(*run_point(r, "validation", roles.tasks, point))
    ]
    lengths = sorted({int(r.info["pretrain_steps"]) for r in ptjf})
    if len(lengths) < 2:
        raise NoData(
            f"PTJF points with finite losses have {len(lengths)} distinct pre-training "
            "length(s); the figure needs 2 or more (Sweep.pretrain_steps)"
        )
    fig, axes = new_figure(1, len(roles.tasks))
    for ax, task in zip(axes[0], roles.tasks, strict=True):
        pts = []
        for n1 in lengths:
            losses = [
                run_point(r, "validation", [task], point)[0]
                for r in ptjf
                if r.info["pretrain_steps"] == n1
            ]
            pts.append((n1, min(losses)))
        ax.plot(*zip(*pts, strict=True), marker="o", color=_COLORS["ptjf"])
        ax.set_xticks(lengths)
        role = "low" if task in roles.low else "high"
        ax.set_title(f"{task} ({role}-resource)", fontsize=9)
        ax.set_xlabel("pre-training steps", fontsize=8)
        ax.set_ylabel("best validation loss over rates", fontsize=8)
    fig.suptitle(f"PTJF: pre-training length vs best loss ({_point_label(point)})", fontsize=10)
    return save_figure(fig, path)


def plot_curves(runs: Sequence[Run], roles: Roles, path: str, *, point: str = "final") -> str:
    """Loss vs global step of every point, one panel per (split, task), coloured by method."""
    del point  # every eval is drawn
    names = methods(runs)
    chosen = [r for m in names for r in points_of(runs, m)] or [r for r in runs if r.records]
    if not chosen or not roles.tasks:
        raise NoData("no run has an eval record")
    styles = method_styles(list(dict.fromkeys(r.method for r in chosen)))
    fig, axes = new_figure(len(SPLITS), len(roles.tasks))
    for row, split in enumerate(SPLITS):
        for col, task in enumerate(roles.tasks):
            ax = axes[row][col]
            for r in chosen:
                _loss_curves(ax, r, task, split, color=styles[r.method][0], lw=0.9, alpha=0.7)
            ax.set_title(f"{_SPLIT_LABEL[split]}: {task}", fontsize=9)
            ax.set_xlabel("global step", fontsize=8)
            ax.set_ylabel(f"{_SPLIT_LABEL[split]} loss", fontsize=8)
            handles = [Line2D([], [], color=c, label=m) for m, (c, _) in styles.items()]
            ax.legend(handles=handles, fontsize=6)
    if not any(ax.lines for row in axes for ax in row):
        raise NoData("no run has a finite loss at any eval")
    fig.suptitle(
        "Loss curves of every run (overfitting shows as a rising validation loss)", fontsize=10
    )
    return save_figure(fig, path)

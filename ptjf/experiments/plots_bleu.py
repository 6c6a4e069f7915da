"""BLEU in the report: each run's BLEU point and the BLEU trade-off fronts (paper App. A.5).

BLEU comes from eval records that carry "bleu" ({task: corpus BLEU} on validation): the
trainer's with EVAL_BLEU = True, or the one `ptjf eval` appends for a final checkpoint. A run's
*final* BLEU point is its last eval that has BLEU — normally the final eval, whose record `ptjf
eval` replaces — and its *best* point each task's highest BLEU over its evals. Larger is better,
so fronts are computed on negated BLEU (`ptjf.experiments.pareto` minimises).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from ptjf.experiments import plots
from ptjf.experiments.pareto import front_curve
from ptjf.experiments.results import Roles, Run, methods, points_of

FRONTS_FILE = "fronts_bleu.png"
NO_BLEU = (
    "no run has BLEU scores (score final checkpoints with `ptjf eval --sweep_dir=SWEEP`, or "
    "train with EVAL_BLEU = True)"
)


def _as_float(x: object) -> float:
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def bleu_evals(run: Run, task: str) -> list[tuple[int, float]]:
    """(global_step, BLEU of `task`) of every eval that scored it."""
    out = []
    for r in run.records:
        bleu = r.get("bleu")
        if isinstance(bleu, Mapping) and task in bleu:
            out.append((int(r["global_step"]), _as_float(bleu[task])))
    return out


def bleu_at(run: Run, task: str, point: str = "final") -> tuple[int | None, float]:
    """(global step, BLEU) of `task` at the run's final or best BLEU eval; (None, NaN) if none."""
    evals = bleu_evals(run, task)
    if point == "best":
        evals = [(s, b) for s, b in evals if not math.isnan(b)]
        return max(evals, key=lambda sb: sb[1]) if evals else (None, math.nan)
    return evals[-1] if evals else (None, math.nan)


def run_bleu(run: Run, tasks: Sequence[str], point: str = "final") -> list[float]:
    """Each task's BLEU at the run's point (NaN where it has none)."""
    return [bleu_at(run, t, point)[1] for t in tasks]


def has_bleu(runs: Sequence[Run]) -> bool:
    """Whether any eval of any run carries BLEU."""
    return any(
        isinstance(r.get("bleu"), Mapping) and r["bleu"] for run in runs for r in run.records
    )


def _xy(run: Run, roles: Roles, low: str, point: str) -> tuple[float, float]:
    """(high-resource BLEU — the mean over several high tasks —, BLEU of `low`)."""
    highs = run_bleu(run, roles.high, point)
    (y,) = run_bleu(run, [low], point)
    return sum(highs) / len(highs), y


def bleu_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (high BLEU, low BLEU) points, larger being better, by falling x.

    `front_curve` minimises, so it runs on the negated scores.
    """
    return [(-x, -y) for x, y in front_curve([(-x, -y) for x, y in points])]


def plot_fronts_bleu(runs: Sequence[Run], roles: Roles, path: str, *, point: str = "final") -> str:
    """Each method's BLEU points and front: high-resource BLEU on x, low-resource on y."""
    if not has_bleu(runs):
        raise plots.NoData(NO_BLEU)
    if not roles.high or not roles.low:
        raise plots.NoData(
            "the runs have a single task; a trade-off front needs a high- and a low-resource task"
        )
    names = methods(runs)
    styles = plots.method_styles(names)
    fig, axes = plots.new_figure(len(roles.low), 1)
    drawn = 0
    for row, low in enumerate(roles.low):
        ax = axes[row][0]
        for m in names:
            color, marker = styles[m]
            pts = [_xy(r, roles, low, point) for r in points_of(runs, m)]
            pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
            if not pts:
                continue
            drawn += 1
            edge = {"edgecolors": "black", "linewidths": 1.2} if m == "restart" else {}
            ax.scatter(*zip(*pts, strict=True), c=color, marker=marker, s=30, label=m, **edge)
            ax.plot(*zip(*bleu_front(pts), strict=True), color=color, linewidth=1.2, alpha=0.8)
        ax.set_title(f"validation BLEU: {low}", fontsize=9)
        ax.set_xlabel(f"BLEU, {plots.high_label(roles)}", fontsize=8)
        ax.set_ylabel(f"BLEU, {low}", fontsize=8)
        if ax.collections:
            ax.legend(fontsize=7)
    if not drawn:
        raise plots.NoData("no point has BLEU on both the high- and the low-resource task")
    what = "last eval with BLEU" if point == "final" else "each task's best BLEU"
    fig.suptitle(f"BLEU trade-off fronts per method ({what} of each run)", fontsize=10)
    return plots.save_figure(fig, path)


def bleu_figure_job(
    runs: Sequence[Run], roles: Roles, *, point: str = "final"
) -> tuple[str, str, Callable[[str], str]]:
    """The (file, title, draw) job of the BLEU fronts, for `plots.draw_figures`."""
    return (
        FRONTS_FILE,
        "BLEU trade-off fronts per method",
        lambda p: plot_fronts_bleu(runs, roles, p, point=point),
    )

"""The report over seeds: `configs.csv`, report.md's "Over seeds" section, error-bar points.

A sweep point run with several seeds is one *configuration* (`ptjf.experiments.seeds`); its
seeds' spread is what a rerun could move its numbers by, so the report gives each
configuration's mean, range and (from 3 seeds) 95% interval, draws fronts at the means, and
calls one configuration better than another only beyond the spread (`DOMINANCE_RULE`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ptjf.experiments.pareto import pareto_front
from ptjf.experiments.results import Roles, run_point
from ptjf.experiments.seeds import (
    DOMINANCE_RULE,
    MEASURES,
    MIN_SEEDS_FOR_INTERVAL,
    Config,
    Spread,
    dominates_beyond_spread,
    fewest_seeds,
)

SWEPT_COLUMNS = ("low_rate", "tau", "max_epochs", "learning_rate", "pretrain_steps")
STATS = ("mean", "min", "max", "ci95_low", "ci95_high")
ONE_SEED_WARNING = "one seed: no difference is beyond the spread; verdicts are undecided"


# --- tables -----------------------------------------------------------------------------------


def front_at_means(configs: Sequence[Config], tasks: Sequence[str], point: str) -> list[bool]:
    """Per configuration: whether its means are on its method's Pareto front (NaN: never)."""
    flags = [False] * len(configs)
    if not tasks:
        return flags
    by_method: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_method.setdefault(c.method, []).append(i)
    for members in by_method.values():
        front = set(pareto_front([configs[i].means(tasks, point) for i in members]))
        for j, i in enumerate(members):
            flags[i] = j in front
    return flags


def dominated_by(configs: Sequence[Config], tasks: Sequence[str], point: str) -> list[list[Config]]:
    """Per configuration: the other methods' configurations that dominate it beyond the spread
    (a method's own configurations are compared by its front)."""
    return [
        [
            other
            for other in configs
            if other.method != c.method and dominates_beyond_spread(other, c, tasks, point)
        ]
        for c in configs
    ]


def _stats(spread: Spread) -> dict[str, float | None]:
    interval = spread.ci95
    return {
        "mean": spread.mean,
        "min": spread.min,
        "max": spread.max,
        "ci95_low": interval[0] if interval else None,
        "ci95_high": interval[1] if interval else None,
    }


def configs_table(
    configs: Sequence[Config], tasks: Sequence[str], point: str = "final"
) -> list[dict[str, Any]]:
    """One row per configuration (configs.csv): its swept settings, seeds, the spread of each
    task's validation loss (final and best evals) and mean training-subset loss, whether it is
    on its method's front at the means (`point`), and who dominates it beyond the spread."""
    on_front = front_at_means(configs, tasks, point)
    beaten = dominated_by(configs, tasks, point)
    rows = []
    for config, flag, others in zip(configs, on_front, beaten, strict=True):
        info = config.info
        row: dict[str, Any] = {"method": config.method, "label": config.label}
        row.update({key: info.get(key) for key in SWEPT_COLUMNS})
        row["n_seeds"] = len(config.runs)
        row["seeds"] = ";".join(str(s) for s in config.seeds)
        for task in tasks:
            for measure in MEASURES:
                for stat, value in _stats(config.spread(task, measure)).items():
                    row[f"{measure}_val_loss_{stat}/{task}"] = value
            row[f"final_train_loss_mean/{task}"] = config.spread(task, "final", "train_subset").mean
        row["on_front"] = flag
        row["dominated_by"] = ";".join(o.label for o in others)
        rows.append(row)
    return rows


# --- report.md --------------------------------------------------------------------------------


def _n(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else str(x)


def _cell(spread: Spread) -> str:
    """ "mean [min–max]"; one seed: its value; a diverged seed: how many of them."""
    if spread.diverged:
        bad = spread.n - len(spread.finite)
        return f"diverged ({bad} of {spread.n} seeds)"
    if spread.n == 1:
        return _n(spread.mean)
    return f"{_n(spread.mean)} [{_n(spread.min)}–{_n(spread.max)}]"


def _interval(spread: Spread) -> str:
    interval = spread.ci95
    return "—" if interval is None else f"[{_n(interval[0])}, {_n(interval[1])}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (report.py's layout; kept here to avoid an import
    cycle)."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(":--" if i == 0 else "--:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seeds_markdown(configs: Sequence[Config], tasks: Sequence[str], point: str) -> list[str]:
    """report.md's "## Over seeds" section: the rule, the seeds, and per method a table of its
    configurations' spreads, front flags (at the means) and who beats them beyond the spread."""
    counts = sorted({len(c.runs) for c in configs})
    if not counts:
        return ["## Over seeds", "", "_No configuration has an eval._", ""]
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    at = "its final eval" if point == "final" else "each task's best eval"
    lines = [
        "## Over seeds",
        "",
        f"A configuration is a sweep point but its seed: {len(configs)} configurations, "
        f"{seeds} seed(s) each. Each task's validation loss at {at} is given as mean "
        f"[min–max] over the seeds, with the 95% interval for the mean (Student's t) from "
        f"{MIN_SEEDS_FOR_INTERVAL} seeds; fronts are at the means. One row per configuration "
        "in `configs.csv`.",
        "",
        f"Rule: {DOMINANCE_RULE}",
        "",
    ]
    if fewest_seeds(configs) == 1:
        lines += [f"**Warning — {ONE_SEED_WARNING}.**", ""]
    on_front = front_at_means(configs, tasks, point)
    beaten = dominated_by(configs, tasks, point)
    for method in dict.fromkeys(c.method for c in configs):
        members = [i for i, c in enumerate(configs) if c.method == method]
        header = ["configuration", "seeds"]
        for task in tasks:
            header += [f"val loss {task}", f"95% CI {task}"]
        header += ["on front (means)", "dominated beyond the spread by"]
        body = []
        for i in members:
            c = configs[i]
            row = [c.label, f"{len(c.runs)} ({', '.join(str(s) for s in c.seeds)})"]
            for task in tasks:
                spread = c.spread(task, point)
                row += [_cell(spread), _interval(spread)]
            row += ["yes" if on_front[i] else "no", "; ".join(o.label for o in beaten[i]) or "—"]
            body.append(row)
        n_front = sum(on_front[i] for i in members)
        lines += [
            f"### {method} ({n_front} of {len(members)} configurations on the front)",
            "",
            _table(header, body),
            "",
        ]
    return lines


# --- figures ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SeedPoint:
    """A configuration on a trade-off plane: its means and its seeds' min–max on both axes."""

    label: str
    x: Spread
    y: Spread

    def errors(self) -> tuple[list[list[float]], list[list[float]]]:
        """(xerr, yerr) as matplotlib's `errorbar` takes asymmetric ones: [[below], [above]]."""
        return (
            [[self.x.mean - self.x.min], [self.x.max - self.x.mean]],
            [[self.y.mean - self.y.min], [self.y.max - self.y.mean]],
        )


def seed_points(
    configs: Sequence[Config], split: str, roles: Roles, low: str, point: str
) -> list[SeedPoint]:
    """Each configuration's (high-resource loss, loss of `low`) over its seeds; x is the mean of
    several high-resource tasks per seed. Configurations with a diverged seed are left out."""
    out = []
    for c in configs:
        xs, ys = [], []
        for run in c.runs:
            highs = run_point(run, split, roles.high, point)
            xs.append(sum(highs) / len(highs) if highs else math.nan)
            ys.append(run_point(run, split, [low], point)[0])
        x, y = Spread(tuple(xs)), Spread(tuple(ys))
        if not (x.diverged or y.diverged):
            out.append(SeedPoint(c.label, x, y))
    return out

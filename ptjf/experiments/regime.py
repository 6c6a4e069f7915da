"""`ptjf regime`: is a mixture in the regime where PTJF can help? Answered from pilot runs.

PTJF gains only where static sampling overfits the low-resource task (its validation loss
bottoms out, then rises) while the high-resource task still improves: static sampling must then
either stop early (high task undertrained) or train on (low task overfit), and PTJF escapes the
choice by showing the low task only in a short joint fine-tuning. This module reads
static-sampling pilots (a sweep's scalarization points, finished or not, or single-stage
mixture runs) and says, per low-resource rate, whether that happens.

The core (`assess_regime`) is pure: plain numbers in, a frozen `RegimeReport` out. The loader
(`load_pilots`, `regime_of_runs`) feeds it from `ptjf.experiments.results`; task sizes come in
as a mapping, so the library never imports the task registry.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

from ptjf.errors import DataError
from ptjf.experiments.results import Run, load_runs

# A task is low-resource when its training set is at most this fraction of the largest task's:
# below it the two tasks overfit at very different times, which is the paper's setting.
LOW_RESOURCE_FRACTION = 0.1
# Fewer evals cannot show a minimum followed by a rise.
MIN_EVALS = 3
DEFAULT_MARGIN = 0.01
PILOT_METHOD = "scalarization"
# format_regime's table. rise: end low loss − its minimum; high Δ: the high loss's fall after it.
_COLUMNS = "low rate|seeds|min step|min loss|end step|end loss|rise|epochs@min|high Δ|regime"
_CELLS = (
    "{0.low_rate:g}|{0.seeds}|{0.min_step}|{0.min_loss:.4f}|{0.final_step}|{0.final_loss:.4f}|"
    "{0.rise:+.3f}|{0.epochs_at_min:.2f}|{0.high_drop:+.3f}"
)
_NOT_IN_REGIME = {True: "no (high flat)", False: "no (low falls)"}  # by whether low overfits

Kind = Literal["ptjf", "early_stopping", "static"]
PTJF: Kind = "ptjf"  # some rate is in the regime: PTJF can help
EARLY_STOPPING: Kind = "early_stopping"  # the low task overfits, but the high task is done too
STATIC: Kind = "static"  # no rate overfits within the pilot


class Eval(NamedTuple):
    """One eval of a pilot: global step, both validation losses, low-task examples seen."""

    step: int
    low_loss: float
    high_loss: float
    low_seen: float


@dataclasses.dataclass(frozen=True)
class PilotRun:
    """One static-sampling run as plain data. total_steps: its planned length N (None: its last
    eval's step, for a run whose length is unknown)."""

    low_rate: float
    seed: int | None
    evals: tuple[Eval, ...]
    name: str = ""
    total_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class RateFinding:
    """What the seed-averaged curve of one low-resource rate shows.

    min_step/min_loss: where the low-resource validation loss bottoms out; final_*: the last eval
    common to all seeds; rise = final_loss - min_loss; epochs_at_min: low-task epochs seen by
    min_step; high_drop: how much the high-resource loss still fell from min_step to the end.
    """

    low_rate: float
    seeds: int
    min_step: int
    min_loss: float
    final_step: int
    final_loss: float
    rise: float
    epochs_at_min: float
    epochs_at_final: float
    high_drop: float
    overfits: bool
    high_improving: bool
    planned_steps: int | None = None  # the pilots' length N, when point.json gives it

    @property
    def in_regime(self) -> bool:
        return self.overfits and self.high_improving

    @property
    def running(self) -> bool:
        """Whether its seeds' common evals stop short of the planned length (still running)."""
        return self.planned_steps is not None and self.final_step < self.planned_steps


@dataclasses.dataclass(frozen=True)
class RegimeReport:
    """Findings per rate (ascending), the verdict and its recommendation.

    n2/n1: the suggested joint fine-tuning and pre-training lengths (kind "ptjf" only), for the
    pilot's total_steps; sweep_rates: the low rates worth sweeping with PTJF.
    """

    low_task: str
    high_task: str
    low_size: float
    margin: float
    high_margin: float
    total_steps: int
    findings: tuple[RateFinding, ...]
    kind: Kind
    recommendation: str
    n2: int | None = None
    n1: int | None = None
    sweep_rates: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()


# --- the pure core ----------------------------------------------------------------------------


def _mean_curve(runs: Sequence[PilotRun]) -> list[Eval]:
    """The seeds' mean at the eval steps all of them reached (a seed still running, or one
    evaluated on another schedule, must not pull the mean at steps the others lack)."""
    steps = sorted(set.intersection(*({e.step for e in r.evals} for r in runs)))
    at = [{e.step: e for e in r.evals} for r in runs]
    return [Eval(s, *(sum(d[s][i] for d in at) / len(at) for i in (1, 2, 3))) for s in steps]


def _finding(
    rate: float, runs: Sequence[PilotRun], low_size: float, margin: float, high_margin: float
) -> RateFinding:
    curve = _mean_curve(runs)
    # The first minimum: a plateau that later ties it is not a second bottom.
    lo, last = min(curve, key=lambda e: e.low_loss), curve[-1]
    rise, high_drop = last.low_loss - lo.low_loss, lo.high_loss - last.high_loss
    overfits = rise > margin and lo.step < last.step
    planned = [r.total_steps for r in runs if r.total_steps is not None]
    return RateFinding(
        *(rate, len(runs), lo.step, lo.low_loss, last.step, last.low_loss, rise),
        *(lo.low_seen / low_size, last.low_seen / low_size, high_drop),
        *(overfits, high_drop > high_margin, max(planned) if planned else None),
    )


def assess_regime(
    runs: Sequence[PilotRun],
    low_size: float,
    *,
    margin: float = DEFAULT_MARGIN,
    high_margin: float | None = None,
    low_task: str = "low",
    high_task: str = "high",
) -> RegimeReport:
    """The regime report of static-sampling pilots, per low-resource rate (seeds averaged).

    margin: how far (in loss) the low-resource loss must rise above its minimum to count as
    overfitting; high_margin (default: margin): how far the high-resource loss must still fall
    after that minimum to count as improving. Runs with fewer than MIN_EVALS finite evals are
    left out (named in the notes); none left is a DataError.
    """
    if not low_size > 0:
        raise DataError(f"The low-resource task's training size must be > 0, not {low_size}.")
    high_margin = margin if high_margin is None else high_margin
    notes: list[str] = []
    groups: dict[float, list[PilotRun]] = {}
    for run in runs:
        evals = tuple(Eval(*e) for e in run.evals if math.isfinite(e[1]) and math.isfinite(e[2]))
        if len(evals) < MIN_EVALS:
            notes.append(f"{run.name or run.low_rate}: {len(evals)} eval(s), left out")
            continue
        groups.setdefault(run.low_rate, []).append(dataclasses.replace(run, evals=evals))
    findings = []
    for rate in sorted(groups):
        if len(set.intersection(*({e.step for e in r.evals} for r in groups[rate]))) < MIN_EVALS:
            notes.append(f"rate {rate:g}: fewer than {MIN_EVALS} evals common to its seeds")
            continue
        findings.append(_finding(rate, groups[rate], low_size, margin, high_margin))
    if not findings:
        raise DataError(
            f"No pilot has {MIN_EVALS} evals yet ({'; '.join(notes) or 'no runs'}): a minimum "
            f"of the low-resource loss needs at least {MIN_EVALS}. Wait for more evals, or "
            "evaluate more often (train.eval_period)."
        )
    runs_left = [r for rs in groups.values() for r in rs]
    total = max(r.total_steps or max(e.step for e in r.evals) for r in runs_left)
    report = RegimeReport(low_task, high_task, low_size, margin, high_margin, total, (), STATIC, "")
    return _verdict(dataclasses.replace(report, findings=tuple(findings), notes=tuple(notes)))


def _rates(rates: Iterable[float]) -> str:
    return ", ".join(f"{r:g}" for r in rates)


def _verdict(report: RegimeReport) -> RegimeReport:
    """The kind, the recommendation and, in the regime, N2, N1 and the rates to sweep."""
    fs, low, high, n = report.findings, report.low_task, report.high_task, report.total_steps
    in_regime = [f for f in fs if f.in_regime]
    overfit = [f for f in fs if f.overfits]
    if in_regime:
        # The earliest bottom bounds N2: a longer fine-tuning would overfit at that rate.
        f = min(in_regime, key=lambda f: (f.min_step, -f.low_rate))
        sweep = tuple(g.low_rate for g in fs if g.low_rate >= in_regime[0].low_rate)
        text = (
            f"In the regime at low rates {_rates(g.low_rate for g in in_regime)}: static "
            f"sampling's {low} loss bottoms out while {high} still improves, so PTJF can help. "
            f"Joint fine-tuning should be no longer than static sampling took to overfit {low} "
            f"(at the same rate it sees {low} at the same pace): the earliest bottom is at step "
            f"{f.min_step}, rate {f.low_rate:g} ({f.epochs_at_min:.2f} epochs of {low}; {high}'s "
            f"loss still falls {f.high_drop:.3f} after it). Suggest N2 ≈ {f.min_step} and "
            f"N1 = N − N2 = {n - f.min_step} for the pilot's N = {n}; sweep low rates "
            f"{_rates(sweep)}."
        )
        return dataclasses.replace(
            report,
            kind=PTJF,
            recommendation=text,
            n2=f.min_step,
            n1=n - f.min_step,
            sweep_rates=sweep,
        )
    if overfit:
        f = min(overfit, key=lambda f: f.min_step)
        text = (
            f"The {low} loss bottoms out at low rates {_rates(g.low_rate for g in overfit)} "
            f"(first at step {f.min_step}, rate {f.low_rate:g}, {f.epochs_at_min:.2f} epochs), "
            f"but {high} has stopped improving too (its loss falls ≤ {report.high_margin:g} "
            f"after that): static sampling with early stopping (keep each rate's checkpoint at "
            f"its {low} minimum) is enough; PTJF is unlikely to help."
        )
        return dataclasses.replace(report, kind=EARLY_STOPPING, recommendation=text)
    running = [g for g in fs if g.running]
    if running:
        text = (
            f"No rate overfits yet, but the pilots at low rates "
            f"{_rates(g.low_rate for g in running)} are still running (at step "
            f"{min(g.final_step for g in running)} of {n}): rerun `ptjf regime` when they end."
        )
        return dataclasses.replace(report, kind=STATIC, recommendation=text)
    f = fs[-1]
    text = (
        f"No rate overfits within the pilot: at the highest rate {f.low_rate:g} the {low} loss "
        f"is still falling after {f.epochs_at_final:.2f} epochs (step {f.final_step}, rise ≤ "
        f"{report.margin:g}). Static sampling is enough at this length; a longer run (more "
        f"epochs of {low}) may reach the regime."
    )
    return dataclasses.replace(report, kind=STATIC, recommendation=text)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Numbers right-aligned; the last column (words) left-aligned, unpadded."""
    return "  ".join([*(c.rjust(w) for c, w in zip(cells[:-1], widths, strict=False)), cells[-1]])


def _regime_cell(f: RateFinding) -> str:
    if f.in_regime:
        return "yes"
    if f.running and not f.overfits:
        return "running"
    return _NOT_IN_REGIME[f.overfits]


def format_regime(report: RegimeReport, width: int = 96) -> str:
    """Plain text: what was read, one table row per rate, and the recommendation wrapped to
    `width` — for a terminal, or pasted into markdown as a code block."""
    header = _COLUMNS.split("|")
    rows = [[*_CELLS.format(f).split("|"), _regime_cell(f)] for f in report.findings]
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        f"low-resource task {report.low_task} ({report.low_size:g} training examples), "
        f"high-resource task {report.high_task}",
        f"pilot length N = {report.total_steps} steps; margins {report.margin:g} (low-task "
        f"rise), {report.high_margin:g} (high-task drop)",
        "",
        _line(header, widths),
        "  ".join("-" * w for w in widths),
        *(_line(r, widths) for r in rows),
        "",
        *textwrap.wrap(f"Verdict ({report.kind}): {report.recommendation}", width),
    ]
    lines += [
        f"note: rate {f.low_rate:g} is still running (its seeds' common evals end at step "
        f"{f.final_step} of {f.planned_steps})"
        for f in report.findings
        if f.running
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


# --- loading pilots from run directories ------------------------------------------------------


def _skip_reason(run: Run) -> str | None:
    """Why `run` is no static-sampling pilot (None: it is one)."""
    if not run.records:
        return "a run without evals yet"
    if run.kind == "shared":
        return "a shared pre-training"
    if run.described and run.method != PILOT_METHOD:
        return f"a {run.method} point"
    if len(run.tasks) < 2:
        return f"a single-task run ({', '.join(run.tasks) or 'no task'})"
    stages = len({r.get("stage_index", 0) for r in run.records})
    if not run.described and stages != 1:
        return f"a {stages}-stage run"
    return None


def load_pilots(dirs: Sequence[str]) -> list[Run]:
    """The static-sampling pilots under `dirs`: a sweep's scalarization points, and runs
    without point.json that train ≥ 2 tasks in one stage. Shared pre-trainings, other methods'
    points and single-task runs are not pilots; finding none is a DataError saying what was
    found instead."""
    runs = load_runs(dirs)
    reasons = [_skip_reason(run) for run in runs]
    if pilots := [run for run, why in zip(runs, reasons, strict=True) if why is None]:
        return pilots
    found = "; ".join(f"{run.name} is {why}" for run, why in zip(runs, reasons, strict=True))
    if any("single-task" in str(why) for why in reasons):
        raise DataError(
            f"No static-sampling pilot under {', '.join(map(str, dirs))}: {found}. The probe "
            "compares a mixture's tasks: pass runs that train the high- and low-resource "
            "tasks together (a sweep's scalarization points, or single-stage MODEL_DIRs of the "
            "mixture)."
        )
    raise DataError(
        f"No scalarization runs under {', '.join(map(str, dirs))}: {found}. `ptjf regime` "
        f"reads static sampling: a sweep's points with method {PILOT_METHOD!r} (add it to the "
        "sweep's methods and run a few low rates) or single-stage MODEL_DIRs of the mixture."
    )


def pilot_tasks(runs: Sequence[Run]) -> tuple[str, ...]:
    """Every task the pilots train, in first-seen order (the sizes `regime_of_runs` needs)."""
    return tuple(dict.fromkeys(t for r in runs for t in r.tasks))


def _size(sizes: Mapping[str, float], task: str) -> float:
    if task not in sizes:
        raise DataError(
            f"No training size for task {task!r} (sizes given: "
            f"{', '.join(sorted(sizes)) or 'none'}): pass --sizes {task}=N,… with each task's "
            "number of training examples."
        )
    return float(sizes[task])


def _roles(runs: Sequence[Run], sizes: Mapping[str, float]) -> tuple[str, str]:
    """(high, low): the largest and the smallest task by training size, the smallest checked
    to be low-resource (≤ LOW_RESOURCE_FRACTION of the largest)."""
    tasks = pilot_tasks(runs)
    by_size = {t: _size(sizes, t) for t in tasks}
    # Sorted, not max/min: with equal sizes these still name two different tasks.
    ordered = sorted(tasks, key=lambda t: by_size[t])
    high, low = ordered[-1], ordered[0]
    if by_size[low] > LOW_RESOURCE_FRACTION * by_size[high]:
        raise DataError(
            f"No low-resource task: the smallest task, {low} ({by_size[low]:g} examples), is "
            f"more than {LOW_RESOURCE_FRACTION:g} (1/{1 / LOW_RESOURCE_FRACTION:g}) of the "
            f"largest, {high} ({by_size[high]:g}). PTJF addresses imbalance; with sizes this "
            "close use static sampling. If the sizes are wrong, fix --sizes."
        )
    return high, low


def _low_rate(run: Run, low: str) -> float:
    """The run's low-task sampling rate: point.json's, else the examples it saw (rounded to 2
    significant digits, so that seeds of one rate group together)."""
    if run.described:
        rate = run.info.get("low_rate") if run.low_tasks == (low,) else run.task_rate(low)
        if rate is not None:
            return float(rate)
    seen = dict(run.records[-1].get("examples_seen") or {})
    total = sum(float(v) for v in seen.values())
    if total <= 0:
        raise DataError(
            f"{run.name} has no examples_seen in its last eval record, so its low-resource "
            "rate is unknown: give it a point.json with low_rate, or rerun its eval."
        )
    return float(f"{float(seen.get(low, 0)) / total:.2g}")


def _evals(run: Run, high: str, low: str) -> tuple[Eval, ...]:
    out = []
    for r in run.records:
        val, seen = r.get("validation") or {}, r.get("examples_seen") or {}
        lo, hi = (val.get(low) or {}).get("loss"), (val.get(high) or {}).get("loss")
        if lo is not None and hi is not None:
            out.append(Eval(int(r["global_step"]), float(lo), float(hi), float(seen.get(low, 0))))
    return tuple(out)


def pilot_run(run: Run, high: str, low: str) -> PilotRun:
    """`run` as the core's plain data."""
    seed, total = run.info.get("seed"), run.info.get("total_steps")
    return PilotRun(
        _low_rate(run, low),
        None if seed is None else int(seed),
        _evals(run, high, low),
        run.name,
        None if total is None else int(total),
    )


def regime_of_runs(
    runs: Sequence[Run],
    sizes: Mapping[str, float],
    *,
    margin: float = DEFAULT_MARGIN,
    high_margin: float | None = None,
) -> RegimeReport:
    """The regime report of pilots (from `load_pilots`), given every task's training size."""
    high, low = _roles(runs, sizes)
    return assess_regime(
        [pilot_run(r, high, low) for r in runs],
        _size(sizes, low),
        margin=margin,
        high_margin=high_margin,
        low_task=low,
        high_task=high,
    )

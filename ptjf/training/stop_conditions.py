"""A stage that ends when its evals say so: the switch point chosen from the data.

The paper fixes the length of pre-training (N1) by hand and finds the best N1 by sweeping it.
`Plateau` ends a stage instead once an eval metric has stopped improving: after eval m (m >=
patience), with h_0..h_m the metric at the stage's evals so far (the stage-start eval
included), the improvement over the last `patience` evals is

    best(h_0 .. h_{m-patience}) - best(h_{m-patience+1} .. h_m)     (best = min for a loss)

and the stage ends at that eval when it is below `min_delta` (and the stage has run at least
`min_steps`). `Stage.steps` stays the stage's maximum: a condition that never holds ends the
stage there, as a fixed stage would.

The decision is a pure function of the eval history, and the history is saved in every
checkpoint's metadata (`HISTORY_KEY`); a resumed stage restores it and recomputes the evals
after the checkpoint from the same parameters, so it takes the same decision at the same step.
The step it ended at is saved as `END_KEY` in the stage's last checkpoint and logged in the
eval record where it was taken.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from ptjf.errors import ConfigError

HISTORY_KEY = "stop_history"  # checkpoint metadata: [[stage step, value], ...]
END_KEY = "stage_end"  # checkpoint metadata and eval record: the decision that ended the stage
SPLITS = ("validation", "train_subset", "bleu")
MODES = ("min", "max")


@gin.configurable("Plateau")
@dataclasses.dataclass(frozen=True)
class Plateau:
    """Ends a stage once `split/task/metric` improved by less than `min_delta` over its last
    `patience` evals.

    task: the eval task watched, e.g. the high-resource task during pre-training.
    metric: a score the evals record for it: "loss" or "accuracy" (splits "validation" and
        "train_subset"); with split "bleu" (`train.eval_bleu = True`) the metric is ignored.
    mode: "min" when lower is better (loss), "max" when higher is (accuracy, BLEU); the
        default follows the metric.
    min_delta: the smallest improvement that counts, in the metric's units (nats for a loss).
    patience: k, the number of latest evals compared with the best before them.
    min_steps: the stage never ends before this step.
    """

    task: str
    metric: str = "loss"
    split: str = "validation"
    min_delta: float = 0.01
    patience: int = 3
    min_steps: int = 0
    mode: str | None = None

    def __post_init__(self) -> None:
        where = "Plateau"
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"{where}.task={self.task!r}: name the eval task to watch.")
        if self.split not in SPLITS:
            raise ConfigError(f"{where}.split={self.split!r}: expected one of {SPLITS}.")
        if self.split != "bleu" and self.metric not in ("loss", "accuracy"):
            raise ConfigError(
                f"{where}.metric={self.metric!r}: evals record 'loss' and 'accuracy' per task "
                "(or use split='bleu' with train.eval_bleu = True)."
            )
        mode = self.mode or ("min" if self.split != "bleu" and self.metric == "loss" else "max")
        if mode not in MODES:
            raise ConfigError(f"{where}.mode={self.mode!r}: expected 'min' or 'max' (or None).")
        object.__setattr__(self, "mode", mode)
        delta = self.min_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not delta >= 0:
            raise ConfigError(f"{where}.min_delta={delta!r}: expected a number >= 0.")
        for name in ("patience", "min_steps"):
            value = getattr(self, name)
            low = 1 if name == "patience" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{where}.{name}={value!r}: expected an integer >= {low}.")

    @property
    def label(self) -> str:
        return f"{self.split}/{self.task}" + ("" if self.split == "bleu" else f"/{self.metric}")

    def value(self, record: Mapping[str, Any]) -> float:
        """The watched metric in an eval record."""
        scores = record.get(self.split, {}).get(self.task)
        if scores is None:
            raise ConfigError(
                f"Plateau watches {self.label!r}, which the eval record lacks (it has "
                f"{sorted(record.get(self.split, {}))}); set Plateau.task to an eval task."
            )
        return float(scores if self.split == "bleu" else scores[self.metric])

    def decide(self, history: Sequence[tuple[int, float]]) -> dict[str, Any]:
        """Whether the stage ends at the last eval of `history` ([(stage step, value)]).

        Returns {"step", "value", "improvement" (None before patience + 1 evals), "met"}.
        NaN values are skipped: none finite lately is no progress (-inf), finite values only
        lately are progress (+inf).
        """
        step, value = history[-1]
        improvement = None
        if len(history) > self.patience:
            values = [v for _, v in history]
            before = _best(values[: -self.patience], self.mode)
            recent = _best(values[-self.patience :], self.mode)
            if math.isnan(recent):  # no finite value lately: no progress
                improvement = -math.inf
            elif math.isnan(before):  # finite only lately: progress
                improvement = math.inf
            else:
                improvement = before - recent if self.mode == "min" else recent - before
        met = improvement is not None and step >= self.min_steps and improvement < self.min_delta
        return {"step": step, "value": value, "improvement": improvement, "met": bool(met)}

    def evals_needed(self) -> int:
        """The fewest evals a stage needs before the condition can hold."""
        return self.patience + 1


def _best(values: Sequence[float], mode: str) -> float:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return min(finite) if mode == "min" else max(finite)


def check(
    condition: Plateau,
    *,
    stage: str,
    steps: int,
    eval_tasks: Sequence[str],
    eval_period: int,
    eval_at_stage_start: bool,
    eval_bleu: bool,
) -> None:
    """Refuses, before the first step, a condition that cannot work in this run."""
    if condition.task not in eval_tasks:
        raise ConfigError(
            f"Stage {stage!r}: Plateau.task={condition.task!r} is not evaluated in this run; "
            f"the eval tasks are {list(eval_tasks)}."
        )
    if condition.split == "bleu" and not eval_bleu:
        raise ConfigError(f"Stage {stage!r}: Plateau.split='bleu' needs train.eval_bleu = True.")
    evals = steps // eval_period + (1 if steps % eval_period else 0) + int(eval_at_stage_start)
    if evals < condition.evals_needed():
        raise ConfigError(
            f"Stage {stage!r} has {evals} eval(s) in its {steps} steps (train.eval_period="
            f"{eval_period}), but Plateau.patience={condition.patience} needs "
            f"{condition.evals_needed()} before it can end the stage: lower the eval period or "
            "the patience."
        )


def saved_history(history: Sequence[tuple[int, float]]) -> list[list]:
    """The history as checkpoint metadata holds it (JSON: NaN as null)."""
    return [[int(s), None if math.isnan(v) else float(v)] for s, v in history]


def restored_history(meta: Mapping[str, Any], start: int) -> list[tuple[int, float]]:
    """The eval history a stage resumed at `start` continues from (its checkpoint's)."""
    saved = meta.get(HISTORY_KEY) or []
    return [(int(s), math.nan if v is None else float(v)) for s, v in saved if int(s) <= start]


def ended_at(meta: Mapping[str, Any]) -> int | None:
    """The step a stage's last checkpoint says the condition ended it at, if it did."""
    end = meta.get(END_KEY)
    return None if not end else int(end["step"])


class Watch:
    """A stage's condition over its evals, as the trainer runs it: observe each eval record,
    say whether the stage ends there, and give the metadata a checkpoint saves to resume it."""

    def __init__(self, condition: Plateau | None, history: Sequence[tuple[int, float]] = ()):
        self.condition = condition
        self.history = list(history)
        self.ended: dict[str, Any] | None = None

    def observe(self, record: dict[str, Any]) -> bool:
        """Adds `record`'s value to the history, logs the decision in the record (`stop_condition`,
        and `END_KEY` when the stage ends there); True when it ends there."""
        if self.condition is None:
            return False
        step = int(record["stage_step"])
        self.history = [h for h in self.history if h[0] < step]  # an eval redone after resume
        self.history.append((step, self.condition.value(record)))
        decision = self.condition.decide(self.history)
        record["stop_condition"] = {"watch": self.condition.label, **decision}
        if decision["met"]:
            self.ended = {
                "step": step,
                "reason": (
                    f"{self.condition.label} improved by {decision['improvement']:.4g} over the "
                    f"last {self.condition.patience} evals (< min_delta "
                    f"{self.condition.min_delta:g})"
                ),
            }
            record[END_KEY] = self.ended
        return bool(decision["met"])

    def metadata(self) -> dict[str, Any]:
        """What each checkpoint of the stage saves so that a resume decides the same way."""
        if self.condition is None:
            return {}
        out: dict[str, Any] = {HISTORY_KEY: saved_history(self.history)}
        if self.ended is not None:
            out[END_KEY] = self.ended
        return out

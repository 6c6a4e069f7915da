"""Stages, plans and the stage switch: every method of the paper as data.

A `Stage` is a mixture (or task), a number of steps, an optimizer, a learning-rate schedule
and what it carries over from the stage before it. A `Plan` is a list of stages. The paper's
methods are all plans of one or two stages:

| method                  | stage 1                    | stage 2                                   |
|-------------------------|----------------------------|-------------------------------------------|
| scalarization           | mixture w, N steps         | —                                         |
| temperature / UniMax    | mixture from sizes, N      | —                                         |
| restart baseline        | mixture w, N1 steps        | same mixture, N2 steps, reset opt + sched |
| transfer learning       | high-resource, N1 steps    | low-resource only, N2 steps, reset        |
| PTJF                    | high-resource, N1 steps    | mixture w, N2 steps, reset opt + sched    |
| PTJF, several high tasks| mixture at high rates, N1  | mixture w, N2 steps, reset opt + sched    |
| linear rate schedule    | mixture, w(step), N steps  | —                                         |
| temperature cooldown    | mixture, τ(step), N steps  | —                                         |

The *stage switch* (paper Sec. 3) is `switch_state`: restore the previous stage's parameters
only, build the new stage's optimizer state from scratch and start its schedule at step 0.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax.numpy as jnp
import optax

from ptjf.errors import ConfigError
from ptjf.rate_schedules import RateSchedule
from ptjf.training import optimizers, schedules
from ptjf.training import trainable as trainable_params
from ptjf.training.stop_conditions import Plateau
from ptjf.training.train_state import TrainState, create_train_state


@gin.configurable("Stage")
@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a plan.

    name: the stage's directory under MODEL_DIR (checkpoints) and its label in metrics.
    mixture_or_task_name: what the stage trains on. rates: static weights overriding the
        mixture's own rates (one point of the paper's grid), e.g. {"high": 0.9, "low": 0.1}.
    rate_schedule: rates that change with the stage's step instead (`ptjf.rate_schedules`:
        @PiecewiseRates(), @LinearRates(), @TemperatureSchedule()); not with `rates`.
    steps: the stage's number of training steps; its schedule counts these from 0. With
        `stop_when`, the most it may run.
    stop_when: end the stage early when its evals say so (`ptjf.training.stop_conditions`,
        e.g. @Plateau(): the watched validation loss improved by less than min_delta over the
        last `patience` evals): the switch point chosen from the data. The step it ended at
        is saved in the stage's last checkpoint and logged; the next stage starts there.
    optimizer, schedule: the stage's own (a new stage gets a fresh optimizer state).
    init_from: "previous" (the previous stage's final parameters), "scratch", or a checkpoint
        path, local or gs://: a T5X checkpoint (`.../checkpoint_<step>`, orbax or legacy
        layout) or a ptjf one (`MODEL_DIR/<stage>[/<step>]`). A path gives the parameters
        only, with a fresh optimizer state and schedule (the stage switch); its lineage is
        recorded in the stage's checkpoints.
    reset_optimizer / reset_schedule: False carries the previous stage's optimizer state /
        schedule position over instead (a plan without resets is one long run cut in two).
    eval_tasks: tasks evaluated in this stage in addition to the plan's.
    trainable: the parameters this stage trains, as regular expressions matched in full
        against '/'-joined parameter paths (`encoder/layers_0/attention/query/kernel`,
        `decoder/logits_dense/kernel`, `token_embedder/embedding`); the others are frozen:
        they stay bit-identical and get no optimizer state (`ptjf.training.trainable`).
        None (default) trains everything. E.g. `joint/Stage.trainable = ["decoder/.*"]`
        freezes the encoder and the embeddings; `["(?!token_embedder/).*"]` freezes only the
        embeddings. A pattern that matches no parameter, or patterns that freeze every
        parameter, are refused before the run starts.
    """

    name: str
    mixture_or_task_name: str
    steps: int | None = None
    optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig()
    schedule: schedules.ScheduleConfig = schedules.ScheduleConfig(name="constant", peak_lr=1e-3)
    rates: Mapping[str, float] | None = None
    rate_schedule: RateSchedule | None = None
    init_from: str = "previous"
    reset_optimizer: bool = True
    reset_schedule: bool = True
    eval_tasks: tuple[str, ...] = ()
    trainable: Sequence[str] | None = None
    stop_when: Plateau | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.strip().isdigit():
            raise ConfigError(
                f"Stage name {self.name!r} is invalid: it names a directory under MODEL_DIR, so "
                "use a non-empty word without '/' that is not a number (e.g. 'pretrain')."
            )
        if self.stop_when is not None:
            if not isinstance(self.stop_when, Plateau):
                raise ConfigError(
                    f"Stage {self.name!r}: stop_when={self.stop_when!r}; expected @Plateau()."
                )
            if self.steps is None:
                raise ConfigError(
                    f"Stage {self.name!r} ends when its evals say so (Stage.stop_when) but has "
                    "no maximum: set Stage.steps to the most steps it may run (the condition "
                    "may never hold)."
                )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(
                f"Stage {self.name!r} has steps={self.steps!r}: a stage needs at least 1 step. "
                "Remove the stage from the plan instead of giving it 0 steps."
            )
        if not isinstance(self.init_from, str) or not self.init_from:
            raise ConfigError(
                f"Stage {self.name!r}: init_from={self.init_from!r}; use 'previous', 'scratch' "
                "or a checkpoint path."
            )
        if self.init_from not in ("previous", "scratch"):
            if "/" not in self.init_from:
                raise ConfigError(
                    f"Stage {self.name!r}: init_from={self.init_from!r}; use 'previous', "
                    "'scratch' or a checkpoint path (gs://BUCKET/run/checkpoint_1000000, "
                    "MODEL_DIR/<stage>)."
                )
            from ptjf import storage

            storage.check_uri(self.init_from)
            if not self.reset_optimizer:
                raise ConfigError(
                    f"Stage {self.name!r} starts from the checkpoint {self.init_from!r}, which "
                    "gives parameters only: leave reset_optimizer=True and reset_schedule=True."
                )
        if not self.reset_optimizer and self.reset_schedule:
            raise ConfigError(
                f"Stage {self.name!r} keeps the optimizer state but resets the schedule: the "
                "optimizer's step count drives both its bias correction and the schedule, so "
                "reset both (the stage switch), neither, or only the optimizer."
            )
        object.__setattr__(self, "eval_tasks", tuple(self.eval_tasks))
        if self.trainable is not None:
            trainable_params.compile_patterns(
                self.trainable, f"Stage {self.name!r}: Stage.trainable"
            )
            if not self.trainable:
                raise ConfigError(
                    f"Stage {self.name!r}: Stage.trainable is empty, which trains no "
                    "parameter. Name the parameters to train (e.g. ['decoder/.*']), or leave "
                    "it None to train everything."
                )
            object.__setattr__(self, "trainable", tuple(self.trainable))
        if self.rates is not None:
            object.__setattr__(self, "rates", dict(self.rates))
        if self.rate_schedule is not None:
            if self.rates is not None:
                raise ConfigError(
                    f"Stage {self.name!r} has both Stage.rates and Stage.rate_schedule; give "
                    "one: static rates, or a schedule (its first point holds the starting rates)."
                )
            if not isinstance(self.rate_schedule, RateSchedule):
                raise ConfigError(
                    f"Stage {self.name!r}: rate_schedule={self.rate_schedule!r}; expected "
                    "@PiecewiseRates(), @LinearRates() or @TemperatureSchedule()."
                )
            self.rate_schedule.check_stage(self.steps, f"Stage {self.name!r}")

    @property
    def carries_optimizer(self) -> bool:
        return not self.reset_optimizer and self.init_from == "previous"


@gin.configurable("Plan")
@dataclasses.dataclass(frozen=True)
class Plan:
    """The stages of a run, in order, and the tasks evaluated throughout.

    eval_tasks: evaluated in every stage — the paper plots every task from step 0, including
    those a stage does not train on yet (the low-resource task during pre-training).
    """

    stages: Sequence[Stage]
    eval_tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages:
            raise ConfigError("Plan.stages is empty: a plan needs at least one Stage.")
        names = [s.name for s in stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"Plan has two stages named {dup}; stage names must be unique.")
        first = stages[0]
        if first.init_from == "previous" and not first.reset_optimizer:
            raise ConfigError(
                f"The first stage {first.name!r} has no previous stage to carry an optimizer "
                "state from; leave reset_optimizer=True."
            )
        for prev, stage in itertools.pairwise(stages):
            if prev.stop_when is not None and not stage.reset_schedule:
                raise ConfigError(
                    f"Stage {stage.name!r} continues the schedule of {prev.name!r} "
                    "(reset_schedule=False), but that stage ends when its evals say so "
                    "(stop_when), so where the schedule would continue from is not known before "
                    "the run. Reset the schedule and the optimizer (the stage switch)."
                )
            if stage.carries_optimizer and stage.trainable != prev.trainable:
                raise ConfigError(
                    f"Stage {stage.name!r} carries the optimizer state of {prev.name!r} "
                    f"(reset_optimizer=False) but trains other parameters (trainable="
                    f"{stage.trainable!r}, not {prev.trainable!r}); the state holds the "
                    "trained parameters' statistics only. Give both the same Stage.trainable, "
                    "or reset the optimizer (reset_optimizer=True, the stage switch)."
                )
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "eval_tasks", tuple(self.eval_tasks))

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def steps_before(self, index: int) -> int:
        return sum(s.steps for s in self.stages[:index])


def stage_schedule(plan: Plan, index: int) -> optax.Schedule:
    """The learning rate of stage `index` as a function of its optimizer's step count.

    With `reset_schedule=False` the stage's own schedule continues from where the previous
    stage's count left off (the optimizer state is fresh, so its count starts at 0 again). A
    stage that carries the previous optimizer state (`carries_optimizer`) gets that state's
    count, which began when the state was last fresh: the schedule adds the steps between the
    schedule's last reset and then. The trainer logs the learning rate from the same count
    (`ptjf.training.steps.schedule_count`), so the logged rate is the applied one.
    """
    stage = plan.stages[index]
    if stage.reset_schedule or index == 0:
        return schedules.make_schedule(stage.schedule, stage.steps)
    offset = 0
    for prev in reversed(plan.stages[:index]):
        offset += prev.steps
        if prev.reset_schedule:
            break
    inner = schedules.make_schedule(stage.schedule, offset + stage.steps)
    if stage.carries_optimizer:
        counted = 0  # the steps the carried count already holds
        for prev in reversed(plan.stages[:index]):
            counted += prev.steps
            if not prev.carries_optimizer:
                break  # its optimizer state began fresh
        offset -= counted  # >= 0: a stage that resets its schedule resets its optimizer too
        if not offset:
            return inner
    return lambda count: inner(count + offset)


def make_tx(plan: Plan, index: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The stage's optimizer (for its trainable parameters only) and its schedule."""
    stage = plan.stages[index]
    schedule = stage_schedule(plan, index)
    tx = optimizers.make_optimizer(stage.optimizer, schedule)
    return trainable_params.freeze(tx, stage.trainable, stage.name), schedule


def switch_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """The stage switch: these parameters, a fresh optimizer state for `tx`, step 0."""
    return create_train_state(params, tx)


def carry_state(previous: TrainState) -> TrainState:
    """A stage that keeps the previous optimizer state (no reset): only the step restarts.

    The step is the stage-local one that names its checkpoints (`MODEL_DIR/<stage>/<step>`),
    positions its data and ends it at `Stage.steps`, so it restarts; the optimizer's own count
    goes on inside the carried state, and both the applied and the logged learning rate are
    the schedule at that count (`stage_schedule`, `ptjf.training.steps.schedule_count`).
    """
    return previous.replace(step=jnp.zeros((), jnp.int32))


def stage_tasks(stage: Stage) -> list[str]:
    """The tasks a stage trains on (a task name, or a mixture's tasks)."""
    from ptjf import tasks as ptasks

    provider = ptasks.get_task_or_mixture(stage.mixture_or_task_name)
    if hasattr(provider, "tasks"):
        return [t.name for t in provider.tasks]
    return [provider.name]


def plan_eval_tasks(plan: Plan) -> list[str]:
    """Every task any stage trains on or names for eval, in first-seen order."""
    out: list[str] = []
    for name in plan.eval_tasks:
        out.append(name)
    for stage in plan.stages:
        out.extend(stage_tasks(stage))
        out.extend(stage.eval_tasks)
    return list(dict.fromkeys(out))

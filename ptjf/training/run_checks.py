"""A run's settings, checked before anything is built or written: a mistake in the joint stage
must not surface after hours of pre-training (every stage's optimizer, schedule and rates, the
microbatches, the input shards, BLEU's settings)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import gin

from ptjf import stages as stg
from ptjf.data import batches as data
from ptjf.errors import ConfigError
from ptjf.models import TransformerConfig
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import stop_conditions, trainable
from ptjf.training.bleu import translation_target_languages
from ptjf.training.state_layout import abstract_params

# The DatasetConfig fields the trainer sets itself for every stage (`trainer._train_stage`),
# with the knob that does set each: a gin binding of these would be silently overridden.
# (split, shuffle and module are not passed by the trainer, so their bindings take effect.)
DATASET_FIELDS_SET_BY_TRAIN = {
    "mixture_or_task_name": "MIXTURE_OR_TASK_NAME (a stage's Stage.mixture_or_task_name)",
    "task_feature_lengths": "TASK_FEATURE_LENGTHS (train.task_feature_lengths)",
    "batch_size": "BATCH_SIZE (train.batch_size)",
    "seed": "SEED (train.seed; stage i uses train.seed + 1000 * i)",
    "pack": "train.pack",
    "rates": "Stage.rates (the run file's rate macros, e.g. MIXTURE_RATES)",
    "rate_schedule": "Stage.rate_schedule (e.g. joint/Stage.rate_schedule = @LinearRates())",
}


def check_dataset_bindings() -> None:
    """Refuses gin bindings of DatasetConfig fields that the trainer sets itself per stage.

    The trainer builds each stage's `DatasetConfig` from `train.*` and the stage, passing these
    fields explicitly, so gin's binding would be ignored without a word.
    """
    for field, knob in DATASET_FIELDS_SET_BY_TRAIN.items():
        try:
            value = gin.query_parameter(f"DatasetConfig.{field}")
        except ValueError:  # not bound (gin raises ValueError for an unbound parameter)
            continue
        raise ConfigError(
            f"DatasetConfig.{field} = {value!r} is bound, but the trainer sets "
            f"DatasetConfig.{field} itself for every stage, so the binding would be ignored. "
            f"Remove it and set {knob} instead."
        )


def check_plan(
    plan: stg.Plan,
    stop: int,
    lengths: Mapping[str, int],
    batch_size: int,
    num_microbatches: int,
    partitioner: Partitioner,
    input_shards: int | None,
) -> None:
    """Every stage's settings, checked before anything is written: a mistake in the joint
    stage must not surface after hours of pre-training."""
    check_dataset_bindings()
    check_trainable(plan, stop)
    for index, stage in enumerate(plan.stages[: stop + 1]):
        stg.make_tx(plan, index)  # optimizer, schedule vs the stage's length
        data.effective_rates(
            data.DatasetConfig(
                mixture_or_task_name=stage.mixture_or_task_name,
                task_feature_lengths=lengths,
                batch_size=batch_size,
                rates=stage.rates,
                rate_schedule=stage.rate_schedule,  # its tasks and sizes checked here
            )
        )
    if (
        isinstance(num_microbatches, bool)
        or not isinstance(num_microbatches, int)
        or (num_microbatches < 1 or batch_size % num_microbatches)
    ):
        raise ConfigError(
            f"train.num_microbatches={num_microbatches!r} must be an integer >= 1 that divides "
            f"train.batch_size={batch_size}."
        )
    _, num_shards = partitioner.data_shard(batch_size)
    data.check_input_shards(batch_size, num_shards, input_shards)


def check_stop_conditions(
    plan: stg.Plan,
    stop: int,
    eval_tasks: list[str],
    eval_period: int,
    eval_at_stage_start: bool,
    eval_bleu: bool,
) -> None:
    """Every data-chosen stage end (`Stage.stop_when`) against the run's evals."""
    for stage in plan.stages[: stop + 1]:
        if stage.stop_when is not None:
            stop_conditions.check(
                stage.stop_when,
                stage=stage.name,
                steps=stage.steps,
                eval_tasks=eval_tasks,
                eval_period=eval_period,
                eval_at_stage_start=eval_at_stage_start,
                eval_bleu=eval_bleu,
            )


def check_trainable(plan: stg.Plan, stop: int) -> None:
    """Every stage's `Stage.trainable` against the model's parameter paths: a pattern that
    matches nothing, or patterns that freeze everything, are refused before pre-training."""
    stages = [s for s in plan.stages[: stop + 1] if s.trainable is not None]
    if not stages:
        return
    # The paths do not depend on the vocabulary's size, which is known only once the
    # vocabulary is built: any size gives the same tree.
    config = TransformerConfig(vocab_size=_ANY_VOCAB_SIZE)
    paths = trainable.param_paths(abstract_params(config))
    for stage in stages:
        trainable.check(paths, stage.trainable, stage.name)


_ANY_VOCAB_SIZE = 128


def bleu_tasks(
    eval_bleu: bool, eval_tasks: list[str], bleu_examples: object, bleu_alpha: object
) -> dict[str, str]:
    """{task: target language} of the tasks BLEU scores; empty when BLEU is off."""
    if not eval_bleu:
        return {}
    if bleu_examples is not None and (
        isinstance(bleu_examples, bool) or not isinstance(bleu_examples, int) or bleu_examples < 1
    ):
        raise ConfigError(
            f"train.bleu_examples={bleu_examples!r} must be an integer >= 1, or None for as "
            "many as train.max_eval_examples."
        )
    if (
        isinstance(bleu_alpha, bool)
        or not isinstance(bleu_alpha, (int, float))
        or not math.isfinite(bleu_alpha)
        or bleu_alpha < 0
    ):
        raise ConfigError(
            f"train.bleu_alpha={bleu_alpha!r} must be a finite number >= 0 (the length penalty "
            "exponent; 0.6 in the paper, 0 for none)."
        )
    languages = translation_target_languages(eval_tasks)
    if not languages:
        raise ConfigError(
            f"train.eval_bleu=True but no eval task is a translation task (eval tasks: "
            f"{eval_tasks}); BLEU scores translations only. Set EVAL_BLEU = False, or evaluate "
            "a translation task (Plan.eval_tasks)."
        )
    return languages

"""A run's settings, checked before anything is built or written: a mistake in the joint stage
must not surface after hours of pre-training (every stage's optimizer, schedule and rates, the
microbatches, the input shards, BLEU's settings)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ptjf import stages as stg
from ptjf.data import batches as data
from ptjf.errors import ConfigError
from ptjf.runtime.partitioning import Partitioner
from ptjf.training.bleu import translation_target_languages


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
    for index, stage in enumerate(plan.stages[: stop + 1]):
        stg.make_tx(plan, index)  # optimizer, schedule vs the stage's length
        data.effective_rates(
            data.DatasetConfig(
                mixture_or_task_name=stage.mixture_or_task_name,
                task_feature_lengths=lengths,
                batch_size=batch_size,
                rates=stage.rates,
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

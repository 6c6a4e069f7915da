"""Per-task evaluation: validation and a fixed training subset, as the paper plots both.

Every eval task is scored on its own split with the un-smoothed cross-entropy per real target
token (paper App. B normalises by real target tokens) and token accuracy. The batches are built
once per run and kept, so the jitted eval step compiles once per shape and every eval of a run
reads exactly the same examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ptjf import stages as stg
from ptjf.data import batches as data
from ptjf.models import EncoderDecoder, TransformerConfig
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import steps
from ptjf.training.bleu import BleuEvaluator

Batches = Sequence[Mapping[str, np.ndarray]]
MODEL_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


def model_features(batch: Mapping[str, np.ndarray], *, keep_task_ids: bool = False) -> dict:
    """The features the model and the steps read (drops bookkeeping such as `task_ids`)."""
    keep = MODEL_FEATURES + (("task_ids",) if keep_task_ids else ())
    return {k: v for k, v in batch.items() if k in keep}


def _on_device(batches: Batches, partitioner: Partitioner | None) -> list[dict[str, jax.Array]]:
    features = [model_features(b, keep_task_ids=True) for b in batches]
    if partitioner is None:
        return [jax.device_put(f) for f in features]
    return [partitioner.global_batch(f) for f in features]


class Evaluator:
    """Scores parameters on each task's validation split and training subset."""

    def __init__(
        self,
        eval_step: Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]],
        validation: Mapping[str, Batches],
        train_subset: Mapping[str, Batches],
        partitioner: Partitioner | None = None,
    ):
        """With a `partitioner`, every process holds every eval batch whole and the batches are
        split over the mesh's `data` axis; the per-task sums come back replicated."""
        if partitioner is None:
            self._step = jax.jit(eval_step)
        else:
            self._step = partitioner.jit(eval_step, out_shardings=partitioner.replicated)
        # On the device once: every eval of the run reads the same batches.
        self._validation = {t: _on_device(bs, partitioner) for t, bs in validation.items()}
        self._train = {t: _on_device(bs, partitioner) for t, bs in train_subset.items()}

    @property
    def tasks(self) -> list[str]:
        return list(self._validation)

    def _score(self, params: Any, batches: Batches) -> dict[str, float]:
        totals: dict[str, Any] = {}
        for batch in batches:
            sums = self._step(params, batch)
            for k, v in sums.items():
                totals[k] = totals[k] + v if k in totals else v
        host = {k: float(np.asarray(v)[0]) for k, v in jax.device_get(totals).items()}
        tokens = host["token_count"]
        return {
            "loss": host["loss_sum"] / tokens if tokens else float("nan"),
            "accuracy": host["correct"] / tokens if tokens else float("nan"),
            "tokens": tokens,
            "examples": host["example_count"],
        }

    def evaluate(self, params: Any) -> dict[str, dict[str, dict[str, float]]]:
        """{"validation": {task: scores}, "train_subset": {task: scores}}."""
        return {
            "validation": {t: self._score(params, bs) for t, bs in self._validation.items()},
            "train_subset": {t: self._score(params, bs) for t, bs in self._train.items()},
        }


def make_apply_fn(model: EncoderDecoder):
    """`apply_fn(params, batch, *, enable_dropout, rngs)` over SeqIO's EncDec features."""

    def apply_fn(params, batch, *, enable_dropout: bool, rngs=None):
        return model.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            enable_dropout=enable_dropout,
            rngs=rngs,
        )

    return apply_fn


def build_evaluators(
    plan: stg.Plan,
    config: TransformerConfig,
    lengths: Mapping[str, int],
    *,
    batch_size: int,
    max_eval_examples: int | None,
    train_eval_examples: int,
    bleu_languages: Mapping[str, str] | None = None,
    bleu_examples: int | None = None,
    beam_size: int = 4,
    bleu_alpha: float = 0.6,
    partitioner: Partitioner | None = None,
) -> tuple[Evaluator, BleuEvaluator | None]:
    """The run's evaluators: losses of every eval task, and BLEU of `bleu_languages`' tasks.

    One function for the trainer and `ptjf eval`, so a checkpoint scored after the run reads
    exactly the batches and examples the run's own evals read.
    """
    eval_tasks = stg.plan_eval_tasks(plan)
    apply_fn = make_apply_fn(EncoderDecoder(config))
    evaluator = Evaluator(
        steps.make_eval_step(apply_fn, num_tasks=1),
        {
            t: data.eval_batches(
                t, "validation", lengths, batch_size, max_examples=max_eval_examples
            )
            for t in eval_tasks
        },
        {
            t: data.eval_batches(t, "train", lengths, batch_size, max_examples=train_eval_examples)
            for t in eval_tasks
        },
        partitioner=partitioner,
    )
    bleu = None
    if bleu_languages:
        bleu = BleuEvaluator.for_tasks(
            bleu_languages,
            EncoderDecoder(config),
            lengths,
            batch_size=batch_size,
            max_examples=bleu_examples if bleu_examples is not None else max_eval_examples,
            beam_size=beam_size,
            alpha=bleu_alpha,
            partitioner=partitioner,
        )
    return evaluator, bleu

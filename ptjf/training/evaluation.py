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

from ptjf.partitioning import Partitioner

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

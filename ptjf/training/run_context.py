"""The run's shared context, `RunContext`: what every stage of a run reads and updates.

Split from `ptjf.training.trainer` so that the loop stays one readable file: the model, mesh,
eval data, writers and the examples/tokens counters live here, with the eval and checkpoint
metadata they feed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ptjf import stages as stg
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.data import batches as data
from ptjf.models import TransformerConfig
from ptjf.runtime import distributed
from ptjf.runtime.partitioning import Partitioner
from ptjf.runtime.preemption import PreemptionWatch
from ptjf.training import startup, stop_conditions
from ptjf.training.bleu import BleuEvaluator
from ptjf.training.evaluation import Evaluator
from ptjf.training.metrics_io import MetricsWriter, NullMetricsWriter
from ptjf.training.progress import ProgressDisplay
from ptjf.training.train_state import TrainState

# The trainer's logger, as before the split: its records keep their name.
log = logging.getLogger("ptjf.training.trainer")


@dataclasses.dataclass
class RunContext:
    """What every stage of a run shares: the model, its mesh, eval data, writers and counters.

    Examples and tokens seen per task are counted on each host from the rows it feeds; with
    several processes the counts since the last sync are summed across processes (processes
    that feed the same rows, over a `model` axis spanning hosts, count them once) at each eval
    and checkpoint, the only places they are read.
    """

    model_dir: str
    plan: stg.Plan
    config: TransformerConfig
    partitioner: Partitioner
    apply_fn: Any
    evaluators: startup.Background[tuple[Evaluator, BleuEvaluator | None]]
    writer: MetricsWriter | NullMetricsWriter
    options: dict[str, Any]
    examples_seen: dict[str, int]
    tokens_seen: dict[str, int]
    last_eval: dict[str, Any] | None = None
    timeline: startup.Timeline | None = None
    startup_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    preemption: PreemptionWatch | None = None
    _pending: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Global step of each stage's step 0, where it differs from the plan's numbering (a stage
    # started by `ptjf switch` from another step than the plan's end of its parent).
    base_steps: dict[int, int] = dataclasses.field(default_factory=dict)
    # Each stage's sampling rates as a function of its step (set when the stage starts).
    rates_at: dict[int, Any] = dataclasses.field(default_factory=dict)

    def global_step(self, index: int, step: int) -> int:
        return self.base_steps.get(index, self.plan.steps_before(index)) + step

    @property
    def evaluator(self) -> Evaluator:
        """The eval data, read on a background thread after the first step (see `train`)."""
        return self.evaluators.result()[0]

    @property
    def bleu(self) -> BleuEvaluator | None:
        return self.evaluators.result()[1]

    def mark(self, phase: str) -> None:
        """Notes the end of a start-up phase, until the process's first step is done."""
        if self.timeline is not None:
            self.timeline.mark(phase)

    def first_step_done(self) -> None:
        assert self.timeline is not None
        self.timeline.mark("first step")
        log.info("launch to first step: %s", self.timeline.summary())
        self.startup_seconds = dict(self.timeline.marks)
        self.timeline = None

    def restore_counts(self, meta: Mapping[str, Any]) -> None:
        self.examples_seen.update(meta.get("examples_seen", {}))
        self.tokens_seen.update(meta.get("tokens_seen", {}))

    def count(self, task_names: list[str], batch: Mapping[str, np.ndarray]) -> int:
        """Adds a local batch to the examples/tokens seen per task; returns its real tokens."""
        examples, tokens = data.count_by_task(batch, len(task_names))
        for t, e, k in zip(task_names, examples, tokens, strict=True):
            pending = self._pending.setdefault(t, np.zeros(2, np.int64))
            pending += (int(e), int(k))
        if jax.process_count() == 1:
            self.sync_counts()
        return int(np.count_nonzero(batch["encoder_input_tokens"])) + int(tokens.sum())

    def sync_counts(self) -> None:
        """Folds every process's pending counts into the run's totals (a collective)."""
        names = sorted(set(self.examples_seen) | set(self._pending))
        local = np.stack([self._pending.get(t, np.zeros(2, np.int64)) for t in names])
        self._pending.clear()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            gathered = np.asarray(multihost_utils.process_allgather(local))
            replicas = jax.process_count() // self.partitioner.num_data_shards
            local = gathered.sum(axis=0) // replicas
        for t, (e, k) in zip(names, local, strict=True):
            self.examples_seen[t] = self.examples_seen.get(t, 0) + int(e)
            self.tokens_seen[t] = self.tokens_seen.get(t, 0) + int(k)

    def evaluate(
        self,
        state: TrainState,
        index: int,
        step: int,
        train_scalars: dict | None,
        watch: stop_conditions.Watch,
    ) -> bool:
        """Scores the eval tasks and writes the record; True when the stage's condition
        (`Stage.stop_when`) ends it at this step."""
        self.sync_counts()
        stage = self.plan.stages[index]
        record = {
            "stage": stage.name,
            "stage_index": index,
            "stage_step": step,
            "global_step": self.global_step(index, step),
            "time": time.time(),
            "examples_seen": dict(self.examples_seen),
            "tokens_seen": dict(self.tokens_seen),
            **self.evaluator.evaluate(state.params),
        }
        if index in self.rates_at:  # the rates the stream samples this step's batch with
            record["rates"] = self.rates_at[index](step)
        if self.bleu is not None:
            record["bleu"] = self.bleu.evaluate(state.params)
        if train_scalars:
            record["train"] = train_scalars
        ends = watch.observe(record)
        self.writer.write_eval(record)
        if distributed.is_primary():  # one eval line per run, beside its progress line
            ProgressDisplay.print_eval(record, self.plan.total_steps)
        self.last_eval = record
        return ends

    def metadata(self, index: int, step: int, parent: tuple[str, int] | None, **extra: Any) -> dict:
        self.sync_counts()
        return ckpt.checkpoint_metadata(
            stage_index=index,
            stage_name=self.plan.stages[index].name,
            global_step=self.global_step(index, step),
            parent=parent,
            data_position={"batches": step},
            examples_seen=self.examples_seen,
            tokens_seen=self.tokens_seen,
            **extra,
        )

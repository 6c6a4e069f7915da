"""The trainer: runs a plan of stages, top to bottom (big_vision's one readable loop).

For each stage: build its optimizer and schedule, its state (fresh, resumed from its own
latest checkpoint, or carried over through the stage switch), its batches, then run the jitted
train step. Every `eval_period` steps each eval task is scored on validation and on a fixed
training subset, and one record goes to `MODEL_DIR/metrics.jsonl` (+ TensorBoard). Checkpoints
go to `MODEL_DIR/<stage name>/<stage step>`; rerunning the same command resumes from the latest
checkpoint of the latest stage.

The step loop never waits for the device except at log and eval points: metrics stay on the
device, the non-finite counter is accumulated there, and examples seen per task are counted on
the host from the batches it already holds.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ptjf import checkpoints as ckpt
from ptjf import stages as stg
from ptjf.data import batches as data
from ptjf.data.vocabularies import padded_vocab_size
from ptjf.errors import ConfigError, PtjfError
from ptjf.models import EncoderDecoder, TransformerConfig, init_params
from ptjf.training import steps
from ptjf.training.evaluation import Evaluator, model_features
from ptjf.training.metrics_io import MetricsWriter, ProgressDisplay
from ptjf.training.train_state import TrainState

log = logging.getLogger(__name__)


class TrainingError(PtjfError):
    """Training cannot go on (non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class RunSummary:
    model_dir: str
    global_step: int
    last_eval: dict[str, Any] | None


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


def plan_vocabulary(plan: stg.Plan):
    """The one vocabulary every stage and eval task shares (a model has one embedding)."""
    from ptjf import tasks as ptasks

    names = [s.mixture_or_task_name for s in plan.stages] + stg.plan_eval_tasks(plan)
    vocabs = {n: ptasks.get_task_or_mixture(n).output_features["targets"].vocabulary for n in names}
    first_name, first = next(iter(vocabs.items()))
    for name, vocab in vocabs.items():
        if vocab != first:
            raise ConfigError(
                f"{name!r} uses a different vocabulary from {first_name!r}; every stage and eval "
                "task of a plan must share one vocabulary (register them under one problem)."
            )
    return first


def _abstract_params(config: TransformerConfig):
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def build_state(
    plan: stg.Plan,
    index: int,
    model_dir: str,
    config: TransformerConfig,
    checkpoint: ckpt.CheckpointConfig,
    seed: int,
    tx,
) -> tuple[TrainState, dict[str, Any], tuple[str, int] | None]:
    """The state a stage starts (or resumes) from, its saved metadata and its parent."""
    stage = plan.stages[index]
    here = os.path.join(model_dir, stage.name)
    own = ckpt.finalized_steps(here) if os.path.isdir(here) else []
    target_params = _abstract_params(config)
    if own:  # resume this stage (or start it from a `ptjf switch` checkpoint at step 0)
        target = jax.eval_shape(lambda p: stg.switch_state(p, tx), target_params)
        with ckpt.StageCheckpointer(here, checkpoint, read_only=True) as c:
            state, meta = c.restore(own[-1], target_state=target)
        lineage = meta.get("lineage") or {}
        parent = (lineage["parent_path"], lineage["parent_step"]) if lineage else None
        return state, meta, parent
    if index == 0 or stage.init_from == "scratch":
        params = init_params(config, jax.random.fold_in(jax.random.key(seed), index))
        return stg.switch_state(params, tx), {}, None
    prev = plan.stages[index - 1]
    prev_dir = os.path.join(model_dir, prev.name)
    with ckpt.StageCheckpointer(prev_dir, checkpoint, read_only=True) as c:
        if stage.carries_optimizer:
            target = jax.eval_shape(lambda p: stg.switch_state(p, tx), target_params)
            full, meta = c.restore(prev.steps, target_state=target)
            state = stg.carry_state(full, tx)
        else:
            params, meta = c.restore_params(prev.steps, target_params=target_params)
            state = stg.switch_state(params, tx)
    return state, meta, (prev_dir, prev.steps)


@gin.configurable("train")
def train(
    *,
    model_dir: str = gin.REQUIRED,
    plan: stg.Plan = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    seed: int = 0,
    pack: bool = True,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    num_microbatches: int = 1,
    eval_period: int = 1000,
    eval_batch_size: int | None = None,
    max_eval_examples: int | None = None,
    train_eval_examples: int = 512,
    eval_at_stage_start: bool = True,
    log_every: int = 50,
    checkpoint: ckpt.CheckpointConfig = ckpt.CheckpointConfig(),
    tensorboard: bool = True,
) -> RunSummary:
    """Runs `plan` in `model_dir` (T5X's `train_script.train`, for a plan of stages)."""
    if eval_period < 1 or log_every < 1:
        raise ConfigError(f"eval_period={eval_period} and log_every={log_every} must be >= 1.")
    lengths = dict(task_feature_lengths)

    # --- set-up: model, eval data, writers ---------------------------------------------
    vocab = plan_vocabulary(plan)
    config = TransformerConfig(vocab_size=padded_vocab_size(vocab))
    model = EncoderDecoder(config)
    apply_fn = make_apply_fn(model)
    eval_tasks = stg.plan_eval_tasks(plan)
    eval_bs = eval_batch_size or batch_size
    evaluator = Evaluator(
        steps.make_eval_step(apply_fn, num_tasks=1),
        {t: data.eval_batches(t, "validation", lengths, eval_bs, max_examples=max_eval_examples) for t in eval_tasks},
        {t: data.eval_batches(t, "train", lengths, eval_bs, max_examples=train_eval_examples) for t in eval_tasks},
    )
    writer = MetricsWriter(model_dir, tensorboard=tensorboard)
    # The run's whole configuration beside its results, as T5X keeps config.gin.
    with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
        f.write(gin.config_str())
    examples_seen = dict.fromkeys(eval_tasks, 0)
    tokens_seen = dict.fromkeys(eval_tasks, 0)
    last_eval = None
    global_step = 0

    # Resume: the latest stage that has a checkpoint is where the run continues; every stage
    # before it is done (a `ptjf switch` checkpoint at step 0 also starts its stage).
    latest = ckpt.find_latest(model_dir, [s.name for s in plan.stages])
    resume_index = latest[0] if latest else 0
    for index, stage in enumerate(plan.stages):
        stage_dir = os.path.join(model_dir, stage.name)
        done = ckpt.finalized_steps(stage_dir) if os.path.isdir(stage_dir) else []
        if index < resume_index or (done and done[-1] >= stage.steps):
            if done:
                with ckpt.StageCheckpointer(stage_dir, checkpoint, read_only=True) as c:
                    meta = c.read_metadata(done[-1])
                examples_seen.update(meta.get("examples_seen", {}))
                tokens_seen.update(meta.get("tokens_seen", {}))
            global_step = plan.steps_before(index + 1)
            log.info("stage %s already complete; skipping", stage.name)
            continue

        # --- the stage's optimizer, state (fresh / resumed / switched) and data -------------
        tx, schedule = stg.make_tx(plan, index)
        state, meta, parent = build_state(plan, index, model_dir, config, checkpoint, seed, tx)
        # One placement for fresh, restored and switched states alike, so that the step's
        # outputs match its inputs and it compiles once per stage.
        state = jax.device_put(state, jax.devices()[0])
        examples_seen.update(meta.get("examples_seen", {}))
        tokens_seen.update(meta.get("tokens_seen", {}))
        start = int(state.step)
        dataset = data.DatasetConfig(
            mixture_or_task_name=stage.mixture_or_task_name,
            task_feature_lengths=lengths,
            batch_size=batch_size,
            seed=seed + 1000 * index,
            pack=pack,
            rates=stage.rates,
        )
        task_names = data.mixture_task_names(dataset)
        batches = data.train_batches(dataset, start_batch=start)
        step_fn = jax.jit(
            steps.make_train_step(
                apply_fn, tx, label_smoothing=label_smoothing, z_loss=z_loss,
                num_microbatches=num_microbatches, schedule=schedule,
            ),
            donate_argnums=(0,),
        )
        dropout_rng = jax.random.fold_in(jax.random.key(seed + 1), index)
        checkpointer = ckpt.StageCheckpointer(stage_dir, checkpoint)
        base_step = plan.steps_before(index)
        log.info("stage %d/%d %r: %s, steps %d..%d", index + 1, len(plan.stages), stage.name,
                 stage.mixture_or_task_name, start, stage.steps)

        def metadata(step: int, _index=index, _stage=stage, _parent=parent) -> dict:
            return ckpt.checkpoint_metadata(
                stage_index=_index, stage_name=_stage.name, global_step=base_step + step,
                parent=_parent, data_position={"batches": step},
                examples_seen=examples_seen, tokens_seen=tokens_seen,
            )

        def run_eval(step: int, train_scalars: dict | None, _stage=stage, _index=index) -> dict:
            record = {
                "stage": _stage.name, "stage_index": _index, "stage_step": step,
                "global_step": base_step + step, "time": time.time(),
                "examples_seen": dict(examples_seen), "tokens_seen": dict(tokens_seen),
                **evaluator.evaluate(state.params),
            }
            if train_scalars:
                record["train"] = train_scalars
            writer.write_eval(record)
            return record

        if start == 0:
            checkpointer.save(0, state, metadata(0), force=True)
            if eval_at_stage_start:
                last_eval = run_eval(0, None)

        # --- the step loop ------------------------------------------------------------
        progress = ProgressDisplay(stage.steps, stage_name=stage.name)
        nonfinite = jnp.zeros((), jnp.int32)
        window_tokens, window_start, metrics = 0, time.perf_counter(), None
        for step in range(start + 1, stage.steps + 1):
            batch = next(batches)
            ex, tok = data.count_by_task(batch, len(task_names))
            for t, e, k in zip(task_names, ex, tok, strict=True):
                examples_seen[t] = examples_seen.get(t, 0) + int(e)
                tokens_seen[t] = tokens_seen.get(t, 0) + int(k)
            window_tokens += int(np.count_nonzero(batch["encoder_input_tokens"])) + int(tok.sum())
            state, metrics = step_fn(state, model_features(batch), dropout_rng)
            nonfinite = nonfinite + metrics["nonfinite"]

            is_eval = step % eval_period == 0 or step == stage.steps
            if step % log_every == 0 or is_eval:
                if int(nonfinite):
                    checkpointer.close()
                    raise TrainingError(
                        f"Stage {stage.name!r}: the loss became NaN or infinite by stage step "
                        f"{step} (global {base_step + step}); the stage is stopped and those "
                        f"updates were not applied. The last good checkpoint stays in "
                        f"{stage_dir} (steps {ckpt.finalized_steps(stage_dir)}). Lower the "
                        "learning rate, add warmup or gradient clipping, or check the data."
                    )
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                scalars["tokens_per_sec"] = window_tokens / max(elapsed, 1e-9)
                writer.write_train(base_step + step, scalars)
                progress.update(step, scalars["loss"], scalars["tokens_per_sec"])
                window_tokens, window_start = 0, time.perf_counter()
                if is_eval:
                    last_eval = run_eval(step, scalars)
            checkpointer.save(step, state, metadata(step), force=step == stage.steps)
        progress.close()
        checkpointer.wait()
        checkpointer.close()
        global_step = base_step + stage.steps

    writer.close()
    return RunSummary(model_dir=model_dir, global_step=global_step, last_eval=last_eval)

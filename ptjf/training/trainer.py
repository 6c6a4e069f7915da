"""The trainer: runs a plan of stages, top to bottom (big_vision's one readable loop).

For each stage: build its optimizer and schedule, its state (fresh, resumed from its own
latest checkpoint, or carried over through the stage switch), its batches, then run the jitted
train step. Every `eval_period` steps each eval task is scored on validation and on a fixed
training subset (with `eval_bleu`, each translation task also by corpus BLEU of its
beam-searched validation outputs, paper App. A.5), and one record goes to
`MODEL_DIR/metrics.jsonl` (+ TensorBoard). Checkpoints go to
`MODEL_DIR/<stage name>/<stage step>`; rerunning the same command resumes from the latest
checkpoint of the latest stage.

The step loop never waits for the device except at log and eval points: metrics stay on the
device, the non-finite counter is accumulated there, and examples seen per task are counted on
the host from the batches it already holds. Before a stage's first step its state, its first
batch and its compiled step are prepared side by side (`ptjf.training.startup`): the step is
compiled once per stage, ahead of time, from shapes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp

from ptjf import stages as stg
from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.data import batches as data
from ptjf.data import input_state, vocabularies, vocabulary_checksums
from ptjf.data.vocabularies import padded_vocab_size
from ptjf.errors import ConfigError, PtjfError
from ptjf.models import EncoderDecoder, TransformerConfig
from ptjf.runtime import distributed, faults
from ptjf.runtime.partitioning import Partitioner
from ptjf.runtime.preemption import Preempted, PreemptionWatch
from ptjf.training import init_from, input_resume, startup, steps, stop_conditions
from ptjf.training.evaluation import build_evaluators, make_apply_fn, model_features
from ptjf.training.metrics_io import MetricsWriter, NullMetricsWriter
from ptjf.training.progress import ProgressDisplay
from ptjf.training.run_checks import bleu_tasks, check_plan, check_stop_conditions
from ptjf.training.run_context import RunContext
from ptjf.training.stage_state import build_state, finished_stage, stage_end_step
from ptjf.training.state_layout import sharded_state_target, state_shardings

log = logging.getLogger(__name__)


class TrainingError(PtjfError):
    """Training cannot go on (non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class RunSummary:
    model_dir: str
    global_step: int
    last_eval: dict[str, Any] | None
    preempted: bool = False
    """True when a SIGTERM stopped the run after saving; the same command resumes it."""
    startup_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds from the process's start to the end of each start-up phase and the first step."""


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


def model_config(plan: stg.Plan) -> TransformerConfig:
    """The gin-configured model, its embedding sized for the plan's one vocabulary."""
    return TransformerConfig(vocab_size=padded_vocab_size(plan_vocabulary(plan)))


_DEFAULT_CHECKPOINT = ckpt.CheckpointConfig()


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
    checkpoint: ckpt.CheckpointConfig = _DEFAULT_CHECKPOINT,
    tensorboard: bool = True,
    last_stage: str | None = None,
    eval_bleu: bool = False,
    bleu_examples: int | None = None,
    beam_size: int = 4,
    bleu_alpha: float = 0.6,
    partitioner: Partitioner | None = None,
    input_shards: int | None = None,
    vocab_dir: str | None = None,
    resume_input: str = "restore",
) -> RunSummary:
    """Runs `plan` in `model_dir` (T5X's `train_script.train`, for a plan of stages).

    eval_period / log_every: stage steps between evals / between host reads of the metrics.
    max_eval_examples: cap on each task's validation examples (None = all).
    train_eval_examples: size of the fixed training subset scored at each eval.
    last_stage: stop after this stage (a sweep runs a shared pre-training this way, then forks
        every joint fine-tune from its checkpoint with `ptjf switch`); None runs them all.
    eval_bleu: also score every translation eval task by corpus BLEU at each eval (record key
        "bleu"; LM tasks are skipped): its first `bleu_examples` validation examples (None =
        as many as `max_eval_examples`) beam-searched up to the targets length with
        `beam_size` beams and GNMT length penalty `bleu_alpha` (paper App. A.5: 4 and 0.6).
    partitioner: the mesh and logical-axis rules; None = `partitioning.PjitPartitioner()` as
        gin configures it (all devices on the `data` axis unless `num_partitions` says so).
    input_shards: None = each host reads its own 1/N of every task (N hosts feeding distinct
        rows); an integer fixes the stream's shards, so the batches do not depend on the number
        of hosts (`data.host_train_batches`).
    vocab_dir: where the one SentencePiece model every host uses is built once and published
        (local or gs://); None = `MODEL_DIR/vocabularies` with several processes, the local
        cache (`PTJF_DATA_DIR`, or `$PTJF_VOCAB_DIR`) with one.
    resume_input: "restore" continues each stream from its checkpoint's saved position (cost
        independent of the step); "replay" skips the trained batches of this run's stream
        (`ptjf.training.input_resume`).
    """
    for name, value in (
        ("eval_period", eval_period),
        ("log_every", log_every),
        ("batch_size", batch_size),
        ("beam_size", beam_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"train.{name}={value!r} must be an integer >= 1.")
    lengths = data.check_lengths(task_feature_lengths)
    input_resume.check_mode(resume_input)
    names = [s.name for s in plan.stages]
    if last_stage is not None and last_stage not in names:
        raise ConfigError(
            f"train.last_stage={last_stage!r} is not a stage of the plan; its stages are {names}."
        )
    stop = names.index(last_stage) if last_stage is not None else len(names) - 1
    eval_tasks = stg.plan_eval_tasks(plan)
    bleu_languages = bleu_tasks(eval_bleu, eval_tasks, bleu_examples, bleu_alpha)
    partitioner = partitioner or Partitioner()
    check_plan(plan, stop, lengths, batch_size, num_microbatches, partitioner, input_shards)
    check_stop_conditions(plan, stop, eval_tasks, eval_period, eval_at_stage_start, eval_bleu)
    # Before anything is built or written: a mistyped URI, a missing bucket or a read-only
    # path stops here, naming the path, not after the first checkpoint.
    model_dir = storage.check_writable(
        model_dir,
        "MODEL_DIR",
        "Pass a writable directory or gs://BUCKET/path with --gin.MODEL_DIR=...",
    )
    if vocab_dir is None and jax.process_count() > 1:
        vocab_dir = storage.join(model_dir, "vocabularies")
    vocabularies.set_shared_dir(vocab_dir)

    # --- set-up: mesh, model, eval data, writers ----------------------------------------
    log.info("%s", partitioner.describe())
    config = model_config(plan)
    # Every host must tokenize with process 0's model (a collective: all processes are here).
    checksums = vocabulary_checksums.check_features_on_every_host(
        {"vocabulary": plan_vocabulary(plan)}
    )
    for stage in plan.stages[: stop + 1]:  # a checkpoint to start from: layout, fit, vocabulary
        if init_from.is_path(stage.init_from) and not ckpt.finalized_steps(
            storage.join(model_dir, stage.name)
        ):
            init_from.params_loader(stage.init_from, partitioner, config, checkpoint)
    apply_fn = make_apply_fn(EncoderDecoder(config))
    timeline = startup.Timeline()
    timeline.mark("configured")
    # Read on a background thread after the first step (during start-up its Python would hold
    # the GIL that the start-up work needs, and its tokenizing would take cores from the first
    # step); the first log point waits for it, so bad eval data stops the run there, having
    # lost nothing. A stage-start eval reads it before the stage's first step.
    evaluators = startup.Background(
        build_evaluators,
        plan,
        config,
        lengths,
        batch_size=eval_batch_size or batch_size,
        max_eval_examples=max_eval_examples,
        train_eval_examples=train_eval_examples,
        bleu_languages=bleu_languages,
        bleu_examples=bleu_examples,
        beam_size=beam_size,
        bleu_alpha=bleu_alpha,
        partitioner=partitioner,
        name="ptjf-eval-data",
        start=False,
    )
    if distributed.is_primary():  # one writer of the run's shared files
        writer: MetricsWriter | NullMetricsWriter = MetricsWriter(
            model_dir, tensorboard=tensorboard
        )
        # The run's whole configuration beside its results, as T5X keeps config.gin.
        storage.write_text(storage.join(model_dir, "config.gin"), gin.config_str())
    else:
        writer = NullMetricsWriter()
    run = RunContext(
        model_dir=model_dir,
        plan=plan,
        config=config,
        partitioner=partitioner,
        apply_fn=apply_fn,
        evaluators=evaluators,
        timeline=timeline,
        writer=writer,
        options=dict(
            lengths=lengths,
            batch_size=batch_size,
            seed=seed,
            pack=pack,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            num_microbatches=num_microbatches,
            eval_period=eval_period,
            eval_at_stage_start=eval_at_stage_start,
            log_every=log_every,
            checkpoint=checkpoint,
            input_shards=input_shards,
            resume_input=resume_input,
            vocabulary=checksums.get("vocabulary"),
        ),
        examples_seen=dict.fromkeys(eval_tasks, 0),
        tokens_seen=dict.fromkeys(eval_tasks, 0),
    )

    # --- the stages, resuming where the latest checkpoint is ----------------------------
    # Every stage before the latest one with a checkpoint is done (a `ptjf switch`
    # checkpoint at step 0 also starts its stage).
    latest = ckpt.find_latest(model_dir, [s.name for s in plan.stages])
    resume_index = latest[0] if latest else 0
    try:
        with PreemptionWatch() as run.preemption:
            for index, stage in enumerate(plan.stages[: stop + 1]):
                stage_dir = storage.join(model_dir, stage.name)
                complete, meta = finished_stage(stage, stage_dir, checkpoint)
                if index < resume_index or complete:
                    run.restore_counts(meta)
                    if meta.get("global_step") is not None:  # its saved numbering wins
                        run.base_steps[index] = int(meta["global_step"]) - int(meta.get("step", 0))
                    log.info("stage %s is complete; skipping it", stage.name)
                    continue
                _train_stage(run, index)
    except Preempted as p:
        index = names.index(p.stage)
        return RunSummary(
            model_dir=model_dir,
            global_step=run.global_step(index, p.step),
            last_eval=run.last_eval,
            preempted=True,
            startup_seconds=run.startup_seconds,
        )
    finally:
        writer.close()
    return RunSummary(
        model_dir=model_dir,
        global_step=run.global_step(
            stop,
            # A last stage that its evals ended early ends where its last checkpoint says.
            stage_end_step(plan.stages[stop], storage.join(model_dir, names[stop]), checkpoint),
        ),
        last_eval=run.last_eval,
        startup_seconds=run.startup_seconds,
    )


def _train_stage(run: RunContext, index: int) -> None:
    """One stage: its optimizer and state (fresh, resumed or switched), data, loop, evals."""
    opt = run.options
    stage = run.plan.stages[index]
    stage_dir = storage.join(run.model_dir, stage.name)
    part = run.partitioner
    dataset = data.DatasetConfig(
        mixture_or_task_name=stage.mixture_or_task_name,
        task_feature_lengths=opt["lengths"],
        batch_size=opt["batch_size"],
        seed=opt["seed"] + 1000 * index,
        pack=opt["pack"],
        rates=stage.rates,
        rate_schedule=stage.rate_schedule,
    )
    task_names = data.mixture_task_names(dataset)
    schedule = data.bound_schedule(dataset)
    # The rates each eval record logs: the schedule's at the eval's stage step, else static.
    static = data.effective_rates(dataset)
    run.rates_at[index] = schedule.rates_at if schedule is not None else lambda _: static
    shard_index, num_shards = part.data_shard(opt["batch_size"])
    input_shards = data.check_input_shards(opt["batch_size"], num_shards, opt["input_shards"])
    per_host = input_shards // num_shards
    stage_input = input_resume.StageInput(
        stage_dir,
        lambda start_batch, states: data.host_train_batches(
            dataset,
            start_batch=start_batch,
            host_shard=shard_index,
            num_host_shards=num_shards,
            input_shards=opt["input_shards"],
            states=states,
        ),
        input_state.describe(
            dataset,
            task_names,
            static,
            input_shards=input_shards,
            schedule=schedule,
            vocabulary=opt["vocabulary"],
        ),
        range(shard_index * per_host, (shard_index + 1) * per_host),
        opt["resume_input"],
    )
    open_batches = stage_input.open

    # The first batch is read from the start: building its tf.data pipeline is the longest of
    # the three waits below. A resumed stage starts at its newest checkpoint; should that one be
    # corrupted, the state comes from an older one and the stream is reopened at that step.
    own = ckpt.finalized_steps(stage_dir)
    expected_start = own[-1] if own else 0

    def open_and_read() -> tuple[Any, Any]:
        stream = open_batches(expected_start)
        return stream, next(stream)

    reading = startup.Background(open_and_read, name="ptjf-first-batch")

    tx, schedule = stg.make_tx(run.plan, index)
    shardings = state_shardings(part, run.config, tx)
    train_step = steps.make_train_step(
        run.apply_fn,
        tx,
        label_smoothing=opt["label_smoothing"],
        z_loss=opt["z_loss"],
        num_microbatches=opt["num_microbatches"],
        schedule=schedule,
    )
    jit_kwargs = {"out_shardings": (shardings, part.replicated), "donate_argnums": (0,)}
    # Made on the mesh (replicated), as the precompiled step expects it, on any number of hosts.
    dropout_rng = part.jit(
        lambda: jax.random.fold_in(jax.random.key(opt["seed"] + 1), index),
        out_shardings=part.replicated,
    )()
    # The step compiles from shapes and the first batch is read while the state is built
    # (ptjf.training.startup): three independent waits, overlapped. One compile per stage.
    abstract_state = sharded_state_target(part, run.config, tx, shardings)
    batch_spec = startup.abstract_batch(
        opt["lengths"], opt["batch_size"], opt["pack"], part.batch_sharding
    )
    rng_spec = jax.ShapeDtypeStruct(dropout_rng.shape, dropout_rng.dtype, sharding=part.replicated)
    compiling = startup.Background(
        part.compile,
        train_step,
        (abstract_state, batch_spec, rng_spec),
        name="ptjf-compile-step",
        **jit_kwargs,
    )

    state, meta, parent = build_state(
        run.plan, index, run.model_dir, run.config, opt["checkpoint"], opt["seed"], tx, part
    )
    # One placement for fresh, restored and switched states alike, so that the step's
    # inputs match what it was compiled for.
    state = jax.device_put(state, shardings)
    run.mark("state ready")
    run.restore_counts(meta)
    start = int(state.step)
    # A resumed stage continues its condition's eval history from its own checkpoint.
    history = stop_conditions.restored_history(meta, start) if own else []
    watch = stop_conditions.Watch(stage.stop_when, history)
    if meta.get("global_step") is not None:  # the saved numbering wins over the plan's
        run.base_steps[index] = int(meta["global_step"]) - (int(meta.get("step", 0)) if own else 0)
    progress = ProgressDisplay(
        stage.steps,
        stage_name=stage.name,
        stream=None if distributed.is_primary() else io.StringIO(),
    )
    checkpointer = ckpt.StageCheckpointer(stage_dir, opt["checkpoint"])
    try:  # from here on, an error still waits for a save in flight (finally)
        if start == 0:  # written while the first batch and the compiled step are on their way
            faults.inject("stage_start", index)
            checkpointer.save(0, state, run.metadata(index, 0, parent), force=True)
        batches, pending = reading.result()
        if start != expected_start:
            batches = open_batches(start)
            pending = next(batches)
        run.mark("first batch")
        step_fn: Any = compiling.result()
        run.mark("step compiled")
        first = part.shard_batch(model_features(pending))
        if startup.signature(first) != startup.signature(batch_spec):
            # Not expected (the pipeline's features are fixed); the jitted step still runs them.
            log.warning("The first batch does not fit the precompiled step; compiling it again.")
            step_fn = part.jit(train_step, **jit_kwargs)
        base_step = run.global_step(index, 0)
        log.info(
            "stage %d/%d %r on %s: steps %d..%d",
            index + 1,
            len(run.plan.stages),
            stage.name,
            stage.mixture_or_task_name,
            start,
            stage.steps,
        )
        if start == 0 and opt["eval_at_stage_start"]:
            run.evaluate(state, index, 0, None, watch)

        nonfinite = jnp.zeros((), jnp.int32)
        window_tokens, window_start = 0, time.perf_counter()
        for step in range(start + 1, stage.steps + 1):
            if step == start + 1:
                local, batch = pending, first
            else:
                local = next(batches)
                batch = part.shard_batch(model_features(local))
            window_tokens += run.count(task_names, local)
            run.mark("first step started")  # once per process: all it needs is ready
            state, metrics = step_fn(state, batch, dropout_rng)
            if run.timeline is not None:  # once per process: the launch-to-first-step figure
                jax.block_until_ready(metrics)
                run.first_step_done()
                run.evaluators.start()  # read while the next steps run
            nonfinite = nonfinite + metrics["nonfinite"]  # stays on the device

            is_eval = step % opt["eval_period"] == 0 or step == stage.steps
            if step % opt["log_every"] == 0 or is_eval:
                run.evaluators.result()  # bad eval data stops the run at the first log point
                if int(nonfinite):
                    raise TrainingError(
                        f"Stage {stage.name!r}: the loss became NaN or infinite by stage step "
                        f"{step} (global {base_step + step}); the stage is stopped and those "
                        f"updates were not applied. The last good checkpoint stays in "
                        f"{stage_dir} (steps {ckpt.finalized_steps(stage_dir)}). Lower the "
                        "learning rate, add warmup or gradient clipping, or check the data."
                    )
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                # Every data shard feeds as many rows; this host's tokens stand for its shard.
                scalars["tokens_per_sec"] = (
                    window_tokens
                    * part.num_data_shards
                    / max(time.perf_counter() - window_start, 1e-9)
                )
                run.writer.write_train(base_step + step, scalars)
                progress.update(step, scalars["loss"], scalars["tokens_per_sec"])
                window_tokens, window_start = 0, time.perf_counter()
                if is_eval and run.evaluate(state, index, step, scalars, watch):
                    log.info("stage %r ends at step %d: %s", stage.name, step, watch.ended)
            # On SIGTERM: this step is done; save it and stop (the same command resumes).
            stop = run.preemption is not None and run.preemption.requested(base_step + step)
            force = stop or step == stage.steps or watch.ended is not None
            if checkpointer.due(step, force=force):
                checkpointer.save(
                    step,
                    state,
                    run.metadata(index, step, parent, **watch.metadata()),
                    force=force,
                    input_state=lambda: stage_input.capture(batches),
                )
            if stop:
                checkpointer.wait()
                log.warning("preempted: saved stage %r step %d in %s", stage.name, step, stage_dir)
                raise Preempted(stage.name, step)
            if watch.ended is not None:
                break
    finally:
        progress.close()
        checkpointer.close()

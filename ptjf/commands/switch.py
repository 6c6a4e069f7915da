"""`ptjf switch`: the stage switch as a standalone step, for any checkpoint.

Takes a checkpoint (`DIR` = its latest step, or `DIR/STEP`), keeps only its parameters, and
writes a stage-start checkpoint for a target stage of a gin-configured plan: the source's
parameters, step 0, and lineage (the parent checkpoint and step) in its metadata. It holds no
optimizer state: its metadata says `"optimizer_state": "fresh"`, and `ptjf train` with the same
gin files and `MODEL_DIR` builds that stage's fresh optimizer state when it starts the stage
from it, exactly as the in-process switch does.

The cost is one read of the parameters: they are restored onto the mesh, which checks that they
fit the target model (from the item's metadata, before any array is read; a mismatch names the
first path and both shapes, and nothing is written) and that they read back with the
fingerprint the source recorded. The new step's parameter files are then hard links to the
source's where the filesystem allows, objects copied by GCS itself when both are on `gs://`, a
copy written by orbax otherwise (`ptjf.checkpoints.link`, which also says how a step is published
on GCS, where no directory can be renamed atomically).

The target is the directory `ptjf train` reads the stage from: `MODEL_DIR/<stage>` of the plan
the same gin files give (`stage_dir`); the CLI refuses any other `--to` (a stage start that the
trainer never reads would let it train the stage from scratch, silently) and defaults to it. The
switched step's `global_step` is the source's (its metadata's, or a T5X checkpoint's step): the
joint stage starts where its parameters were trained to, not where the plan's earlier stages
would end.

`copy_metrics` gives the new run its parent's eval history (the records up to the fork), so a
point forked from a shared pre-training has a metrics log that covers its whole life (on local
disk or `gs://`, either side).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from ptjf import stages as stg
from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.checkpoints import link as checkpoint_link
from ptjf.data.vocabularies import padded_vocab_size
from ptjf.errors import CheckpointError, ConfigError
from ptjf.models import TransformerConfig
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import init_from, metrics_io, state_layout
from ptjf.training.metrics_io import METRICS_FILE, read_metrics, to_json_value
from ptjf.training.trainer import plan_vocabulary


def model_dir_from_gin() -> str | None:
    """`train.model_dir` as the parsed gin config binds it (`MODEL_DIR`), or None."""
    import gin

    try:
        value = gin.query_parameter("train.model_dir")
    except ValueError:
        return None
    if isinstance(value, gin.config.ConfigurableReference):  # %MODEL_DIR: the macro's value
        value = value.scoped_configurable_fn()
    return None if value is None else os.fspath(value)


def normalized(path: str) -> str:
    """`path` normalised for comparison: a local path absolute with links resolved, a
    `gs://` URI without repeated or trailing slashes."""
    p = storage.check_uri(path)
    if storage.is_remote(p):
        return storage.GCS + posixpath.normpath(p[len(storage.GCS) :])
    return os.path.realpath(p)


def stage_dir(model_dir: str, plan: stg.Plan, stage: str | None = None) -> str:
    """The directory `ptjf train` reads stage `stage` (default: the plan's last) from."""
    return storage.join(storage.check_uri(model_dir), _stage_name(plan, stage))


def check_target(target: str, model_dir: str, plan: stg.Plan, stage: str | None = None) -> None:
    """Refuses a target that is not `MODEL_DIR/<stage>`: `ptjf train` would never read it."""
    expected = stage_dir(model_dir, plan, stage)
    if normalized(target) != normalized(expected):
        name = _stage_name(plan, stage)
        raise ConfigError(
            f"--to {target!r} is not the directory `ptjf train` reads stage {name!r} from: "
            f"MODEL_DIR/{name} = {expected!r}. A stage start anywhere else is never read, and "
            f"the stage would train from scratch. Pass --to={expected} (or leave --to out), "
            "or set --gin.MODEL_DIR to the run the target belongs to."
        )


def _stage_name(plan: stg.Plan, stage: str | None) -> str:
    names = [s.name for s in plan.stages]
    name = stage or names[-1]
    if name not in names:
        raise ConfigError(
            f"The plan has no stage {name!r}; its stages are {names}. Use --stage NAME."
        )
    return name


def switch(
    source: str,
    target: str | None,
    plan: stg.Plan,
    *,
    stage: str | None = None,
    model_dir: str | None = None,
    checkpoint: ckpt.CheckpointConfig | None = None,
    partitioner: Partitioner | None = None,
    config: TransformerConfig | None = None,
    link: bool = True,
    verify: bool = False,
) -> tuple[str, int]:
    """Writes the stage-start checkpoint of `stage` (default: the plan's last) into `target`.

    `config` is the target model (default: the gin-configured one, sized for the plan's
    vocabulary); `link=False` always writes a copy of the parameters. The parameters are
    linked without being read: the fingerprint the source recorded goes with them and the
    trainer checks it when it restores them; `verify=True` reads and checks them here too (a
    corrupted source is then refused before anything is written). `model_dir`: the run's
    MODEL_DIR; `target` must then be `MODEL_DIR/<stage>` (`check_target`), or None for it.
    Returns the (source stage directory, source step) the parameters came from.
    """
    name = _stage_name(plan, stage)
    index = [s.name for s in plan.stages].index(name)
    if model_dir is not None:
        if target is None:
            target = stage_dir(model_dir, plan, name)
        check_target(target, model_dir, plan, name)
    if target is None:
        raise ConfigError("switch() needs a target stage directory or the run's model_dir.")
    source, target = storage.check_uri(source), storage.check_uri(target)
    if init_from.is_t5x_checkpoint(source):
        return _switch_from_t5x(
            source,
            target,
            plan,
            index,
            checkpoint=checkpoint,
            partitioner=partitioner,
            config=config,
        )
    src_dir, src_step = ckpt.parse_checkpoint_path(source)
    steps = ckpt.finalized_steps(src_dir)
    if not steps:
        raise CheckpointError(
            f"No finished checkpoint in {src_dir!r}. Pass a stage directory that holds "
            "checkpoints (MODEL_DIR/<stage>) or DIR/STEP."
        )
    src_step = steps[-1] if src_step is None else src_step
    if done := ckpt.finalized_steps(target):
        raise CheckpointError(
            f"{target!r} already holds checkpoints {done}; switch into an "
            "empty stage directory so nothing is overwritten."
        )
    stg.make_tx(plan, index)  # the stage's optimizer and schedule fail now, not at `ptjf train`
    config = config or TransformerConfig(vocab_size=padded_vocab_size(plan_vocabulary(plan)))
    partitioner = partitioner or Partitioner()
    target_params = state_layout.sharded_params_target(partitioner, config)

    def load_params() -> Any:
        # Straight onto this mesh, whatever mesh wrote the source (resharding), checked
        # against the source's fingerprint.
        with ckpt.StageCheckpointer(src_dir, checkpoint, read_only=True) as source_ckpt:
            return source_ckpt.restore_params(src_step, target_params=target_params)[0]

    with ckpt.StageCheckpointer(src_dir, checkpoint, read_only=True) as source_ckpt:
        source_ckpt.check_params_fit(src_step, target_params)  # item metadata: no array read
        meta = source_ckpt.read_metadata(src_step)
    if verify:
        verified = load_params()
        load = lambda: verified  # noqa: E731
    else:
        load = load_params
    metadata = ckpt.checkpoint_metadata(
        stage_index=index,
        stage_name=name,
        global_step=int(meta.get("global_step", src_step)),  # where the parameters were
        parent=(src_dir, src_step),
        data_position={"batches": 0},
        examples_seen=meta.get("examples_seen", {}),
        tokens_seen=meta.get("tokens_seen", {}),
        switched_by="ptjf switch",
    )
    checkpoint_link.save_switched(
        target,
        load,
        metadata,
        source_step_dir=storage.join(src_dir, str(src_step)),
        params_fingerprint=(meta.get("fingerprints") or {}).get(ckpt.PARAMS),
        checkpoint=checkpoint,
        link=link,
    )
    return src_dir, src_step


def copy_metrics(source_stage_dir: str, source_step: int, target_stage_dir: str) -> int:
    """Copies the source run's eval records up to the fork into the target run's metrics log.

    The source run is the stage directory's parent (its MODEL_DIR); records up to the source
    checkpoint's global step are copied. Nothing is done when the target run already has
    metrics (a rerun). Returns the number of records copied.

    The records are written in one go, as the log's first piece: on local disk the file
    `metrics.jsonl` (replaced atomically); on `gs://`, which has no append, the log's first part
    `metrics.jsonl.parts/00000000.jsonl` (`ptjf.training.metrics_io`), created only if no
    writer got there first, so the run's own records (later parts) read after them.
    """
    target_run = storage.dirname(storage.check_uri(target_stage_dir))
    target_log = storage.join(target_run, METRICS_FILE)
    if _has_records(target_log):
        return 0
    source_run = storage.dirname(storage.check_uri(source_stage_dir))
    source_log = storage.join(source_run, METRICS_FILE)
    if not metrics_io.log_sources(source_log):
        return 0
    with ckpt.StageCheckpointer(source_stage_dir, read_only=True) as c:
        limit = int(c.read_metadata(source_step).get("global_step", 0))
    records = [r for r in read_metrics(source_log) if r.get("global_step", 0) <= limit]
    text = "".join(json.dumps(to_json_value(r), allow_nan=False) + "\n" for r in records)
    if storage.is_remote(target_log):
        if not records:
            return 0
        first = storage.join(metrics_io.parts_dir(target_log), metrics_io.part_name(0))
        if not storage.create_exclusive(first, text.encode("utf-8")):
            return 0  # the run wrote its own records first
    else:
        storage.write_text(target_log, text)
    return len(records)


def _has_records(log_path: str) -> bool:
    """Whether a metrics log holds anything: a non-empty file, or any part."""
    return any(s != log_path or storage.size(s) > 0 for s in metrics_io.log_sources(log_path))


def _switch_from_t5x(
    source: str,
    target: str,
    plan: stg.Plan,
    index: int,
    *,
    checkpoint: ckpt.CheckpointConfig | None,
    partitioner: Partitioner | None,
    config: TransformerConfig | None,
) -> tuple[str, int]:
    """`switch` from a T5X checkpoint: its parameters (read onto this mesh, never linked: the
    layouts differ), a fresh optimizer state when the stage starts, lineage to the T5X step."""
    if done := ckpt.finalized_steps(target):
        raise CheckpointError(
            f"{target!r} already holds checkpoints {done}; switch into an "
            "empty stage directory so nothing is overwritten."
        )
    stg.make_tx(plan, index)
    config = config or TransformerConfig(vocab_size=padded_vocab_size(plan_vocabulary(plan)))
    partitioner = partitioner or Partitioner()
    load, parent, source_meta = init_from.params_loader(source, partitioner, config, checkpoint)
    metadata = ckpt.checkpoint_metadata(
        stage_index=index,
        stage_name=plan.stages[index].name,
        global_step=int(parent[1] or 0),  # the T5X step: T5X counts over the whole run
        parent=parent,
        data_position={"batches": 0},
        examples_seen={},
        tokens_seen={},
        switched_by=f"ptjf switch ({source_meta['source_format']} checkpoint)",
    )
    checkpoint_link.save_switched(
        target,
        load,
        metadata,
        source_step_dir=source,
        params_fingerprint=None,
        checkpoint=checkpoint,
        link=False,
    )
    return parent

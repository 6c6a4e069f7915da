"""`ptjf switch`: the stage switch as a standalone step, for any checkpoint.

Takes a checkpoint (`DIR` = its latest step, or `DIR/STEP`), keeps only its parameters, and
writes a stage-start checkpoint for a target stage of a gin-configured plan: the source's
parameters, a fresh optimizer state for that stage's optimizer, step 0, and lineage (the
parent checkpoint and step) in its metadata. Running `ptjf train` with the same gin files and
`MODEL_DIR` then starts that stage from it. Parameters that do not fit the target model are
refused before anything is written, naming the first mismatching path and both shapes.

`copy_metrics` gives the new run its parent's eval history (the records up to the fork), so a
point forked from a shared pre-training has a metrics.jsonl that covers its whole life.
"""

from __future__ import annotations

import json
import os

from ptjf import checkpoints as ckpt
from ptjf import stages as stg
from ptjf.data.vocabularies import padded_vocab_size
from ptjf.errors import CheckpointError, ConfigError
from ptjf.models import TransformerConfig
from ptjf.partitioning import Partitioner
from ptjf.training import stage_state
from ptjf.training.metrics_io import METRICS_FILE, read_metrics, to_json_value
from ptjf.training.trainer import plan_vocabulary


def switch(
    source: str,
    target: str,
    plan: stg.Plan,
    *,
    stage: str | None = None,
    checkpoint: ckpt.CheckpointConfig | None = None,
    partitioner: Partitioner | None = None,
) -> tuple[str, int]:
    """Writes the stage-start checkpoint of `stage` (default: the plan's last) into `target`.

    Returns the (source stage directory, source step) the parameters came from.
    """
    names = [s.name for s in plan.stages]
    name = stage or names[-1]
    if name not in names:
        raise ConfigError(
            f"The plan has no stage {name!r}; its stages are {names}. Use --stage NAME."
        )
    index = names.index(name)
    src_dir, src_step = ckpt.parse_checkpoint_path(source)
    steps = ckpt.finalized_steps(src_dir) if os.path.isdir(src_dir) else []
    if not steps:
        raise CheckpointError(
            f"No finished checkpoint in {src_dir!r}. Pass a stage directory that holds "
            "checkpoints (MODEL_DIR/<stage>) or DIR/STEP."
        )
    src_step = steps[-1] if src_step is None else src_step
    if os.path.isdir(target) and ckpt.finalized_steps(target):
        raise CheckpointError(
            f"{target!r} already holds checkpoints {ckpt.finalized_steps(target)}; switch into an "
            "empty stage directory so nothing is overwritten."
        )
    config = TransformerConfig(vocab_size=padded_vocab_size(plan_vocabulary(plan)))
    partitioner = partitioner or Partitioner()
    tx, _ = stg.make_tx(plan, index)
    with ckpt.StageCheckpointer(src_dir, checkpoint, read_only=True) as source_ckpt:
        # Read straight onto this mesh, whatever mesh wrote the source (resharding).
        params, meta = stage_state.restore_params(source_ckpt, src_step, partitioner, config)
    shardings = stage_state.state_shardings(partitioner, config, tx)
    state = stage_state.switched_state(params, tx, shardings, partitioner)
    metadata = ckpt.checkpoint_metadata(
        stage_index=index,
        stage_name=name,
        global_step=plan.steps_before(index),
        parent=(src_dir, src_step),
        data_position={"batches": 0},
        examples_seen=meta.get("examples_seen", {}),
        tokens_seen=meta.get("tokens_seen", {}),
        switched_by="ptjf switch",
    )
    with ckpt.StageCheckpointer(target, checkpoint) as out:
        out.save(0, state, metadata, force=True)
        out.wait()
    return src_dir, src_step


def copy_metrics(source_stage_dir: str, source_step: int, target_stage_dir: str) -> int:
    """Copies the source run's eval records up to the fork into the target run's metrics.jsonl.

    The source run is the stage directory's parent (its MODEL_DIR); records up to the source
    checkpoint's global step are copied. Nothing is done when the target run already has
    metrics (a rerun). Returns the number of records copied.
    """
    target_file = os.path.join(os.path.dirname(target_stage_dir.rstrip("/")), METRICS_FILE)
    if os.path.exists(target_file) and os.path.getsize(target_file) > 0:
        return 0
    source_run = os.path.dirname(source_stage_dir.rstrip("/"))
    if not os.path.isfile(os.path.join(source_run, METRICS_FILE)):
        return 0
    with ckpt.StageCheckpointer(source_stage_dir, read_only=True) as c:
        limit = int(c.read_metadata(source_step).get("global_step", 0))
    records = [r for r in read_metrics(source_run) if r.get("global_step", 0) <= limit]
    os.makedirs(os.path.dirname(target_file), exist_ok=True)
    tmp = target_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(to_json_value(record), allow_nan=False) + "\n")
    os.replace(tmp, target_file)
    return len(records)

"""The state a stage starts from, placed on the run's mesh: fresh, resumed, carried or switched.

Every path gives the same layout, the partitioner's shardings of the `TrainState`, so a stage's
train step compiles once and a checkpoint restores onto whatever mesh the run has now:

* fresh: the initialiser runs under `jit` with the state's shardings as outputs, so each device
  creates only its own shard (an mT5-XXL never exists whole on one host);
* resumed / carried: orbax reads each device's slice of the saved arrays straight into the
  target shardings, whatever mesh wrote them (resharding); a resumed stage whose newest
  checkpoint is corrupted falls back to the one before;
* switched: the source's parameters are restored sharded, and the fresh optimizer state is
  built under `jit` into its shardings. A stage resumed from the step-0 checkpoint of
  `ptjf switch`, which holds no optimizer state, is switched the same way from its parameters.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import optax

from ptjf import stages as stg
from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.checkpoints.link import COMMIT_SUCCESS_FILE
from ptjf.errors import CheckpointError, CorruptCheckpointError
from ptjf.models import TransformerConfig, init_params
from ptjf.runtime import distributed
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import init_from, stop_conditions
from ptjf.training.state_layout import (
    sharded_params_target,
    sharded_state_target,
    state_shardings,
)
from ptjf.training.train_state import TrainState

log = logging.getLogger(__name__)


def restore_params(
    checkpointer: ckpt.StageCheckpointer,
    step: int,
    partitioner: Partitioner,
    config: TransformerConfig,
) -> tuple[Any, dict]:
    """A checkpoint's parameters on this run's mesh (any mesh may have written them)."""
    return checkpointer.restore_params(
        step, target_params=sharded_params_target(partitioner, config)
    )


def switched_state(
    params: Any, tx: optax.GradientTransformation, shardings: TrainState, partitioner: Partitioner
) -> TrainState:
    """The stage switch on the mesh: these parameters, a fresh sharded optimizer state, step 0."""
    return partitioner.jit(
        lambda p: stg.switch_state(p, tx), out_shardings=shardings, donate_argnums=(0,)
    )(params)


def quarantine(stage_dir: str, step: int) -> str:
    """Moves a corrupted checkpoint aside (kept for inspection, never deleted), so the run
    can write that step again; returns where it went (`<stage_dir>/corrupted/<step>-<time>`).

    Local disk: one rename, atomic. GCS has no rename: the move copies every object and then
    deletes them, in no order a reader could rely on, and orbax takes a step directory on GCS
    as finalised exactly when it holds `commit_success.txt`. So that marker is deleted first
    (one object, atomic): from then on orbax neither lists nor restores the step, whatever
    point the move stops at, and a crash midway cannot leave a finalised step with half its
    files (which the run would restore again, or take as already saved and never rewrite).
    The copy (made by GCS itself, server-side) gets the marker back last, as the whole
    checkpoint it was. `corrupted/` itself gets a marker too: a writable orbax manager on GCS
    deletes every directory of the stage without one as an unfinished save, which would delete
    the quarantined checkpoints.
    """
    target = storage.join(stage_dir, "corrupted", f"{step}-{int(time.time())}")
    if distributed.is_primary():
        source = storage.join(stage_dir, str(step))
        if storage.is_remote(stage_dir):
            _quarantine_on_gcs(source, target)
        else:
            storage.move(source, target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"ptjf quarantine {stage_dir} {step}")
    return target


def _quarantine_on_gcs(source: str, target: str) -> None:
    """`storage.move(source, target)` for a step directory on GCS, commit marker first."""
    keep = storage.join(storage.dirname(target), COMMIT_SUCCESS_FILE)
    if not storage.exists(keep):
        storage.write_text(keep, _KEEP_CORRUPTED)
    marker = storage.join(source, COMMIT_SUCCESS_FILE)
    committed = storage.read_bytes(marker) if storage.exists(marker) else None
    storage.remove(marker)
    # storage.move's copy then delete, with GCS copying the objects itself (server-side): a
    # checkpoint with its optimizer state never passes through this host.
    files = list(storage.walk_files(source))
    storage.copy_files([(storage.join(source, f), storage.join(target, f)) for f in files])
    if committed is not None:
        storage.write_bytes(storage.join(target, COMMIT_SUCCESS_FILE), committed)
    storage.rmtree(source)


_KEEP_CORRUPTED = (
    "Not a checkpoint: ptjf keeps corrupted checkpoints here for inspection. This file stops "
    "orbax from deleting the directory as an unfinished save (on GCS, it deletes every "
    "directory of a stage that has no commit_success.txt).\n"
)


def restore_newest_good(
    stage_dir: str,
    steps: list[int],
    checkpoint: ckpt.CheckpointConfig,
    target: Any,
    fresh: Callable[[Any], TrainState] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """The newest checkpoint of `steps` that reads back as saved; corrupted ones are reported
    and moved aside (`quarantine`), and the one before is tried.

    A stage start without optimizer state (`ptjf switch`) gives `fresh(its parameters)`: the
    state the in-process switch would have built from them.
    """
    for step in reversed(steps):
        try:
            with ckpt.StageCheckpointer(stage_dir, checkpoint, read_only=True) as c:
                if fresh is not None and c.starts_fresh(step):
                    params, meta = c.restore_params(step, target_params=target.params)
                    return fresh(params), meta
                return c.restore(step, target_state=target)
        except CorruptCheckpointError as e:
            where = quarantine(stage_dir, step)
            log.error("%s Moved it to %s; trying the checkpoint before it.", e, where)
    raise CorruptCheckpointError(
        f"No checkpoint in {stage_dir} reads back as saved (steps {steps} were corrupted and "
        f"moved to {storage.join(stage_dir, 'corrupted')}). To restart the stage from its "
        "parent, move the stage directory aside and rerun the same command."
    )


def build_state(
    plan: stg.Plan,
    index: int,
    model_dir: str,
    config: TransformerConfig,
    checkpoint: ckpt.CheckpointConfig,
    seed: int,
    tx: optax.GradientTransformation,
    partitioner: Partitioner,
) -> tuple[TrainState, dict[str, Any], tuple[str, int] | None]:
    """The state a stage starts (or resumes) from, its saved metadata and its parent."""
    stage = plan.stages[index]
    shardings = state_shardings(partitioner, config, tx)
    target = sharded_state_target(partitioner, config, tx, shardings)
    here = storage.join(model_dir, stage.name)
    own = ckpt.finalized_steps(here)  # [] where nothing is, local or gs://
    if own:  # resume this stage (or start it from a `ptjf switch` checkpoint at step 0)
        fresh = functools.partial(
            switched_state, tx=tx, shardings=shardings, partitioner=partitioner
        )
        state, meta = restore_newest_good(here, own, checkpoint, target, fresh)
        lineage = meta.get("lineage") or {}
        parent = (lineage["parent_path"], lineage["parent_step"]) if lineage else None
        return state, meta, parent
    if init_from.is_path(stage.init_from):
        load, parent, source = init_from.params_loader(
            stage.init_from, partitioner, config, checkpoint
        )
        # The stage continues the source's step count, as `ptjf switch` records it (and as
        # T5X counts a fine-tune from a checkpoint): a T5X step, or a ptjf global step.
        step = int(source.get("global_step", parent[1]) or 0)
        return switched_state(load(), tx, shardings, partitioner), {"global_step": step}, parent
    if index == 0 or stage.init_from == "scratch":
        rng = jax.random.fold_in(jax.random.key(seed), index)
        state = partitioner.init(
            lambda r: stg.switch_state(init_params(config, r), tx), shardings, rng
        )
        return state, {}, None
    prev = plan.stages[index - 1]
    prev_dir = storage.join(model_dir, prev.name)
    end = stage_end_step(prev, prev_dir, checkpoint)
    with ckpt.StageCheckpointer(prev_dir, checkpoint, read_only=True) as c:
        if stage.carries_optimizer:
            full, meta = c.restore(end, target_state=target)
            state = stg.carry_state(full)
        else:
            params, meta = restore_params(c, end, partitioner, config)
            state = switched_state(params, tx, shardings, partitioner)
    return state, meta, (prev_dir, end)


def stage_end_step(stage: stg.Stage, stage_dir: str, checkpoint: ckpt.CheckpointConfig) -> int:
    """The step a finished stage ended at: `Stage.steps`, or for a stage whose evals end it
    (`Stage.stop_when`) the step its last checkpoint records."""
    if stage.stop_when is None:
        return stage.steps
    done = ckpt.finalized_steps(stage_dir)
    if done and done[-1] < stage.steps:
        with ckpt.StageCheckpointer(stage_dir, checkpoint, read_only=True) as c:
            ended = stop_conditions.ended_at(c.read_metadata(done[-1]))
        if ended is None:
            raise CheckpointError(
                f"Stage {stage.name!r} has not ended: its newest checkpoint in {stage_dir} is "
                f"step {done[-1]} of at most {stage.steps}, and its condition ({stage.stop_when}) "
                "has not ended it. Rerun the same command to finish it."
            )
        return ended
    return stage.steps


def finished_stage(
    stage: stg.Stage, stage_dir: str, checkpoint: ckpt.CheckpointConfig
) -> tuple[bool, dict[str, Any]]:
    """(whether the stage's own checkpoints say it is finished, its newest one's metadata).

    Finished: its newest checkpoint is at `Stage.steps`, or its condition ended it there.
    """
    done = ckpt.finalized_steps(stage_dir)
    if not done:
        return False, {}
    with ckpt.StageCheckpointer(stage_dir, checkpoint, read_only=True) as c:
        meta = c.read_metadata(done[-1])
    return done[-1] >= stage.steps or stop_conditions.ended_at(meta) is not None, meta

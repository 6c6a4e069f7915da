"""The stage-start checkpoint of `ptjf switch`, sharing the source's parameter files.

A switch keeps the parameters bit for bit, so rewriting them would only cost a full write. On a
local filesystem the new step's `params` item is a tree of hard links to the source step's
`params` files instead: orbax never changes an item's files once the step is final, deleting
the source later only removes its own names (the links keep the data), and garbage collection
of the new stage likewise unlinks only the new stage's names. Corrupting the shared bytes
corrupts both checkpoints; their recorded fingerprints catch that on every restore. When source
and target are both on GCS, which has no links, the parameter objects are copied by GCS itself
(server-side rewrites: no byte passes through this host), into a step of independent objects.

Atomicity on local disk. The step is built in `<target>/.ptjf-switch-staging`: the links first,
then orbax writes the step and metadata items into `staging/0`, the links move in, and only
after the directories are synced is `staging/0` renamed to `<target>/0`. A crash before the
rename leaves no finalised step (orbax lists only integer-named directories), and the rerun
clears the staging directory and starts over.

Atomicity on GCS. There is no atomic rename of a directory (a "rename" copies every object,
then deletes them, in no particular order), so the step is not renamed into place: it is
written in place, and finalised by its marker. Orbax on `gs://` takes a step directory as
finalised exactly when it holds `commit_success.txt` (its `CommitFileTemporaryPath`; the
standard step-name format lists nothing else), and a writable manager deletes every directory
of the stage that lacks it as an unfinished save. So: orbax writes the step and metadata items
into `<target>/.ptjf-switch-staging/0`; then the primary process copies, into `<target>/0`, the
source's parameter objects (server-side), the staged items, and orbax's step metadata
(`_CHECKPOINT_METADATA`) with the `params` item listed; and only then writes
`<target>/0/commit_success.txt`, one object, last. A crash at any point before that leaves a
`<target>/0` that orbax neither lists nor restores (and deletes on the next writable open); the
rerun deletes it and the staging directory and starts over. No writable orbax manager is open
on `<target>` while the step is being written, since its clean-up would delete the unfinished
step under the writer.

Where the files cannot be shared (another filesystem, local disk on one side and GCS on the
other, no permission) the parameters are restored onto the mesh and written by orbax
(`StageCheckpointer.save_stage_start` with the parameters; on GCS with orbax's own commit
marker) and the log says so. With several processes the primary one links, copies and
publishes; all of them take part in orbax's writes, and they agree on the way taken before
writing anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.errors import CheckpointError
from ptjf.runtime import distributed
from ptjf.storage import link_tree

log = logging.getLogger(__name__)

STAGING = ".ptjf-switch-staging"
_ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"
# Orbax's marker of a finalised step on GCS (orbax.checkpoint's atomicity_types).
COMMIT_SUCCESS_FILE = "commit_success.txt"


def fsync_directory(path: str) -> None:
    """Makes `path`'s directory entries durable (a new name, a link, a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directories(root: str) -> None:
    """`fsync_directory` for `root` and every directory under it."""
    for directory, _, _ in os.walk(root):
        fsync_directory(directory)


def _remove(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)


def _try_link(source_params: str, staging: str) -> str | None:
    """Links the parameters into `staging/params`; returns why not, or None when linked."""
    if storage.is_remote(source_params) or storage.is_remote(staging):
        return "not a local filesystem"
    try:
        _remove(staging)
        os.makedirs(staging)
        if not link_tree(source_params, os.path.join(staging, ckpt.PARAMS)):
            return f"no parameter files under {source_params}"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _all_agree(value: bool) -> bool:
    """The primary process's `value`, on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(value))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _source_params_handler(source_step_dir: str) -> Any | None:
    """The `params` handler orbax recorded in the source step's metadata, or None."""
    try:
        meta = json.loads(storage.read_text(storage.join(source_step_dir, _ORBAX_STEP_METADATA)))
        return meta["item_handlers"][ckpt.PARAMS]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # orbax finds the item's handler in ptjf's registry all the same


def _with_params_handler(step_metadata: str, handler: Any) -> str | None:
    """Orbax's step metadata (JSON text) with `handler` listed for `params`, as a step written
    whole would list it; None when there is nothing to change."""
    meta = json.loads(step_metadata)
    if handler is None or not isinstance(meta.get("item_handlers"), dict):
        return None
    meta["item_handlers"][ckpt.PARAMS] = handler
    return json.dumps(meta)


def _add_params_handler(step_dir: str, source_step_dir: str) -> None:
    """Lists the linked item in orbax's step metadata of `step_dir` (rewritten atomically)."""
    handler = _source_params_handler(source_step_dir)
    if handler is None:
        return
    path = storage.join(step_dir, _ORBAX_STEP_METADATA)
    edited = _with_params_handler(storage.read_text(path), handler)
    if edited is not None:
        storage.write_text(path, edited)


def _publish(staging: str, source_step_dir: str, target: str) -> None:
    """Completes `staging/0` with the linked parameters and renames it to `target/0`."""
    step_dir = os.path.join(staging, "0")
    os.rename(os.path.join(staging, ckpt.PARAMS), os.path.join(step_dir, ckpt.PARAMS))
    _add_params_handler(step_dir, source_step_dir)
    fsync_directories(step_dir)
    os.rename(step_dir, os.path.join(target, "0"))
    fsync_directory(target)
    _remove(staging)


def _publish_in_place(staging: str, source_step_dir: str, target: str) -> None:
    """Writes `target/0` on GCS in place from the source's parameters and the staged step, its
    commit marker last (see the module docstring), then deletes the staging directory."""
    step_dir, staged = storage.join(target, "0"), storage.join(staging, "0")
    source_params = storage.join(source_step_dir, ckpt.PARAMS)
    pairs = [
        (storage.join(source_params, rel), storage.join(step_dir, ckpt.PARAMS, rel))
        for rel in storage.walk_files(source_params)
    ]
    pairs += [
        (storage.join(staged, rel), storage.join(step_dir, rel))
        for rel in storage.walk_files(staged)
        if rel not in (COMMIT_SUCCESS_FILE, _ORBAX_STEP_METADATA)
    ]
    storage.copy_files(pairs)
    staged_meta = storage.join(staged, _ORBAX_STEP_METADATA)
    if storage.exists(staged_meta):
        text = storage.read_text(staged_meta)
        edited = _with_params_handler(text, _source_params_handler(source_step_dir))
        storage.write_text(storage.join(step_dir, _ORBAX_STEP_METADATA), edited or text)
    # Last: from this object on, orbax takes the step as finalised.
    storage.write_text(
        storage.join(step_dir, COMMIT_SUCCESS_FILE),
        f"Checkpoint commit was successful to {step_dir}",
    )
    storage.rmtree(staging)


def _discard_unfinished(target: str, staging: str) -> None:
    """Deletes what a failed switch on GCS left: the staging directory, and `target/0` unless
    its commit marker was written (then the step is complete)."""
    step_dir = storage.join(target, "0")
    try:
        storage.rmtree(staging)
        if not storage.exists(storage.join(step_dir, COMMIT_SUCCESS_FILE)):
            storage.rmtree(step_dir)
    except Exception as e:  # the error that got here is the news; orbax ignores what is left
        log.warning("ptjf switch: could not delete the unfinished step in %s: %s", target, e)


def _already_holds(target: str, steps: list[int]) -> CheckpointError:
    return CheckpointError(
        f"{target!r} already holds checkpoints {steps}; switch into an empty "
        "stage directory so nothing is overwritten."
    )


def save_switched(
    target: str,
    load_params: Callable[[], Any],
    metadata: Mapping[str, Any],
    *,
    source_step_dir: str,
    params_fingerprint: str | None,
    checkpoint: ckpt.CheckpointConfig | None = None,
    link: bool = True,
) -> str:
    """Writes step 0 of the stage directory `target`: `params`, no optimizer state, `metadata`.

    `load_params()` gives the source step's parameters on this mesh; it is called only when
    the files cannot be shared and the parameters are written as a copy.
    `params_fingerprint` is the fingerprint the source recorded for them. The parameter files
    are linked (local disk) or copied server-side (GCS to GCS) when possible (`link=False`
    never tries); returns "linked", "copied on GCS" or "copied".
    """
    target, source_step_dir = storage.check_uri(target), storage.check_uri(source_step_dir)
    if storage.is_remote(target):
        return _save_switched_on_gcs(
            target, load_params, metadata, source_step_dir, params_fingerprint, checkpoint, link
        )
    source_params = storage.join(source_step_dir, ckpt.PARAMS)
    staging = os.path.join(target, STAGING)
    with ckpt.StageCheckpointer(target, checkpoint) as out:  # checks that target is writable
        if out.all_steps():
            raise _already_holds(target, out.all_steps())
        primary = distributed.is_primary()
        why = _try_link(source_params, staging) if link and primary else None
        if not _all_agree(link and why is None):
            if primary:
                _remove(staging)
                if link:
                    log.warning("ptjf switch: cannot link the parameter files (%s); copying", why)
            out.save_stage_start(load_params(), metadata)
            log.info("ptjf switch: wrote a copy of the parameters into %s/0", target)
            return "copied"
    try:
        with ckpt.StageCheckpointer(staging, ckpt.CheckpointConfig(async_save=False)) as stage:
            stage.save_stage_start(None, metadata, params_fingerprint=params_fingerprint)
        if distributed.is_primary():
            _publish(staging, source_step_dir, target)
        _sync(f"ptjf switch {target}")
    except BaseException:
        if distributed.is_primary():
            shutil.rmtree(staging, ignore_errors=True)  # the error that got here is the news
        raise
    log.info("ptjf switch: linked the parameter files of %s into %s/0", source_step_dir, target)
    return "linked"


def _save_switched_on_gcs(
    target: str,
    load_params: Callable[[], Any],
    metadata: Mapping[str, Any],
    source_step_dir: str,
    params_fingerprint: str | None,
    checkpoint: ckpt.CheckpointConfig | None,
    link: bool,
) -> str:
    """`save_switched` into a `gs://` stage directory (see the module docstring)."""
    if steps := ckpt.finalized_steps(target):
        raise _already_holds(target, steps)
    source_params = storage.join(source_step_dir, ckpt.PARAMS)
    staging = storage.join(target, STAGING)
    primary = distributed.is_primary()
    why = None
    if link and primary:
        if not storage.is_remote(source_params):
            why = "the source is on local disk and the target on GCS"
        elif next(iter(storage.walk_files(source_params)), None) is None:
            why = f"no parameter files under {source_params}"
        else:  # a crashed attempt's leftovers (its step is not finalised: checked above)
            storage.rmtree(staging)
            storage.rmtree(storage.join(target, "0"))
    if not _all_agree(link and why is None):  # also: no process writes before the clean-up
        if primary and link:
            log.warning("ptjf switch: cannot copy the parameter files (%s); writing them", why)
        with ckpt.StageCheckpointer(target, checkpoint) as out:
            out.save_stage_start(load_params(), metadata)  # orbax's commit marker last
        log.info("ptjf switch: wrote a copy of the parameters into %s/0", target)
        return "copied"
    try:
        with ckpt.StageCheckpointer(staging, ckpt.CheckpointConfig(async_save=False)) as stage:
            stage.save_stage_start(None, metadata, params_fingerprint=params_fingerprint)
        if primary:
            _publish_in_place(staging, source_step_dir, target)
        _sync(f"ptjf switch {target}")
    except BaseException:
        if primary:
            _discard_unfinished(target, staging)
        raise
    log.info(
        "ptjf switch: copied the parameter objects of %s into %s/0 (server-side, on GCS)",
        source_step_dir,
        target,
    )
    return "copied on GCS"

"""The stage-start checkpoint of `ptjf switch`, sharing the source's parameter files.

A switch keeps the parameters bit for bit, so rewriting them would only cost a full write. On a
local filesystem the new step's `params` item is a tree of hard links to the source step's
`params` files instead: orbax never changes an item's files once the step is final, deleting
the source later only removes its own names (the links keep the data), and garbage collection
of the new stage likewise unlinks only the new stage's names. Corrupting the shared bytes
corrupts both checkpoints; their recorded fingerprints catch that on every restore.

Atomicity. The step is built in `<target>/.ptjf-switch-staging`: the links first, then orbax
writes the step and metadata items into `staging/0`, the links move in, and only after the
directories are synced is `staging/0` renamed to `<target>/0`. A crash before the rename leaves
no finalised step (orbax lists only integer-named directories), and the rerun clears the
staging directory and starts over.

Where a link cannot be made (another filesystem, a `gs://` path, no permission) the parameters
are written by orbax (`StageCheckpointer.save_stage_start` with the parameters) and the log says
so. With several processes the primary one links and renames; all of them take part in orbax's
writes, and they agree on the way taken before writing anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ptjf import checkpoints as ckpt
from ptjf import distributed
from ptjf.errors import CheckpointError

log = logging.getLogger(__name__)

STAGING = ".ptjf-switch-staging"
_ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"


def link_tree(source: str, destination: str) -> int:
    """Hard-links every file under `source` to the same place under `destination` (created);
    returns the number of files. Raises OSError where a link cannot be made."""
    count = 0
    for directory, _, files in os.walk(source):
        here = os.path.join(destination, os.path.relpath(directory, source))
        os.makedirs(here, exist_ok=True)
        for name in files:
            os.link(os.path.join(directory, name), os.path.join(here, name))
            count += 1
    return count


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


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _remove(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)


def _try_link(source_params: str, staging: str) -> str | None:
    """Links the parameters into `staging/params`; returns why not, or None when linked."""
    if _is_remote(source_params) or _is_remote(staging):
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


def _add_params_handler(step_dir: str, source_step_dir: str) -> None:
    """Lists the linked item in orbax's step metadata, as a step written whole would."""
    try:
        with open(os.path.join(source_step_dir, _ORBAX_STEP_METADATA), encoding="utf-8") as f:
            handler = json.load(f)["item_handlers"][ckpt.PARAMS]
    except (OSError, ValueError, KeyError, TypeError):
        return  # orbax finds the item's handler in ptjf's registry all the same
    path = os.path.join(step_dir, _ORBAX_STEP_METADATA)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta.get("item_handlers"), dict):
        return
    meta["item_handlers"][ckpt.PARAMS] = handler
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _publish(staging: str, source_step_dir: str, target: str) -> None:
    """Completes `staging/0` with the linked parameters and renames it to `target/0`."""
    step_dir = os.path.join(staging, "0")
    os.rename(os.path.join(staging, ckpt.PARAMS), os.path.join(step_dir, ckpt.PARAMS))
    _add_params_handler(step_dir, source_step_dir)
    fsync_directories(step_dir)
    os.rename(step_dir, os.path.join(target, "0"))
    fsync_directory(target)
    _remove(staging)


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
    the files cannot be linked and the parameters are written as a copy.
    `params_fingerprint` is the fingerprint the source recorded for them. The parameter files
    are linked when possible (`link=False` never tries); returns "linked" or "copied".
    """
    target, source_step_dir = str(target), str(source_step_dir)
    source_params = os.path.join(source_step_dir, ckpt.PARAMS)
    staging = os.path.join(target, STAGING)
    with ckpt.StageCheckpointer(target, checkpoint) as out:  # checks that target is writable
        if out.all_steps():
            raise CheckpointError(
                f"{target!r} already holds checkpoints {out.all_steps()}; switch into an empty "
                "stage directory so nothing is overwritten."
            )
        primary = distributed.is_primary()
        why = _try_link(source_params, staging) if link and primary else None
        if not _all_agree(link and why is None):
            if primary:
                if not _is_remote(staging):
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

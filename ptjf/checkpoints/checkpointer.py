"""Checkpoints of a staged run: save, resume, params-only restore, lineage metadata.

On-disk layout (one orbax `CheckpointManager` per stage directory, steps named by the
stage-local step, orbax's default integer naming)::

    MODEL_DIR/<stage name>/<step>/params      parameter pytree
                                 /opt_state   optimizer-state pytree (optax tuples/namedtuples)
                                 /step        the train state's step counter (int32 scalar)
                                 /metadata    JSON: stage, steps, lineage, data position, ...

Parameters and optimizer state are separate orbax items so that a params-only restore (the
stage switch of PTJF, and `ptjf switch`) opens only `params`: Adam keeps two moments per
parameter, so the optimizer state is about twice the size of the parameters and is never read
when a stage starts a fresh optimizer (big_vision's "initialise from" versus "resume").

A stage-start checkpoint written by `ptjf switch` (`save_stage_start`) has no `opt_state`: its
metadata says `"optimizer_state": "fresh"`, and whoever resumes it builds that state from the
parameters and the stage's optimizer (`starts_fresh`; `stage_state.restore_newest_good`).

Atomicity. Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>`
only after every item is committed (on GCS, where rename is not atomic, it writes
`commit_success.txt` last instead). `finalized_steps` lists steps with orbax's standard name
format, which ignores unfinished directories, so `latest_step()`, `all_steps()` and
`find_latest` never report a checkpoint that a crash could have left half-written, even while an
asynchronous save of this process is still running.

Garbage collection (`CheckpointConfig.keep`) is done here rather than by orbax's
`max_to_keep`, and only at points where no write is in flight (at the start of the next `save`,
after the previous write has been waited for, in `wait()` and in `close()`). The newest
finalised checkpoint is therefore never deleted before its successor is finalised; the price is
that up to `keep + 1` checkpoints exist between a save and the next save or wait.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

import ptjf
from ptjf.checkpoints import input_positions as checkpoint_input
from ptjf.checkpoints.config import CheckpointConfig, parse_checkpoint_path
from ptjf.checkpoints.fit import OPT_STATE, check_fits, paths_text, tree_signature
from ptjf.checkpoints.integrity import fingerprint
from ptjf.errors import CheckpointError, ConfigError, CorruptCheckpointError
from ptjf.runtime import faults

log = logging.getLogger(__name__)

PARAMS, STEP, METADATA = "params", "step", "metadata"
# The metadata key and value of a stage-start checkpoint that holds no optimizer state.
OPTIMIZER_STATE, FRESH = "optimizer_state", "fresh"


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    """A checkpoint path resolved to (stage directory, step), as `ptjf` commands name one.

    path: a stage directory (`mode="latest"`: its newest finalised step) or a step directory
        `DIR/STEP` (`mode="specific"`).

    Not a gin configurable and not where a run starts a stage: a run resumes each stage from its
    own newest checkpoint in MODEL_DIR, and a stage starts from another checkpoint's parameters
    (fresh optimizer state and schedule) with `Stage.init_from=PATH` or `ptjf switch --from=PATH`.
    """

    path: str
    mode: Literal["latest", "specific"] = "latest"

    def __post_init__(self):
        if self.mode not in ("latest", "specific"):
            raise ConfigError(
                f"RestoreConfig.mode={self.mode!r} is invalid: expected 'latest' (newest step of "
                "a stage directory) or 'specific' (a DIR/STEP path)."
            )
        _, step = parse_checkpoint_path(self.path)
        if self.mode == "specific" and step is None:
            raise ConfigError(
                f"RestoreConfig(mode='specific') needs a step directory, got {self.path!r}. "
                f"Pass {self.path.rstrip('/')}/<step>, or use mode='latest'."
            )
        if self.mode == "latest" and step is not None:
            raise ConfigError(
                f"RestoreConfig(mode='latest') got the step directory {self.path!r}. "
                "Use mode='specific' to restore that step, or pass the stage directory."
            )

    def resolve(self) -> tuple[str, int]:
        """(stage directory, step) to restore; CheckpointError when it does not exist."""
        stage_dir, step = parse_checkpoint_path(self.path)
        steps = finalized_steps(stage_dir)
        if step is None:
            if not steps:
                raise _missing_error(stage_dir, None, steps)
            return stage_dir, steps[-1]
        if step not in steps:
            raise _missing_error(stage_dir, step, steps)
        return stage_dir, step


def finalized_steps(directory: str | os.PathLike) -> list[int]:
    """Sorted steps with a finalised checkpoint in `directory` ([] if it does not exist)."""
    name_format = ocp.path.step.standard_name_format()
    return sorted(m.step for m in name_format.find_all(epath.Path(directory)))


def find_latest(model_dir: str, stage_names: Sequence[str]) -> tuple[int, int] | None:
    """(stage index, step) of the newest checkpoint of the latest stage that has one.

    Rerunning the same command resumes a plan from here: later stages win even when an earlier
    stage has larger step numbers, because steps are stage-local.
    """
    for index in range(len(stage_names) - 1, -1, -1):
        steps = finalized_steps(epath.Path(model_dir) / stage_names[index])
        if steps:
            return index, steps[-1]
    return None


def _missing_error(directory: Any, step: int | None, steps: Sequence[int]) -> CheckpointError:
    exists = epath.Path(directory).exists()
    if step is None:
        what = "has no finalised checkpoint" if exists else "does not exist"
        return CheckpointError(
            f"Checkpoint directory {directory} {what}. Expected MODEL_DIR/<stage name> holding "
            "step directories. Check --gin.MODEL_DIR and the stage name, or start the stage "
            "from scratch."
        )
    have = ", ".join(map(str, steps)) if steps else "none"
    return CheckpointError(
        f"No finalised checkpoint for step {step} in {directory}; steps that exist: {have}. "
        "Pick one of those steps, or restore the latest one."
    )


def _to_json(value: Any, path: str = "metadata") -> Any:
    """Plain JSON value of `value`; numpy/jax scalars become Python numbers, tuples lists."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic | np.ndarray | jax.Array) and np.ndim(value) == 0:
        return np.asarray(value).item()
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"Checkpoint {path} has the key {key!r} of type {type(key).__name__}: JSON "
                    "keys must be strings. Convert it with str() before saving."
                )
            out[key] = _to_json(v, f"{path}.{key}")
        return out
    raise CheckpointError(
        f"Checkpoint {path} is a {type(value).__name__} ({value!r:.80}), which is not JSON. "
        "Pass numbers, strings, lists or dicts (e.g. .tolist() for arrays)."
    )


def checkpoint_metadata(
    *,
    stage_index: int,
    stage_name: str,
    global_step: int,
    parent: tuple[str, int] | None = None,
    data_position: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata item the trainer saves with each checkpoint (save() adds the step).

    `parent` is the (stage directory, step) this stage started from, so a chain of checkpoints
    can be followed back through the stage switches; `data_position` is whatever the input
    pipeline needs to continue (e.g. examples consumed per task).
    """
    lineage = None if parent is None else {"parent_path": str(parent[0]), "parent_step": parent[1]}
    return {
        "stage_index": stage_index,
        "stage_name": stage_name,
        "global_step": global_step,
        "lineage": lineage,
        "data_position": data_position,
        **extra,
    }


def _state_parts(state: Any) -> tuple[Any, Any, Any]:
    get = state.get if isinstance(state, Mapping) else lambda k, d=None: getattr(state, k, d)
    missing = [k for k in (STEP, PARAMS, OPT_STATE) if get(k, None) is None]
    if missing:
        raise CheckpointError(
            f"Train state of type {type(state).__name__} has no {', '.join(missing)}: a train "
            "state must carry step, params and opt_state."
        )
    return get(STEP), get(PARAMS), get(OPT_STATE)


def _with_parts(target: Any, step: Any, params: Any, opt_state: Any) -> Any:
    new = {STEP: step, PARAMS: params, OPT_STATE: opt_state}
    if isinstance(target, Mapping):
        return type(target)({**target, **new})
    if hasattr(target, "replace"):  # flax.struct dataclasses and flax TrainState
        return target.replace(**new)
    if dataclasses.is_dataclass(target):
        return dataclasses.replace(target, **new)
    if hasattr(target, "_replace"):
        return target._replace(**new)
    raise CheckpointError(
        f"Cannot rebuild a train state of type {type(target).__name__}: use a dict, a "
        "dataclass, a flax struct or a namedtuple with step, params and opt_state."
    )


def _step_restore_args(target_step: Any) -> ocp.RestoreArgs:
    dtype = getattr(target_step, "dtype", None)
    dtype = np.dtype(np.int32 if dtype is None else dtype)
    sharding = getattr(target_step, "sharding", None)
    if sharding is not None:
        return ocp.ArrayRestoreArgs(sharding=sharding, dtype=dtype)
    return ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Handlers by item name, so a fresh manager can read item metadata before any restore."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name, save, restore, handler in (
        (PARAMS, ocp.args.StandardSave, ocp.args.StandardRestore, ocp.StandardCheckpointHandler),
        (OPT_STATE, ocp.args.StandardSave, ocp.args.StandardRestore, ocp.StandardCheckpointHandler),
        (STEP, ocp.args.ArraySave, ocp.args.ArrayRestore, ocp.ArrayCheckpointHandler),
        (METADATA, ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler),
        (
            checkpoint_input.ITEM,
            checkpoint_input.InputStateSave,
            checkpoint_input.InputStateRestore,
            checkpoint_input.InputStateHandler,
        ),
    ):
        registry.add(name, save, handler)
        registry.add(name, restore, handler)
    return registry


class StageCheckpointer:
    """Checkpoints of one stage directory (`MODEL_DIR/<stage name>`), numbered by stage step.

    `read_only=True` opens another stage's (or another run's) directory for restoring: nothing
    is created, probed or cleaned up there, so it is safe on a location this run cannot write.
    Restore methods first wait for this process's own pending write, so a process can read back
    what it just saved; `latest_step()` and `all_steps()` never block.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: CheckpointConfig | None = None,
        *,
        read_only: bool = False,
    ):
        self.directory = epath.Path(directory)
        self.config = config or CheckpointConfig()
        self.read_only = read_only
        if read_only:
            if not self.directory.is_dir():
                raise _missing_error(self.directory, None, [])
        else:
            self._check_writable()
        options = ocp.CheckpointManagerOptions(
            create=False,
            read_only=read_only,
            enable_async_checkpointing=self.config.async_save,
            # A rerun after a crash must not trip over the crashed run's unfinished step dirs.
            cleanup_tmp_directories=not read_only,
            save_root_metadata=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, handler_registry=_handler_registry()
        )
        self._pending: int | None = None

    def _check_writable(self) -> None:
        fix = "Choose a writable --gin.MODEL_DIR (or fix the directory's permissions)."
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(
                f"Cannot create the checkpoint directory {self.directory}: {e}. {fix}"
            ) from e
        # An actual write, not os.access: root passes access checks on read-only directories.
        probe = self.directory / f".ptjf-write-probe-{jax.process_index()}-{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"Checkpoint directory {self.directory} is not writable: {e}. {fix}"
            ) from e

    def _require_writable(self) -> None:
        if self.read_only:
            raise CheckpointError(
                f"Checkpoint directory {self.directory} was opened read-only; saving needs a "
                "StageCheckpointer created with read_only=False."
            )

    def save(
        self,
        step: int,
        state: Any,
        metadata: Mapping[str, Any],
        force: bool = False,
        input_state: Any = None,
    ) -> bool:
        """Start writing `state` at stage step `step`; returns whether a save was started.

        `input_state`: a callable returning the input streams' positions
        (`checkpoint_input.InputStateSave`), called only when the step is saved; None saves none.
        Saves when `force` (the end of a stage) or when `step` is a multiple of `period`; a step
        that is already saved or being saved is skipped. Returns as soon as the arrays are
        copied off the accelerator when `async_save` is on; the write continues in the
        background (see `wait`).
        """
        self._require_writable()
        step = int(step)
        if not self.due(step, force=force):
            return False
        meta = _to_json(dict(metadata))
        if meta.setdefault(STEP, step) != step:
            raise CheckpointError(
                f"Checkpoint metadata says step {meta[STEP]!r} but save() was called with step "
                f"{step}: the metadata step is the stage-local step; drop it or make them equal."
            )
        meta.setdefault("ptjf_version", ptjf.__version__)
        step_value, params, opt_state = _state_parts(state)
        self.wait()  # also collects garbage, while nothing is in flight
        if step in self._manager.all_steps():
            log.info("Checkpoint step %d already in %s; not saving it again.", step, self.directory)
            return False
        # What a restore must read back (ptjf.checkpoints.integrity): a corrupted checkpoint is caught.
        meta["fingerprints"] = {PARAMS: fingerprint(params), OPT_STATE: fingerprint(opt_state)}
        items = {
            PARAMS: ocp.args.StandardSave(params),
            OPT_STATE: ocp.args.StandardSave(opt_state),
            STEP: ocp.args.ArraySave(jnp.asarray(step_value, jnp.int32)),
            METADATA: ocp.args.JsonSave(meta),
        }
        if input_state is not None and (positions := input_state()) is not None:
            items[checkpoint_input.ITEM] = positions
        try:
            faults.inject("save_write", step)
            self._manager.save(
                step,
                args=ocp.args.Composite(**items),
                force=True,  # the period decision is made above, not by orbax's interval policy
            )
        except OSError as e:
            raise CheckpointError(
                f"Writing checkpoint step {step} to {self.directory} failed: {e}. Older "
                f"checkpoints were kept ({self.all_steps()}). Free space or fix permissions, "
                "then rerun the same command: it resumes from the newest of them."
            ) from e
        self._pending = step
        faults.inject("save", step)  # a kill here lands while the async write is in flight
        return True

    def due(self, step: int, *, force: bool = False) -> bool:
        """Whether `save(step, ..., force)` would write (so callers build metadata only then)."""
        step, period = int(step), self.config.period
        return force or step in self.config.keep_steps or (period != 0 and step % period == 0)

    def wait(self) -> None:
        """Block until the pending write is finalised, then delete checkpoints beyond `keep`."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            step, self._pending = self._pending, None
            raise CheckpointError(
                f"Writing checkpoint step {step} to {self.directory} failed: {e}. Older "
                "checkpoints were kept. Check free space and permissions of the directory."
            ) from e
        self._pending = None
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        keep = self.config.keep
        if keep is None or self.read_only:
            return
        for step in sorted(self._manager.all_steps())[:-keep]:
            if step not in self.config.keep_steps:
                self._manager.delete(step)

    def all_steps(self) -> list[int]:
        """Finalised steps, ascending (a write still in flight is not listed)."""
        return finalized_steps(self.directory)

    def latest_step(self) -> int | None:
        """Newest finalised step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _resolve(self, step: int | None) -> int:
        if self._pending is not None:
            self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise _missing_error(self.directory, None, steps)
            return steps[-1]
        if int(step) not in steps:
            raise _missing_error(self.directory, int(step), steps)
        return int(step)

    def _stored_signature(self, step: int, item: str) -> dict[str, tuple[tuple[int, ...], str]]:
        # The one item's own metadata file: the manager's step metadata would read every item's.
        path = self.directory / str(step) / item
        if not path.exists():
            raise CheckpointError(
                f"Checkpoint {self._location(step)} has no item {item!r}; it was not written "
                "by ptjf's StageCheckpointer. Restore a ptjf checkpoint or convert it first."
            )
        try:
            stored = ocp.StandardCheckpointHandler().metadata(path)
        except Exception as e:
            raise CorruptCheckpointError(
                f"Checkpoint {self._location(step)} is corrupted: the metadata of item "
                f"{item!r} cannot be read ({type(e).__name__}: {e})."
            ) from e
        return tree_signature(getattr(stored, "tree", stored))

    def _validate(self, step: int, item: str, target: Any) -> bool:
        """Checks that `target` fits the stored item; returns whether it casts any dtype."""
        stored = self._stored_signature(step, item)
        casts = check_fits(stored, tree_signature(target), item, self._location(step))
        if casts:
            log.warning(
                "Checkpoint %s item %r: casting %d arrays to the model's dtype (%s).",
                self._location(step),
                item,
                len(casts),
                paths_text(casts),
            )
        return bool(casts)

    def check_params_fit(self, step: int, target_params: Any) -> None:
        """Refuses parameters that do not fit `target_params`, reading item metadata only."""
        self._validate(self._resolve(step), PARAMS, target_params)

    def _location(self, step: int) -> str:
        return str(self.directory / str(step))

    def _restore_items(self, step: int, items: dict[str, ocp.args.CheckpointArgs]) -> Any:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # tensorstore, JSON and file errors alike: unreadable files
            raise CorruptCheckpointError(
                f"Checkpoint {self._location(step)} is corrupted: restoring {', '.join(items)} "
                f"failed ({type(e).__name__}: {e})."
            ) from e

    def _verify(self, step: int, meta: Mapping[str, Any], **items: Any) -> None:
        """Raises CorruptCheckpointError when a restored item's fingerprint is not the saved."""
        saved = meta.get("fingerprints") or {}
        for name, tree in items.items():
            if name in saved and (got := fingerprint(tree)) != saved[name]:
                raise CorruptCheckpointError(
                    f"Checkpoint {self._location(step)} is corrupted: its {name} read back with "
                    f"fingerprint {got}, but {saved[name]} was saved. Its files were altered "
                    "after the save (disk or copy error)."
                )

    def restore(self, step: int | None = None, *, target_state: Any) -> tuple[Any, dict]:
        """Full train state at `step` (None = latest) onto `target_state`'s structure.

        `target_state` may hold arrays or `jax.ShapeDtypeStruct`s; their shardings place the
        restored arrays. Fields other than step/params/opt_state are taken from the target.
        """
        step = self._resolve(step)
        target_step, target_params, target_opt = _state_parts(target_state)
        if self.starts_fresh(step):
            raise CheckpointError(
                f"Checkpoint {self._location(step)} is a stage start written by `ptjf switch`: "
                "it holds the parameters but no optimizer state (the stage builds a fresh one). "
                "Start the stage from it with `ptjf train` (same gin files and MODEL_DIR), or "
                "start a stage from its parameters only (`Stage.init_from=PATH`, "
                "`ptjf switch --from=PATH`; in code, StageCheckpointer.restore_params)."
            )
        cast = self._validate(step, PARAMS, target_params)
        cast |= self._validate(step, OPT_STATE, target_opt)
        restored = self._restore_items(
            step,
            {
                PARAMS: ocp.args.StandardRestore(target_params),
                OPT_STATE: ocp.args.StandardRestore(target_opt),
                STEP: ocp.args.ArrayRestore(restore_args=_step_restore_args(target_step)),
                METADATA: ocp.args.JsonRestore(),
            },
        )
        meta = dict(restored[METADATA])
        if not cast:  # a cast changes the bits; the fit check above covered that case
            self._verify(step, meta, **{PARAMS: restored[PARAMS], OPT_STATE: restored[OPT_STATE]})
        state = _with_parts(target_state, restored[STEP], restored[PARAMS], restored[OPT_STATE])
        return state, meta

    def restore_params(
        self, step: int | None = None, *, target_params: Any = None
    ) -> tuple[Any, dict]:
        """Parameters only (the stage switch); reads neither the optimizer state nor the step.

        Without `target_params` the stored tree is returned as saved (no fit check).
        """
        step = self._resolve(step)
        cast = target_params is not None and self._validate(step, PARAMS, target_params)
        restored = self._restore_items(
            step,
            {PARAMS: ocp.args.StandardRestore(target_params), METADATA: ocp.args.JsonRestore()},
        )
        meta = dict(restored[METADATA])
        if not cast:
            self._verify(step, meta, **{PARAMS: restored[PARAMS]})
        return restored[PARAMS], meta

    def starts_fresh(self, step: int) -> bool:
        """Whether `step` is a stage start without optimizer state (see `save_stage_start`).

        Only a checkpoint without `opt_state` has its metadata read; one whose `opt_state` is
        missing but that does not say "fresh" is damaged, and a full restore says so.
        """
        if (self.directory / str(step) / OPT_STATE).exists():
            return False
        return self.read_metadata(step).get(OPTIMIZER_STATE) == FRESH

    def save_stage_start(
        self,
        params: Any | None,
        metadata: Mapping[str, Any],
        *,
        params_fingerprint: str | None = None,
    ) -> None:
        """Writes step 0 of a stage that starts from `params` with a fresh optimizer; waits.

        No `opt_state` item: a fresh state is a function of the parameters and the stage's
        optimizer, so the trainer rebuilds it (Adam's zeros would cost twice the parameters'
        bytes to write). `params=None` writes only step and metadata, for
        `checkpoint_link.save_switched` to link the source's parameter files in; the
        fingerprint it records is then `params_fingerprint`, the source's.
        """
        self._require_writable()
        self.wait()
        if self.all_steps():
            raise CheckpointError(
                f"{self.directory} already holds checkpoints {self.all_steps()}; a stage start "
                "goes into an empty stage directory so nothing is overwritten."
            )
        meta = _to_json({**metadata, STEP: 0, OPTIMIZER_STATE: FRESH})
        meta.setdefault("ptjf_version", ptjf.__version__)
        if params is not None:
            params_fingerprint = fingerprint(params)
        if params_fingerprint:
            meta["fingerprints"] = {PARAMS: params_fingerprint}
        # A numpy scalar: the primary process writes it, whatever the mesh.
        items = {
            STEP: ocp.args.ArraySave(np.zeros((), np.int32)),
            METADATA: ocp.args.JsonSave(meta),
        }
        if params is not None:
            items[PARAMS] = ocp.args.StandardSave(params)
        try:
            self._manager.save(0, args=ocp.args.Composite(**items), force=True)
            self._manager.wait_until_finished()
        except OSError as e:
            raise CheckpointError(
                f"Writing the stage-start checkpoint to {self.directory} failed: {e}. Free "
                "space or fix permissions, then rerun the same command."
            ) from e

    def read_metadata(self, step: int | None = None) -> dict:
        """The JSON metadata item of `step` (None = latest), without reading any array."""
        step = self._resolve(step)
        return dict(self._restore_items(step, {METADATA: ocp.args.JsonRestore()})[METADATA])

    def close(self) -> None:
        """Finish the pending write, collect garbage and release orbax's resources."""
        try:
            if not self.read_only:
                self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> StageCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

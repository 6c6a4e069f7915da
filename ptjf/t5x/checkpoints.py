"""Reading T5X checkpoints, in both of T5X's layouts, from local disk or `gs://`, onto a mesh.

A T5X checkpoint directory (`MODEL_DIR/checkpoint_<step>`) holds T5X's train state: the
parameters under `target` and the optimizer state under `state` (`step`, and per parameter
Adafactor's `param_states`). T5X writes it in one of two layouts:

* orbax (T5X's default): `state/` is one orbax PyTree item (`state/_METADATA` names every
  array by its tuple path; the data sits in an OCDBT store, one zarr array per dotted name).
  T5X's orbax checkpoint manager writes `commit_success.txt` into the directory when the step
  is finished (orbax writes it on every filesystem; on GCS it is the only sign of a finished
  step, because an object store has no atomic rename).
* legacy (`use_orbax=False`, and T5X's older checkpoints): a msgpack file `checkpoint` with the
  whole tree, whose partitioned arrays (every parameter, and the optimizer's unfactored
  second moments) are TensorStore specs pointing to one zarr folder each, relative to the
  directory; the rest is inline. T5X writes no commit marker in this layout: it writes the
  arrays, then the msgpack file, into `checkpoint_<step>.tmp-<time>` and renames that to
  `checkpoint_<step>` (on GCS, `gsutil mv`, which is not atomic). So a legacy checkpoint counts
  as finished when its name has no `.tmp-` suffix, its msgpack file exists, and every array it
  names has its zarr metadata.

`open_checkpoint` recognises the layout, refuses unknown or unfinished directories
(`CheckpointError`), and lists every array's name, shape and dtype from metadata alone: orbax's
tree metadata and zarr headers, or the legacy msgpack file (which holds only small inline
arrays). No parameter data is read until `restore_params`, which reads each array straight
into the given shardings: each process reads only the slices its own devices hold, so a
checkpoint larger than one host's memory restores onto a mesh.

Paths are strings or `os.PathLike`; `gs://bucket/dir` works everywhere (etils `epath` for
files, TensorStore's `gcs` kvstore for arrays). Names use T5X's: '/'-joined parameter paths
without the `target` level (`encoder/layers_0/mlp/wo/kernel`), and for the optimizer state
`param_states/<parameter path>/<m|v|v_row|v_col>` and `step`, as T5X's `model-info.txt`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from ptjf.errors import CheckpointError, CorruptCheckpointError

ORBAX, LEGACY = "orbax", "legacy"
COMMIT_MARKER = "commit_success.txt"
LEGACY_MSGPACK = "checkpoint"
ORBAX_ITEM = "state"  # the orbax item holding T5X's train state
PARAMS, OPT_STATE = "target", "state"  # the train state's two subtrees
# Unfinished directories: orbax's temporary name, and the legacy checkpointer's `.tmp-<time>`.
_TMP_NAME = re.compile(r"(\.orbax-checkpoint-tmp.*|\.tmp-\d+)$")
_STEP_NAME = re.compile(r"^checkpoint_(\d+)$")
# Reads in flight at once when restoring the legacy layout (bytes of this host's slices).
_READ_BUDGET_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """Shape and stored dtype (a numpy name, e.g. 'float32') of one checkpoint array."""

    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class T5XCheckpoint:
    """An opened, finished T5X checkpoint: its layout and its arrays' names, shapes, dtypes.

    `params` maps parameter paths ('token_embedder/embedding', …) and `optimizer` maps
    optimizer-state paths ('param_states/<path>/v_row', …, 'step') to `ArrayInfo`, both in
    sorted order. Nothing here holds array data (except a legacy checkpoint's small inline
    arrays, which come with its msgpack file).
    """

    path: str
    layout: str
    params: Mapping[str, ArrayInfo]
    optimizer: Mapping[str, ArrayInfo]
    _legacy_tree: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def step(self) -> int | None:
        """The step in the directory name `checkpoint_<step>` (None for another name)."""
        match = _STEP_NAME.match(_basename(self.path))
        return int(match.group(1)) if match else None

    @property
    def run_dir(self) -> str:
        """The directory above the checkpoint: T5X's MODEL_DIR, where it writes config.gin."""
        return str(epath.Path(self.path).parent)


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def _clean(path: str | os.PathLike) -> str:
    """A URL (gs://…) without its trailing slash, or an absolute local path (orbax wants one)."""
    text = os.fspath(path)
    if "://" in text:
        return text.rstrip("/")
    return os.path.abspath(text)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _kvstore(directory: str) -> dict[str, Any]:
    """TensorStore kvstore spec of a directory: `gcs` for gs://bucket/…, `file` otherwise."""
    if directory.startswith("gs://"):
        bucket, _, prefix = directory[len("gs://") :].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/"}
    return {"driver": "file", "path": os.path.abspath(directory).rstrip("/") + "/"}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key in sorted(tree):
        value = tree[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not _is_ts_spec(value):
            yield from _flatten(value, name + "/")
        else:
            yield name, value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """'a/b/c' → value mapping as nested dicts {'a': {'b': {'c': value}}}."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts as a sorted {'a/b/c': leaf} mapping (the inverse of `unflatten`)."""
    return dict(_flatten(tree))


# ----------------------------------------------------------------------------------------------
# Layout detection and listing
# ----------------------------------------------------------------------------------------------


def _children(path: epath.Path) -> list[str]:
    try:
        return sorted(child.name for child in path.iterdir())
    except OSError:
        return []


def _unfinished(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"T5X checkpoint {path} is unfinished: {why}. T5X was still writing it, or its writer "
        "died; restore an earlier finished checkpoint_<step> of that run."
    )


def detect_layout(path: str | os.PathLike, *, require_commit_marker: bool = True) -> str:
    """ORBAX or LEGACY; CheckpointError for a missing, unfinished or unknown directory.

    `require_commit_marker=False` accepts an orbax directory without `commit_success.txt`:
    an orbax writer that finishes a local directory by an atomic rename needs no marker, and
    some orbax versions wrote none there (orbax 0.12, which wrote the fixtures, writes it on
    every filesystem).
    """
    text = _clean(path)
    root = epath.Path(text)
    if not root.exists():
        raise CheckpointError(f"T5X checkpoint {text} does not exist.")
    if not root.is_dir():
        raise CheckpointError(
            f"T5X checkpoint {text} is a file; pass the checkpoint directory, "
            "MODEL_DIR/checkpoint_<step>."
        )
    if _TMP_NAME.search(root.name):
        raise _unfinished(text, f"its name {root.name!r} is a temporary directory's")
    names = _children(root)
    if ORBAX_ITEM in names or "_CHECKPOINT_METADATA" in names:
        if require_commit_marker and COMMIT_MARKER not in names:
            raise _unfinished(
                text,
                f"it has no {COMMIT_MARKER}, which T5X's orbax checkpoint manager writes last",
            )
        # Orbax's tree metadata; older orbax versions wrote an aggregate msgpack file instead.
        item = root / ORBAX_ITEM
        if not ((item / "_METADATA").exists() or (item / LEGACY_MSGPACK).exists()):
            raise _unfinished(text, f"{ORBAX_ITEM}/_METADATA is missing")
        return ORBAX
    if LEGACY_MSGPACK in names:
        return LEGACY
    arrays = [name for name in names if name.startswith((f"{PARAMS}.", f"{OPT_STATE}."))]
    if arrays:
        raise _unfinished(
            text,
            f"it has T5X's per-array folders ({arrays[0]}, …) but not the msgpack file "
            f"{LEGACY_MSGPACK!r}, which the legacy checkpointer writes after them",
        )
    steps = sorted(name for name in names if _STEP_NAME.match(name))
    if steps:
        raise CheckpointError(
            f"{text} is a T5X model directory, not a checkpoint: pass one of its checkpoints, "
            f"e.g. {text}/{steps[-1]} (it has {', '.join(steps)})."
        )
    shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "") if names else "nothing"
    raise CheckpointError(
        f"{text} is not a T5X checkpoint: it holds {shown}. Expected T5X's orbax layout "
        f"({ORBAX_ITEM}/_METADATA and {COMMIT_MARKER}) or its legacy layout (a msgpack file "
        f"named {LEGACY_MSGPACK!r} and one zarr folder per array)."
    )


def open_checkpoint(
    path: str | os.PathLike, *, require_commit_marker: bool = True
) -> T5XCheckpoint:
    """Open a finished T5X checkpoint directory and list its arrays (no array data read)."""
    text = _clean(path)
    layout = detect_layout(text, require_commit_marker=require_commit_marker)
    if layout == ORBAX:
        tree, legacy_tree = _orbax_listing(text), None
    else:
        legacy_tree = _legacy_tree(text)
        tree = _legacy_listing(text, legacy_tree)
    if not tree.get(PARAMS):
        raise CheckpointError(
            f"{text} has no parameters (no {PARAMS!r} tree): it is not a T5X train state."
        )
    return T5XCheckpoint(
        path=text,
        layout=layout,
        params=flatten(tree[PARAMS]),
        optimizer=flatten(tree.get(OPT_STATE) or {}),
        _legacy_tree=legacy_tree,
    )


def _orbax_listing(path: str) -> dict[str, Any]:
    directory = epath.Path(path) / ORBAX_ITEM
    try:
        metadata = ocp.PyTreeCheckpointHandler().metadata(directory)
    except Exception as e:  # JSON, TensorStore and file errors alike
        raise CorruptCheckpointError(
            f"T5X checkpoint {path}: the metadata of {directory} cannot be read "
            f"({type(e).__name__}: {e})."
        ) from e
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"T5X checkpoint {path}: {directory} does not hold a dict tree.")
    return jax.tree.map(_info_of, dict(tree))


def _info_of(meta: Any) -> ArrayInfo:
    shape = getattr(meta, "shape", None)
    dtype = getattr(meta, "dtype", None)
    if shape is None or dtype is None:
        raise CheckpointError(f"T5X checkpoint entry {meta!r} is not an array.")
    return ArrayInfo(tuple(int(d) for d in shape), np.dtype(dtype).name)


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and "driver" in value and "kvstore" in value


def _legacy_tree(path: str) -> dict[str, Any]:
    from flax import serialization

    file = epath.Path(path) / LEGACY_MSGPACK
    try:
        contents = serialization.msgpack_restore(file.read_bytes())
    except Exception as e:
        raise CorruptCheckpointError(
            f"T5X checkpoint {path}: its msgpack file {file} cannot be read "
            f"({type(e).__name__}: {e})."
        ) from e
    state = contents.get("optimizer") if isinstance(contents, Mapping) else None
    if not isinstance(state, Mapping) or PARAMS not in state:
        raise CheckpointError(
            f"{file} is not a T5X checkpoint file: it has no optimizer/{PARAMS} tree."
        )
    return {key: state[key] for key in (PARAMS, OPT_STATE) if key in state}


def _legacy_listing(path: str, tree: Mapping[str, Any]) -> dict[str, Any]:
    # None marks a state T5X does not save (an unused optimizer's, in a MultiOptimizer).
    flat = {name: leaf for name, leaf in flatten(tree).items() if leaf is not None}
    specs = {name: leaf for name, leaf in flat.items() if _is_ts_spec(leaf)}
    missing = _missing_arrays(path, specs)
    if missing:
        raise _unfinished(
            path,
            f"{len(missing)} array folder(s) its msgpack file names are missing or have no "
            f"zarr metadata, e.g. {missing[0]}",
        )
    infos = {}
    for name, leaf in flat.items():
        if name in specs:
            infos[name] = _spec_info(path, name, leaf)
        else:
            array = np.asarray(leaf)
            infos[name] = ArrayInfo(tuple(array.shape), array.dtype.name)
    return unflatten(infos)


def _relative_path(spec: Mapping[str, Any]) -> str:
    # TensorStore >= 0.1.14 writes the path into the kvstore, older versions next to it.
    relative = spec["kvstore"].get("path") or spec.get("path")
    if not relative:
        raise CheckpointError(f"TensorStore spec without a path in a T5X checkpoint: {spec}")
    return str(relative).strip("/")


def _missing_arrays(path: str, specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    root = epath.Path(path)

    def absent(spec: Mapping[str, Any]) -> str | None:
        relative = _relative_path(spec)
        return None if (root / relative / ".zarray").exists() else relative

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return sorted(name for name in pool.map(absent, specs.values()) if name)


def _spec_info(path: str, name: str, spec: Mapping[str, Any]) -> ArrayInfo:
    shape = (spec.get("metadata") or {}).get("shape")
    dtype = spec.get("dtype")
    if shape is None or dtype is None:  # not in the spec: the zarr header has them
        store = _open_store(path, name, spec)
        shape, dtype = store.shape, store.dtype.numpy_dtype
    return ArrayInfo(tuple(int(d) for d in shape), np.dtype(dtype).name)


def _store_spec(path: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with its relative path resolved against the checkpoint directory.

    A missing chunk is an error, not zeros: T5X's zarr arrays have no fill value, so
    TensorStore wrote every chunk, and one that is gone was lost in a copy.
    """
    resolved = {k: v for k, v in spec.items() if k not in ("kvstore", "path", "metadata")}
    resolved["kvstore"] = _kvstore(f"{path}/{_relative_path(spec)}")
    resolved["fill_missing_data_reads"] = False
    return resolved


def _open_store(path: str, name: str, spec: Mapping[str, Any]) -> ts.TensorStore:
    try:
        return ts.open(_store_spec(path, spec), read=True, open=True).result()
    except Exception as e:
        raise CorruptCheckpointError(
            f"T5X checkpoint {path}: array {name} ({_relative_path(spec)}) cannot be opened "
            f"({type(e).__name__}: {e})."
        ) from e


# ----------------------------------------------------------------------------------------------
# Restoring
# ----------------------------------------------------------------------------------------------


def default_shardings(infos: Mapping[str, ArrayInfo]) -> dict[str, Any]:
    """Every array whole on this process's first device (nested dicts, like the params)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return unflatten(dict.fromkeys(infos, device))


def _flat_shardings(checkpoint: T5XCheckpoint, shardings: Any) -> dict[str, Any]:
    if shardings is None:
        shardings = default_shardings(checkpoint.params)
    flat = {
        # A leaf is a Sharding, or anything carrying one (a jax.ShapeDtypeStruct, an array).
        "/".join(_key_name(k) for k in keys): getattr(leaf, "sharding", leaf)
        for keys, leaf in jax.tree_util.tree_flatten_with_path(
            shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
        )[0]
    }
    missing = sorted(set(checkpoint.params) - set(flat))
    extra = sorted(set(flat) - set(checkpoint.params))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no sharding for {', '.join(missing[:4])}")
        if extra:
            parts.append(f"shardings for arrays the checkpoint lacks: {', '.join(extra[:4])}")
        raise CheckpointError(
            f"T5X checkpoint {checkpoint.path}: the shardings do not match its parameters "
            f"({'; '.join(parts)}). Check the model against the checkpoint first "
            "(ptjf.t5x.models.check_model_fit)."
        )
    return flat


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def restore_params(
    checkpoint: T5XCheckpoint, shardings: Any = None, *, dtype: Any = np.float32
) -> dict[str, Any]:
    """The parameters as nested dicts of `jax.Array`s, each read straight into its sharding.

    `shardings` mirrors the parameter tree with a `jax.sharding.Sharding` per array (e.g.
    NamedShardings from `ptjf.runtime.partitioning.Partitioner.param_shardings`); None puts every
    array whole on this process's first device. Each process reads only the slices its own
    devices hold. Arrays are cast to `dtype` (T5X may save bfloat16).
    """
    flat = _flat_shardings(checkpoint, shardings)
    dtype = np.dtype(dtype)
    if checkpoint.layout == ORBAX:
        return _restore_orbax(checkpoint, flat, dtype)
    leaves = flatten(checkpoint._legacy_tree[PARAMS])
    return unflatten(_restore_legacy(checkpoint, leaves, flat, dtype))


def _restore_orbax(
    checkpoint: T5XCheckpoint, shardings: Mapping[str, Any], dtype: np.dtype
) -> dict[str, Any]:
    targets = {
        name: jax.ShapeDtypeStruct(checkpoint.params[name].shape, dtype, sharding=sharding)
        for name, sharding in shardings.items()
    }
    args = {
        name: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, dtype=t.dtype)
        for name, t in targets.items()
    }
    restored = _orbax_restore(checkpoint, {PARAMS: unflatten(targets)}, {PARAMS: unflatten(args)})
    return restored[PARAMS]


def _orbax_restore(checkpoint: T5XCheckpoint, item: Any, restore_args: Any) -> Any:
    directory = epath.Path(checkpoint.path) / ORBAX_ITEM
    try:
        return ocp.PyTreeCheckpointer().restore(
            directory,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
    except Exception as e:
        raise CorruptCheckpointError(
            f"T5X checkpoint {checkpoint.path}: reading {', '.join(item)} from {directory} "
            f"failed ({type(e).__name__}: {e})."
        ) from e


def _index_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=True))


def _restore_legacy(
    checkpoint: T5XCheckpoint,
    leaves: Mapping[str, Any],
    shardings: Mapping[str, Any],
    dtype: np.dtype,
) -> dict[str, jax.Array]:
    """Reads each array's slices for this process's devices, about `_READ_BUDGET_BYTES` of
    reads in flight at a time, and assembles global arrays from them."""
    restored: dict[str, jax.Array] = {}
    pending: list[tuple[str, dict[Any, Any], dict[Any, tuple]]] = []
    pending_bytes = 0

    def finish() -> None:
        for name, reads, devices in pending:
            restored[name] = _assemble(checkpoint, name, reads, devices, shardings[name], dtype)
        pending.clear()

    stores = {
        name: ts.open(_store_spec(checkpoint.path, leaf), read=True, open=True)
        for name, leaf in leaves.items()
        if _is_ts_spec(leaf)
    }
    for name, leaf in leaves.items():
        info = checkpoint.params[name]
        index_map = shardings[name].addressable_devices_indices_map(info.shape)
        devices = {device: _index_key(index, info.shape) for device, index in index_map.items()}
        reads: dict[Any, Any] = {}
        for device, index in index_map.items():
            key = devices[device]
            if key in reads:
                continue
            if name in stores:
                try:
                    reads[key] = stores[name].result()[index].read()
                except Exception as e:
                    raise CorruptCheckpointError(
                        f"T5X checkpoint {checkpoint.path}: array {name} cannot be read "
                        f"({type(e).__name__}: {e})."
                    ) from e
            else:  # inline in the msgpack file
                reads[key] = np.asarray(leaf)[index]
            pending_bytes += int(np.prod([b - a for a, b in key], dtype=np.int64)) * 4
        pending.append((name, reads, devices))
        if pending_bytes >= _READ_BUDGET_BYTES:
            finish()
            pending_bytes = 0
    finish()
    return restored


def _assemble(
    checkpoint: T5XCheckpoint,
    name: str,
    reads: Mapping[Any, Any],
    devices: Mapping[Any, Any],
    sharding: Any,
    dtype: np.dtype,
) -> jax.Array:
    info = checkpoint.params[name]
    host: dict[Any, np.ndarray] = {}
    for key, read in reads.items():
        try:
            data = read.result() if hasattr(read, "result") else read
        except Exception as e:
            raise CorruptCheckpointError(
                f"T5X checkpoint {checkpoint.path}: array {name} cannot be read "
                f"({type(e).__name__}: {e})."
            ) from e
        host[key] = np.asarray(data).astype(dtype, copy=False)
    shards = [jax.device_put(host[key], device) for device, key in devices.items()]
    return jax.make_array_from_single_device_arrays(info.shape, sharding, shards)


def restore_optimizer_state(checkpoint: T5XCheckpoint) -> dict[str, Any]:
    """T5X's optimizer state as host numpy arrays: {'step': int32 scalar, 'param_states': …}.

    `param_states` mirrors the parameters with T5X Adafactor's {'m', 'v', 'v_row', 'v_col'}
    per parameter, unused ones as shape (1,) zeros (see `ptjf.t5x.models.optax_adafactor_state`
    for ptjf's Adafactor). Whole arrays are read on this process.
    """
    if not checkpoint.optimizer:
        raise CheckpointError(f"T5X checkpoint {checkpoint.path} holds no optimizer state.")
    if checkpoint.layout == ORBAX:
        item = jax.tree.map(
            lambda i: jax.ShapeDtypeStruct(i.shape, np.dtype(i.dtype)),
            unflatten(dict(checkpoint.optimizer)),
        )
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        return _orbax_restore(checkpoint, {OPT_STATE: item}, {OPT_STATE: args})[OPT_STATE]
    flat = {}
    for name, leaf in flatten(checkpoint._legacy_tree[OPT_STATE]).items():
        if leaf is None:
            continue
        if not _is_ts_spec(leaf):
            flat[name] = np.asarray(leaf)
            continue
        store = _open_store(checkpoint.path, name, leaf)
        try:
            flat[name] = np.asarray(store.read().result())
        except Exception as e:
            raise CorruptCheckpointError(
                f"T5X checkpoint {checkpoint.path}: array {name} cannot be read "
                f"({type(e).__name__}: {e})."
            ) from e
    return unflatten(flat)

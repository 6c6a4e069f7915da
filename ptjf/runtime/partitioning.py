"""SPMD partitioning: the device mesh, logical-axis rules, and sharded state and batches.

The model names every parameter and activation axis logically (`batch`, `embed`, `mlp`, …; see
`ptjf.models.layers`); the rules here map those names onto the two mesh axes, T5X's way:

* `data`: the batch is split over it; with `parameter_partitioning_dims=2` parameters and
  optimizer state are split over it too (T5X's 2-D parameter partitioning, i.e. FSDP).
* `model`: `num_partitions` devices that split the wide axes (`mlp`, `heads`, `joined_kv`,
  `vocab`) of every layer (Megatron-style model parallelism).

Nothing is ever whole on one host: `init_state` runs the initialiser under `jit` with the
state's shardings as outputs, so each device creates only its own shard; checkpoints restore
straight into the target shardings (orbax reads each shard's slice), which is also what
lets a checkpoint saved on one mesh restore onto another.

Batches: each host reads its own slice of the global batch (`data_shard`: which rows this
host's devices hold, so hosts that share rows across the `model` axis read the same data) and
`shard_batch` assembles the global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ptjf.checkpoints.fit import key_name
from ptjf.errors import ConfigError

log = logging.getLogger(__name__)

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

LogicalRules = tuple[tuple[str, str | None], ...]

# Logical names of the batch's features: [batch, length] everywhere in ptjf.
BATCH_AXES = ("batch", "length")


@gin.configurable(module="partitioning")
def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Sequence[tuple[str, str | None]] = (),
) -> LogicalRules:
    """T5X's logical-axis rules: (logical name, mesh axis or None), earliest rule first.

    A logical axis takes the first rule whose mesh axis the array does not already use, so an
    activation [batch, length, embed] with 2-D parameter partitioning keeps `embed` whole
    (`data` is taken by `batch`) while an [embed, mlp] kernel splits `embed` over `data`.

    activation_partitioning_dims: 1 splits activations over `data` (batch) only; 2 also splits
        their `embed` axis over `model`.
    parameter_partitioning_dims: 1 splits parameters over `model` only; 2 also splits their
        `embed` axis over `data` (FSDP: parameters and optimizer state 1/N per data replica).
    additional_rules: rules placed before the standard ones (they take precedence).
    """
    for name, dims in (
        ("activation_partitioning_dims", activation_partitioning_dims),
        ("parameter_partitioning_dims", parameter_partitioning_dims),
    ):
        if dims not in (1, 2):
            raise ConfigError(
                f"standard_logical_axis_rules.{name}={dims!r}: expected 1 or 2 (T5X's values)."
            )
    rules: list[tuple[str, str | None]] = [tuple(r) for r in additional_rules]  # type: ignore[misc]
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str) or rule[1] not in (*MESH_AXES, None):
            raise ConfigError(
                f"Logical-axis rule {rule!r} is malformed: expected (logical name, one of "
                f"{MESH_AXES} or None)."
            )
    rules += [("batch", DATA_AXIS)]
    if parameter_partitioning_dims == 2:
        rules += [("embed", DATA_AXIS)]
    if activation_partitioning_dims == 2:
        rules += [("embed", MODEL_AXIS)]
    rules += [
        ("vocab", MODEL_AXIS),
        ("mlp", MODEL_AXIS),
        ("heads", MODEL_AXIS),
        ("joined_kv", MODEL_AXIS),
        ("kv", None),
        ("embed", None),
        ("length", None),
        ("relpos_buckets", None),
        ("cache", None),
    ]
    return tuple(rules)  # type: ignore[return-value]


def make_mesh(num_partitions: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh over all devices: `model` has `num_partitions` devices.

    Devices are laid out by `mesh_utils.create_device_mesh` (contiguous in the physical torus
    on TPUs) where it can, else in `jax.devices()` order (process by process), which keeps
    every host's devices in whole rows of the `data` axis.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if (
        isinstance(num_partitions, bool)
        or not isinstance(num_partitions, int)
        or (num_partitions < 1)
    ):
        raise ConfigError(
            f"partitioning.PjitPartitioner.num_partitions={num_partitions!r}: expected an "
            "integer >= 1 (the size of the 'model' mesh axis; 1 = data parallel only)."
        )
    if n % num_partitions:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ConfigError(
            f"The mesh does not fit the devices: num_partitions={num_partitions} does not divide "
            f"the {n} device(s) of this run ({devices[0].platform}). Choose "
            f"partitioning.PjitPartitioner.num_partitions from {divisors}."
        )
    shape = (n // num_partitions, num_partitions)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _spec_fits(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """`spec` with any axis that the mesh cannot split evenly left whole."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    out = []
    for dim, entry in zip(shape, entries, strict=True):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = math.prod(mesh.shape[a] for a in axes)
        out.append(entry if size and dim % size == 0 else None)
    return P(*out)


def _key_names(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(key_name(k) for k in path)


def optimizer_state_specs(abstract_opt_state: Any, param_specs: Any, param_shapes: Any) -> Any:
    """A PartitionSpec for every optimizer-state leaf, derived from the parameters' specs.

    Optax keeps per-parameter statistics in subtrees shaped like the parameters (Adam's mu and
    nu, Adafactor's v or its factored v_row / v_col), so a leaf whose path ends with a
    parameter's path gets that parameter's spec: as is when the shapes match, with the reduced
    axis dropped for a factored second moment. Everything else (counts, placeholders) is
    replicated. This holds for any optax chain, not just the optimizers ptjf ships.
    """
    flat_specs = {
        _key_names(path): spec
        for path, spec in jax.tree_util.tree_flatten_with_path(
            param_specs, is_leaf=lambda x: isinstance(x, P)
        )[0]
    }
    flat_shapes = {
        _key_names(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes)[0]
    }
    longest = max((len(p) for p in flat_specs), default=0)

    def spec_for(path, leaf) -> P:
        names = _key_names(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for size in range(min(longest, len(names)), 0, -1):
            suffix = names[-size:]
            if suffix not in flat_specs:
                continue
            spec, pshape = flat_specs[suffix], flat_shapes[suffix]
            entries = list(spec) + [None] * (len(pshape) - len(spec))
            if shape == pshape:
                return P(*entries)
            if len(shape) == len(pshape) - 1:
                # Optax's factored second moment: v_row drops the largest axis, v_col the
                # second largest (`np.argsort` order, as optax picks them, so square kernels
                # get the right axis too).
                order = [int(d) for d in np.argsort(pshape)]
                named = {"v_row": order[-1], "v_col": order[-2]} if len(order) > 1 else {}
                kind = next((n for n in names if n in named), None)
                if kind is not None and pshape[: named[kind]] + pshape[named[kind] + 1 :] == shape:
                    drop = named[kind]
                    return P(*(entries[:drop] + entries[drop + 1 :]))
                for drop in range(len(pshape) - 1, -1, -1):
                    if pshape[:drop] + pshape[drop + 1 :] == shape:
                        return P(*(entries[:drop] + entries[drop + 1 :]))
            return P()
        return P()

    return jax.tree_util.tree_map_with_path(spec_for, abstract_opt_state)


@gin.configurable("PjitPartitioner", module="partitioning")
@dataclasses.dataclass
class Partitioner:
    """The mesh and the rules of a run (gin: `partitioning.PjitPartitioner.*`, as in T5X).

    num_partitions: devices on the `model` axis; the rest form the `data` axis.
    logical_axis_rules: None = `standard_logical_axis_rules()` (gin-configurable itself).
    """

    num_partitions: int = 1
    logical_axis_rules: Sequence[tuple[str, str | None]] | None = None
    devices: Sequence[jax.Device] | None = None

    def __post_init__(self) -> None:
        rules = self.logical_axis_rules
        self.rules: LogicalRules = (
            standard_logical_axis_rules() if rules is None else tuple(map(tuple, rules))
        )
        self.mesh = make_mesh(self.num_partitions, self.devices)

    # --- shape of the mesh ----------------------------------------------------------------
    @property
    def data_size(self) -> int:
        return self.mesh.shape[DATA_AXIS]

    def describe(self) -> str:
        return (
            f"mesh data={self.data_size} × model={self.mesh.shape[MODEL_AXIS]} over "
            f"{self.mesh.size} {self.mesh.devices.flat[0].platform} device(s), "
            f"{jax.process_count()} process(es)"
        )

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """The mesh and rules in scope, so the model's logical constraints take effect."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    # --- shardings ------------------------------------------------------------------------
    def sharding(self, logical_axes: Sequence[str | None] | P, shape: Sequence[int]):
        """The NamedSharding of an array with these logical axes (uneven axes left whole)."""
        spec = nn.logical_to_mesh_axes(tuple(logical_axes), self.rules)
        return NamedSharding(self.mesh, _spec_fits(spec, shape, self.mesh))

    def param_shardings(self, logical_specs: Any, abstract_params: Any) -> Any:
        """NamedShardings of the parameters from their logical PartitionSpecs."""
        return jax.tree.map(
            lambda spec, leaf: self.sharding(spec, leaf.shape),
            logical_specs,
            abstract_params,
            is_leaf=lambda x: isinstance(x, P),
        )

    def state_shardings(self, abstract_state: Any, param_shardings: Any) -> Any:
        """Shardings of a `TrainState`: params as given, optimizer state derived from them."""
        param_specs = jax.tree.map(lambda s: s.spec, param_shardings)
        opt_specs = optimizer_state_specs(
            abstract_state.opt_state, param_specs, abstract_state.params
        )
        opt = jax.tree.map(
            lambda spec, leaf: NamedSharding(
                self.mesh, _spec_fits(spec, getattr(leaf, "shape", ()), self.mesh)
            ),
            opt_specs,
            abstract_state.opt_state,
            is_leaf=lambda x: isinstance(x, P),
        )
        return abstract_state.replace(step=self.replicated, params=param_shardings, opt_state=opt)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def with_shardings(self, abstract: Any, shardings: Any) -> Any:
        """`jax.ShapeDtypeStruct`s carrying `shardings`: restore targets for orbax."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )

    # --- compiled functions ---------------------------------------------------------------
    def jit(self, fn: Callable, **jit_kwargs: Any) -> Callable:
        """`jax.jit(fn)` traced and run with the mesh and rules in scope."""
        jitted = jax.jit(fn, **jit_kwargs)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            with self.context():
                return jitted(*args, **kwargs)

        return call

    def compile(self, fn: Callable, abstract_args: Sequence[Any], **jit_kwargs: Any) -> Callable:
        """`fn` compiled ahead of time for `abstract_args` (`jax.ShapeDtypeStruct`s with
        shardings): one XLA compile, callable with arrays of exactly those shapes and
        shardings. Safe on a background thread (the mesh and rules are per thread)."""
        with self.context():
            return jax.jit(fn, **jit_kwargs).lower(*abstract_args).compile()

    def init(self, init_fn: Callable[..., Any], shardings: Any, *args: Any) -> Any:
        """`init_fn(*args)` computed shard by shard straight into `shardings`."""
        return self.jit(init_fn, out_shardings=shardings)(*args)

    # --- batches --------------------------------------------------------------------------
    def batch_sharding(self, shape: Sequence[int]) -> NamedSharding:
        return self.sharding(BATCH_AXES[: len(shape)], shape)

    def data_shard(self, global_batch_size: int) -> tuple[int, int]:
        """(shard index, number of shards) of the rows this process feeds.

        Processes whose devices hold the same rows (the `model` axis spans hosts) get the same
        shard, so they read the same data, as `make_array_from_process_local_data` requires.
        """
        if global_batch_size % self.data_size:
            raise ConfigError(
                f"The batch size {global_batch_size} does not split over the mesh's data axis "
                f"of {self.data_size} devices. Choose BATCH_SIZE as a multiple of "
                f"{self.data_size}, or raise partitioning.PjitPartitioner.num_partitions."
            )
        sharding = self.batch_sharding((global_batch_size, 1))
        rows = sorted(
            {
                (idx[0].start or 0, idx[0].stop or global_batch_size)
                for idx in sharding.addressable_devices_indices_map((global_batch_size, 1)).values()
            }
        )
        start, stop = rows[0][0], rows[-1][1]
        if any(a[1] != b[0] for a, b in itertools.pairwise(rows)):
            raise ConfigError(
                f"This process's devices hold non-contiguous rows {rows} of the batch; the "
                "mesh's data axis must keep each host's devices together."
            )
        size = stop - start
        return start // size, global_batch_size // size

    def shard_batch(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays from this process's rows (its `data_shard` of the batch)."""
        out = {}
        for name, value in local.items():
            value = np.asarray(value)
            global_shape = (value.shape[0] * self.num_data_shards, *value.shape[1:])
            out[name] = jax.make_array_from_process_local_data(
                self.batch_sharding(global_shape), value, global_shape
            )
        return out

    @functools.cached_property
    def num_data_shards(self) -> int:
        """Distinct blocks of batch rows across processes (processes sharing rows count once)."""
        per_process: dict[int, set[int]] = {}
        for coords, device in np.ndenumerate(self.mesh.devices):
            per_process.setdefault(device.process_index, set()).add(coords[0])
        return len({tuple(sorted(rows)) for rows in per_process.values()})

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays from a batch every process holds whole (eval batches)."""
        out = {}
        for name, value in batch.items():
            value = np.asarray(value)
            out[name] = jax.make_array_from_callback(
                value.shape, self.batch_sharding(value.shape), lambda idx, v=value: v[idx]
            )
        return out

"""The mesh and the parameters' layout that `ptjf.models.memory` and
`ptjf.models.activation_memory` both size tensors with.

A mesh's shape, ptjf's logical-axis rules, the PartitionSpec they give an array and the elements
of one device's shard, as `ptjf.runtime.partitioning` and `Partitioner.sharding` decide them
(an axis the mesh cannot split evenly stays whole on every device); and every parameter's
shape and logical axes, read off the model. Kept apart so that neither estimate imports the
other for them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

from ptjf.errors import ConfigError
from ptjf.models.config import TransformerConfig
from ptjf.runtime import partitioning

# --- the mesh ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Sizes of the (data, model) mesh; `model` is `PjitPartitioner.num_partitions`."""

    data: int
    model: int = 1

    def __post_init__(self) -> None:
        for name in ("data", "model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MeshShape.{name}={value!r} must be an integer >= 1.")

    @classmethod
    def for_devices(cls, num_devices: int, num_partitions: int = 1) -> MeshShape:
        """The mesh `PjitPartitioner(num_partitions)` builds over `num_devices` devices."""
        if num_devices < 1 or num_partitions < 1 or num_devices % num_partitions:
            raise ConfigError(
                f"num_partitions={num_partitions} does not divide num_devices={num_devices}; "
                "the 'model' axis must split the devices evenly (as PjitPartitioner requires)."
            )
        return cls(data=num_devices // num_partitions, model=num_partitions)

    @property
    def devices(self) -> int:
        return self.data * self.model

    def axis_size(self, entry: str | Sequence[str] | None) -> int:
        """Devices a PartitionSpec entry splits over (1 for None)."""
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        sizes = {partitioning.DATA_AXIS: self.data, partitioning.MODEL_AXIS: self.model}
        return math.prod(sizes[name] for name in names)


def logical_axis_rules(
    parameter_partitioning_dims: int = 1, activation_partitioning_dims: int = 1
) -> partitioning.LogicalRules:
    """ptjf's standard rules with both dimensions given (gin bindings cannot change them)."""
    return partitioning.standard_logical_axis_rules(
        activation_partitioning_dims=activation_partitioning_dims,
        parameter_partitioning_dims=parameter_partitioning_dims,
        additional_rules=(),
    )


def mesh_spec(logical_axes: Sequence[str | None], rules: partitioning.LogicalRules) -> P:
    """The mesh PartitionSpec of an array with these logical axes under `rules`."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def shard_elements(shape: Sequence[int], spec: P, mesh: MeshShape) -> int:
    """Elements of one device's shard; an axis the mesh does not divide evenly stays whole."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    total = 1
    for dim, entry in zip(shape, entries, strict=True):
        size = mesh.axis_size(entry)
        total *= dim // size if dim % size == 0 else dim
    return total


# --- the parameters' layout ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """Shape and logical axis names of one parameter."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@functools.lru_cache(maxsize=32)  # tracing mT5-XXL's init takes seconds; configs are hashable
def parameter_layout(config: TransformerConfig) -> dict[str, ParamLayout]:
    """Every parameter of `EncoderDecoder(config)` by its '/'-joined path (model's names).

    Read off the model itself (abstract shapes and logical axes, no memory allocated), so the
    arithmetic can never drift from the parameters the trainer creates.
    """
    from ptjf.checkpoints.fit import key_name
    from ptjf.models import EncoderDecoder, init_params, param_logical_axes

    specs = param_logical_axes(EncoderDecoder(config))
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    flat_specs = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
    return {
        "/".join(key_name(k) for k in path): ParamLayout(
            tuple(int(n) for n in flat_shapes[path].shape), tuple(spec)
        )
        for path, spec in flat_specs[0]
    }

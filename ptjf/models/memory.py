"""Per-device memory of a training step: parameters, gradients, optimizer state, activations.

Used to choose a mesh, `parameter_partitioning_dims`, a remat policy and a number of
microbatches before a pod is booked (docs/scaling.md). Everything is arithmetic on shapes: no
device, no compilation.

* **Parameters** are listed from the config with the names, shapes and logical axes the model
  creates (`parameter_layout`; its total is `count_params`), all float32.
* **Sharding** follows `ptjf.runtime.partitioning`, as `Partitioner.sharding` does: see
  `ptjf.models.memory_layout`, which holds the mesh and the parameters' layout.
* **Gradients** are float32 and sharded like the parameters; with `num_microbatches > 1` the
  train step's scan also carries their running sum (a second copy).
* **Optimizer state** is what ptjf's own optimizer keeps: `make_optimizer(...).init` is
  evaluated abstractly (`jax.eval_shape`) and each leaf is sharded by
  `partitioning.optimizer_state_specs`, as the trainer does. Adam keeps two moments; the
  paper's Adafactor (`factored=False, momentum=0.9`) a full second moment and a momentum;
  T5's factored Adafactor a row and a column factor for every matrix whose two largest axes
  are at least `min_dim_size_to_factor` (a full second moment for the others), no momentum.
  Optax's one-element placeholders and step counters are counted too. With a stage's
  `trainable` patterns (`Stage.trainable`), only the trained parameters have optimizer
  state, exactly as the trainer builds it (`ptjf.training.trainable.freeze`); the
  parameters and gradients are counted in full (the train step computes every gradient).
* **Activations** (`ptjf.models.activation_memory.activation_bytes`): the tensors JAX's
  autodiff saves from one microbatch's forward pass for its backward pass under the remat
  policy, listed in its docstring, plus the largest transient.

This module re-exports both modules' public names, so `memory.X` reaches all of them.

Not counted: XLA's own temporaries and fusion buffers, TPU tile padding, the compiled program,
the batch itself and the input pipeline; XLA may also fuse away some saved values. Keep the
total within three quarters of a device's memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ptjf.errors import ConfigError
from ptjf.models.activation_memory import (
    BOOL_BYTES,
    DTYPE_BYTES,
    LOGITS_BYTES,
    ActivationEstimate,
    activation_bytes,
    check_remat_policy,
)
from ptjf.models.config import REMAT_POLICIES, TransformerConfig
from ptjf.models.memory_layout import (
    MeshShape,
    ParamLayout,
    logical_axis_rules,
    mesh_spec,
    parameter_layout,
    shard_elements,
)
from ptjf.runtime import partitioning
from ptjf.training import trainable as trainable_params
from ptjf.training.optimizers import OptimizerConfig, make_optimizer

GiB = 1024**3
PARAM_BYTES = 4  # parameters, gradients and optimizer statistics are float32


# --- parameters and optimizer state --------------------------------------------------------


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def parameter_bytes(
    config: TransformerConfig, mesh: MeshShape, rules: partitioning.LogicalRules
) -> int:
    """Bytes of one device's shard of the float32 parameters (also the gradients' size)."""
    return sum(
        PARAM_BYTES * shard_elements(p.shape, mesh_spec(p.axes, rules), mesh)
        for p in parameter_layout(config).values()
    )


def optimizer_state_bytes(
    config: TransformerConfig,
    optimizer: OptimizerConfig,
    mesh: MeshShape,
    rules: partitioning.LogicalRules,
    trainable: Sequence[str] | None = None,
) -> int:
    """Bytes of one device's shard of the state `make_optimizer(optimizer, …)` keeps, for the
    parameters `trainable` matches (`Stage.trainable`; None = all of them)."""
    layout = parameter_layout(config)
    shapes = _nest({k: jax.ShapeDtypeStruct(p.shape, np.float32) for k, p in layout.items()})
    specs = _nest({k: mesh_spec(p.axes, rules) for k, p in layout.items()})
    tx = trainable_params.freeze(make_optimizer(optimizer, optax.constant_schedule(1.0)), trainable)
    state = jax.eval_shape(tx.init, shapes)
    state_specs = partitioning.optimizer_state_specs(state, specs, shapes)
    leaves = jax.tree.leaves(state)
    leaf_specs = jax.tree.leaves(state_specs, is_leaf=lambda x: isinstance(x, P))
    return sum(
        np.dtype(leaf.dtype).itemsize * shard_elements(leaf.shape, spec, mesh)
        for leaf, spec in zip(leaves, leaf_specs, strict=True)
    )


def describe_optimizer(optimizer: OptimizerConfig, trained_fraction: float = 1.0) -> str:
    """What the optimizer keeps per parameter, in words (and for what share of them)."""
    share = "" if trained_fraction >= 1.0 else f", {trained_fraction:.0%} of parameters train"
    if optimizer.name in ("adam", "adamw"):
        return f"{optimizer.name}: 2 moments{share}"
    kept = ["row+column factors" if optimizer.factored else "full 2nd moment"]
    if optimizer.momentum is not None:
        kept.insert(0, "momentum")
    return "adafactor: " + " + ".join(kept) + share


# --- the whole step ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Per-device bytes of a training step; `table()` renders it in GiB."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: ActivationEstimate
    mesh: MeshShape
    labels: Mapping[str, str]

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations.total

    def rows(self) -> list[tuple[str, int]]:
        return [
            (f"parameters ({self.labels['parameters']})", self.parameters),
            (f"gradients ({self.labels['gradients']})", self.gradients),
            (f"optimizer state ({self.labels['optimizer']})", self.optimizer_state),
            (f"activations ({self.labels['activations']})", self.activations.total),
            ("total", self.total),
        ]

    def table(self) -> str:
        """A plain-text table, one line per component, GiB per device."""
        title = (
            f"per device, mesh data={self.mesh.data} x model={self.mesh.model} "
            f"({self.mesh.devices} devices)"
        )
        rows = self.rows()
        width = max(len(title), *(len(name) for name, _ in rows))
        lines = [f"{title:<{width}}  {'GiB':>7}"]
        lines += [f"{name:<{width}}  {value / GiB:>7.2f}" for name, value in rows]
        return "\n".join(lines)


def estimate(
    config: TransformerConfig,
    *,
    batch_size: int,
    input_length: int,
    target_length: int,
    num_devices: int = 1,
    num_partitions: int = 1,
    parameter_partitioning_dims: int = 1,
    activation_partitioning_dims: int = 1,
    optimizer: OptimizerConfig | None = None,
    remat_policy: str | None = None,
    num_microbatches: int = 1,
    trainable: Sequence[str] | None = None,
) -> MemoryEstimate:
    """Per-device memory of one training step of `config` on `num_devices` devices.

    batch_size: the global batch (`BATCH_SIZE`); each microbatch holds batch_size /
        num_microbatches rows, split over the data axis.
    remat_policy: None = `config.remat_policy` when the config has one, else 'none'.
    optimizer: None = `OptimizerConfig()` (Adam).
    trainable: the stage's `Stage.trainable` patterns: the optimizer state is counted for
        the parameters they match only (None = every parameter trains).
    """
    if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, int):
        raise ConfigError(f"num_microbatches={num_microbatches!r} must be an integer >= 1.")
    if num_microbatches < 1 or batch_size % num_microbatches:
        raise ConfigError(
            f"num_microbatches={num_microbatches} must be >= 1 and divide batch_size="
            f"{batch_size} (train.num_microbatches)."
        )
    policy = remat_policy if remat_policy is not None else getattr(config, "remat_policy", "none")
    optimizer = optimizer or OptimizerConfig()
    mesh = MeshShape.for_devices(num_devices, num_partitions)
    rules = logical_axis_rules(parameter_partitioning_dims, activation_partitioning_dims)
    params = parameter_bytes(config, mesh, rules)
    micro = batch_size // num_microbatches
    activations = activation_bytes(
        config,
        batch_size=micro,
        input_length=input_length,
        target_length=target_length,
        mesh=mesh,
        rules=rules,
        remat_policy=policy,
    )
    copies = 2 if num_microbatches > 1 else 1
    sizes = {path: p.size for path, p in parameter_layout(config).items()}
    trained = trainable_params.trained_share(sizes, trainable)
    rows_per_device = micro // mesh.data
    return MemoryEstimate(
        parameters=params,
        gradients=copies * params,
        optimizer_state=optimizer_state_bytes(config, optimizer, mesh, rules, trainable),
        activations=activations,
        mesh=mesh,
        labels={
            "parameters": f"float32, {parameter_partitioning_dims}-D",
            "gradients": "float32" + (", + accumulator" if copies == 2 else ""),
            "optimizer": describe_optimizer(optimizer, trained),
            "activations": (
                f"{config.dtype}, remat {policy}, {rows_per_device} rows x "
                f"{input_length}/{target_length}"
            ),
        },
    )


__all__ = [
    "BOOL_BYTES",
    "DTYPE_BYTES",
    "LOGITS_BYTES",
    "PARAM_BYTES",
    "REMAT_POLICIES",
    "ActivationEstimate",
    "GiB",
    "MemoryEstimate",
    "MeshShape",
    "ParamLayout",
    "activation_bytes",
    "check_remat_policy",
    "describe_optimizer",
    "estimate",
    "logical_axis_rules",
    "mesh_spec",
    "optimizer_state_bytes",
    "parameter_bytes",
    "parameter_layout",
    "shard_elements",
]

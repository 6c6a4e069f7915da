"""T5X Adafactor's optimizer state and ptjf's: the per-parameter layout T5X's Adafactor uses
(`m`, `v`, `v_row`, `v_col`, with (1,) placeholders for unused slots, factored by T5X's size
rule), a fresh state in that layout, and ptjf's (optax's) Adafactor state moved into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import optax

from ptjf.errors import CheckpointError
from ptjf.t5x.checkpoints import flatten, unflatten

SLOTS = ("m", "v", "v_col", "v_row")  # T5X Adafactor's per-parameter state
# Shape of an unused slot in T5X's Adafactor state.
UNUSED = (1,)

# ----------------------------------------------------------------------------------------------
# T5X Adafactor's state layout
# ----------------------------------------------------------------------------------------------


def t5x_factored_dims(
    shape: tuple[int, ...], *, factored: bool = True, min_dim_size_to_factor: int = 128
) -> tuple[int, int] | None:
    """The axes T5X's Adafactor factors a parameter's second moment over, or None.

    A parameter is factored when `factored` is on, its rank is at least 2 and its
    second-largest dimension is at least `min_dim_size_to_factor`. The result is (d1, d0):
    d0 the largest axis, d1 the second largest, in the order numpy's `argsort` of the shape
    puts them, which is how both T5X's Adafactor and optax's decide. On a tie that order is
    the axes' own, so the later of two equal axes counts as the larger: a square kernel keeps
    `v_row` over its first axis and `v_col` over its second. `v_row` has the shape without d0,
    `v_col` the shape without d1.
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def t5x_slot_shapes(
    shape: tuple[int, ...],
    *,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    momentum: bool = False,
) -> dict[str, tuple[int, ...]]:
    """The shapes of T5X Adafactor's `m`, `v`, `v_col`, `v_row` for a parameter of `shape`."""
    shape = tuple(int(d) for d in shape)
    slots = dict.fromkeys(SLOTS, UNUSED)
    dims = t5x_factored_dims(
        shape, factored=factored, min_dim_size_to_factor=min_dim_size_to_factor
    )
    if dims is None:
        slots["v"] = shape
    else:
        second, largest = dims
        slots["v_row"] = tuple(n for axis, n in enumerate(shape) if axis != largest)
        slots["v_col"] = tuple(n for axis, n in enumerate(shape) if axis != second)
    if momentum:
        slots["m"] = shape
    return slots


def fresh_param_states(
    params: Any,
    *,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    momentum: bool = False,
) -> dict[str, Any]:
    """T5X Adafactor's `param_states` at step 0 for `params` (nested dicts of arrays or of
    anything with a `.shape`): float32 zeros, nested like the parameters, one
    {'m', 'v', 'v_col', 'v_row'} dict per parameter."""
    flat = {}
    for name, leaf in flatten(params).items():
        slots = t5x_slot_shapes(
            tuple(leaf.shape),
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
            momentum=momentum,
        )
        for slot, shape in slots.items():
            flat[f"{name}/{slot}"] = np.zeros(shape, np.float32)
    return unflatten(flat)


# ----------------------------------------------------------------------------------------------
# ptjf's optimizer state, as optax NamedTuples or as the dicts orbax lists them as
# ----------------------------------------------------------------------------------------------

_FIELDS = {
    "adafactor": ("count", "v_row", "v_col", "v"),
    "momentum": ("count", "ema"),
    "adam": ("count", "mu", "nu"),
}
_KINDS = {
    optax.FactoredState: "adafactor",
    optax.EmaState: "momentum",
    optax.ScaleByAdamState: "adam",
}
# The optax state a dict of these field names was saved from (orbax lists NamedTuples as
# dicts of their fields, tuples as lists and an empty state as None).
STATE_CLASSES = {
    frozenset(_FIELDS["adafactor"]): optax.FactoredState,
    frozenset(_FIELDS["momentum"]): optax.EmaState,
    frozenset(_FIELDS["adam"]): optax.ScaleByAdamState,
    frozenset(("count",)): optax.ScaleByScheduleState,
}


def _kind(node: Any) -> str | None:
    for cls, kind in _KINDS.items():
        if isinstance(node, cls):
            return kind
    if isinstance(node, Mapping):
        keys = frozenset(node)
        for kind, fields in _FIELDS.items():
            if keys == frozenset(fields):
                return kind
    return None


def optimizer_states(tree: Any) -> Iterator[tuple[str, Any]]:
    """(kind, node) for every Adafactor, momentum and Adam state in an optimizer state."""
    kind = _kind(tree)
    if kind is not None:
        yield kind, tree
    elif isinstance(tree, Mapping):
        for value in tree.values():
            yield from optimizer_states(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from optimizer_states(value)


def state_field(node: Any, name: str) -> Any:
    return node[name] if isinstance(node, Mapping) else getattr(node, name)


def optimizer_kind(opt_state: Any) -> str:
    """'adafactor', 'adam' or 'other' for a ptjf optimizer state (or its orbax metadata)."""
    kinds = {kind for kind, _ in optimizer_states(opt_state)}
    if "adafactor" in kinds:
        return "adafactor"
    if "adam" in kinds:
        return "adam"
    return "other"


def t5x_adafactor_state(opt_state: Any, step: int) -> dict[str, Any]:
    """ptjf's Adafactor state as T5X Adafactor's: {'step': int32, 'param_states': …}.

    The inverse of `ptjf.t5x.models.optax_adafactor_state`: optax's `FactoredState` gives
    each parameter's `v_row`, `v_col` and `v` (both optimizers factor over the same axes, see
    `t5x_factored_dims`, and keep (1,) placeholders for unused slots), the momentum's
    `EmaState` its `m` (a (1,) zero without momentum). Arrays become host float32; `step` is
    T5X's single step counter. CheckpointError for any other optimizer's state.
    """
    found: dict[str, list[Any]] = {}
    for kind, node in optimizer_states(opt_state):
        found.setdefault(kind, []).append(node)
    if not found.get("adafactor"):
        raise CheckpointError(
            "The optimizer state is not ptjf's Adafactor (no optax FactoredState): only "
            "Adafactor's state maps onto T5X's Adafactor. Export with optimizer_state='fresh'."
        )
    if len(found["adafactor"]) > 1 or len(found.get("momentum", [])) > 1:
        raise CheckpointError(
            "The optimizer state holds more than one Adafactor (or momentum) state; T5X keeps "
            "one per parameter. Export with optimizer_state='fresh'."
        )
    factored = found["adafactor"][0]
    trees = {slot: flatten(state_field(factored, slot)) for slot in ("v_row", "v_col", "v")}
    momentum = found.get("momentum")
    if momentum:
        trees["m"] = flatten(state_field(momentum[0], "ema"))
    flat = {}
    for name in trees["v"]:
        for slot in SLOTS:
            value = trees[slot][name] if slot in trees else np.zeros(UNUSED, np.float32)
            flat[f"{name}/{slot}"] = np.asarray(jax.device_get(value), np.float32)
    return {"step": np.asarray(step, np.int32), "param_states": unflatten(flat)}

"""Does a checkpoint fit the model? Tree signatures and the fit check, as pure functions.

A restore first compares the stored tree's paths and shapes with the model's, so a checkpoint
from another model is refused with a message naming the first mismatching path and both shapes
before anything is read; dtype differences are allowed (orbax casts) and reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ptjf.errors import CheckpointError

OPT_STATE = "opt_state"
_SHOWN = 8  # paths listed in a mismatch message before "…"


def key_name(key: Any) -> str:
    """A pytree path entry's name: dict key, attribute name or sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def tree_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Map 'a/b/c' paths to (shape, dtype name) for arrays, abstract arrays or orbax metadata.

    Tuples and namedtuples (optax states) and the dicts orbax stores them as give the same
    paths (index, field name), so a target and a checkpoint's metadata compare directly.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    signature = {}
    for keys, leaf in leaves:
        shape = tuple(int(d) for d in getattr(leaf, "shape", np.shape(leaf)))
        dtype = getattr(leaf, "dtype", None)
        dtype = np.result_type(leaf) if dtype is None else dtype
        signature["/".join(key_name(k) for k in keys)] = (shape, str(np.dtype(dtype)))
    return signature


def paths_text(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f", … ({len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else "")


def check_fits(
    stored: Mapping[str, tuple[tuple[int, ...], str]],
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    item: str,
    location: str,
) -> list[str]:
    """Raise CheckpointError if a stored tree does not fit the model's; return dtype casts.

    Shape errors name the first mismatching path in the model's order with both shapes;
    structural errors list the paths missing on either side. Dtype differences are allowed
    (orbax casts on restore) and returned as 'path: stored -> expected' notes.
    """
    if item == OPT_STATE:
        fix = (
            "The optimizer differs from the one that wrote the checkpoint: configure the same "
            "optimizer to resume, or start a new stage from its parameters only, with a fresh "
            "optimizer state (`ptjf switch --from=PATH`, or `Stage.init_from=PATH`)."
        )
    else:
        fix = (
            "The checkpoint was written by another model: use the model configuration that "
            "wrote it (see its metadata), or start this stage from scratch."
        )
    head = f"Checkpoint {location} item {item!r} does not fit the model"
    missing = [p for p in expected if p not in stored]
    extra = [p for p in stored if p not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing in the checkpoint: {paths_text(missing)}")
        if extra:
            parts.append(f"in the checkpoint but not in the model: {paths_text(extra)}")
        raise CheckpointError(f"{head}: {'; '.join(parts)}. {fix}")
    bad = [p for p in expected if stored[p][0] != expected[p][0]]
    if bad:
        first = bad[0]
        more = f" ({len(bad) - 1} more arrays differ)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{head}: at {first} the checkpoint has shape {stored[first][0]} but the model "
            f"expects {expected[first][0]}{more}. {fix}"
        )
    return [
        f"{p}: {stored[p][1]} -> {expected[p][1]}"
        for p in expected
        if stored[p][1] != expected[p][1]
    ]

"""Checkpoint fingerprints: a checksum of every array's bits, to catch corrupted checkpoints.

A checkpoint whose files were cut short usually fails to read; one whose bytes were altered
may read "fine" and silently train from garbage. So each save records a 32-bit fingerprint of
the parameters and of the optimizer state in the checkpoint's metadata, and each restore
recomputes it from what it read: a mismatch marks the checkpoint corrupted.

The fingerprint is computed where the arrays live (one jitted reduction, sharded like the
state on a mesh) and only a scalar comes back to the host. It sums each array's bits as
unsigned 32-bit words and weights the sums by position, so a flipped bit, a zeroed chunk or two
swapped arrays all change it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (narrower types widened, wider ones split)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size in _UNSIGNED:
        bits = lax.bitcast_convert_type(x, _UNSIGNED[size])
        return bits.astype(jnp.uint32)
    return lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes → a trailing axis of 2 words


@jax.jit
def _fingerprint(leaves: list[jax.Array]) -> jax.Array:
    total = jnp.zeros((), jnp.uint32)
    for i, leaf in enumerate(leaves):
        words = _words(leaf)
        # Position within the array matters too: a rotated or reshuffled array changes the sum.
        index = lax.iota(jnp.uint32, words.size).reshape(words.shape)
        leaf_sum = jnp.sum(
            words * (index * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32
        )
        total = total + leaf_sum * jnp.uint32(2 * i + 1)
    return total


def fingerprint(tree: Any) -> str:
    """'0x' + 8 hex digits; the same for equal arrays on any mesh or device."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype")]
    if not leaves:
        return "0x00000000"
    value = int(np.asarray(jax.device_get(_fingerprint(leaves))))
    return f"0x{value:08x}"

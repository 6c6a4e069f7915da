"""Building blocks of the T5.1.1-style Transformer: norm, dense, embedding, MLP, attention, masks.

Conventions (T5X's minimal T5, so its checkpoints map onto these parameters):
- Parameters are float32 and carry logical axis names through `nn.with_logical_partitioning`;
  activations are computed in the module's `dtype` and constrained with logical names
  (`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`). Outside a mesh the constraints
  are no-ops. No module names a mesh axis.
- Dense layers have no bias. Attention kernels are stored 2-D as T5X stores them:
  query/key/value ('embed', 'joined_kv') with joined_kv = heads × head_dim, out
  ('joined_kv', 'embed').
- Initialisers: token embedding N(0, 1); attention kernels variance-scaling(1, fan_in, normal)
  with the query kernel further divided by sqrt(head_dim), because T5 folds the 1/sqrt(d)
  logit scaling into the initialiser instead of scaling q·k; MLP and output kernels
  variance-scaling(1, fan_in, truncated normal); relative position tables
  variance-scaling(1, fan_avg, uniform); norm scales ones.
- Dropout masks are shared across the length axis (`broadcast_dims=(-2,)`), T5's convention,
  which the paper's T5X runs used.
- Numerics: by default the attention softmax and RMSNorm's scaling run in float32 whatever
  the compute dtype; `MultiHeadAttention.float32_softmax=False` and
  `RMSNorm.scale_in_float32=False` are T5X's conventions instead (see
  `ptjf.models.config.T5X_NUMERICS`). Relative position buckets are exact integer
  comparisons, the same on every device.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ptjf.errors import ConfigError

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    # tanh approximation, as T5.1.1/mT5 (and flax's default).
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}

# Large enough to zero a softmax weight, small enough to stay finite in bfloat16.
_MASK_VALUE = -1e10

embedding_init = nn.initializers.normal(stddev=1.0)
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
dense_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function called `name` in `TransformerConfig.mlp_activations`."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown MLP activation {name!r}; expected one of {sorted(_ACTIVATIONS)}."
        ) from None


def _scaled(init: nn.initializers.Initializer, factor: float) -> nn.initializers.Initializer:
    def scaled_init(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * factor

    return scaled_init


class RMSNorm(nn.Module):
    """T5's LayerNorm: x / rms(x) * scale, no mean subtraction and no bias.

    rms(x) is computed in float32. `scale_in_float32=True` (ptjf) also multiplies by the scale
    in float32 and casts the product to `dtype`; False (T5X) casts x / rms(x) to `dtype` first
    and multiplies by the scale cast to `dtype`, one more rounding when `dtype` is bfloat16.
    """

    dtype: jnp.dtype = jnp.float32
    epsilon: float = 1e-6
    scale_in_float32: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            jnp.float32,
        )
        x = x.astype(jnp.float32)
        y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        if self.scale_in_float32:
            return (y * scale).astype(self.dtype)
        return y.astype(self.dtype) * scale.astype(self.dtype)


class Dense(nn.Module):
    """A bias-free projection of the last axis with a logically named float32 kernel."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = dense_kernel_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
    """Token embedding ('vocab', 'embed'), shared by encoder, decoder and tied logits."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, tokens: Array) -> Array:
        # A gather rather than T5X's one-hot matmul: the one-hot [batch, length, vocab] tensor
        # costs too much memory on GPUs at mT5's 250k vocabulary.
        x = jnp.take(self.embedding, tokens.astype(jnp.int32), axis=0).astype(self.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend(self, x: Array) -> Array:
        """Logits against every embedding row, in float32 for a stable softmax."""
        return jnp.dot(x.astype(jnp.float32), self.embedding.T)


class Mlp(nn.Module):
    """Feed-forward block: one `wi` per activation, multiplied (gated when >1), then `wo`."""

    mlp_dim: int
    activations: tuple[str, ...]
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        gated = len(self.activations) > 1
        branches = [
            activation(act)(
                Dense(
                    self.mlp_dim,
                    ("embed", "mlp"),
                    dtype=self.dtype,
                    name=f"wi_{i}" if gated else "wi",
                )(x)
            )
            for i, act in enumerate(self.activations)
        ]
        h = functools.reduce(operator.mul, branches)
        h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


@functools.cache
def log_bucket_thresholds(num_buckets: int, max_exact: int, max_distance: int) -> tuple[int, ...]:
    """The smallest distance of each log-spaced bucket max_exact + k, k >= 1, in order.

    T5 puts a distance n >= max_exact in bucket max_exact + floor(span · log(n / max_exact) /
    log(max_distance / max_exact)) (span = num_buckets − max_exact), capped at num_buckets − 1.
    In exact arithmetic n reaches offset k when (n / max_exact)^span >= (max_distance /
    max_exact)^k, i.e. n^span · max_exact^k >= max_distance^k · max_exact^span: a comparison of
    Python integers, so distances that sit exactly on a boundary (16, 32 and 64 with T5's
    encoder settings) land in the same bucket on every host and device, whatever its `log`
    rounds to.
    """
    span = num_buckets - max_exact

    def reaches(n: int, k: int) -> bool:
        return n**span * max_exact**k >= max_distance**k * max_exact**span

    thresholds = []
    for k in range(1, span):
        # A float guess, then exact integer steps to the smallest n that reaches k.
        guess = max(max_exact, int(max_exact * (max_distance / max_exact) ** (k / span)))
        while guess > max_exact and reaches(guess - 1, k):
            guess -= 1
        while not reaches(guess, k):
            guess += 1
        thresholds.append(guess)
    return tuple(thresholds)


def relative_position_bucket(
    relative_position: Array,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Array:
    """T5's bucket of `relative_position` = key position − query position.

    Bidirectional (encoder): half the buckets for keys before the query, half for keys after.
    Unidirectional (decoder): future keys share bucket 0. Within a direction, the first half of
    the buckets holds distances 0..n/2−1 exactly and the rest cover distances up to
    `max_distance` on a log scale; farther keys share the last bucket. The log-scale bucket is
    found by comparing the integer distance with thresholds computed exactly on the host
    (`log_bucket_thresholds`), never with a device `log`.
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    offset = jnp.zeros_like(relative_position)
    distance = -relative_position  # how far back the key is
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(distance < 0, num_buckets, 0)
        distance = jnp.abs(distance)
    else:
        distance = jnp.maximum(distance, 0)
    max_exact = num_buckets // 2
    log_bucket = jnp.full_like(distance, max_exact)
    for threshold in log_bucket_thresholds(num_buckets, max_exact, max_distance):
        log_bucket = log_bucket + (distance >= threshold).astype(distance.dtype)
    return offset + jnp.where(distance < max_exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """Per-head learned attention bias indexed by the relative-position bucket."""

    num_heads: int
    num_buckets: int
    max_distance: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, query_positions: Array, key_positions: Array, *, bidirectional: bool
    ) -> Array:
        """Positions are [batch or 1, q_len] and [batch or 1, k_len]; returns
        [batch or 1, heads, q_len, k_len]. Passing each packed segment's own positions keeps
        the bias identical to the unpacked example's."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            jnp.float32,
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(
            relative,
            bidirectional=bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = jnp.take(table, buckets, axis=1)  # [heads, batch, q, k]
        return jnp.moveaxis(bias, 0, 1).astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention with an optional decoder key/value cache.

    With `decode=True` the first call (no cache yet, full-length inputs) only creates the
    `cache` variables `cached_key`/`cached_value` [batch, max_length, heads, head_dim]; later
    calls take one query position, write its key/value at `decode_index` and attend to the
    cached positions <= `decode_index`.

    `float32_logits` computes q·k (and adds the mask and bias) in float32 rather than `dtype`;
    `float32_softmax` takes the softmax in float32 even when the logits are in `dtype` (ptjf),
    False takes it in the logits' dtype (T5X).
    """

    num_heads: int
    head_dim: int
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32
    float32_logits: bool = True
    float32_softmax: bool = True

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array | None = None,
        bias: Array | None = None,
        *,
        deterministic: bool,
        decode: bool = False,
        decode_index: Array | None = None,
    ) -> Array:
        joined = self.num_heads * self.head_dim
        query_init = _scaled(attention_kernel_init, 1.0 / math.sqrt(self.head_dim))

        def project(x: Array, name: str, init: nn.initializers.Initializer) -> Array:
            y = Dense(joined, ("embed", "joined_kv"), self.dtype, init, name=name)(x)
            y = y.reshape(*y.shape[:-1], self.num_heads, self.head_dim)
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        query = project(inputs_q, "query", query_init)
        key = project(inputs_kv, "key", attention_kernel_init)
        value = project(inputs_kv, "value", attention_kernel_init)

        if decode:
            key, value, mask = self._use_cache(key, value, mask, decode_index)

        if self.float32_logits:
            query, key = query.astype(jnp.float32), key.astype(jnp.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
        if mask is not None:
            logits = logits + jnp.where(mask, 0.0, _MASK_VALUE).astype(logits.dtype)
        if bias is not None:
            logits = logits + bias.astype(logits.dtype)
        if self.float32_softmax:
            logits = logits.astype(jnp.float32)
        weights = jax.nn.softmax(logits).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            weights, deterministic=deterministic
        )
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(self.dtype))
        out = out.reshape(*out.shape[:-2], joined)
        return Dense(
            inputs_q.shape[-1],
            ("joined_kv", "embed"),
            self.dtype,
            attention_kernel_init,
            name="out",
        )(out)

    def _use_cache(
        self, key: Array, value: Array, mask: Array | None, decode_index: Array | None
    ) -> tuple[Array, Array, Array | None]:
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized:
            return key, value, mask
        max_length = cached_key.value.shape[1]
        if key.shape[1] != 1:
            raise ConfigError(
                f"Cached decoding feeds one position per step, got {key.shape[1]} positions "
                f"(key shape {key.shape}). Create the cache with a full-length call first."
            )
        if decode_index is None:
            raise ConfigError("Cached decoding needs `decode_index`, the position being decoded.")
        start = (0, decode_index, 0, 0)
        cached_key.value = lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = lax.dynamic_update_slice(cached_value.value, value, start)
        seen = (jnp.arange(max_length) <= decode_index)[None, None, None, :]
        mask = seen if mask is None else jnp.logical_and(mask, seen)
        return cached_key.value, cached_value.value, mask


# ----------------------------------------------------------------------------------------------
# Masks: boolean [batch, 1, q_len, k_len], True where attention is allowed.
# ----------------------------------------------------------------------------------------------


def pairwise_mask(
    query_values: Array, key_values: Array, fn: Callable[[Array, Array], Array]
) -> Array:
    """fn(query_values[b, q], key_values[b, k]) as a [batch, 1, q, k] boolean mask."""
    return fn(query_values[:, None, :, None], key_values[:, None, None, :]).astype(bool)


def padding_mask(query_tokens: Array, key_tokens: Array) -> Array:
    """Both positions hold a real token (token id 0 is padding)."""
    return pairwise_mask(query_tokens > 0, key_tokens > 0, jnp.logical_and)


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
    """Both positions belong to the same packed example."""
    return pairwise_mask(query_segments, key_segments, jnp.equal)


def causal_mask(length: int) -> Array:
    """Query i may attend to keys 0..i; [1, 1, length, length]."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given masks (None entries are skipped)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    return functools.reduce(jnp.logical_and, present)

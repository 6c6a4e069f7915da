"""The pre-LayerNorm encoder–decoder Transformer (T5.1.1 / mT5 and the paper's NMT model).

Inputs are the features of SeqIO's `EncDecFeatureConverter`, packed or not: token id 0 is
padding; `*_segment_ids` (1, 2, … per packed example, 0 for padding) stop attention across
packed examples, and `*_positions` restart at 0 in each example so the relative position bias
sees each example as if it were alone.

Parameter tree (T5X minimal-T5 names, so a T5X checkpoint can be mapped onto it):

    token_embedder/embedding                                    (vocab, embed)
    encoder/layers_{i}/pre_attention_layer_norm/scale           (embed,)
    encoder/layers_{i}/attention/{query,key,value}/kernel       (embed, joined_kv)
    encoder/layers_{i}/attention/out/kernel                     (joined_kv, embed)
    encoder/layers_{i}/pre_mlp_layer_norm/scale                 (embed,)
    encoder/layers_{i}/mlp/{wi_0,wi_1 | wi}/kernel              (embed, mlp)
    encoder/layers_{i}/mlp/wo/kernel                            (mlp, embed)
    encoder/layers_{i}/relpos_bias/rel_embedding                (heads, relpos_buckets)
    encoder/encoder_norm/scale
    decoder/layers_{i}/pre_self_attention_layer_norm/scale
    decoder/layers_{i}/self_attention/{query,key,value,out}/kernel
    decoder/layers_{i}/pre_cross_attention_layer_norm/scale
    decoder/layers_{i}/encoder_decoder_attention/{query,key,value,out}/kernel
    decoder/layers_{i}/pre_mlp_layer_norm/scale
    decoder/layers_{i}/mlp/...
    decoder/layers_{i}/relpos_bias/rel_embedding
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                                 (embed, vocab), untied only

With `share_relpos_bias=True` the per-layer `relpos_bias` tables are replaced by one at
`encoder/relpos_bias` and one at `decoder/relpos_bias` (T5X's layout); the default, False, is
the paper's mT5 variant (appendix B).

`TransformerConfig.remat_policy` wraps every encoder and decoder layer in `nn.remat` with the
matching JAX checkpoint policy. The wrapped layer keeps its name, so the tree above (and the
`cache` collection) is the same under every policy.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjf.errors import ConfigError, DataError
from ptjf.models import layers
from ptjf.models.config import TransformerConfig

Array = layers.Array


def _default_positions(length: int) -> Array:
    return jnp.arange(length, dtype=jnp.int32)[None, :]


def _relpos(cfg: TransformerConfig, name: str = "relpos_bias") -> layers.RelativePositionBias:
    return layers.RelativePositionBias(
        num_heads=cfg.num_heads,
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
        dtype=jnp.dtype(cfg.dtype),
        name=name,
    )


def _attention(cfg: TransformerConfig, name: str) -> layers.MultiHeadAttention:
    return layers.MultiHeadAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dropout_rate=cfg.dropout_rate,
        dtype=jnp.dtype(cfg.dtype),
        float32_logits=cfg.float32_attention_logits,
        float32_softmax=cfg.float32_attention_softmax,
        name=name,
    )


# JAX policy of each `config.REMAT_POLICIES` entry other than 'none' (which skips `nn.remat`).
CHECKPOINT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@functools.cache
def _layer_class(layer: type[nn.Module], policy: str, static_argnums: tuple[int, ...]) -> type:
    """`layer`, or its `nn.remat` version under `policy` (built once per pair).

    `static_argnums` index `__call__`'s arguments counting `self` as 0, as `nn.remat` does;
    they are the Python booleans the layer branches on, which must not become tracers.
    """
    if policy == "none":
        return layer
    return nn.remat(
        layer, policy=CHECKPOINT_POLICIES[policy], static_argnums=static_argnums, prevent_cse=True
    )


class _Sublayers(nn.Module):
    """Shared helpers of encoder and decoder layers (pre-LN residual branches)."""

    config: TransformerConfig

    def _dropout(self, x: Array, deterministic: bool) -> Array:
        return nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(
            x, deterministic=deterministic
        )

    def _norm(self, name: str) -> layers.RMSNorm:
        return layers.RMSNorm(
            dtype=jnp.dtype(self.config.dtype),
            scale_in_float32=self.config.norm_scale_in_float32,
            name=name,
        )

    def _mlp_branch(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        y = self._norm("pre_mlp_layer_norm")(x)
        y = layers.Mlp(
            cfg.mlp_dim,
            cfg.mlp_activations,
            cfg.dropout_rate,
            dtype=jnp.dtype(cfg.dtype),
            name="mlp",
        )(y, deterministic=deterministic)
        return x + self._dropout(y, deterministic)

    def _bias(self, shared: Array | None, q_pos: Array, k_pos: Array, bidirectional: bool):
        if shared is not None:
            return shared
        return _relpos(self.config)(q_pos, k_pos, bidirectional=bidirectional)


class EncoderLayer(_Sublayers):
    """Self-attention then MLP, each as x + dropout(f(norm(x)))."""

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        positions: Array,
        shared_bias: Array | None,
        deterministic: bool,
    ) -> Array:
        bias = self._bias(shared_bias, positions, positions, bidirectional=True)
        y = self._norm("pre_attention_layer_norm")(x)
        y = _attention(self.config, "attention")(y, y, mask, bias, deterministic=deterministic)
        x = x + self._dropout(y, deterministic)
        x = self._mlp_branch(x, deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(_Sublayers):
    """Causal self-attention, encoder–decoder attention, then MLP (pre-LN residuals)."""

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: Array | None,
        cross_mask: Array | None,
        query_positions: Array,
        key_positions: Array,
        shared_bias: Array | None,
        deterministic: bool,
        decode: bool,
        decode_index: Array | None,
    ) -> Array:
        bias = self._bias(shared_bias, query_positions, key_positions, bidirectional=False)
        y = self._norm("pre_self_attention_layer_norm")(x)
        y = _attention(self.config, "self_attention")(
            y,
            y,
            self_mask,
            bias,
            deterministic=deterministic,
            decode=decode,
            decode_index=decode_index,
        )
        x = x + self._dropout(y, deterministic)

        y = self._norm("pre_cross_attention_layer_norm")(x)
        y = _attention(self.config, "encoder_decoder_attention")(
            y, encoded, cross_mask, None, deterministic=deterministic
        )
        x = x + self._dropout(y, deterministic)
        x = self._mlp_branch(x, deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(_Sublayers):
    """Embedding → dropout → encoder layers → final norm → dropout."""

    embedder: layers.Embed

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        mask: Array | None,
        positions: Array | None,
        deterministic: bool,
    ) -> Array:
        cfg = self.config
        if positions is None:
            positions = _default_positions(tokens.shape[1])
        shared_bias = None
        if cfg.share_relpos_bias:
            shared_bias = _relpos(cfg)(positions, positions, bidirectional=True)
        x = self._dropout(self.embedder(tokens), deterministic)
        # Arguments are positional so that `deterministic` (index 5 with self) stays static.
        layer = _layer_class(EncoderLayer, cfg.remat_policy, static_argnums=(5,))
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layers_{i}")(x, mask, positions, shared_bias, deterministic)
        x = self._norm("encoder_norm")(x)
        return self._dropout(x, deterministic)


class Decoder(_Sublayers):
    """Embedding → dropout → decoder layers → final norm → dropout → float32 logits.

    In cached decoding the decoder keeps `cache/cache_index`, the position being decoded, and
    every self-attention layer keeps its keys/values (see `layers.MultiHeadAttention`).
    """

    embedder: layers.Embed

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        tokens: Array,
        self_mask: Array | None,
        cross_mask: Array | None,
        positions: Array | None,
        deterministic: bool,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        cfg = self.config
        decode_index = None
        if positions is None:
            positions = _default_positions(tokens.shape[1])
        query_positions = key_positions = positions
        if decode:
            stepping = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            if stepping:
                if max_decode_length is None:
                    raise ConfigError(
                        "Cached decoding steps need `max_decode_length` (the cache length) "
                        "to compute the relative position bias; pass the value used to "
                        "create the cache."
                    )
                decode_index = index.value
                query_positions = decode_index.reshape(1, 1)
                key_positions = _default_positions(max_decode_length)
                index.value = decode_index + 1
            else:
                # The cache-creating call runs the plain causal decoder over the full length.
                self_mask = layers.causal_mask(tokens.shape[1])
                if max_decode_length not in (None, tokens.shape[1]):
                    raise ConfigError(
                        f"max_decode_length={max_decode_length} differs from the length "
                        f"{tokens.shape[1]} of the cache-creating call; they must match."
                    )

        shared_bias = None
        if cfg.share_relpos_bias:
            shared_bias = _relpos(cfg)(query_positions, key_positions, bidirectional=False)

        y = self._dropout(self.embedder(tokens), deterministic)
        # Cached decoding has no backward pass, so it runs the plain layers: remat would only
        # add a lifted transform around the cache updates. Training and teacher-forced
        # evaluation use the policy; `deterministic` and `decode` (indices 8 and 9 with self)
        # stay static, which needs the positional call below.
        policy = "none" if decode else cfg.remat_policy
        layer = _layer_class(DecoderLayer, policy, static_argnums=(8, 9))
        for i in range(cfg.num_decoder_layers):
            y = layer(cfg, name=f"layers_{i}")(
                y,
                encoded,
                self_mask,
                cross_mask,
                query_positions,
                key_positions,
                shared_bias,
                deterministic,
                decode,
                decode_index,
            )
        y = self._norm("decoder_norm")(y)
        y = self._dropout(y, deterministic)

        if cfg.logits_via_embedding:
            # T5 rescales tied logits: the embedding is N(0, 1), so y·e grows like sqrt(d).
            logits = self.embedder.attend(y) / jnp.sqrt(jnp.float32(cfg.emb_dim))
        else:
            logits = layers.Dense(
                cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, name="logits_dense"
            )(y)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def _check_tokens(name: str, tokens: Array) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise DataError(
            f"{name} must be an integer array [batch, length], got shape {tokens.shape} and "
            f"dtype {tokens.dtype}. Feed the output of seqio's EncDecFeatureConverter."
        )


def _check_same_shape(name: str, value: Array | None, tokens_name: str, tokens: Array) -> None:
    if value is not None and value.shape != tokens.shape:
        raise DataError(
            f"{name} has shape {value.shape} but {tokens_name} has shape {tokens.shape}; "
            f"packing features must align with their tokens."
        )


class EncoderDecoder(nn.Module):
    """Encoder–decoder Transformer; `__call__` returns float32 logits [batch, length, vocab]."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = layers.Embed(
            cfg.vocab_size, cfg.emb_dim, dtype=jnp.dtype(cfg.dtype), name="token_embedder"
        )
        self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
        self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
    ) -> Array:
        """Encoder output [batch, length, emb_dim] in the compute dtype."""
        _check_tokens("encoder_input_tokens", encoder_input_tokens)
        for name, value in (
            ("encoder_segment_ids", encoder_segment_ids),
            ("encoder_positions", encoder_positions),
        ):
            _check_same_shape(name, value, "encoder_input_tokens", encoder_input_tokens)
        mask = layers.padding_mask(encoder_input_tokens, encoder_input_tokens)
        if encoder_segment_ids is not None:
            mask = jnp.logical_and(
                mask, layers.segment_mask(encoder_segment_ids, encoder_segment_ids)
            )
        return self.encoder(
            encoder_input_tokens, mask, encoder_positions, deterministic=not enable_dropout
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Decoder logits given the encoder output (`encoder_input_tokens` only for masks).

        `decode=True` runs the cached, one-position-per-step mode used by `greedy_decode`:
        the first call with full-length `decoder_input_tokens` creates the cache; each later
        call takes [batch, 1] tokens. Packing is not supported while decoding.
        """
        _check_tokens("decoder_input_tokens", decoder_input_tokens)
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ConfigError(
                    "Cached decoding does not support packed inputs; pass no segment ids."
                )
            self_mask = None  # the decoder's cache supplies it
            cross_mask = layers.padding_mask(
                jnp.ones_like(decoder_input_tokens), encoder_input_tokens
            )
        else:
            if decoder_target_tokens is None:
                raise DataError("decoder_target_tokens is required unless decode=True.")
            _check_same_shape(
                "decoder_target_tokens",
                decoder_target_tokens,
                "decoder_input_tokens",
                decoder_input_tokens,
            )
            for name, value in (
                ("decoder_segment_ids", decoder_segment_ids),
                ("decoder_positions", decoder_positions),
            ):
                _check_same_shape(name, value, "decoder_input_tokens", decoder_input_tokens)
            if (encoder_segment_ids is None) != (decoder_segment_ids is None):
                raise DataError(
                    "Packed inputs need both encoder_segment_ids and decoder_segment_ids; "
                    f"got encoder_segment_ids={'set' if encoder_segment_ids is not None else None}"
                    f", decoder_segment_ids={'set' if decoder_segment_ids is not None else None}."
                )
            self_mask = layers.combine_masks(
                layers.causal_mask(decoder_target_tokens.shape[1]),
                layers.padding_mask(decoder_target_tokens, decoder_target_tokens),
                None
                if decoder_segment_ids is None
                else layers.segment_mask(decoder_segment_ids, decoder_segment_ids),
            )
            cross_mask = layers.combine_masks(
                layers.padding_mask(decoder_target_tokens, encoder_input_tokens),
                None
                if encoder_segment_ids is None
                else layers.segment_mask(decoder_segment_ids, encoder_segment_ids),
            )
        return self.decoder(
            encoded,
            decoder_input_tokens,
            self_mask,
            cross_mask,
            None if decode else decoder_positions,
            deterministic=not enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Teacher-forced logits [batch, decoder length, vocab] in float32."""
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids,
            encoder_positions,
            enable_dropout=enable_dropout,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

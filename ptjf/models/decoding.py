"""Greedy decoding with the decoder's key/value cache, jitted as one `lax.while_loop`.

T5 convention: decoding starts from token 0 (the decoder's "BOS" is the padding id), each step
feeds the previous output token, and everything after the first EOS is padding (0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ptjf.errors import ConfigError, DataError
from ptjf.models.transformer import EncoderDecoder

Array = jax.Array


def greedy_decode(
    model: EncoderDecoder,
    params,
    encoder_input_tokens: Array,
    max_decode_length: int,
    eos_id: int = 1,
) -> Array:
    """Greedy (argmax) output tokens [batch, max_decode_length], 0 after each row's EOS."""
    if (
        isinstance(max_decode_length, bool)
        or not isinstance(max_decode_length, int)
        or max_decode_length < 1
    ):
        raise ConfigError(
            f"max_decode_length must be a positive integer, got {max_decode_length!r}."
        )
    tokens = jnp.asarray(encoder_input_tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise DataError(
            f"encoder_input_tokens must be an integer array [batch, length], got shape "
            f"{tokens.shape} and dtype {tokens.dtype}."
        )
    # eos_id is traced, not static, so decoding with another EOS reuses the compiled loop.
    return _greedy(model, max_decode_length, params, tokens, jnp.int32(eos_id))


def init_decoder_cache(
    model: EncoderDecoder, params, encoded: Array, encoder_tokens: Array, max_length: int
):
    """An empty `cache` collection for `max_length` decoding steps (zeros, index 0).

    The shapes come from tracing, not running, the cache-creating call of
    `EncoderDecoder.decode`. Feed it to `model.apply(..., decode=True, mutable=["cache"])`
    one [batch, 1] token at a time.
    """

    def create(params, encoded, encoder_tokens):
        batch = encoder_tokens.shape[0]
        _, variables = model.apply(
            {"params": params},
            encoded,
            encoder_tokens,
            jnp.zeros((batch, max_length), jnp.int32),
            enable_dropout=False,
            decode=True,
            max_decode_length=max_length,
            mutable=["cache"],
            method=EncoderDecoder.decode,
        )
        return variables["cache"]

    shapes = jax.eval_shape(create, params, encoded, encoder_tokens)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _greedy(model: EncoderDecoder, max_length: int, params, encoder_tokens, eos_id):
    batch = encoder_tokens.shape[0]
    encoded = model.apply(
        {"params": params}, encoder_tokens, enable_dropout=False, method=EncoderDecoder.encode
    )
    cache = init_decoder_cache(model, params, encoded, encoder_tokens, max_length)

    def keep_going(state):
        step, _, _, done, _ = state
        return (step < max_length) & ~jnp.all(done)

    def one_step(state):
        step, cache, previous, done, out = state
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            encoded,
            encoder_tokens,
            previous[:, None],
            enable_dropout=False,
            decode=True,
            max_decode_length=max_length,
            mutable=["cache"],
            method=EncoderDecoder.decode,
        )
        token = jnp.argmax(logits[:, 0, :], axis=-1).astype(jnp.int32)
        token = jnp.where(done, 0, token)
        out = out.at[:, step].set(token)
        return step + 1, variables["cache"], token, done | (token == eos_id), out

    state = (
        jnp.int32(0),
        cache,
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch, max_length), jnp.int32),
    )
    return jax.lax.while_loop(keep_going, one_step, state)[-1]

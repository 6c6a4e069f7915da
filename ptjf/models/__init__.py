"""The encoder–decoder Transformer: config and presets, modules, initialisation, decoding.

Decoding: `greedy_decode` and `beam_search` (the paper's BLEU decoder, App. A.5), both over
the decoder's key/value cache.

`param_logical_axes` and `init_params` are what the trainer and the partitioning code call:
the first gives, for every parameter, a `PartitionSpec` of logical axis names (mapped to mesh
axes by rules elsewhere); the second gives a plain (unboxed) float32 parameter dict.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjf.errors import ConfigError
from ptjf.models.config import (
    KNOWN_ACTIVATIONS,
    PRESET_NAMES,
    T5X_NUMERICS,
    TransformerConfig,
    count_params,
    preset,
    with_t5x_numerics,
    with_vocab_size,
)
from ptjf.models.decoding import (
    beam_search,
    beam_search_loop,
    gather_beams,
    greedy_decode,
    init_decoder_cache,
    length_penalty,
)
from ptjf.models.layers import relative_position_bucket
from ptjf.models.transformer import Decoder, Encoder, EncoderDecoder

__all__ = [
    "KNOWN_ACTIVATIONS",
    "PRESET_NAMES",
    "T5X_NUMERICS",
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "TransformerConfig",
    "beam_search",
    "beam_search_loop",
    "count_params",
    "gather_beams",
    "greedy_decode",
    "init_decoder_cache",
    "init_params",
    "length_penalty",
    "param_logical_axes",
    "preset",
    "relative_position_bucket",
    "with_t5x_numerics",
    "with_vocab_size",
]

# Parameter shapes do not depend on sequence lengths, so a [1, 2] dummy batch initialises all.
_DUMMY_SHAPE = (1, 2)


def _boxed_init(model: EncoderDecoder, rng: jax.Array):
    tokens = jnp.ones(_DUMMY_SHAPE, jnp.int32)
    return model.init(rng, tokens, tokens, tokens, enable_dropout=False)


def param_logical_axes(model: EncoderDecoder, config: TransformerConfig | None = None):
    """Pytree matching the params with a `PartitionSpec` of logical axis names per leaf.

    Traced with `jax.eval_shape`, so it costs no memory even for mT5-XXL. `config`, when
    given, must be the model's (kept in the signature for call sites that hold both).
    """
    if config is not None and config != model.config:
        raise ConfigError(
            "param_logical_axes got a config that differs from model.config; pass the model's "
            "own config (or none)."
        )
    boxed = jax.eval_shape(functools.partial(_boxed_init, model), jax.random.key(0))
    return nn.get_partition_spec(boxed)["params"]


def init_params(config: TransformerConfig, rng: jax.Array):
    """Freshly initialised float32 parameters of `EncoderDecoder(config)`, unboxed."""
    model = EncoderDecoder(config)
    boxed = jax.jit(functools.partial(_boxed_init, model))(rng)
    return nn.unbox(boxed)["params"]

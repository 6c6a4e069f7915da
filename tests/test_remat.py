"""Tests for `TransformerConfig.remat_policy`: same parameters, same numbers, real checkpointing.

Rematerialisation must change only what the backward pass stores, never the model: every
policy is checked against 'none' on the tiny preset (one layer per stack where it compiles)
for the parameter tree, logits, gradients (with and without dropout) and cached decoding, and
for the checkpoint primitives it inserts.
"""

from __future__ import annotations

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjf.errors import ConfigError
from ptjf.models import (
    PRESET_NAMES,
    EncoderDecoder,
    TransformerConfig,
    beam_search,
    greedy_decode,
    init_params,
    preset,
)
from ptjf.models.config import REMAT_POLICIES
from ptjf.models.transformer import CHECKPOINT_POLICIES

VOCAB = 64
BASE = preset("tiny", VOCAB)
# Compiling is most of these tests' time, so the numerical ones run one layer per stack.
SMALL = dataclasses.replace(BASE, num_encoder_layers=1, num_decoder_layers=1)
REMATTED = [p for p in REMAT_POLICIES if p != "none"]

ENC = np.array([[11, 12, 13, 1, 0, 0, 0, 0], [14, 15, 16, 17, 18, 19, 2, 1]], np.int32)
TGT = np.array([[21, 22, 1, 0, 0, 0], [23, 24, 25, 26, 27, 1]], np.int32)
BATCH = {
    "encoder_input_tokens": jnp.asarray(ENC),
    "decoder_input_tokens": jnp.asarray(np.pad(TGT, ((0, 0), (1, 0)))[:, :-1]),
    "decoder_target_tokens": jnp.asarray(TGT),
}


def model(policy: str, base: TransformerConfig = SMALL, **changes) -> EncoderDecoder:
    return EncoderDecoder(dataclasses.replace(base, remat_policy=policy, **changes))


@functools.cache
def params(shared_bias: bool = False):
    return init_params(dataclasses.replace(SMALL, share_relpos_bias=shared_bias), jax.random.key(0))


def loss(m: EncoderDecoder, p, dropout_rng: jax.Array | None = None):
    """Token cross-entropy over real target positions, and the logits (as aux)."""
    logits = m.apply(
        {"params": p},
        **BATCH,
        enable_dropout=dropout_rng is not None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng},
    )
    logp = jax.nn.log_softmax(logits)
    target = jnp.take_along_axis(logp, BATCH["decoder_target_tokens"][..., None], -1)[..., 0]
    weights = (BATCH["decoder_target_tokens"] > 0).astype(jnp.float32)
    return -jnp.sum(target * weights) / jnp.sum(weights), logits


@functools.partial(jax.jit, static_argnums=0)
def logits_and_grads(m: EncoderDecoder, p, dropout_rng=None):
    """One compilation gives both the forward logits and the gradients of `loss`."""
    grads, logits = jax.grad(functools.partial(loss, m), has_aux=True)(p, dropout_rng)
    return logits, grads


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(tree)}


def checkpoint_policies_in(jaxpr: jax.extend.core.ClosedJaxpr) -> list:
    names = ("checkpoint", "remat")
    return [e.params["policy"] for e in jaxpr.jaxpr.eqns if e.primitive.name.startswith(names)]


# ----------------------------------------------------------------------------------------------
# The config field
# ----------------------------------------------------------------------------------------------


def test_every_policy_other_than_none_has_a_jax_policy():
    assert REMAT_POLICIES[0] == "none"
    assert set(CHECKPOINT_POLICIES) == set(REMATTED)
    assert CHECKPOINT_POLICIES["full"] is jax.checkpoint_policies.nothing_saveable
    assert CHECKPOINT_POLICIES["dots"] is jax.checkpoint_policies.checkpoint_dots
    assert (
        CHECKPOINT_POLICIES["minimal"] is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    )


def test_default_is_none_in_the_config_and_every_preset():
    assert TransformerConfig(vocab_size=VOCAB).remat_policy == "none"
    assert {preset(name, VOCAB).remat_policy for name in PRESET_NAMES} == {"none"}


@pytest.mark.parametrize("bad", ["everything", "Full", "", None])
def test_unknown_policy_is_refused_with_the_choices(bad):
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(BASE, remat_policy=bad)
    message = str(err.value)
    assert f"got {bad!r}" in message
    assert all(repr(name) in message for name in REMAT_POLICIES)


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_policy_binds_through_gin(clean_gin):
    gin.parse_config("TransformerConfig.remat_policy = 'full'")
    config = TransformerConfig(vocab_size=VOCAB)
    assert config.remat_policy == "full"
    assert config == dataclasses.replace(TransformerConfig(vocab_size=VOCAB), remat_policy="full")
    gin.parse_config("TransformerConfig.remat_policy = 'everything'")
    with pytest.raises(ConfigError, match="'everything'"):
        TransformerConfig(vocab_size=VOCAB)


# ----------------------------------------------------------------------------------------------
# Same model under every policy
# ----------------------------------------------------------------------------------------------


def shapes(config: TransformerConfig) -> dict[str, tuple[tuple[int, ...], jnp.dtype]]:
    tree = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
    return {k: (v.shape, v.dtype) for k, v in jax.tree.leaves_with_path(tree)}


@pytest.mark.parametrize("policy", REMATTED)
def test_parameter_tree_matches_none(policy):
    # Same paths, shapes and dtypes: a checkpoint saved under one policy restores under any.
    got = shapes(dataclasses.replace(BASE, remat_policy=policy))
    assert got == shapes(BASE)
    assert len(got) == 4 + 2 * 10 + 2 * 15  # top level, 2 encoder and 2 decoder layers


@pytest.mark.parametrize("policy", REMATTED)
def test_logits_and_gradients_match_none(policy):
    logits, grads = logits_and_grads(model(policy), params())
    ref_logits, ref_grads = logits_and_grads(model("none"), params())
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0)
    got, want = flat(grads), flat(ref_grads)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0, err_msg=key)
    assert max(np.abs(g).max() for g in want.values()) > 1e-2  # the loss has real gradients


def test_full_remat_matches_none_with_dropout_and_a_shared_bias():
    # The recomputed forward pass must draw the stored pass's dropout masks, so a run switched
    # to remat trains exactly as before; the shared bias enters each layer as an argument.
    rng, p = jax.random.key(3), params(shared_bias=True)
    logits, grads = logits_and_grads(model("full", share_relpos_bias=True), p, rng)
    ref_logits, ref_grads = logits_and_grads(model("none", share_relpos_bias=True), p, rng)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0)
    got, want = flat(grads), flat(ref_grads)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0, err_msg=key)
    assert "['decoder']['relpos_bias']['rel_embedding']" in want
    other, _ = logits_and_grads(model("none", share_relpos_bias=True), p, jax.random.key(4))
    assert np.abs(np.asarray(ref_logits) - np.asarray(other)).max() > 1e-2  # dropout acted


# ----------------------------------------------------------------------------------------------
# Checkpointing really happens, with the chosen policy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_each_layer_is_checkpointed_with_the_policy(policy):
    m = model(policy, base=BASE)
    p = jax.eval_shape(functools.partial(init_params, BASE), jax.random.key(0))
    forward = jax.make_jaxpr(lambda p: m.apply({"params": p}, **BATCH, enable_dropout=False))
    found = checkpoint_policies_in(forward(p))
    if policy == "none":
        assert found == []
    else:
        layers = BASE.num_encoder_layers + BASE.num_decoder_layers
        assert len(found) == layers
        assert all(f is CHECKPOINT_POLICIES[policy] for f in found)

    gradient = str(jax.make_jaxpr(jax.grad(functools.partial(loss, m), has_aux=True))(p))
    assert ("remat" in gradient or "checkpoint" in gradient) == (policy != "none")


# ----------------------------------------------------------------------------------------------
# Cached decoding
# ----------------------------------------------------------------------------------------------


def test_decoding_under_full_remat_gives_the_same_tokens():
    enc = jnp.asarray(ENC)
    np.testing.assert_array_equal(
        greedy_decode(model("full"), params(), enc, 6, eos_id=-1),
        greedy_decode(model("none"), params(), enc, 6, eos_id=-1),
    )
    tokens, scores = beam_search(model("full"), params(), enc, 6, beam_size=3, eos_id=-1)
    ref_tokens, ref_scores = beam_search(model("none"), params(), enc, 6, beam_size=3, eos_id=-1)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6, rtol=0)
    assert tokens.shape == (2, 6) and np.asarray(tokens).any()

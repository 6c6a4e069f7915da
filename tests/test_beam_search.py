"""Tests for beam search: greedy at beam 1, exact scores, a case greedy gets wrong, errors.

The model tests run the `tiny` preset with random parameters; the hand-made cases drive
`beam_search_loop` with a fixed table of next-token distributions keyed by the whole prefix,
which the fake model reads from its cache (so a cache that is not reordered with the beams
gives a different answer).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjf.errors import ConfigError, DataError
from ptjf.models import (
    EncoderDecoder,
    beam_search,
    beam_search_loop,
    gather_beams,
    greedy_decode,
    init_params,
    length_penalty,
    preset,
)

VOCAB = 64
CFG = preset("tiny", VOCAB)
MODEL = EncoderDecoder(CFG)
LENGTH = 10
ENC = np.random.RandomState(0).randint(2, VOCAB, (4, 7)).astype(np.int32)
ENC[1, 4:] = 0  # a padded input


@functools.cache
def params():
    return init_params(CFG, jax.random.key(0))


@functools.cache
def free_greedy() -> np.ndarray:
    """Greedy outputs with an EOS the model never emits (-1)."""
    return np.asarray(greedy_decode(MODEL, params(), ENC, LENGTH, eos_id=-1))


@jax.jit
def token_log_probs(params, enc, tokens):
    """log p(tokens[t] | prefix) from the full (uncached) decoder, teacher-forced."""
    dec_in = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
    logits = MODEL.apply(
        {"params": params}, enc, dec_in, jnp.ones_like(tokens), enable_dropout=False
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[:, :, None], axis=-1)[:, :, 0]


def rescore(tokens: np.ndarray, eos_id: int, alpha: float) -> np.ndarray:
    """Each row's length-penalised log-probability (EOS included; the whole row if none)."""
    logp = np.asarray(token_log_probs(params(), ENC, jnp.asarray(tokens)))
    out = []
    for row, lp in zip(tokens, logp, strict=True):
        hits = np.flatnonzero(row == eos_id)
        n = hits[0] + 1 if hits.size else len(row)
        out.append(lp[:n].sum() / ((5 + n) / 6) ** alpha)
    return np.array(out)


def emitted_eos() -> int:
    """A token greedy emits at step 1 or 2 of one row but nowhere before in that row."""
    free = free_greedy()
    return next(
        int(free[r, t]) for t in (1, 2) for r in range(len(free)) if free[r, t] not in free[r, :t]
    )


def test_beam_size_one_without_penalty_is_greedy_decoding():
    eos = emitted_eos()
    for eos_id in (-1, eos):
        greedy = np.asarray(greedy_decode(MODEL, params(), ENC, LENGTH, eos_id=eos_id))
        tokens, scores = beam_search(
            MODEL, params(), ENC, LENGTH, beam_size=1, alpha=0.0, eos_id=eos_id
        )
        np.testing.assert_array_equal(np.asarray(tokens), greedy)
        np.testing.assert_allclose(scores, rescore(greedy, eos_id, 0.0), rtol=1e-4)
    # Some rows end early, others run to the full length.
    ends = [(row == eos).any() for row in greedy]
    assert any(ends) and not all(ends)
    ended = greedy[ends.index(True)]
    assert not ended[np.flatnonzero(ended == eos)[0] + 1 :].any()


def test_beam_four_scores_at_least_beam_one_and_reports_its_own_score():
    eos, alpha = emitted_eos(), 0.6
    one, one_scores = beam_search(
        MODEL, params(), ENC, LENGTH, beam_size=1, alpha=alpha, eos_id=eos
    )
    four, four_scores = beam_search(
        MODEL, params(), ENC, LENGTH, beam_size=4, alpha=alpha, eos_id=eos
    )
    one, four = np.asarray(one), np.asarray(four)
    np.testing.assert_allclose(four_scores, rescore(four, eos, alpha), rtol=1e-4)
    np.testing.assert_allclose(one_scores, rescore(one, eos, alpha), rtol=1e-4)
    assert np.all(np.asarray(four_scores) >= rescore(one, eos, alpha) - 1e-5)
    assert (four != one).any()  # the wider beam finds other hypotheses
    for row in four:  # 0 after EOS
        hits = np.flatnonzero(row == eos)
        if hits.size:
            assert not row[hits[0] + 1 :].any()


# --- a hand-made model whose greedy answer is not the best --------------------------------

PAD, EOS, A, B = 0, 1, 2, 3
V = 4
FAKE_LENGTH = 4
# P(next | generated prefix); any other prefix ends (EOS 0.97).
TABLE = {
    (): {A: 0.6, B: 0.4},
    (A,): {A: 0.4, B: 0.3, EOS: 0.3},
    (B,): {B: 0.9, A: 0.05, EOS: 0.05},
    (A, A): {EOS: 0.5, A: 0.25, B: 0.25},
    (B, B): {EOS: 0.9, A: 0.05, B: 0.05},
}


def prefix_code(prefix: tuple[int, ...]) -> int:
    code = 0
    for token in prefix:
        code = code * V + token
    return code


def fake_logits() -> jnp.ndarray:
    """[V ** FAKE_LENGTH, V] log-probabilities indexed by the prefix's base-V code."""
    table = np.tile(np.log([1e-6, 0.97, 0.01, 0.01]), (V**FAKE_LENGTH, 1))
    for prefix, dist in TABLE.items():
        probs = np.full(V, 1e-6)
        for token, p in dist.items():
            probs[token] = p
        table[prefix_code(prefix)] = np.log(probs / probs.sum())
    return jnp.asarray(table, jnp.float32)


def fake_step(cache, tokens):
    """The prefix lives in the cache (as its code); the fed token extends it."""
    code = cache["code"] * V + tokens
    return fake_logits()[code], {"code": code, "index": cache["index"] + 1}


@functools.partial(jax.jit, static_argnums=(0, 1))
def fake_search(batch: int, beam_size: int, alpha):
    cache = {"code": jnp.zeros((batch * beam_size,), jnp.int32), "index": jnp.int32(0)}
    return beam_search_loop(
        fake_step,
        cache,
        batch_size=batch,
        beam_size=beam_size,
        max_decode_length=FAKE_LENGTH,
        alpha=alpha,
        eos_id=EOS,
    )


def normalised(prefix: tuple[int, ...], token: int) -> float:
    return math.exp(float(fake_logits()[prefix_code(prefix), token]))


def test_greedy_is_suboptimal_where_beam_search_finds_the_better_sequence():
    greedy_tokens, greedy_score = fake_search(2, 1, 0.0)
    np.testing.assert_array_equal(greedy_tokens, [[A, A, EOS, PAD]] * 2)
    p_greedy = normalised((), A) * normalised((A,), A) * normalised((A, A), EOS)
    np.testing.assert_allclose(greedy_score, [math.log(p_greedy)] * 2, rtol=1e-5)

    # After step 1 the best two prefixes are (B, B) then (A, A): the beams swap rows, and
    # only a reordered cache still finds (B, B)'s distribution at step 2.
    for alpha in (0.0, 0.6):
        tokens, score = fake_search(2, 2, alpha)
        np.testing.assert_array_equal(tokens, [[B, B, EOS, PAD]] * 2)
        p_best = normalised((), B) * normalised((B,), B) * normalised((B, B), EOS)
        assert p_best > p_greedy + 0.2
        np.testing.assert_allclose(
            score, [math.log(p_best) / ((5 + 3) / 6) ** alpha] * 2, rtol=1e-5
        )


def test_gather_beams_reorders_rows_per_example_and_keeps_scalars():
    tree = {"rows": jnp.arange(12).reshape(6, 2), "index": jnp.int32(7)}
    out = gather_beams(tree, jnp.array([[2, 2, 0], [1, 0, 2]]), batch_size=2, beam_size=3)
    np.testing.assert_array_equal(out["rows"][:, 0], [4, 4, 0, 8, 6, 10])
    assert int(out["index"]) == 7


def test_length_penalty_is_gnmt():
    np.testing.assert_allclose(length_penalty(7, 0.6), 2.0**0.6, rtol=1e-6)
    assert float(length_penalty(3, 0.0)) == 1.0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"beam_size": 0}, ConfigError, "beam_size"),
        ({"beam_size": 2.0}, ConfigError, "beam_size"),
        ({"beam_size": True}, ConfigError, "beam_size"),
        ({"alpha": -0.1}, ConfigError, "alpha"),
        ({"alpha": float("nan")}, ConfigError, "alpha"),
        ({"max_decode_length": 0}, ConfigError, "max_decode_length"),
        ({"encoder_input_tokens": ENC[0]}, DataError, "integer array"),
        ({"encoder_input_tokens": ENC.astype(np.float32)}, DataError, "integer array"),
        ({"encoder_input_tokens": ENC[:0]}, DataError, "at least one"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    call = {"encoder_input_tokens": ENC, "max_decode_length": LENGTH, **kwargs}
    enc, length = call.pop("encoder_input_tokens"), call.pop("max_decode_length")
    with pytest.raises(error, match=match):
        beam_search(MODEL, params(), enc, length, **call)

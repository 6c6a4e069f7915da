"""Greedy and beam-search decoding with the decoder's key/value cache, each one jitted loop.

T5 convention: decoding starts from token 0 (the decoder's "BOS" is the padding id), each step
feeds the previous output token, and everything after the first EOS is padding (0).

Beam search is the paper's evaluation decoder (App. A.5: beam 4, length penalty α = 0.6, T5X's
defaults). A hypothesis of n tokens (its EOS included) with log-probability `log p` scores
`log p / ((5 + n) / 6) ** alpha`, GNMT's length penalty (Wu et al., 2016); α = 0 is no penalty.
The search keeps, per example, `beam_size` alive hypotheses (no EOS yet) and the `beam_size`
best finished ones. A hypothesis that reaches `max_decode_length` without EOS counts as
finished (truncated). Each step expands every alive beam by every token and keeps the best
2 × `beam_size` candidates, so that `beam_size` alive ones remain even if half of them end.
Those among the best `beam_size` that end in EOS join the finished set (an EOS ranked lower
would not have stayed in the beam, so it is dropped, as fairseq does; hence beam_size=1 with
alpha=0 is exactly greedy search), and the best others become the alive set. The loop
stops early once, for every example, no alive beam can beat its worst finished hypothesis:
log-probabilities only fall as a hypothesis grows, so an alive beam's best possible score is
its log-probability over the largest penalty, that of `max_decode_length`.

The search sees the model only through `step_fn(cache, tokens) -> (logits, cache)` over the
flattened batch × beam axis (`beam_search_loop`), so any next-token distribution can drive it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ptjf.errors import ConfigError, DataError
from ptjf.models.transformer import EncoderDecoder

Array = jax.Array
Cache = Any
StepFn = Callable[[Cache, Array], tuple[Array, Cache]]


def _check_length(max_decode_length: object) -> int:
    if (
        isinstance(max_decode_length, bool)
        or not isinstance(max_decode_length, int)
        or max_decode_length < 1
    ):
        raise ConfigError(
            f"max_decode_length must be a positive integer, got {max_decode_length!r}."
        )
    return max_decode_length


def _check_encoder_tokens(encoder_input_tokens: Array) -> Array:
    tokens = jnp.asarray(encoder_input_tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise DataError(
            f"encoder_input_tokens must be an integer array [batch, length], got shape "
            f"{tokens.shape} and dtype {tokens.dtype}."
        )
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise DataError(
            f"encoder_input_tokens has shape {tokens.shape}; decoding needs at least one "
            "example of at least one token."
        )
    return tokens


def greedy_decode(
    model: EncoderDecoder,
    params,
    encoder_input_tokens: Array,
    max_decode_length: int,
    eos_id: int = 1,
) -> Array:
    """Greedy (argmax) output tokens [batch, max_decode_length], 0 after each row's EOS."""
    length = _check_length(max_decode_length)
    tokens = _check_encoder_tokens(encoder_input_tokens)
    # eos_id is traced, not static, so decoding with another EOS reuses the compiled loop.
    return _greedy(model, length, params, tokens, jnp.int32(eos_id))


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


def _model_step_fn(
    model: EncoderDecoder, params, encoded: Array, encoder_tokens: Array, max_length: int
) -> StepFn:
    """One cached decoder step: [n] previous tokens → ([n, vocab] logits, updated cache)."""

    def step(cache: Cache, tokens: Array) -> tuple[Array, Cache]:
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            encoded,
            encoder_tokens,
            tokens[:, None],
            enable_dropout=False,
            decode=True,
            max_decode_length=max_length,
            mutable=["cache"],
            method=EncoderDecoder.decode,
        )
        return logits[:, 0, :], variables["cache"]

    return step


@functools.partial(jax.jit, static_argnums=(0, 1))
def _greedy(model: EncoderDecoder, max_length: int, params, encoder_tokens, eos_id):
    batch = encoder_tokens.shape[0]
    encoded = model.apply(
        {"params": params}, encoder_tokens, enable_dropout=False, method=EncoderDecoder.encode
    )
    cache = init_decoder_cache(model, params, encoded, encoder_tokens, max_length)
    step_fn = _model_step_fn(model, params, encoded, encoder_tokens, max_length)

    def keep_going(state):
        step, _, _, done, _ = state
        return (step < max_length) & ~jnp.all(done)

    def one_step(state):
        step, cache, previous, done, out = state
        logits, cache = step_fn(cache, previous)
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        token = jnp.where(done, 0, token)
        out = out.at[:, step].set(token)
        return step + 1, cache, token, done | (token == eos_id), out

    state = (
        jnp.int32(0),
        cache,
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch, max_length), jnp.int32),
    )
    return jax.lax.while_loop(keep_going, one_step, state)[-1]


# --- beam search ---------------------------------------------------------------------------


def _check_beam_options(beam_size: object, alpha: object) -> tuple[int, float]:
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ConfigError(f"beam_size must be an integer >= 1, got {beam_size!r}.")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ConfigError(
            f"alpha (the length penalty exponent) must be a finite number >= 0, got {alpha!r}; "
            "0.6 is the paper's and T5X's value, 0 turns the penalty off."
        )
    return beam_size, float(alpha)


def length_penalty(length: Array | int, alpha: Array | float) -> Array:
    """GNMT's ((5 + length) / 6) ** alpha, the divisor of a finished hypothesis' log-prob."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(
    model: EncoderDecoder,
    params,
    encoder_input_tokens: Array,
    max_decode_length: int,
    *,
    beam_size: int = 4,
    alpha: float = 0.6,
    eos_id: int = 1,
) -> tuple[Array, Array]:
    """The best beam-search hypothesis per example and its length-penalised log-probability.

    Returns (tokens [batch, max_decode_length] int32, 0 after each row's EOS; scores [batch]
    float32, `log p / ((5 + n) / 6) ** alpha` over the hypothesis' n tokens, EOS included).
    The encoder runs once; its output and the decoder cache are repeated per beam. Jitted
    once per (model, max_decode_length, beam_size, input shape); alpha and eos_id are traced.
    With beam_size=1 and alpha=0 the result is `greedy_decode`'s.
    """
    length = _check_length(max_decode_length)
    beams, alpha = _check_beam_options(beam_size, alpha)
    tokens = _check_encoder_tokens(encoder_input_tokens)
    return _beam(model, length, beams, params, tokens, jnp.float32(alpha), jnp.int32(eos_id))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _beam(
    model: EncoderDecoder, max_length: int, beam_size: int, params, encoder_tokens, alpha, eos_id
):
    batch = encoder_tokens.shape[0]
    encoded = model.apply(
        {"params": params}, encoder_tokens, enable_dropout=False, method=EncoderDecoder.encode
    )
    # Rows b * beam_size + k: every beam of example b reads the same encoder output.
    encoded = jnp.repeat(encoded, beam_size, axis=0)
    encoder_tokens = jnp.repeat(encoder_tokens, beam_size, axis=0)
    cache = init_decoder_cache(model, params, encoded, encoder_tokens, max_length)
    step_fn = _model_step_fn(model, params, encoded, encoder_tokens, max_length)
    return beam_search_loop(
        step_fn,
        cache,
        batch_size=batch,
        beam_size=beam_size,
        max_decode_length=max_length,
        alpha=alpha,
        eos_id=eos_id,
    )


def gather_beams(tree: Cache, origins: Array, batch_size: int, beam_size: int) -> Cache:
    """Every leaf's rows b * beam_size + k replaced by rows b * beam_size + origins[b, k].

    Leaves are [batch * beam, ...] (the flattened axis first); scalars (the decoder's
    `cache_index`) are shared by all rows and kept.
    """

    def gather(leaf: Array) -> Array:
        if leaf.ndim == 0:
            return leaf
        rows = leaf.reshape(batch_size, beam_size, *leaf.shape[1:])
        index = origins.reshape(batch_size, beam_size, *([1] * (leaf.ndim - 1)))
        picked = jnp.take_along_axis(rows, index, axis=1)
        return picked.reshape(leaf.shape)

    return jax.tree.map(gather, tree)


def _take_beams(x: Array, index: Array) -> Array:
    """x[b, index[b, j], ...] for x [batch, beams, ...] and index [batch, n]."""
    return jnp.take_along_axis(x, index.reshape(*index.shape, *([1] * (x.ndim - 2))), axis=1)


def beam_search_loop(
    step_fn: StepFn,
    cache: Cache,
    *,
    batch_size: int,
    beam_size: int,
    max_decode_length: int,
    alpha: Array | float,
    eos_id: Array | int,
) -> tuple[Array, Array]:
    """Beam search over any cached next-token model (see the module docstring).

    `step_fn(cache, tokens [batch * beam]) -> (logits [batch * beam, vocab], cache)` takes
    each beam's previous token (0 at the first step) in rows b * beam_size + k; `cache` is
    its state for all those rows (reordered with `gather_beams` as beams are chosen). Runs as
    one `lax.while_loop`; call it inside `jax.jit`.
    """
    B, K, L = batch_size, beam_size, max_decode_length
    neg_inf = jnp.float32(-jnp.inf)
    max_penalty = length_penalty(L, alpha)

    def keep_going(state):
        step, _, _, alive_logp, _, finished_scores, _ = state
        # Alive beams are sorted, so beam 0 is the best; finished slot K-1 the worst.
        best_possible = alive_logp[:, 0] / max_penalty
        done = best_possible <= finished_scores[:, -1]
        return (step < L) & ~jnp.all(done)

    def one_step(state):
        step, cache, alive_seqs, alive_logp, finished_seqs, finished_scores, previous = state
        logits, cache = step_fn(cache, previous.reshape(B * K))
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(B, K, vocab)
        candidates = (alive_logp[:, :, None] + logp).reshape(B, K * vocab)
        top_logp, top_index = jax.lax.top_k(candidates, 2 * K)
        origin = top_index // vocab
        token = (top_index % vocab).astype(jnp.int32)
        seqs = _take_beams(alive_seqs, origin)
        seqs = jax.lax.dynamic_update_slice_in_dim(seqs, token[:, :, None], step, axis=2)
        ends = token == eos_id

        # Finished: EOS now, or the last position reached, among the best K candidates only
        # (a hypothesis ends only where it would have stayed in the beam). Merged with the
        # earlier ones, which come first and so win ties.
        in_beam = jnp.arange(2 * K) < K
        ending = (ends | (step == L - 1)) & in_beam
        scores = jnp.where(ending, top_logp / length_penalty(step + 1, alpha), neg_inf)
        merged_scores = jnp.concatenate([finished_scores, scores], axis=1)
        merged_seqs = jnp.concatenate([finished_seqs, seqs], axis=1)
        finished_scores, keep = jax.lax.top_k(merged_scores, K)
        finished_seqs = _take_beams(merged_seqs, keep)

        # Alive: the best K candidates that did not end.
        alive_logp, keep = jax.lax.top_k(jnp.where(ends, neg_inf, top_logp), K)
        alive_seqs = _take_beams(seqs, keep)
        cache = gather_beams(cache, jnp.take_along_axis(origin, keep, axis=1), B, K)
        previous = jnp.take_along_axis(token, keep, axis=1)
        return step + 1, cache, alive_seqs, alive_logp, finished_seqs, finished_scores, previous

    # Only beam 0 is live at first: the K beams would otherwise expand the same prefix.
    alive_logp = jnp.full((B, K), neg_inf).at[:, 0].set(0.0)
    state = (
        jnp.int32(0),
        cache,
        jnp.zeros((B, K, L), jnp.int32),
        alive_logp,
        jnp.zeros((B, K, L), jnp.int32),
        jnp.full((B, K), neg_inf),
        jnp.zeros((B, K), jnp.int32),
    )
    state = jax.lax.while_loop(keep_going, one_step, state)
    finished_seqs, finished_scores = state[4], state[5]
    return finished_seqs[:, 0], finished_scores[:, 0]

"""T5's span-corruption objective, for the paper's mC4 language-modelling tasks (App. B).

A document's token ids are cut into chunks. In each chunk, spans of tokens ("noise") are chosen
so that a fraction `noise_density` of the tokens are noise, in `num_spans` spans of mean length
`mean_noise_span_length`; kept and noise spans alternate, starting with a kept span. The model
reads the chunk with each noise span replaced by one sentinel id and writes the noise spans
back, each after its sentinel:

    tokens   a b c d e f g h
    mask     . . x x . . . x
    inputs   a b S0 e f g S1
    targets  S0 c d S1 h

EOS is not added here: SeqIO's `append_eos_after_trim`, later in the task's preprocessors, adds
it to both features. Sentinels count down from the end of the vocabulary (S0 = vocab_size - 1,
S1 = vocab_size - 2, …), where SeqIO's SentencePiece vocabularies keep their extra ids
(`<extra_id_0>` is the last id).

The counts are fixed by the chunk's length (see `span_counts`); only where the spans fall is
random: the kept and the noise lengths are each a uniformly random composition of their total
(every part >= 1). There are two implementations of the same arithmetic: numpy (the reference,
for tests and for looking at examples by hand) and TensorFlow (for the input pipeline). Their
randomness is a small counter-based hash of the seed, not a library generator, so both give the
same mask for the same seed, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from ptjf.data.tf_cpu import tensorflow_on_cpu
from ptjf.errors import ConfigError, DataError

tf = tensorflow_on_cpu()

SeedLike = np.random.Generator | int | Sequence[int]

# The feature holding a document's token ids: an LM example is rekeyed {text → targets} and
# tokenized before span corruption, as in T5.
TOKENS_KEY = "targets"

# Multipliers of a 32-bit integer hash with low bias (xor-shift-multiply rounds), and two
# arbitrary constants (hex digits of pi) that give the kept and noise partitions their own
# random streams.
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B
_KEPT_STREAM, _NOISE_STREAM = 0x243F6A88, 0x85A308D3
_WORD = 0xFFFFFFFF


# --- counts and lengths --------------------------------------------------------------------


def _check_rates(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ConfigError(
            f"noise_density={noise_density} must be in (0, 1); T5's span corruption uses 0.15."
        )
    if not mean_noise_span_length >= 1.0:
        raise ConfigError(
            f"mean_noise_span_length={mean_noise_span_length} must be >= 1 (a span holds at "
            "least one token); T5's span corruption uses 3.0."
        )


def span_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(noise tokens, noise spans) in a chunk of `length` tokens.

    noise = round(length · density) clipped to [1, length - 1], so that something is hidden
    and something is kept; spans = max(1, round(noise / mean span)), at most `noise` and at most
    `length - noise` (each noise span follows a kept span, both >= 1 token). Rounding is half to
    even, as `tf.round` does, so the TensorFlow path counts the same. A chunk of fewer than two
    tokens cannot both keep and hide a token: it gets no noise, (0, 0).
    """
    _check_rates(noise_density, mean_noise_span_length)
    if length < 2:
        return 0, 0
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def corrupted_lengths(
    tokens_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(inputs, targets) lengths, EOS included, of a corrupted chunk of `tokens_length` tokens.

    With n noise tokens in s spans (`span_counts`):
        inputs  = (tokens_length - n) + s · extra_tokens_per_span_inputs + 1
        targets = n + s · extra_tokens_per_span_targets + 1
    """
    n, s = span_counts(tokens_length, noise_density, mean_noise_span_length)
    return (
        tokens_length - n + s * extra_tokens_per_span_inputs + 1,
        n + s * extra_tokens_per_span_targets + 1,
    )


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(tokens_length, targets_length): the longest raw chunk whose corrupted inputs fit.

    tokens_length is the largest L with `corrupted_lengths(L)[0] <= inputs_length`, and
    targets_length is `corrupted_lengths(L)[1]`: a full chunk then fills `inputs_length`
    exactly (EOS included) and every shorter chunk fits. Roughly
        L ≈ (inputs_length - 1) / (1 - density + density · extra_inputs / mean span),
    e.g. 511 / 0.9 ≈ 568 for T5's (512, 0.15, 3) → (568, 114). The exact L is found by
    stepping, because of rounding: the inputs length never decreases as L grows (L - n and s
    each grow by 0 or 1 per token), so the first L whose successor does not fit is the largest.

    Raises ConfigError if not even a 2-token chunk (one kept token, one hidden) fits.
    """
    _check_rates(noise_density, mean_noise_span_length)
    extras = (extra_tokens_per_span_inputs, extra_tokens_per_span_targets)

    def inputs_of(length: int) -> int:
        return corrupted_lengths(length, noise_density, mean_noise_span_length, *extras)[0]

    minimum = inputs_of(2)
    if inputs_length < minimum:
        raise ConfigError(
            f"sequence_length['inputs']={inputs_length} is too short for span corruption: the "
            f"shortest corruptible chunk (2 tokens: one kept, one hidden) needs {minimum} input "
            f"positions with its sentinel and EOS. Set sequence_length['inputs'] >= {minimum} "
            "(T5 uses 512)."
        )
    length = max(inputs_length - 1, 2)
    while length > 2 and inputs_of(length) > inputs_length:
        length -= 1
    while inputs_of(length + 1) <= inputs_length:
        length += 1
    return length, corrupted_lengths(length, noise_density, mean_noise_span_length, *extras)[1]


# --- the random partition (its hash is shared with the TensorFlow path) --------------------


def _mix(x, shift=np.right_shift):
    """A bijective 32-bit hash of numpy uint32 arrays (or tf.uint32, with TF's `shift`)."""
    x = x ^ shift(x, 16)
    x = x * _MUL1
    x = x ^ shift(x, 15)
    x = x * _MUL2
    return x ^ shift(x, 16)


def _stream_keys(words, stream: int, shift=np.right_shift):
    """Two 32-bit keys for one random stream of a seed (`words` = the seed's two words)."""
    a = _mix(words[0:1] ^ stream, shift)
    return a, _mix(words[1:2] ^ a, shift)


def _fold(value: int) -> int:
    """A seed integer (any sign, up to 64 bits) as one 32-bit word, as `_seed_words_tf` does."""
    value %= 1 << 64
    return (value & _WORD) ^ (value >> 32)


def _seed_words(rng: SeedLike) -> np.ndarray:
    if isinstance(rng, np.random.Generator):
        return rng.integers(0, 1 << 32, size=2, dtype=np.uint64).astype(np.uint32)
    pair = (int(rng), 0) if isinstance(rng, int | np.integer) else tuple(int(v) for v in rng)
    if len(pair) != 2:
        raise ConfigError(
            f"A span-corruption seed is an int, a pair of ints or a numpy Generator; got {rng!r}."
        )
    return np.array([_fold(v) for v in pair], np.uint32)


def _partition(total: int, parts: int, keys) -> np.ndarray:
    """`total` split into `parts` lengths >= 1, a uniformly random composition.

    Of the total - 1 places between items, the parts - 1 with the smallest hash become cuts;
    the hash is a bijection of the place, so there are no ties to break.
    """
    places = np.arange(total - 1, dtype=np.uint32)
    order = np.argsort(_mix(_mix(places ^ keys[0]) ^ keys[1]))
    cuts = np.sort(order[: parts - 1]) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: SeedLike
) -> np.ndarray:
    """Which of `length` tokens are noise: a bool array, kept and noise spans alternating.

    `rng` is a numpy Generator (two words are drawn from it), an int, or a pair of ints such
    as SeqIO's per-example seed; an int s is the pair (s, 0). `noise_mask_tf` gives the same
    mask for the same pair.
    """
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    if num_spans == 0:
        return np.zeros(max(length, 0), bool)
    words = _seed_words(rng)
    kept = _partition(length - num_noise, num_spans, _stream_keys(words, _KEPT_STREAM))
    noise = _partition(num_noise, num_spans, _stream_keys(words, _NOISE_STREAM))
    lengths = np.stack([kept, noise], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], num_spans), lengths)


# --- corrupting and restoring --------------------------------------------------------------


def _span_starts(mask):
    return mask & ~np.concatenate([[False], mask[:-1]])


def corrupt(
    tokens: Sequence[int] | np.ndarray, mask: Sequence[bool] | np.ndarray, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): noise spans replaced by sentinels, and the spans after their sentinels.

    Span i (from 0) gets sentinel `vocab_size - 1 - i` in both features. Works for any mask; a
    mask with no noise gives inputs = tokens and empty targets.
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(mask, dtype=bool)
    if tokens.size == 0:
        tokens = tokens.astype(np.int32)
    if tokens.ndim != 1 or mask.shape != tokens.shape:
        raise DataError(
            f"corrupt needs 1-D tokens and a mask of the same shape; got {tokens.shape} and "
            f"{mask.shape}."
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"corrupt needs integer token ids; got dtype {tokens.dtype}.")
    starts = _span_starts(mask)
    if starts.sum() > vocab_size:
        raise DataError(
            f"The mask has {starts.sum()} noise spans but vocab_size={vocab_size} leaves room "
            "for fewer sentinels; use fewer spans or the vocabulary's real size."
        )
    # Position p contributes (its sentinel if a span starts there, its token if kept / noise).
    pairs = np.stack([vocab_size - np.cumsum(starts), tokens], axis=1).astype(tokens.dtype)
    inputs = pairs[np.stack([starts, ~mask], axis=1)]
    targets = pairs[np.stack([starts, mask], axis=1)]
    return inputs, targets


def reconstruct(
    inputs: Sequence[int] | np.ndarray,
    targets: Sequence[int] | np.ndarray,
    vocab_size: int,
    eos_id: int | None = None,
) -> np.ndarray:
    """The original tokens from `corrupt`'s (inputs, targets): each sentinel gets its span back.

    With `eos_id`, one trailing EOS is dropped from each feature first, so that examples
    straight out of the task pipeline can be checked. Assumes the original tokens contain no
    sentinel ids (SentencePiece text never does, unless it spells out "<extra_id_0>").
    """
    ins, outs = list(np.asarray(inputs).tolist()), list(np.asarray(targets).tolist())
    if eos_id is not None:
        ins = ins[:-1] if ins[-1:] == [eos_id] else ins
        outs = outs[:-1] if outs[-1:] == [eos_id] else outs
    if outs and outs[0] != vocab_size - 1:
        raise DataError(
            f"targets must start with the first sentinel {vocab_size - 1}; got {outs[0]}. "
            "Pass the vocabulary's full size (with its extra ids) as vocab_size."
        )
    spans: list[list[int]] = []
    for t in outs:
        if t == vocab_size - 1 - len(spans):
            spans.append([])
        else:
            spans[-1].append(t)
    tokens: list[int] = []
    used = 0
    for t in ins:
        if used < len(spans) and t == vocab_size - 1 - used:
            tokens.extend(spans[used])
            used += 1
        else:
            tokens.append(t)
    if used != len(spans):
        raise DataError(
            f"targets hold {len(spans)} spans but inputs only {used} of their sentinels; "
            "inputs and targets must come from the same corrupted chunk."
        )
    return np.asarray(tokens, dtype=np.int32 if not ins else np.asarray(inputs).dtype)


# --- the same in TensorFlow, for the input pipeline ----------------------------------------


def _seed_words_tf(seed) -> tf.Tensor:
    """SeqIO's per-example seed (two int32/int64 scalars) as two uint32 words, like `_fold`."""
    value = tf.bitcast(tf.cast(seed, tf.int64), tf.uint64)
    low = tf.cast(value & tf.constant(_WORD, tf.uint64), tf.uint32)
    return low ^ tf.cast(_shift_tf(value, 32), tf.uint32)


def _shift_tf(x: tf.Tensor, bits: int) -> tf.Tensor:
    return tf.bitwise.right_shift(x, tf.constant(bits, x.dtype))


def _partition_tf(total: tf.Tensor, parts: tf.Tensor, keys) -> tf.Tensor:
    places = tf.cast(tf.range(total - 1), tf.uint32)
    hashed = _mix(_mix(places ^ keys[0], _shift_tf) ^ keys[1], _shift_tf)
    order = tf.argsort(tf.cast(hashed, tf.int64))
    cuts = tf.sort(order[: parts - 1]) + 1
    bounds = tf.concat([[0], cuts, [total]], axis=0)
    return bounds[1:] - bounds[:-1]


def _span_counts_tf(length: tf.Tensor, noise_density: float, mean_noise_span_length: float):
    """`span_counts` for length >= 2, in float64 so that rounding matches Python's exactly."""
    raw = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(raw, 1, length - 1)
    spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length), tf.int32)
    num_spans = tf.minimum(tf.maximum(spans, 1), tf.minimum(num_noise, length - num_noise))
    return num_noise, num_spans


def noise_mask_tf(
    length: tf.Tensor | int, noise_density: float, mean_noise_span_length: float, seed
) -> tf.Tensor:
    """`noise_mask` in TensorFlow: the same mask for the same pair of seed integers."""
    _check_rates(noise_density, mean_noise_span_length)
    length = tf.convert_to_tensor(length, tf.int32)
    words = _seed_words_tf(seed)

    def mask() -> tf.Tensor:
        num_noise, num_spans = _span_counts_tf(length, noise_density, mean_noise_span_length)
        kept = _partition_tf(
            length - num_noise, num_spans, _stream_keys(words, _KEPT_STREAM, _shift_tf)
        )
        noise = _partition_tf(num_noise, num_spans, _stream_keys(words, _NOISE_STREAM, _shift_tf))
        lengths = tf.reshape(tf.stack([kept, noise], axis=1), [-1])
        return tf.repeat(tf.tile([False, True], [num_spans]), lengths)

    return tf.cond(length < 2, lambda: tf.zeros([tf.maximum(length, 0)], tf.bool), mask)


def corrupt_tf(tokens: tf.Tensor, mask: tf.Tensor, vocab_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`corrupt` in TensorFlow (1-D int tokens, a bool mask of the same length)."""
    previous = tf.concat([[False], mask[:-1]], axis=0)
    starts = mask & ~previous
    sentinels = vocab_size - tf.cumsum(tf.cast(starts, tokens.dtype))
    pairs = tf.stack([sentinels, tokens], axis=1)
    inputs = tf.boolean_mask(pairs, tf.stack([starts, ~mask], axis=1))
    targets = tf.boolean_mask(pairs, tf.stack([starts, mask], axis=1))
    return inputs, targets


def split_documents(dataset: tf.data.Dataset, tokens_length: int) -> tf.data.Dataset:
    """Each document's token ids as consecutive chunks of `tokens_length` (the last shorter).

    Only the token ids travel on ({"targets": chunk}): other features would be copied into
    every chunk and mean nothing there. Empty documents give no chunks.
    """

    def chunks(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.RaggedTensor]:
        tokens = ex[TOKENS_KEY]
        n = tf.size(tokens)
        bounds = tf.concat([tf.range(0, n, tokens_length), [n]], axis=0)
        return {TOKENS_KEY: tf.RaggedTensor.from_row_splits(tokens, bounds)}

    return dataset.map(chunks, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


@seqio.map_over_dataset(num_seeds=1)
def _corrupt_chunk(
    ex: Mapping[str, tf.Tensor],
    seed,
    *,
    vocab_size: int,
    noise_density: float,
    mean_noise_span_length: float,
) -> dict[str, tf.Tensor]:
    tokens = ex[TOKENS_KEY]
    mask = noise_mask_tf(tf.size(tokens), noise_density, mean_noise_span_length, seed)
    inputs, targets = corrupt_tf(tokens, mask, vocab_size)
    return {"inputs": inputs, "targets": targets}


def _sentinel_vocab_size(output_features: Mapping[str, seqio.Feature], max_spans: int) -> int:
    """The vocabulary size that sentinels count down from, after checking it has room."""
    missing = {"inputs", "targets"} - set(output_features)
    if missing:
        raise ConfigError(
            f"span_corruption writes 'inputs' and 'targets' but the task's output_features lack "
            f"{sorted(missing)}; declare both, with the same vocabulary."
        )
    vocab = output_features["targets"].vocabulary
    size = vocab.vocab_size
    if output_features["inputs"].vocabulary.vocab_size != size:
        raise ConfigError(
            "span_corruption needs one vocabulary for 'inputs' and 'targets' (their sentinels "
            f"must agree); got sizes {output_features['inputs'].vocabulary.vocab_size} and {size}."
        )
    extra_ids = getattr(vocab, "extra_ids", None)
    if extra_ids is not None and extra_ids < max_spans:
        raise ConfigError(
            f"The vocabulary has {extra_ids} extra ids but span corruption of these chunks uses up "
            f"to {max_spans} sentinels; build it with extra_ids >= {max_spans} (SeqIO's default "
            "is 100) or lower sequence_length['inputs']."
        )
    return size


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int | None] | None,
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    seed: int | None = None,
) -> tf.data.Dataset:
    """SeqIO preprocessor: tokenized documents {targets} → span-corrupted {inputs, targets}.

    Place it after `rekey({"targets": "text"})` and `seqio.preprocessors.tokenize`, and before
    `seqio.preprocessors.append_eos_after_trim`. Documents are cut into chunks of the raw length
    from `random_spans_helper(sequence_length["inputs"], …)`, so that a full chunk fills the
    inputs exactly; `sequence_length["targets"]` must hold the targets of a full chunk.

    Masks are drawn from SeqIO's per-example seeds, which follow the seed given to
    `get_dataset`; with `seed`, they follow `seed` alone (e.g. a fixed validation set).
    """
    _check_rates(noise_density, mean_noise_span_length)
    inputs_length = (sequence_length or {}).get("inputs")
    if inputs_length is None:
        raise ConfigError(
            "span_corruption chooses its chunk length from sequence_length['inputs'], which is "
            f"missing (sequence_length={sequence_length!r}); pass sequence_length with an "
            "'inputs' length to get_dataset."
        )
    tokens_length, targets_length = random_spans_helper(
        inputs_length, noise_density, mean_noise_span_length
    )
    targets_limit = (sequence_length or {}).get("targets")
    if targets_limit is not None and targets_limit < targets_length:
        raise ConfigError(
            f"With sequence_length['inputs']={inputs_length}, span corruption makes targets of "
            f"up to {targets_length} tokens (EOS included), but sequence_length['targets']="
            f"{targets_limit} would cut them. Set sequence_length['targets'] >= {targets_length}."
        )
    spec = dataset.element_spec
    if TOKENS_KEY not in spec or not spec[TOKENS_KEY].dtype.is_integer:
        raise ConfigError(
            f"span_corruption reads token ids from the {TOKENS_KEY!r} feature; the examples "
            f"have {sorted(spec)}. Put seqio.preprocessors.rekey({{'targets': 'text'}}) and "
            "seqio.preprocessors.tokenize before it."
        )
    max_spans = span_counts(tokens_length, noise_density, mean_noise_span_length)[1]
    corrupt_chunks = functools.partial(
        _corrupt_chunk,
        vocab_size=_sentinel_vocab_size(output_features, max_spans),
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )
    chunks = split_documents(dataset, tokens_length)
    if seed is None:
        return corrupt_chunks(chunks)
    with seqio.utils.map_seed_manager(seed):
        return corrupt_chunks(chunks)


def span_corruption_preprocessors(**kwargs: Any) -> list:
    """An LM task's preprocessors from raw {text}: rekey, tokenize, corrupt, append EOS."""
    return [
        functools.partial(seqio.preprocessors.rekey, key_map={TOKENS_KEY: "text"}),
        seqio.preprocessors.tokenize,
        functools.partial(span_corruption, **kwargs),
        seqio.preprocessors.append_eos_after_trim,
    ]

"""Span corruption: counts, masks, sentinels, the inverse, T5's lengths and the SeqIO pipeline."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import seqio

from ptjf.data import span_corruption as S
from ptjf.data.tf_cpu import tensorflow_on_cpu
from ptjf.data.vocabularies import CachedSentencePieceVocabulary, VocabularySpec
from ptjf.errors import ConfigError, DataError

tf = tensorflow_on_cpu()

VOCAB = 1000  # ids below VOCAB - 100 are "text"; the top 100 are sentinels
DENSITY, MEAN = 0.15, 3.0


def _runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of equal values, first run first."""
    change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    return np.diff(np.concatenate([[0], change, [len(mask)]]))


def _sentinels(ids: np.ndarray, vocab_size: int = VOCAB, extra_ids: int = 100) -> list[int]:
    return [int(t) for t in ids if t >= vocab_size - extra_ids]


# --- counts --------------------------------------------------------------------------------


def test_span_counts_round_half_to_even_and_clip():
    assert S.span_counts(568, 0.15, 3.0) == (85, 28)  # 85.2 → 85; 85 / 3 = 28.3 → 28
    assert S.span_counts(10, 0.25, 1.0) == (2, 2)  # 2.5 → 2 (half to even), as tf.round
    assert S.span_counts(14, 0.25, 1.0) == (4, 4)  # 3.5 → 4
    assert S.span_counts(2, 0.15, 3.0) == (1, 1)  # 0.3 → 0, clipped up to one noise token
    assert S.span_counts(10, 0.99, 3.0) == (9, 1)  # 9.9 → 10, clipped to keep one token
    assert S.span_counts(10, 0.9, 1.0) == (9, 1)  # 9 spans need 9 kept tokens; only 1 is left
    assert S.span_counts(1, 0.15, 3.0) == (0, 0)  # one token cannot be both kept and hidden
    assert S.span_counts(0, 0.15, 3.0) == (0, 0)


@pytest.mark.parametrize(
    ("density", "mean", "match"),
    [(0.0, 3.0, "noise_density=0.0"), (1.0, 3.0, r"in \(0, 1\)"), (0.15, 0.5, ">= 1")],
)
def test_bad_rates_are_config_errors(density, mean, match):
    with pytest.raises(ConfigError, match=match):
        S.span_counts(100, density, mean)
    with pytest.raises(ConfigError, match=match):
        S.noise_mask_tf(100, density, mean, (0, 0))


# --- masks ---------------------------------------------------------------------------------


def test_masks_have_the_exact_counts_and_alternate_from_a_kept_span():
    rng = np.random.default_rng(0)
    for length in [*range(0, 40), *rng.integers(40, 2000, size=60)]:
        mask = S.noise_mask(int(length), DENSITY, MEAN, rng)
        num_noise, num_spans = S.span_counts(int(length), DENSITY, MEAN)
        assert mask.dtype == bool and mask.shape == (length,)
        assert mask.sum() == num_noise
        runs = _runs(mask)
        if length >= 2:
            assert not mask[0] and mask[-1]  # kept, noise, kept, …, noise
            assert len(runs) == 2 * num_spans
        assert (runs >= 1).all() or length == 0


def test_noise_fraction_and_mean_span_length_over_many_chunks():
    rng = np.random.default_rng(1)
    masks = [S.noise_mask(int(n), DENSITY, MEAN, rng) for n in rng.integers(100, 1200, 300)]
    fractions = [m.mean() for m in masks]
    spans = np.concatenate([_runs(m)[1::2] for m in masks])
    assert abs(np.mean(fractions) - DENSITY) < 0.002
    assert abs(spans.mean() - MEAN) < 0.05
    # The (85, 28) counts of a 568-token chunk give a mean span of 85 / 28 exactly.
    assert _runs(S.noise_mask(568, DENSITY, MEAN, rng))[1::2].mean() == pytest.approx(85 / 28)


def test_span_lengths_are_uniformly_random_compositions():
    # A uniform composition of N into k parts has P(part = 1) = (k-1)/(N-1) and
    # P(part = 2) = (k-1)(N-k) / ((N-1)(N-2)); a geometric or a multinomial split would not.
    noise, kept = [], []
    for seed in range(1500):
        runs = _runs(S.noise_mask(568, DENSITY, MEAN, (seed, 11)))
        kept.append(runs[0::2])
        noise.append(runs[1::2])
    for parts, total in ((np.concatenate(noise), 85), (np.concatenate(kept), 483)):
        k = 28
        assert (parts == 1).mean() == pytest.approx((k - 1) / (total - 1), abs=0.01)
        expected_two = math.comb(total - 3, k - 2) / math.comb(total - 1, k - 1)
        assert (parts == 2).mean() == pytest.approx(expected_two, abs=0.01)


def test_masks_are_deterministic_per_seed():
    a = S.noise_mask(568, DENSITY, MEAN, (3, 4))
    np.testing.assert_array_equal(a, S.noise_mask(568, DENSITY, MEAN, (3, 4)))
    assert not np.array_equal(a, S.noise_mask(568, DENSITY, MEAN, (3, 5)))
    assert not np.array_equal(a, S.noise_mask(568, DENSITY, MEAN, (4, 4)))
    np.testing.assert_array_equal(
        S.noise_mask(100, DENSITY, MEAN, 9), S.noise_mask(100, DENSITY, MEAN, (9, 0))
    )
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(
        S.noise_mask(300, DENSITY, MEAN, g1), S.noise_mask(300, DENSITY, MEAN, g2)
    )
    with pytest.raises(ConfigError, match="pair of ints"):
        S.noise_mask(100, DENSITY, MEAN, (1, 2, 3))


# --- corrupting and restoring --------------------------------------------------------------


def test_corrupt_by_hand():
    tokens = np.arange(10, 18, dtype=np.int32)  # a b c d e f g h
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1], bool)
    inputs, targets = S.corrupt(tokens, mask, vocab_size=100)
    np.testing.assert_array_equal(inputs, [10, 11, 99, 14, 15, 16, 98])
    np.testing.assert_array_equal(targets, [99, 12, 13, 98, 17])
    assert inputs.dtype == targets.dtype == np.int32
    # Any mask works, also one that starts with noise.
    inputs, targets = S.corrupt(tokens, ~mask, vocab_size=100)
    np.testing.assert_array_equal(inputs, [99, 12, 13, 98, 17])
    np.testing.assert_array_equal(targets, [99, 10, 11, 98, 14, 15, 16])
    np.testing.assert_array_equal(S.reconstruct(inputs, targets, 100), tokens)


def test_inputs_and_targets_restore_the_tokens_with_decreasing_sentinels():
    rng = np.random.default_rng(2)
    for length in [*range(0, 30), *rng.integers(30, 1500, size=80)]:
        tokens = rng.integers(3, VOCAB - 100, size=int(length)).astype(np.int32)
        mask = S.noise_mask(int(length), DENSITY, MEAN, rng)
        inputs, targets = S.corrupt(tokens, mask, VOCAB)
        num_noise, num_spans = S.span_counts(int(length), DENSITY, MEAN)
        expected = list(range(VOCAB - 1, VOCAB - 1 - num_spans, -1))
        assert _sentinels(inputs) == _sentinels(targets) == expected
        assert len(inputs) == length - num_noise + num_spans
        assert len(targets) == num_noise + num_spans
        if num_spans:
            assert targets[0] == VOCAB - 1
        np.testing.assert_array_equal(S.reconstruct(inputs, targets, VOCAB), tokens)


def test_the_shortest_chunks():
    # Length 2 has one way to keep one token and hide one; length 1 keeps its token.
    np.testing.assert_array_equal(S.noise_mask(2, DENSITY, MEAN, (1, 1)), [False, True])
    inputs, targets = S.corrupt([7, 8], S.noise_mask(2, DENSITY, MEAN, (1, 1)), VOCAB)
    assert inputs.tolist() == [7, VOCAB - 1] and targets.tolist() == [VOCAB - 1, 8]
    inputs, targets = S.corrupt([7], S.noise_mask(1, DENSITY, MEAN, (1, 1)), VOCAB)
    assert inputs.tolist() == [7] and targets.tolist() == []
    assert S.reconstruct([7], [], VOCAB).tolist() == [7]
    inputs, targets = S.corrupt([], S.noise_mask(0, DENSITY, MEAN, (1, 1)), VOCAB)
    assert inputs.size == targets.size == 0
    assert S.reconstruct([], [], VOCAB).size == 0


def test_reconstruct_strips_eos_and_rejects_mismatched_pairs():
    inputs, targets = [10, 11, 99, 14, 98, 1], [99, 12, 13, 98, 17, 1]
    assert S.reconstruct(inputs, targets, 100, eos_id=1).tolist() == [10, 11, 12, 13, 14, 17]
    with pytest.raises(DataError, match="start with the first sentinel 99"):
        S.reconstruct([10, 99], [12, 99], 100)
    with pytest.raises(DataError, match="2 spans but inputs only 1"):
        S.reconstruct([10, 99], [99, 12, 98, 13], 100)
    with pytest.raises(DataError, match="same shape"):
        S.corrupt([1, 2, 3], [True, False], 100)
    with pytest.raises(DataError, match="integer token ids"):
        S.corrupt([1.0, 2.0], [False, True], 100)


# --- T5's length arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs_length", "expected"), [(512, (568, 114)), (1024, (1137, 229)), (32, (34, 8))]
)
def test_random_spans_helper_matches_t5_and_its_own_definition(inputs_length, expected):
    tokens_length, targets_length = S.random_spans_helper(inputs_length, DENSITY, MEAN)
    assert (tokens_length, targets_length) == expected
    # 568 tokens: 85 noise in 28 spans → inputs 483 + 28 + EOS = 512, targets 85 + 28 + 1 = 114.
    n, s = S.span_counts(tokens_length, DENSITY, MEAN)
    assert tokens_length - n + s + 1 == inputs_length  # a full chunk fills the inputs exactly
    assert n + s + 1 == targets_length
    assert S.corrupted_lengths(tokens_length + 1, DENSITY, MEAN)[0] > inputs_length


def test_random_spans_helper_extra_tokens_and_the_shortest_inputs():
    tokens_length, targets_length = S.random_spans_helper(512, DENSITY, MEAN, 2, 3)
    n, s = S.span_counts(tokens_length, DENSITY, MEAN)
    assert (
        tokens_length - n + 2 * s + 1 <= 512 < S.corrupted_lengths(tokens_length + 1, 0.15, 3, 2)[0]
    )
    assert targets_length == n + 3 * s + 1
    assert tokens_length < 568  # two input tokens per span leave room for fewer raw tokens
    assert S.random_spans_helper(3, DENSITY, MEAN) == (2, 3)
    with pytest.raises(ConfigError, match=r"sequence_length\['inputs'\]=2 is too short.*>= 3"):
        S.random_spans_helper(2, DENSITY, MEAN)


# --- TensorFlow path -----------------------------------------------------------------------


def test_tensorflow_masks_and_corruption_equal_numpy_bit_for_bit():
    seeds = [(0, 0), (1, 2), (-5, 2**40 + 3), (2**63 - 1, -(2**63)), (123456789, -987654321)]
    lengths = [*range(0, 12), 50, 99, 568, 1137]
    cases = [(n, a, b) for n in lengths for a, b in seeds]

    @tf.function
    def tf_case(length, seed):
        mask = S.noise_mask_tf(length, DENSITY, MEAN, seed)
        inputs, targets = S.corrupt_tf(tf.range(length, dtype=tf.int32) + 3, mask, VOCAB)
        return mask, inputs, targets

    for length, a, b in cases:
        mask, inputs, targets = tf_case(tf.constant(length), tf.constant([a, b], tf.int64))
        expected = S.noise_mask(length, DENSITY, MEAN, (a, b))
        np.testing.assert_array_equal(mask.numpy(), expected)
        np_inputs, np_targets = S.corrupt(np.arange(length, dtype=np.int32) + 3, expected, VOCAB)
        np.testing.assert_array_equal(inputs.numpy(), np_inputs)
        np.testing.assert_array_equal(targets.numpy(), np_targets)
    # SeqIO's seeds come as int32 or int64 scalars; only their values matter.
    np.testing.assert_array_equal(
        S.noise_mask_tf(80, DENSITY, MEAN, (tf.constant(-7), tf.constant(9))).numpy(),
        S.noise_mask(80, DENSITY, MEAN, (-7, 9)),
    )


def test_split_documents_cuts_consecutive_chunks_and_drops_empty_documents():
    docs = [list(range(10)), [], [5], list(range(20, 27))]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": np.array(d, np.int32)} for d in docs),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    chunks = [ex["targets"].tolist() for ex in S.split_documents(ds, 4).as_numpy_iterator()]
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [5], [20, 21, 22, 23], [24, 25, 26]]


# --- the SeqIO task ------------------------------------------------------------------------

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "birds"]
CORPUS = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 9)) for i in range(300)]
# Documents from empty to several chunks long.
DOCS = ["", "fox", *(" ".join(CORPUS[i : i + 1 + i % 12]) for i in range(0, 60, 3))]
LENGTHS = {"inputs": 32, "targets": 8}  # random_spans_helper(32) = (34, 8)


@pytest.fixture(scope="module")
def vocab():
    spec = VocabularySpec(name="toy_span", vocab_size=40, corpus_id="toy-span-v1")
    return CachedSentencePieceVocabulary(spec, lambda: CORPUS)


def _task(name: str, vocab, **kwargs) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    features = {k: seqio.Feature(vocabulary=vocab, add_eos=True) for k in ("inputs", "targets")}
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {"text": DOCS}
            ),
            splits=["train"],
        ),
        preprocessors=S.span_corruption_preprocessors(**kwargs),
        output_features=features,
        metric_fns=[],
    )


def _examples(task: seqio.Task, seed: int, lengths=LENGTHS) -> list[dict[str, np.ndarray]]:
    ds = task.get_dataset(lengths, split="train", shuffle=False, seed=seed)
    return list(ds.as_numpy_iterator())


def test_task_examples_fit_the_lengths_and_restore_every_document(vocab):
    task = _task("toy_span_corruption", vocab)
    examples = _examples(task, seed=3)
    size = vocab.vocab_size
    assert size == 140  # 40 pieces + 100 extra ids; <extra_id_0> = 139
    restored = []
    for ex in examples:
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs.dtype == targets.dtype == np.int32
        assert inputs[-1] == targets[-1] == vocab.eos_id == 1
        assert len(inputs) <= 32 and len(targets) <= 8
        chunk = S.reconstruct(inputs, targets, size, eos_id=1)
        num_spans = S.span_counts(len(chunk), DENSITY, MEAN)[1]
        expected = list(range(size - 1, size - 1 - num_spans, -1))
        assert _sentinels(inputs, size) == _sentinels(targets, size) == expected
        if len(chunk) == 34:  # a full chunk fills both lengths exactly
            assert (len(inputs), len(targets)) == (32, 8)
        restored.append(chunk.tolist())
    documents = [vocab.encode(d) for d in DOCS if d]
    expected_chunks = [doc[i : i + 34] for doc in documents for i in range(0, len(doc), 34)]
    assert restored == expected_chunks
    assert sum(len(c) == 34 for c in restored) >= 10 and any(len(c) == 1 for c in restored)


def test_task_masks_follow_the_seed_or_the_preprocessors_own_seed(vocab):
    task = _task("toy_span_corruption", vocab)

    def inputs(task, seed):
        return [ex["inputs"].tolist() for ex in _examples(task, seed)]

    first = inputs(task, 3)
    assert inputs(task, 3) == first
    assert inputs(task, 4) != first
    fixed = _task("toy_span_corruption_fixed", vocab, seed=7)
    fixed_first = inputs(fixed, 3)
    assert inputs(fixed, 4) == fixed_first != first


def test_task_lengths_that_cannot_work_are_config_errors(vocab):
    task = _task("toy_span_corruption", vocab)
    with pytest.raises(ConfigError, match=r"'inputs'\]=2 is too short.*>= 3"):
        _examples(task, 0, {"inputs": 2, "targets": 8})
    with pytest.raises(ConfigError, match=r"targets of up to 8 tokens.*'targets'\] >= 8"):
        _examples(task, 0, {"inputs": 32, "targets": 7})
    with pytest.raises(ConfigError, match=r"sequence_length\['inputs'\], which is missing"):
        task.get_dataset(None, split="train", shuffle=False)


def test_preprocessor_checks_its_features_and_the_vocabularys_extra_ids(vocab):
    tokens = tf.data.Dataset.from_tensors({"targets": tf.range(3, 50)})
    few = seqio.SentencePieceVocabulary(vocab.sentencepiece_model_file, extra_ids=1)
    features = {k: seqio.Feature(few) for k in ("inputs", "targets")}
    with pytest.raises(ConfigError, match=r"has 1 extra ids .* up to 2 sentinels"):
        S.span_corruption(tokens, LENGTHS, features)
    features = {k: seqio.Feature(vocab) for k in ("inputs", "targets")}
    text = tf.data.Dataset.from_tensors({"text": "fox"})
    with pytest.raises(
        ConfigError, match=r"reads token ids from the 'targets' feature.*\['text'\]"
    ):
        S.span_corruption(text, LENGTHS, features)
    with pytest.raises(ConfigError, match=r"lack \['inputs'\]"):
        S.span_corruption(tokens, LENGTHS, {"targets": features["targets"]})
    # Called directly (outside a task), it still cuts and corrupts: 47 tokens → 34 + 13.
    out = list(
        functools.partial(S.span_corruption, seed=1)(tokens, LENGTHS, features).as_numpy_iterator()
    )
    restored = [S.reconstruct(ex["inputs"], ex["targets"], vocab.vocab_size) for ex in out]
    assert [r.tolist() for r in restored] == [list(range(3, 37)), list(range(37, 50))]

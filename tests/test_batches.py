"""Training and evaluation batches: features, packing, task ids, mixing, resume, sharding."""

from __future__ import annotations

import itertools

import gin
import numpy as np
import ptjf.tasks as T
import pytest
import seqio

from ptjf.data import batches as B
from ptjf.data.preprocessors import translation_prefix
from ptjf.errors import ConfigError, DataError, RatesError, UnknownNameError

LENGTHS = {"inputs": 80, "targets": 24}
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
MODEL_KEYS = {
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
}
PACKING_KEYS = {
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
}


def _pairs(n: int, offset: int) -> list[tuple[str, str]]:
    """Unique pairs of 1 to 6 words plus a number, so targets vary in length (some exceed 24
    tokens and get truncated; short ones pack several to a row)."""
    out = []
    for i in range(offset, offset + n):
        words = [WORDS[(3 * i + 7 * j) % len(WORDS)] for j in range(1 + i % 6)]
        out.append((" ".join(words) + f" {i}", " ".join(w.upper() for w in words[::-1]) + f" {i}"))
    return out


def _write(path, pairs):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Two toy tasks in one problem (A: 120 train / 13 validation, B: 60 / 7) and their mixture;
    `ref[task][split]` are the expected (inputs, targets) token tuples in file order, computed
    from the raw text with the vocabulary alone."""
    d = tmp_path_factory.mktemp("batches")
    spec = {
        "toy_batches_a": ("fr", _pairs(120, 0), _pairs(13, 500)),
        "toy_batches_b": ("de", _pairs(60, 1000), _pairs(7, 1500)),
    }
    for name, (lang, train, valid) in spec.items():
        T.register_translation_task(
            name,
            source_language="en",
            target_language=lang,
            data={
                "train": _write(d / f"{name}.tsv", train),
                "validation": _write(d / f"{name}.v.tsv", valid),
            },
            problem="toy_batches",
            vocab_size=60,
            overwrite=True,
        )
    T.register_mixture(
        "toy_batches_mix",
        list(spec),
        method="static",
        weights={"toy_batches_a": 1.0, "toy_batches_b": 1.0},
        overwrite=True,
    )
    vocab = seqio.get_mixture_or_task("toy_batches_a").output_features["targets"].vocabulary

    def encode(text: str, length: int) -> tuple[int, ...]:
        return (*vocab.encode(text)[: length - 1], 1)

    ref = {
        name: {
            split: [
                (
                    encode(translation_prefix("en", lang) + s, LENGTHS["inputs"]),
                    encode(t, LENGTHS["targets"]),
                )
                for s, t in pairs
            ]
            for split, pairs in (("train", train), ("validation", valid))
        }
        for name, (lang, train, valid) in spec.items()
    }
    # Tasks registered after the problem's vocabulary is built share it explicitly.
    _write(d / "one.tsv", _pairs(1, 2000))
    T.register_translation_task(
        "toy_batches_one",
        source_language="en",
        target_language="fr",
        data={"train": d / "one.tsv"},
        vocabulary=vocab,
        overwrite=True,
    )
    return {"vocab": vocab, "ref": ref}


def _config(name="toy_batches_mix", **kw) -> B.DatasetConfig:
    return B.DatasetConfig(
        mixture_or_task_name=name,
        task_feature_lengths=LENGTHS,
        batch_size=kw.pop("batch_size", 8),
        **kw,
    )


def _take(config, n, **kw) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(B.train_batches(config, **kw), n))


def _segments(batch):
    """(inputs, targets, task ids of the target tokens) of every packed segment, row by row,
    checking each segment's positions, decoder inputs and that segments never cross rows."""
    out = []
    for r in range(batch["decoder_target_tokens"].shape[0]):
        enc_seg, dec_seg = batch["encoder_segment_ids"][r], batch["decoder_segment_ids"][r]
        n = dec_seg.max()
        assert n >= 1 and enc_seg.max() == n
        for s in range(1, n + 1):
            em, dm = enc_seg == s, dec_seg == s
            # Contiguous, positions from 0, decoder inputs shifted right with 0 first.
            np.testing.assert_array_equal(batch["encoder_positions"][r][em], np.arange(em.sum()))
            np.testing.assert_array_equal(batch["decoder_positions"][r][dm], np.arange(dm.sum()))
            targets = batch["decoder_target_tokens"][r][dm]
            np.testing.assert_array_equal(
                batch["decoder_input_tokens"][r][dm], np.concatenate([[0], targets[:-1]])
            )
            out.append(
                (
                    tuple(batch["encoder_input_tokens"][r][em]),
                    tuple(targets),
                    set(batch["task_ids"][r][dm]),
                )
            )
        # Past the last segment: padding only.
        pad = dec_seg == 0
        assert not batch["decoder_target_tokens"][r][pad].any()
        assert (batch["task_ids"][r][pad] == -1).all()
        assert not batch["encoder_input_tokens"][r][enc_seg == 0].any()
    return out


def _proportion_of_a(config, want=2000) -> tuple[float, int]:
    counts = np.zeros(2, np.int64)
    for batch in B.train_batches(config):
        counts += B.count_by_task(batch, 2)[0]
        if counts.sum() >= want:
            return counts[0] / counts.sum(), int(counts.sum())
    raise AssertionError("unreachable: the stream is infinite")


# --- features and packing ------------------------------------------------------------------


def test_bible_batches_shapes_dtypes_and_eval_coverage(bible_vocab):
    lengths = {"inputs": 32, "targets": 24}
    packed = _take(B.DatasetConfig("bible_en_fr_tl", lengths, batch_size=4), 2)
    for batch in packed:
        assert set(batch) == MODEL_KEYS | PACKING_KEYS | {"task_ids"}
        for k, v in batch.items():
            want = lengths["inputs"] if k.startswith("encoder") else lengths["targets"]
            assert v.shape == (4, want) and v.dtype == np.int32, k
        real = batch["decoder_target_tokens"] != 0
        np.testing.assert_array_equal(batch["decoder_loss_weights"], real.astype(np.int32))
        assert set(np.unique(batch["task_ids"][real])) <= {0, 1}
        assert (batch["task_ids"][~real] == -1).all()
    valid = B.eval_batches("bible_translate_en_tl_low", "validation", lengths, 64)
    assert B.num_eval_examples(valid) == T.task_size("bible_translate_en_tl_low", "validation")
    assert {b["decoder_target_tokens"].shape for b in valid} == {(64, 24)}


@pytest.mark.parametrize("pack", [True, False])
def test_model_features_match_seqio_converter(toy, pack):
    lengths = LENGTHS
    ours = _take(_config("toy_batches_a", shuffle=False, pack=pack), 4)
    task = seqio.get_mixture_or_task("toy_batches_a")
    ds = task.get_dataset(
        lengths, split="train", shuffle=False, num_epochs=None, try_in_mem_cache=False
    )
    ref = seqio.EncDecFeatureConverter(pack=pack)(ds, lengths).batch(8).take(4).as_numpy_iterator()
    for mine, theirs in zip(ours, ref, strict=True):
        assert set(mine) - {"task_ids"} == set(theirs)
        for k in theirs:
            np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
        real = mine["decoder_target_tokens"] != 0
        np.testing.assert_array_equal(mine["task_ids"], np.where(real, 0, -1))


def test_packing_unpacks_to_the_task_examples_in_order(toy):
    ref = toy["ref"]["toy_batches_a"]["train"]
    batches = _take(_config("toy_batches_a", shuffle=False, batch_size=16), 20)
    segments = [seg for b in batches for seg in _segments(b)]
    assert len(segments) > 20 * 16  # some rows hold several examples
    expected = list(itertools.islice(itertools.cycle(ref), len(segments)))
    assert [(i, t) for i, t, _ in segments] == expected
    assert all(ids == {0} for _, _, ids in segments)
    # The reference really truncates some targets (EOS kept) and keeps others whole.
    lengths = {len(t) for _, t in ref}
    assert max(lengths) == LENGTHS["targets"] and min(lengths) < LENGTHS["targets"] // 2


def test_task_ids_name_each_segments_task(toy):
    owner = {
        ex: k
        for k, name in enumerate(("toy_batches_a", "toy_batches_b"))
        for ex in toy["ref"][name]["train"]
    }
    seen = set()
    batches = _take(_config(seed=3), 6)
    for batch in batches:
        segs = _segments(batch)
        for inputs, targets, ids in segs:
            assert ids == {owner[(inputs, targets)]}
            seen.add(owner[(inputs, targets)])
        examples, tokens = B.count_by_task(batch, 2)
        want_ex = np.bincount([owner[(i, t)] for i, t, _ in segs], minlength=2)
        want_tok = np.bincount(
            [owner[(i, t)] for i, t, _ in segs], weights=[len(t) for _, t, _ in segs], minlength=2
        )
        np.testing.assert_array_equal(examples, want_ex)
        np.testing.assert_array_equal(tokens, want_tok)
    assert seen == {0, 1}
    # Rows mix tasks: packing happens after sampling.
    assert any(len(set(b["task_ids"][r]) - {-1}) == 2 for b in batches for r in range(8))


# --- mixing --------------------------------------------------------------------------------


def test_mixture_proportions_follow_rates_and_override(toy):
    config = _config(batch_size=32)
    assert B.effective_rates(config) == {"toy_batches_a": 0.5, "toy_batches_b": 0.5}
    for rates, p in ((None, 0.5), ({"toy_batches_a": 4.0, "toy_batches_b": 1.0}, 0.8)):
        cfg = _config(batch_size=32, rates=rates)
        assert B.effective_rates(cfg)["toy_batches_a"] == pytest.approx(p)
        share, n = _proportion_of_a(cfg)
        assert abs(share - p) < 3 * np.sqrt(p * (1 - p) / n), (rates, share, n)


def test_zero_rate_drops_a_task_but_keeps_task_ids(toy):
    cfg = _config(rates={"toy_batches_b": 1.0})  # A left out: rate 0
    assert B.effective_rates(cfg) == {"toy_batches_a": 0.0, "toy_batches_b": 1.0}
    assert B.mixture_task_names(cfg) == ["toy_batches_a", "toy_batches_b"]
    ids = np.concatenate([b["task_ids"].ravel() for b in _take(cfg, 3)])
    assert set(np.unique(ids)) == {-1, 1}


def test_single_task_and_plain_seqio_mixture(toy):
    assert B.mixture_task_names(_config("toy_batches_b")) == ["toy_batches_b"]
    assert B.effective_rates(_config("toy_batches_b")) == {"toy_batches_b": 1.0}
    seqio.MixtureRegistry.remove("toy_batches_seqio")
    seqio.MixtureRegistry.add("toy_batches_seqio", [("toy_batches_a", 3.0), ("toy_batches_b", 1.0)])
    assert B.effective_rates(_config("toy_batches_seqio")) == {
        "toy_batches_a": 0.75,
        "toy_batches_b": 0.25,
    }


# --- determinism, resume, sharding ---------------------------------------------------------


def test_resume_from_start_batch_is_bitwise_equal(toy):
    cfg = _config(seed=7)
    full = _take(cfg, 7)
    resumed = _take(cfg, 3, start_batch=4)
    for a, b in zip(full[4:], resumed, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The check has teeth: another seed gives another stream.
    other = _take(_config(seed=8), 1)[0]
    assert not np.array_equal(other["decoder_target_tokens"], full[0]["decoder_target_tokens"])


def test_two_shards_are_disjoint_with_half_batches(toy):
    cfg = _config(batch_size=8)
    seen = []
    for index in (0, 1):
        batches = _take(cfg, 30, shard_index=index, num_shards=2)
        assert {v.shape[0] for b in batches for v in b.values()} == {4}
        seen.append({(i, t) for b in batches for i, t, _ in _segments(b)})
    assert not seen[0] & seen[1]
    # Together they cover more than either half of the 180 training examples could.
    assert len(seen[0] | seen[1]) > 90


def test_task_with_no_example_on_a_shard_is_an_error(toy):
    cfg = _config("toy_batches_one", batch_size=2)
    assert len(_take(cfg, 1, shard_index=0, num_shards=2)) == 1
    with pytest.raises(DataError, match=r"'toy_batches_one' gives no example .* shard 1 of 2"):
        B.train_batches(cfg, shard_index=1, num_shards=2)


# --- evaluation ----------------------------------------------------------------------------


def test_eval_batches_cover_every_example_once_with_zero_weight_padding(toy):
    ref = toy["ref"]["toy_batches_a"]["validation"]
    batches = B.eval_batches("toy_batches_a", "validation", LENGTHS, 4)
    assert len(batches) == 4 and B.num_eval_examples(batches) == 13
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert set(rows) == MODEL_KEYS | {"task_ids"}
    for r, (inputs, targets) in enumerate(ref):
        assert tuple(rows["encoder_input_tokens"][r][: len(inputs)]) == inputs
        assert not rows["encoder_input_tokens"][r][len(inputs) :].any()
        assert tuple(rows["decoder_target_tokens"][r][: len(targets)]) == targets
        assert (rows["task_ids"][r][: len(targets)] == 0).all()
        assert (rows["task_ids"][r][len(targets) :] == -1).all()
    for k, v in rows.items():
        assert (v[13:] == (-1 if k == "task_ids" else 0)).all(), k
    first = B.eval_batches("toy_batches_a", "validation", LENGTHS, 4, max_examples=5)
    assert len(first) == 2 and B.num_eval_examples(first) == 5
    np.testing.assert_array_equal(
        first[0]["decoder_target_tokens"], batches[0]["decoder_target_tokens"]
    )


def test_eval_of_an_empty_split_raises_the_sources_error(toy):
    with pytest.raises(DataError, match=r"'validation' split of task 'toy_batches_one'.* is empty"):
        B.eval_batches("toy_batches_one", "validation", LENGTHS, 4)
    with pytest.raises(ConfigError, match="is a mixture"):
        B.eval_batches("toy_batches_mix", "validation", LENGTHS, 4)


# --- counting ------------------------------------------------------------------------------


def test_count_by_task_on_a_crafted_batch():
    packed = {
        "task_ids": np.array([[0, 0, 1, 1, 1, -1], [2, 2, 2, 2, 0, 0], [-1] * 6]),
        "decoder_segment_ids": np.array([[1, 1, 2, 2, 2, 0], [1, 1, 2, 2, 3, 3], [0] * 6]),
    }
    examples, tokens = B.count_by_task(packed, 3)
    np.testing.assert_array_equal(examples, [2, 1, 2])  # row 1: segments 1 and 2 both task 2
    np.testing.assert_array_equal(tokens, [4, 3, 4])
    unpacked = {"task_ids": np.array([[1, 1, -1], [-1, -1, -1], [0, -1, -1]])}
    np.testing.assert_array_equal(B.count_by_task(unpacked, 2)[0], [1, 1])
    np.testing.assert_array_equal(B.count_by_task(unpacked, 2)[1], [1, 2])
    with pytest.raises(DataError, match="task id 2 but num_tasks=2"):
        B.count_by_task(packed, 2)


# --- configuration and errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 0}, r"batch_size=0"),
        ({"task_feature_lengths": {"inputs": 0, "targets": 8}}, r"\['inputs'\]=0"),
        ({"task_feature_lengths": {"inputs": 8, "targets": -1}}, r"\['targets'\]=-1"),
        ({"task_feature_lengths": {"inputs": 8}}, "exactly the keys 'inputs' and 'targets'"),
        ({"mixture_or_task_name": ""}, "mixture_or_task_name=''"),
    ],
)
def test_invalid_config_names_field_and_value(kw, match):
    args = {"mixture_or_task_name": "x", "task_feature_lengths": LENGTHS, "batch_size": 4, **kw}
    with pytest.raises(ConfigError, match=match):
        B.DatasetConfig(**args)


def test_lookup_and_sharding_errors(toy):
    with pytest.raises(UnknownNameError, match=r"Closest registered: .*toy_batches_mix"):
        B.train_batches(_config("toy_batches_mx"))
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible by num_shards=4"):
        B.train_batches(_config(batch_size=6), num_shards=4)
    with pytest.raises(ConfigError, match="shard_index=2 is out of range"):
        B.train_batches(_config(), shard_index=2, num_shards=2)
    with pytest.raises(RatesError, match=r"rates name \['toy_batches_c'\]"):
        B.effective_rates(_config(rates={"toy_batches_a": 1.0, "toy_batches_c": 1.0}))
    with pytest.raises(ConfigError, match="module='no_such_module_ptjf' cannot be imported"):
        B.mixture_task_names(_config(module="no_such_module_ptjf"))


def test_dataset_config_is_gin_configurable():
    with gin.unlock_config():
        gin.bind_parameter("DatasetConfig.batch_size", 12)
        gin.bind_parameter("DatasetConfig.pack", False)
    try:
        cfg = B.DatasetConfig(mixture_or_task_name="m", task_feature_lengths=LENGTHS)
        assert (cfg.batch_size, cfg.pack, cfg.split, cfg.seed) == (12, False, "train", 0)
    finally:
        gin.clear_config()

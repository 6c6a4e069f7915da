"""mC4 over TFDS: language codes, Table 2 mixtures, the temperature-sampled vocabulary corpus,
and span corruption end to end over a small c4/multilingual written in TFDS format."""

from __future__ import annotations

import collections
import math

import mc4_like
import numpy as np
import ptjf.tasks as T
import pytest
import seqio
from ptjf.tasks import mc4
from tensorflow_datasets.text import c4 as tfds_c4

from ptjf import sampling
from ptjf.data import mixing
from ptjf.data.span_corruption import random_spans_helper, reconstruct, span_counts
from ptjf.data.vocabularies import temperature_corpus
from ptjf.errors import ConfigError, DataError, UnknownNameError

# Made-up text per language, in its own script or letters, so a line's language is known.
SYLLABLES = mc4_like.SYLLABLES
DOCS = {"en": 40, "hi": 24, "gu": 12, "gd": 8, "sw": 10}
LINES_PER_DOC = 3
PROBLEM = "mc4_test"
# TFDS's own c4 builder and its `multilingual` config: the dataset name and version mC4 has in
# the installed TFDS, independent of the constants in tasks/mc4.py.
[REAL_MC4_CONFIG] = [c for c in tfds_c4.C4.BUILDER_CONFIGS if c.name == "multilingual"]
REAL_MC4 = f"{tfds_c4.C4.name}/{REAL_MC4_CONFIG.name}:{REAL_MC4_CONFIG.version}"
LENGTHS = {"inputs": 128, "targets": 64}


def _line(lang: str, doc: int, line: int) -> str:
    syllables = SYLLABLES[lang].split()
    n = len(syllables)
    seeds = [(doc * 7919 + line * 104_729 + w * 1_299_709) % n**3 for w in range(6)]
    words = ["".join(syllables[(x // n**k) % n] for k in range(3)) for x in seeds]
    return " ".join(words) + f" {doc}.{line}"


def _doc(lang: str, doc: int) -> str:
    return "\n".join(_line(lang, doc, i) for i in range(LINES_PER_DOC))


# TFDS's c4/multilingual (name and version from its real builder) with the real features and
# split names, tiny and made up.
FakeC4 = mc4_like.builder_class(DOCS, 0, text=_doc, validation_first=1000)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    FakeC4(config=REAL_MC4_CONFIG.name, data_dir=root).download_and_prepare()
    return root


@pytest.fixture(scope="module")
def small_problem(data_dir):
    """The paper's five languages over the small data: 300 pieces from 3,000 lines."""
    return mc4.register_problem(
        PROBLEM,
        mc4.TABLE2_SIZES,
        data_dir=data_dir,
        vocab_size=300,
        vocab_sentences=3_000,
        overwrite=True,
    )


# --- temperature_corpus (pure) -----------------------------------------------------------


def test_temperature_corpus_gives_each_language_its_rate():
    texts = {lang: [f"{lang} {i}" for i in range(n)] for lang, n in DOCS.items()}
    sizes = mc4.TABLE2_SIZES
    corpus = list(
        temperature_corpus({k: (lambda v=v: v) for k, v in texts.items()}, sizes, 3.33, 2_000)
    )
    assert len(corpus) == 2_000
    counts = collections.Counter(line.split()[0] for line in corpus)
    rates = sampling.temperature_rates(sizes, 3.33)
    for lang, rate in rates.items():
        assert abs(counts[lang] - rate * 2_000) < 1, (lang, counts, rates)
    # Small languages are started over (up-sampled), in their own order.
    gd = [line for line in corpus if line.startswith("gd ")]
    assert gd[: len(texts["gd"]) * 2] == texts["gd"] * 2
    # Deterministic; the seed only changes the interleaving.
    again = temperature_corpus({k: (lambda v=v: v) for k, v in texts.items()}, sizes, 3.33, 2_000)
    assert list(again) == corpus
    other = list(
        temperature_corpus({k: (lambda v=v: v) for k, v in texts.items()}, sizes, 3.33, 2_000, 1)
    )
    assert other != corpus and sorted(other) == sorted(corpus)
    # Any prefix keeps the shares (the languages are interleaved, not concatenated).
    head = collections.Counter(line.split()[0] for line in corpus[:500])
    assert abs(head["en"] / 500 - rates["en"]) < 0.05


def test_temperature_corpus_bad_input():
    with pytest.raises(DataError, match="same languages"):
        next(temperature_corpus({"en": lambda: ["a"]}, {"en": 1.0, "hi": 1.0}, 2.0, 10))
    with pytest.raises(DataError, match="language 'hi' is empty"):
        list(
            temperature_corpus({"en": lambda: ["a"], "hi": lambda: [" "]}, {"en": 1, "hi": 1}, 2, 9)
        )
    with pytest.raises(DataError, match="total_sentences=0"):
        next(temperature_corpus({"en": lambda: ["a"]}, {"en": 1.0}, 2.0, 0))


# --- names, codes and mixtures, before any data --------------------------------------------


def test_language_codes_are_tfds_split_names():
    assert tuple(tfds_c4.MC4_LANGUAGES) == mc4.LANGUAGES
    assert len(mc4.LANGUAGES) == 107 and len({c.split("-")[0] for c in mc4.LANGUAGES}) == 101
    assert mc4.task_name("mc4", "hi-Latn") == "mc4.hi_Latn"
    source = seqio.get_mixture_or_task("mc4.gd").source
    # The name and version the task opens are those TFDS's own c4 builder registers.
    assert source.tfds_name == REAL_MC4
    assert source._split_map == {"train": "gd", "validation": "gd-validation"}


def test_unknown_language_and_missing_size():
    with pytest.raises(UnknownNameError, match="Closest registered: yo"):
        mc4.register_language("yor", problem="mc4_bad")
    with pytest.raises(UnknownNameError, match="mC4 language 'und'"):
        mc4.register_language("und", problem="mc4_bad")
    with pytest.raises(ConfigError, match="'yo' needs size="):
        mc4.register_language("yo", problem="mc4_bad")


def test_default_mixtures_use_table2_characters():
    tasks = ["mc4.en", "mc4.hi", "mc4.gu", "mc4.gd", "mc4.sw"]
    chars = [13_396, 75, 3.6, 0.8, 4.1]
    for name, tau in [("mc4", 3.33), ("mc4_tau1.43", 1.43), ("mc4_tau2", 2.0), ("mc4_tau5", 5.0)]:
        spec = T.mixture_spec(name)
        assert list(spec.tasks) == tasks and spec.size_unit == "characters"
        weights = [c ** (1 / tau) for c in chars]
        expected = {t: w / sum(weights) for t, w in zip(tasks, weights, strict=True)}
        assert T.mixture_rates(name) == pytest.approx(expected)
    # UniMax, 1,000B characters at most 5 epochs: the small languages get 5 epochs each.
    assert T.mixture_rates("mc4_unimax") == pytest.approx(
        {"mc4.en": 0.5825, "mc4.hi": 0.375, "mc4.gu": 0.018, "mc4.gd": 0.004, "mc4.sw": 0.0205}
    )
    vocab = seqio.get_mixture_or_task("mc4.en").output_features["targets"].vocabulary
    assert vocab.spec.vocab_size == 64_000 and mc4.problem("mc4").tau == 3.33


def test_adding_a_language_is_one_call():
    tasks = mc4.register_problem("mc4_test_yo", {**mc4.TABLE2_SIZES, "yo": 0.5}, overwrite=True)
    assert tasks[-1] == "mc4_test_yo.yo"
    rates = T.mixture_rates("mc4_test_yo")
    assert set(rates) == set(tasks)
    sizes = {**mc4.TABLE2_SIZES, "yo": 0.5}
    total = sum(s ** (1 / 3.33) for s in sizes.values())
    assert rates["mc4_test_yo.yo"] == pytest.approx(0.5 ** (1 / 3.33) / total)
    assert "mc4_test_yo_unimax" in seqio.MixtureRegistry.names()


def test_unprepared_mc4_names_dir_and_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        T.task_size("mc4.gd")
    msg = str(e.value)
    assert f"'{REAL_MC4}' is not prepared" in msg
    assert f"tfds build {REAL_MC4} --data_dir={tmp_path}\n" in msg
    assert "DataflowRunner" in msg and "apache-beam" in msg


# --- end to end over TFDS files ------------------------------------------------------------


def test_sizes_and_splits_come_from_tfds(small_problem):
    assert small_problem == [f"{PROBLEM}.{c}" for c in mc4.TABLE2_SIZES]
    assert T.task_size(f"{PROBLEM}.hi") == DOCS["hi"]
    assert T.task_size(f"{PROBLEM}.hi", "validation") == 3
    assert T.mixture_spec(PROBLEM).resolved_sizes()[f"{PROBLEM}.gd"] == 0.8


def test_vocabulary_corpus_is_temperature_sampled(small_problem):
    corpus = list(mc4.vocabulary_corpus(PROBLEM))
    assert len(corpus) == 3_000
    owner = {
        _line(lang, d, i): lang for lang, n in DOCS.items() for d in range(n) for i in range(3)
    }
    counts = collections.Counter(owner[line] for line in corpus)
    rates = sampling.temperature_rates(mc4.TABLE2_SIZES, 3.33)
    for lang, rate in rates.items():
        assert abs(counts[lang] / 3_000 - rate) < 1 / 3_000, (lang, counts, rates)
    assert counts["gd"] > DOCS["gd"] * LINES_PER_DOC  # Gaelic is up-sampled
    vocab = seqio.get_mixture_or_task(f"{PROBLEM}.gu").output_features["targets"].vocabulary
    assert vocab.vocab_size == 300 + 100
    assert vocab.decode(vocab.encode(_line("gu", 3, 1))) == _line("gu", 3, 1)
    # The vocabulary is fixed once built: a late language must use another problem.
    with pytest.raises(ConfigError, match="already built"):
        mc4.register_language(
            "yo", size=0.5, problem=PROBLEM, vocab_size=300, vocab_sentences=3_000
        )


def test_span_corruption_examples(small_problem):
    task = seqio.get_mixture_or_task(f"{PROBLEM}.sw")
    vocab = task.output_features["targets"].vocabulary
    raw = task.source.tfds_source().get_dataset("validation", shuffle=False)
    tokens = [t for ex in raw.as_numpy_iterator() for t in vocab.encode(ex["text"].decode())]
    tokens_length, _ = random_spans_helper(LENGTHS["inputs"], 0.15, 3.0)
    examples = list(task.get_dataset(LENGTHS, split="validation", shuffle=False, seed=5))
    assert len(examples) > 3  # the documents are longer than one chunk
    restored = []
    for ex in examples:
        inputs, targets = ex["inputs"].numpy(), ex["targets"].numpy()
        assert inputs[-1] == 1 and targets[-1] == 1
        assert targets[0] == vocab.vocab_size - 1  # the first sentinel, <extra_id_0>
        sentinels = int(np.sum(inputs >= vocab.vocab_size - 100))
        assert sentinels >= 1 and sentinels == int(np.sum(targets >= vocab.vocab_size - 100))
        chunk = reconstruct(inputs, targets, vocab.vocab_size, eos_id=1).tolist()
        assert len(chunk) <= tokens_length
        assert (len(targets) - 1 - sentinels, sentinels) == span_counts(len(chunk), 0.15, 3.0)
        restored += chunk
    # Chunks are consecutive pieces of the documents, in order, and nothing is lost.
    assert restored == tokens


def test_sequence_too_short_for_span_corruption_says_so(small_problem):
    task = seqio.get_mixture_or_task(f"{PROBLEM}.en")
    with pytest.raises(ConfigError, match=r"sequence_length\['inputs'\]=2 is too short"):
        task.get_dataset({"inputs": 2, "targets": 64}, split="validation")
    with pytest.raises(ConfigError, match=r"Set sequence_length\['targets'\] >= "):
        task.get_dataset({"inputs": 128, "targets": 4}, split="validation")


def test_mixture_draws_languages_at_their_rates(small_problem):
    names = list(small_problem)
    rates = mixing.mixture_rates(PROBLEM)
    ds = mixing.mixed_dataset(
        names,
        rates,
        split="train",
        lengths=LENGTHS,
        shuffle=True,
        seed=11,
        shard_info=seqio.ShardInfo(0, 1),
    )
    draws = 2_000
    counts = collections.Counter(
        int(ex["task_ids"][0]) - 1 for ex in ds.take(draws).as_numpy_iterator()
    )
    for i, task in enumerate(names):
        se = math.sqrt(rates[task] * (1 - rates[task]) / draws)
        assert abs(counts[i] / draws - rates[task]) < 3 * se, (counts, rates)

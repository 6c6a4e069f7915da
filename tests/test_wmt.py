"""WMT over TFDS: names, Table 1 sizes, lazy data dirs, unprepared data, and a real pipeline
over small WMT datasets written in TFDS format (nothing is downloaded)."""

from __future__ import annotations

import collections
import math

import gin
import ptjf.tasks as T
import pytest
import seqio
import tensorflow_datasets as tfds
from ptjf.tasks import mixtures, wmt
from ptjf.tasks import registration as reg
from tensorflow_datasets.translate import wmt14, wmt15, wmt16, wmt19

from ptjf.data import mixing
from ptjf.errors import ConfigError, DataError, UnknownNameError

LENGTHS = {"inputs": 48, "targets": 48}
TRAIN = {"fr": 240, "ro": 60}
SYLLABLES = {
    "en": "ba be bi bo bu ka ke ki ko ku ta te ti to tu sha she shi sho wa we wi wo",
    "fr": "ba bé bè ca cé ço da dé fa fê ga gé la lé ma mé na né pa pé ra ré sa sé",
    "ro": "bă bâ ca că da dă fa fă ga gă la lă ma mă na nă pa pă ra ră șa șă ța ță",
}


def _word(lang: str, n: int) -> str:
    """A made-up word per (language, n): enough distinct pieces for a 300-piece vocabulary."""
    syllables = SYLLABLES[lang].split()
    return "".join(syllables[(n // len(syllables) ** k) % len(syllables)] for k in range(3))


def _sentence(lang: str, i: int) -> str:
    return " ".join(_word(lang, (i * 7919 + k * 104_729) % 13_824) for k in range(6)) + f" {i}"


def _fake_builder(base: type, pair: str, sizes: dict[str, int]) -> type:
    """A builder with the real one's name, config and features, generating tiny splits."""
    foreign = pair.split("-")[0]

    class Fake(base, skip_registration=True):
        name = base.name

        def _split_generators(self, dl_manager):
            return {split: self._pairs(split, n) for split, n in sizes.items()}

        def _pairs(self, split, n):
            for i in range(n):
                # Distinct sentences across pairs and splits: the problem's corpus dedups.
                key = {"fr": 0, "ro": 50_000}[foreign] + 1_000 * len(split) + i
                yield f"{split}{i}", {"en": _sentence("en", key), foreign: _sentence(foreign, key)}

    return Fake


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS data dir with wmt15_translate/fr-en and wmt16_translate/ro-en prepared."""
    root = tmp_path_factory.mktemp("tfds")
    for base, pair, train in [
        (wmt15.Wmt15Translate, "fr-en", TRAIN["fr"]),
        (wmt16.Wmt16Translate, "ro-en", TRAIN["ro"]),
    ]:
        sizes = {"train": train, "validation": 20, "test": 10}
        _fake_builder(base, pair, sizes)(config=pair, data_dir=str(root)).download_and_prepare()
    return str(root)


@pytest.fixture(scope="module")
def small_problem(data_dir):
    """The En→{Fr, Ro} problem over the small data, with a 300-piece vocabulary."""
    tasks = wmt.register_wmt_problem(
        "wmt_test_ro_fr",
        ["wmt15_translate/fr-en", "wmt16_translate/ro-en"],
        data_dir=data_dir,
        vocab_size=300,
        vocab_pairs=150,
        overwrite=True,
    )
    return tasks


# --- names and sizes, before any data --------------------------------------------------------


def test_registered_names_and_table1_sizes():
    expected = {
        "wmt_en_zh_fr": ["wmt_en_zh_fr.translate_en_fr", "wmt_en_zh_fr.translate_en_zh"],
        "wmt_en_ro_fr": ["wmt_en_ro_fr.translate_en_fr", "wmt_en_ro_fr.translate_en_ro"],
        "wmt_en_hi_fr": ["wmt_en_hi_fr.translate_en_fr", "wmt_en_hi_fr.translate_en_hi"],
    }
    for mixture, tasks in expected.items():
        assert list(T.mixture_spec(mixture).tasks) == tasks
        assert T.mixture_rates(mixture) == {tasks[0]: 0.5, tasks[1]: 0.5}
        vocabs = {seqio.get_mixture_or_task(t).output_features["targets"].vocabulary for t in tasks}
        assert len(vocabs) == 1 and next(iter(vocabs)).spec.vocab_size == 64_000
    assert T.task_info("wmt_en_zh_fr.translate_en_zh").train_size == 25_986_436
    assert T.task_info("wmt_en_hi_fr.translate_en_hi").train_size == 313_748
    assert T.task_info("wmt_en_ro_fr.translate_en_ro").languages == ("en", "ro")
    assert T.task_info("wmt_en_cs.translate_en_cs").train_size is None
    # Three problems, three vocabularies: En-Fr is one task per problem.
    fr = {
        seqio.get_mixture_or_task(f"{p}.translate_en_fr").output_features["targets"].vocabulary
        for p in expected
    }
    assert len(fr) == 3


def test_temperature_rates_come_from_table1_without_data():
    rates = mixtures.rates_by("wmt_en_ro_fr", "temperature", tau=5.0)
    fr, ro = 40_853_298 ** (1 / 5), 610_320 ** (1 / 5)
    assert rates["wmt_en_ro_fr.translate_en_fr"] == pytest.approx(fr / (fr + ro))
    assert rates["wmt_en_ro_fr.translate_en_ro"] == pytest.approx(ro / (fr + ro))


@pytest.mark.parametrize(
    "pair,builder_cls,task",
    [
        ("wmt15_translate/fr-en", wmt15.Wmt15Translate, "wmt_en_zh_fr.translate_en_fr"),
        ("wmt19_translate/zh-en", wmt19.Wmt19Translate, "wmt_en_zh_fr.translate_en_zh"),
        ("wmt16_translate/ro-en", wmt16.Wmt16Translate, "wmt_en_ro_fr.translate_en_ro"),
        ("wmt14_translate/hi-en", wmt14.Wmt14Translate, "wmt_en_hi_fr.translate_en_hi"),
        ("wmt16_translate/cs-en", wmt16.Wmt16Translate, "wmt_en_cs.translate_en_cs"),
    ],
)
def test_pairs_match_tfds_builders(pair, builder_cls, task, tmp_path):
    name, config, languages, version = wmt.parse_pair(pair)
    assert tfds.builder_cls(name) is builder_cls
    cfg = next(c for c in builder_cls.BUILDER_CONFIGS if c.name == config)
    assert str(cfg.version) == version == "1.0.0"
    assert cfg.language_pair == languages
    builder = tfds.builder(f"{pair}:{version}", data_dir=str(tmp_path))
    source = seqio.get_mixture_or_task(task).source
    assert source.tfds_name == f"{pair}:1.0.0"
    assert tuple(source.splits) == tuple(str(s) for s in builder.subsets)


def test_manual_downloads_are_named():
    hint = wmt.manual_download_hint(tfds.builder("wmt14_translate/hi-en:1.0.0", data_dir="/x"))
    assert "--manual_dir" in hint and "hindencorp0.1.gz" in hint
    hint = wmt.manual_download_hint(tfds.builder("wmt16_translate/cs-en:1.0.0", data_dir="/x"))
    assert "czeng16pre.deduped-ignoring-sections.txt.gz" in hint
    assert (
        wmt.manual_download_hint(tfds.builder("wmt16_translate/ro-en:1.0.0", data_dir="/x")) == ""
    )


def test_bad_pair_names():
    with pytest.raises(UnknownNameError, match="Closest registered: ro-en"):
        wmt.register_wmt_pair("wmt16_translate/ro-em", problem="p")
    with pytest.raises(UnknownNameError, match="wmt16_translate"):
        wmt.register_wmt_pair("wmt16_translat/ro-en", problem="p")
    with pytest.raises(ConfigError, match="'<builder>/<xx>-<yy>"):
        wmt.register_wmt_pair("wmt16_translate", problem="p")
    with pytest.raises(ConfigError, match="source_language='de'"):
        wmt.register_wmt_pair("wmt16_translate/ro-en", problem="p", source_language="de")


def test_register_another_pair_is_one_call():
    task = wmt.register_wmt_pair("wmt14_translate/de-en", problem="wmt_test_de", overwrite=True)
    assert task.name == "wmt_test_de.translate_en_de"
    assert task.source.tfds_name == "wmt14_translate/de-en:1.0.0"
    assert T.task_info(task.name).languages == ("en", "de")


# --- data dirs and unprepared data -----------------------------------------------------------


def test_unprepared_dataset_names_dir_and_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        T.task_size("wmt_en_ro_fr.translate_en_ro")
    msg = str(e.value)
    assert "'wmt16_translate/ro-en:1.0.0' is not prepared" in msg
    assert f"tfds build wmt16_translate/ro-en:1.0.0 --data_dir={tmp_path}\n" in msg
    assert "--manual_dir" not in msg
    # Building the dataset fails the same way (not with TFDS's AssertionError).
    task = seqio.get_mixture_or_task("wmt_en_hi_fr.translate_en_hi")
    with pytest.raises(DataError, match=r"hindencorp0\.1\.gz") as e:
        task.get_dataset(LENGTHS, split="validation")
    assert f"--data_dir={tmp_path}" in str(e.value)


def test_data_dir_is_resolved_at_first_use(data_dir, tmp_path, monkeypatch):
    source = seqio.get_mixture_or_task("wmt_en_ro_fr.translate_en_ro").source
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    assert source.data_dir is None
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    assert source.data_dir == data_dir
    assert T.task_size("wmt_en_ro_fr.translate_en_ro") == TRAIN["ro"]
    assert T.task_size("wmt_en_ro_fr.translate_en_ro", "test") == 10
    gin.parse_config(f"TFDS_DATA_DIR = '{tmp_path}'")  # gin beats the environment
    try:
        assert source.data_dir == str(tmp_path)
        with pytest.raises(DataError, match="not prepared"):
            T.task_size("wmt_en_ro_fr.translate_en_ro")
    finally:
        gin.clear_config()
    pinned = reg.TfdsSource("wmt16_translate/ro-en:1.0.0", {"train": "train"}, data_dir="/pinned")
    assert pinned.data_dir == "/pinned"  # a task's own data_dir beats both


def test_wmt19_has_no_test_split():
    source = seqio.get_mixture_or_task("wmt_en_zh_fr.translate_en_zh").source
    with pytest.raises(DataError, match="no split 'test'"):
        source.get_dataset("test")


# --- the pipeline over real TFDS files -------------------------------------------------------


def test_sizes_come_from_tfds_metadata(small_problem):
    fr, ro = small_problem
    assert (fr, ro) == ("wmt_test_ro_fr.translate_en_fr", "wmt_test_ro_fr.translate_en_ro")
    assert T.task_size(fr) == TRAIN["fr"] and T.task_size(ro) == TRAIN["ro"]
    assert T.task_size(ro, "validation") == 20
    # Table 1's sizes are kept for the known pairs, whatever the data holds.
    assert T.mixture_spec("wmt_test_ro_fr").resolved_sizes() == {fr: 40_853_298, ro: 610_320}


def test_vocabulary_is_trained_on_both_sides_of_the_first_pairs(small_problem, data_dir):
    corpus = list(reg.problems()["wmt_test_ro_fr"].corpus())
    expected = set()
    for pair, lang in [
        ("wmt15_translate/fr-en:1.0.0", "fr"),
        ("wmt16_translate/ro-en:1.0.0", "ro"),
    ]:
        ds = tfds.builder(pair, data_dir=data_dir).as_dataset(split="train", shuffle_files=False)
        for ex in tfds.as_numpy(ds.take(150)):
            expected |= {ex["en"].decode(), ex[lang].decode()}
    assert set(corpus) == expected
    assert len(corpus) == len(expected) == 2 * 150 + 2 * TRAIN["ro"]  # all 60 Ro pairs
    vocab = seqio.get_mixture_or_task(small_problem[1]).output_features["targets"].vocabulary
    assert vocab.vocab_size == 300 + 100  # pieces + sentinel extra ids
    assert vocab.decode(vocab.encode(_sentence("ro", 7))) == _sentence("ro", 7)


def test_translation_examples_are_tokenized(small_problem):
    ro = small_problem[1]
    task = seqio.get_mixture_or_task(ro)
    vocab = task.output_features["targets"].vocabulary
    source = task.source.tfds_source().get_dataset("validation", shuffle=False)
    raw = next(source.as_numpy_iterator())
    ex = next(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
    assert ex["inputs_pretokenized"].decode() == (
        "translate English to Romanian: " + raw["en"].decode()
    )
    assert ex["targets_pretokenized"].decode() == raw["ro"].decode()
    assert ex["targets"][-1] == 1 and ex["inputs"][-1] == 1
    assert vocab.decode(ex["targets"][:-1].tolist()) == raw["ro"].decode()


def test_mixture_draws_pairs_at_their_rates(small_problem):
    names = list(small_problem)
    derived = T.derive_mixture("wmt_test_ro_fr", {names[0]: 0.8, names[1]: 0.2})
    for mixture in ["wmt_test_ro_fr", derived]:
        rates = mixing.mixture_rates(mixture)
        ds = mixing.mixed_dataset(
            names,
            rates,
            split="train",
            lengths=LENGTHS,
            shuffle=True,
            seed=3,
            shard_info=seqio.ShardInfo(0, 1),
        )
        draws = 2000
        counts = collections.Counter(
            int(ex["task_ids"][0]) - 1 for ex in ds.take(draws).as_numpy_iterator()
        )
        for i, task in enumerate(names):
            se = math.sqrt(rates[task] * (1 - rates[task]) / draws)
            assert abs(counts[i] / draws - rates[task]) < 3 * se, (mixture, counts, rates)

"""Registering your own tasks and mixtures from TSV / JSONL / text files."""

from __future__ import annotations

import json

import ptjf.tasks as T
import pytest
import seqio

from ptjf.errors import ConfigError, DataError, RatesError, UnknownNameError

LENGTHS = {"inputs": 32, "targets": 32}
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _pairs(n: int, offset: int = 0) -> list[tuple[str, str]]:
    out = []
    for i in range(offset, offset + n):
        src = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4)) + f" {i}"
        out.append((src, src.upper()))
    return out


@pytest.fixture()
def toy_files(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\n".join(f"{s}\t{t}" for s, t in _pairs(300)) + "\n", encoding="utf-8")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"en": s, "xx": t}) for s, t in _pairs(120, 1000)), encoding="utf-8"
    )
    txt = tmp_path / "mono.txt"
    txt.write_text("\n".join(s for s, _ in _pairs(200, 5000)), encoding="utf-8")
    return tsv, jsonl, txt


def test_register_translation_from_tsv_and_mix_with_jsonl(toy_files):
    tsv, jsonl, txt = toy_files
    common = dict(problem="toy_problem", vocab_size=100, overwrite=True)
    T.register_translation_task(
        "toy_tsv", source_language="en", target_language="de", data=tsv, **common
    )
    T.register_translation_task(
        "toy_jsonl",
        source_language="en",
        target_language="fr",
        data={"train": jsonl, "validation": jsonl},
        format="jsonl",
        source_key="en",
        target_key="xx",
        train_size=50,
        **common,
    )
    T.register_lm_task("toy_lm", language="en", data=txt, **common)
    T.register_mixture(
        "toy_mix", ["toy_tsv", "toy_jsonl", "toy_lm"], method="temperature", tau=2.0, overwrite=True
    )
    assert T.task_size("toy_jsonl") == 50
    assert T.task_size("toy_jsonl", "validation") == 120
    sizes = {t: T.task_size(t) for t in ("toy_tsv", "toy_jsonl", "toy_lm")}
    assert 280 < sizes["toy_tsv"] < 300  # one file, ~96% in train
    rates = T.mixture_rates("toy_mix")
    total = sum(v**0.5 for v in sizes.values())
    for t, v in sizes.items():
        assert rates[t] == pytest.approx(v**0.5 / total)
    ex = next(
        seqio.get_mixture_or_task("toy_tsv")
        .get_dataset(LENGTHS, split="train", shuffle=False)
        .as_numpy_iterator()
    )
    src = ex["inputs_pretokenized"].decode()
    assert src.startswith("translate English to German: ")
    assert ex["targets_pretokenized"].decode() == src.split(": ", 1)[1].upper()
    vocab = seqio.get_mixture_or_task("toy_tsv").output_features["targets"].vocabulary
    assert vocab == seqio.get_mixture_or_task("toy_lm").output_features["targets"].vocabulary
    mixed = seqio.get_mixture_or_task("toy_mix").get_dataset(
        LENGTHS, split="train", seed=1, num_epochs=None
    )
    assert len(list(mixed.take(20).as_numpy_iterator())) == 20


def test_tsv_line_without_tab_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\nc\td\n", encoding="utf-8")
    T.register_translation_task(
        "toy_bad", source_language="en", target_language="de", data={"train": bad}, overwrite=True
    )
    with pytest.raises(DataError, match=r"bad\.tsv:2: expected at least 2 tab-separated columns"):
        T.task_size("toy_bad")


def test_empty_split_is_a_clear_error(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("a\tb\n", encoding="utf-8")
    T.register_translation_task(
        "toy_empty",
        source_language="en",
        target_language="de",
        data={"train": train},
        overwrite=True,
    )
    with pytest.raises(DataError, match=r"'validation' split of task 'toy_empty'.* is empty"):
        T.task_size("toy_empty", "validation")


def test_malformed_jsonl_and_missing_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "a", "xx": "b"}\n{oops\n', encoding="utf-8")
    T.register_translation_task(
        "toy_badjson",
        source_language="en",
        target_language="de",
        data={"train": bad},
        format="jsonl",
        source_key="en",
        target_key="xx",
        overwrite=True,
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        T.task_size("toy_badjson")
    T.register_lm_task("toy_missing", language="en", data=tmp_path / "nope.txt", overwrite=True)
    with pytest.raises(DataError, match="does not exist"):
        T.task_size("toy_missing")


def test_duplicate_names_and_unknown_tasks_in_mixtures(tmp_path):
    with pytest.raises(ConfigError, match="already registered"):
        T.register_translation_task(
            "bible_translate_en_fr",
            source_language="en",
            target_language="fr",
            data=tmp_path / "x.tsv",
        )
    with pytest.raises(UnknownNameError, match="bible_translate_en_fr"):
        T.register_mixture("toy_bad_mix", ["bible_translate_en_fx"], method="uniform")


def test_mixture_rate_errors_are_raised_at_registration():
    tasks = ["bible_translate_en_fr", "bible_translate_en_es"]
    with pytest.raises(RatesError, match="sum to zero"):
        T.register_mixture("toy_zero", tasks, weights={tasks[0]: 0.0, tasks[1]: 0.0})
    with pytest.raises(RatesError, match="tau"):
        T.register_mixture("toy_tau", tasks, method="temperature", tau=0.0)
    with pytest.raises(RatesError, match="budget"):
        T.register_mixture("toy_unimax", tasks, method="unimax", max_epochs=2)
    with pytest.raises(RatesError, match="one weight per task"):
        T.register_mixture("toy_w", tasks, weights={tasks[0]: 1.0})
    assert "toy_zero" not in seqio.MixtureRegistry.names()


def test_unimax_budget_over_the_cap_is_an_error_not_a_silent_raise():
    T.register_mixture(
        "toy_unimax_cap",
        ["bible_translate_en_fr", "bible_translate_en_tl_low"],
        method="unimax",
        budget=10_000_000,
        max_epochs=2,
        overwrite=True,
    )
    with pytest.raises(
        RatesError, match=r"Lower the budget to at most 60584\.0 or raise max_epochs"
    ):
        T.mixture_rates("toy_unimax_cap")


def test_mixing_tasks_with_different_vocabularies_is_refused(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("\n".join(f"{s}\t{t}" for s, t in _pairs(50)), encoding="utf-8")
    T.register_translation_task(
        "toy_other_vocab", source_language="en", target_language="de", data=f, overwrite=True
    )
    with pytest.raises(ConfigError, match="share one vocabulary"):
        T.register_mixture(
            "toy_mixed_vocab", ["bible_translate_en_fr", "toy_other_vocab"], method="uniform"
        )


def test_a_built_problem_refuses_new_members(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("\n".join(f"{s}\t{t}" for s, t in _pairs(200)), encoding="utf-8")
    T.register_translation_task(
        "toy_frozen_a",
        source_language="en",
        target_language="de",
        data=f,
        problem="frozen",
        vocab_size=60,
        overwrite=True,
    )
    vocab = seqio.get_mixture_or_task("toy_frozen_a").output_features["targets"].vocabulary
    assert vocab.vocab_size == 160  # using it builds it: 60 pieces + 100 extra ids
    with pytest.raises(ConfigError, match="already built"):
        T.register_translation_task(
            "toy_frozen_b",
            source_language="en",
            target_language="fr",
            data=f,
            problem="frozen",
            vocab_size=60,
            overwrite=True,
        )

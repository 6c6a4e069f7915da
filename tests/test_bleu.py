"""Corpus BLEU: sacrebleu's numbers (13a, zh), detokenizing, the evaluator, the trainer's records."""

from __future__ import annotations

import glob
import os

import jax
import numpy as np
import ptjf.tasks as T
import pytest
import sacrebleu
import seqio

from ptjf.commands import train
from ptjf.data.preprocessors import translation_prefix
from ptjf.data.vocabularies import padded_vocab_size
from ptjf.errors import ConfigError, DataError
from ptjf.models import EncoderDecoder, beam_search, init_params, preset
from ptjf.training.bleu import (
    BleuEvaluator,
    BleuExamples,
    bleu_tokenizer,
    corpus_bleu,
    detokenize,
    read_bleu_examples,
    translation_target_languages,
)
from ptjf.training.metrics_io import read_metrics

HYPS = ["the cat sat on the mat .", "a dog barked at night", "hello world , again"]
REFS = ["the cat sat on a mat .", "the dog barked at night", "hello , world again"]
ZH_HYPS = ["猫坐在垫子上。", "狗在夜里叫了", "你好世界"]
ZH_REFS = ["猫坐在一个垫子上。", "那只狗在夜里叫了", "你好，世界"]

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
HANZI = dict(zip(WORDS, "天地人日月山水火木金", strict=True))


def test_corpus_bleu_is_sacrebleus_13a_score():
    expected = sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert corpus_bleu(HYPS, REFS) == expected
    assert corpus_bleu(HYPS, REFS, target_language="fr") == expected
    assert 0 < expected < 100
    assert corpus_bleu(REFS, REFS) == pytest.approx(100.0)


def test_chinese_targets_use_the_zh_tokenizer():
    expected = sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score
    assert corpus_bleu(ZH_HYPS, ZH_REFS, target_language="zh") == expected
    # 13a sees each unspaced sentence as one word, so the choice matters.
    assert expected != sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="13a").score
    assert [bleu_tokenizer(x) for x in ("zh", "zh-CN", "zh_tw", "fr", "en", None)] == [
        "zh",
        "zh",
        "zh",
        "13a",
        "13a",
        "13a",
    ]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="no hypotheses"):
        corpus_bleu([], [])
    with pytest.raises(DataError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(DataError, match="must be strings"):
        corpus_bleu(["a", None], ["a", "b"])


# --- toy tasks: en→fr (upper-cased words), en→zh (one character per word), an LM task -----


def _pairs(n: int, offset: int) -> list[tuple[str, str, str]]:
    out = []
    for i in range(offset, offset + n):
        words = [WORDS[(3 * i + 7 * j) % len(WORDS)] for j in range(2 + i % 5)]
        out.append(
            (
                " ".join(words),
                " ".join(w.upper() for w in reversed(words)),
                "".join(HANZI[w] for w in words),
            )
        )
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("bleu")
    splits = {"train": _pairs(80, 0), "validation": _pairs(6, 500)}
    common = dict(problem="toy_bleu", vocab_size=60, overwrite=True)
    for name, lang, column in (("toy_bleu_en_fr", "fr", 1), ("toy_bleu_en_zh", "zh", 2)):
        files = {}
        for split, rows in splits.items():
            files[split] = d / f"{name}.{split}.tsv"
            files[split].write_text("".join(f"{r[0]}\t{r[column]}\n" for r in rows), "utf-8")
        T.register_translation_task(
            name, source_language="en", target_language=lang, data=files, **common
        )
    lm = {s: d / f"lm.{s}.txt" for s in splits}
    for split, rows in splits.items():
        lm[split].write_text("".join(f"{r[0]} {r[0]}\n" for r in rows), "utf-8")
    T.register_lm_task("toy_bleu_lm_en", language="en", data=lm, **common)
    T.register_mixture(
        "toy_bleu_mix",
        ["toy_bleu_en_fr", "toy_bleu_en_zh"],
        weights={"toy_bleu_en_fr": 1.0, "toy_bleu_en_zh": 1.0},
        overwrite=True,
    )
    return seqio.get_mixture_or_task("toy_bleu_en_fr").output_features["targets"].vocabulary


def test_translation_tasks_and_their_target_languages(toy):
    names = ["toy_bleu_lm_en", "toy_bleu_en_zh", "toy_bleu_en_fr", "not_a_ptjf_task"]
    assert translation_target_languages(names) == {"toy_bleu_en_zh": "zh", "toy_bleu_en_fr": "fr"}


def test_detokenize_stops_at_the_first_eos(toy):
    ids = toy.encode("ALPHA BETA")
    assert detokenize([*ids, 1, *toy.encode("GAMMA"), 0, 0], toy) == "ALPHA BETA"
    assert detokenize(np.array(ids), toy) == "ALPHA BETA"


def test_examples_are_the_validation_inputs_and_raw_references_in_order(toy):
    lengths = {"inputs": 16, "targets": 12}
    ex = read_bleu_examples("toy_bleu_en_zh", lengths, target_language="zh", max_examples=4)
    valid = _pairs(6, 500)[:4]
    assert ex.references == [r[2] for r in valid]
    assert ex.inputs.shape == (4, 16) and ex.inputs.dtype == np.int32
    # Each input is trimmed to 15 tokens plus EOS (SeqIO's `append_eos_after_trim`), 0-padded.
    for row, (source, _, _) in zip(ex.inputs, valid, strict=True):
        ids = [*toy.encode(translation_prefix("en", "zh") + source)[:15], 1]
        np.testing.assert_array_equal(row, ids + [0] * (16 - len(ids)))
    with pytest.raises(DataError, match="empty"):
        read_bleu_examples("toy_bleu_en_zh", lengths, target_language="zh", split="test")


def test_evaluator_decodes_in_fixed_batches_on_the_device_and_drops_padding(toy):
    refs = [" ".join(WORDS[i : i + 4]).upper() for i in range(5)]
    rows = [[*toy.encode(r), 1] for r in refs]
    inputs = np.zeros((len(rows), 32), np.int32)
    for i, r in enumerate(rows):
        inputs[i, : len(r)] = r
    seen = []

    def echo(params, batch):  # an oracle "model": its output is its input
        seen.append((type(batch), batch.shape))
        return batch + params

    examples = BleuExamples("toy_bleu_en_fr", inputs, refs, "fr", toy)
    evaluator = BleuEvaluator(echo, [examples], batch_size=2)
    assert evaluator.hypotheses(0, "toy_bleu_en_fr") == refs
    assert evaluator.evaluate(0) == {"toy_bleu_en_fr": pytest.approx(100.0)}
    assert seen[:3] == [(type(jax.device_put(inputs)), (2, 32))] * 3
    # Another parameter value changes every output, and the score with it.
    shifted = evaluator.evaluate(1)["toy_bleu_en_fr"]
    assert shifted == corpus_bleu(evaluator.hypotheses(1, "toy_bleu_en_fr"), refs) < 100


def test_evaluator_outputs_are_beam_searches_of_the_validation_inputs(toy):
    config = preset("tiny", padded_vocab_size(toy))
    model, params = EncoderDecoder(config), init_params(config, jax.random.key(1))
    lengths = {"inputs": 24, "targets": 12}
    languages = {"toy_bleu_en_fr": "fr", "toy_bleu_en_zh": "zh"}
    evaluator = BleuEvaluator.for_tasks(languages, model, lengths, batch_size=4, max_examples=3)
    assert evaluator.tasks == list(languages)
    for task, language in languages.items():
        ex = read_bleu_examples(task, lengths, target_language=language, max_examples=3)
        padded = np.concatenate([ex.inputs, np.zeros_like(ex.inputs[:1])])  # one compiled shape
        tokens, _ = beam_search(model, params, padded, 12, beam_size=4, alpha=0.6, eos_id=1)
        expected = [detokenize(row, toy) for row in np.asarray(tokens)[:3]]
        assert evaluator.hypotheses(params, task) == expected
        assert any(expected)
    scores = evaluator.evaluate(params)
    assert scores["toy_bleu_en_zh"] == corpus_bleu(
        evaluator.hypotheses(params, "toy_bleu_en_zh"), [p[2] for p in _pairs(3, 500)], "zh"
    )


# --- the trainer ----------------------------------------------------------------------------

TINY = [
    "MIXTURE_OR_TASK_NAME = 'toy_bleu_mix'",
    "TRAIN_STEPS = 2",
    "WARMUP_STEPS = 1",
    "BATCH_SIZE = 4",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 12}",
    "EVAL_PERIOD = 2",
    "CheckpointConfig.period = 2",
    "train.max_eval_examples = 4",
    "train.train_eval_examples = 4",
    "train.log_every = 1",
]


def test_a_run_with_eval_bleu_records_bleu_per_translation_task(toy, tmp_path):
    summary = train.run(
        ["runs/scalarization.gin", "models/tiny.gin"],
        [
            f"MODEL_DIR = '{tmp_path}'",
            *TINY,
            "EVAL_BLEU = True",
            "train.bleu_examples = 3",
            "Plan.eval_tasks = ['toy_bleu_lm_en']",
        ],
    )
    records = read_metrics(tmp_path)
    assert [r["global_step"] for r in records] == [0, 2]
    for record in records:
        assert set(record["validation"]) == {"toy_bleu_lm_en", "toy_bleu_en_fr", "toy_bleu_en_zh"}
        assert set(record["bleu"]) == {"toy_bleu_en_fr", "toy_bleu_en_zh"}  # no LM task
        assert all(0 <= v <= 100 for v in record["bleu"].values())
    assert summary.last_eval["bleu"] == records[-1]["bleu"]
    import tensorflow as tf

    (events,) = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value}
    assert {"bleu/toy_bleu_en_fr", "bleu/toy_bleu_en_zh"} <= tags


def test_eval_bleu_without_a_translation_task_is_refused_at_start_up(toy, tmp_path):
    bindings = [f"MODEL_DIR = '{tmp_path}'", *TINY, "EVAL_BLEU = True"]
    bindings[1] = "MIXTURE_OR_TASK_NAME = 'toy_bleu_lm_en'"
    with pytest.raises(ConfigError, match=r"no eval task is a translation task.*toy_bleu_lm_en"):
        train.run(["runs/scalarization.gin", "models/tiny.gin"], bindings)
    assert not os.listdir(tmp_path)
    with pytest.raises(ConfigError, match=r"train\.beam_size"):
        train.run(
            ["runs/scalarization.gin", "models/tiny.gin"],
            [*bindings[:1], *TINY, "EVAL_BLEU = True", "train.beam_size = 0"],
        )

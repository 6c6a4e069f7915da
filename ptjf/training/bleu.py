"""Corpus BLEU of every translation eval task, decoded with beam search (paper App. A.5).

The paper reports BLEU on each NMT task's validation split: beam search with beam size 4 and
GNMT's length penalty `((5 + n) / 6) ** alpha`, alpha = 0.6 (T5X's defaults; see
`ptjf.models.decoding`), then sacrebleu's corpus BLEU of the detokenized outputs against the
raw reference strings — the standard 13a tokenizer, or sacrebleu's `zh` tokenizer for Chinese
targets, whose text has no spaces for 13a to split on.

`BleuEvaluator` reads each task's validation examples once (unpacked, in the source's fixed
order: encoder input ids and SeqIO's `targets_pretokenized`), keeps the inputs on the device
for the whole run, and decodes them in batches of one shape, so the beam search compiles once
and every eval of a run scores exactly the same examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import sacrebleu
import seqio
import tensorflow as tf

from ptjf.errors import ConfigError, DataError, UnknownNameError
from ptjf.models import EncoderDecoder
from ptjf.models.decoding import beam_search
from ptjf.runtime.partitioning import Partitioner

DecodeFn = Callable[[Any, jax.Array], jax.Array]
# sacrebleu tokenizers for targets that 13a cannot split (no spaces between words).
_TOKENIZER_BY_LANGUAGE = {"zh": "zh"}


def bleu_tokenizer(target_language: str | None) -> str:
    """sacrebleu's tokenizer for a target language: `zh` for Chinese, else `13a`."""
    if not target_language:
        return "13a"
    base = target_language.lower().replace("_", "-").split("-")[0]
    return _TOKENIZER_BY_LANGUAGE.get(base, "13a")


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], target_language: str | None = None
) -> float:
    """sacrebleu corpus BLEU (0–100) of hypotheses against one reference each."""
    hypotheses, references = list(hypotheses), list(references)
    if not hypotheses:
        raise DataError(
            "corpus_bleu got no hypotheses; BLEU needs at least one decoded example (check that "
            "the task's validation split is not empty)."
        )
    if len(hypotheses) != len(references):
        raise DataError(
            f"corpus_bleu got {len(hypotheses)} hypotheses but {len(references)} references; "
            "give exactly one reference per hypothesis, in the same order."
        )
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise DataError(f"corpus_bleu: {name} must be strings; found {bad[0]!r}.")
    tokenize = bleu_tokenizer(target_language)
    return float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score)


def translation_target_languages(task_names: Sequence[str]) -> dict[str, str]:
    """{task: target language} for the ptjf translation tasks among `task_names`, in order.

    LM tasks, and tasks registered with SeqIO directly (ptjf knows no kind for them), are left
    out.
    """
    from ptjf import tasks as ptasks

    out: dict[str, str] = {}
    for name in task_names:
        try:
            info = ptasks.task_info(name)
        except UnknownNameError:
            continue
        if info.kind == "translation":
            out[name] = info.languages[-1]
    return out


def detokenize(ids: Sequence[int] | np.ndarray, vocabulary: seqio.Vocabulary) -> str:
    """The text of output ids, cut before the first EOS."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    eos = vocabulary.eos_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return vocabulary.decode(ids)


@dataclasses.dataclass(frozen=True)
class BleuExamples:
    """A translation task's BLEU examples: encoder inputs (padded) and reference strings."""

    task: str
    inputs: np.ndarray  # [examples, input length] int32, 0-padded
    references: list[str]
    target_language: str
    vocabulary: seqio.Vocabulary


def read_bleu_examples(
    task: str,
    task_feature_lengths: Mapping[str, int],
    *,
    target_language: str,
    split: str = "validation",
    max_examples: int | None = None,
) -> BleuExamples:
    """The first `max_examples` (None = all) examples of a task's split, in source order."""
    from ptjf import tasks as ptasks

    seqio_task = ptasks.get_task_or_mixture(task)
    if not isinstance(seqio_task, seqio.Task):
        raise ConfigError(f"{task!r} is a mixture; BLEU is computed per task.")
    input_length = int(task_feature_lengths["inputs"])
    ds = seqio_task.get_dataset(
        sequence_length=dict(task_feature_lengths),
        split=split,
        shuffle=False,
        num_epochs=1,
        try_in_mem_cache=False,
    )
    if max_examples is not None:
        ds = ds.take(max_examples)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    inputs, references = [], []
    for ex in ds.as_numpy_iterator():
        row = np.zeros((input_length,), np.int32)
        ids = np.asarray(ex["inputs"], np.int32)[:input_length]
        row[: len(ids)] = ids
        inputs.append(row)
        references.append(ex["targets_pretokenized"].decode("utf-8"))
    if not inputs:
        raise DataError(
            f"Task {task!r} gives no example for split {split!r}; BLEU needs at least one. "
            "Check its data, or turn BLEU off (train.eval_bleu = False)."
        )
    return BleuExamples(
        task=task,
        inputs=np.stack(inputs),
        references=references,
        target_language=target_language,
        vocabulary=seqio_task.output_features["targets"].vocabulary,
    )


def beam_decoder(
    model: EncoderDecoder,
    max_decode_length: int,
    *,
    beam_size: int = 4,
    alpha: float = 0.6,
    eos_id: int = 1,
) -> DecodeFn:
    """`decode(params, encoder_input_tokens) -> tokens` by beam search (jitted once per shape)."""

    def decode(params: Any, encoder_input_tokens: jax.Array) -> jax.Array:
        tokens, _ = beam_search(
            model,
            params,
            encoder_input_tokens,
            max_decode_length,
            beam_size=beam_size,
            alpha=alpha,
            eos_id=eos_id,
        )
        return tokens

    return decode


def _batches(
    inputs: np.ndarray, batch_size: int, partitioner: Partitioner | None = None
) -> list[jax.Array]:
    """Rows in batches of one shape (the last filled with all-padding rows), on the device."""
    missing = -len(inputs) % batch_size
    padded = np.concatenate([inputs, np.zeros((missing, inputs.shape[1]), inputs.dtype)])
    rows = [padded[i : i + batch_size] for i in range(0, len(padded), batch_size)]
    if partitioner is None:
        return [jax.device_put(r) for r in rows]
    return [partitioner.global_batch({"inputs": r})["inputs"] for r in rows]


class BleuEvaluator:
    """Corpus BLEU of parameters on each translation task's examples."""

    def __init__(
        self,
        decode: DecodeFn,
        examples: Sequence[BleuExamples],
        batch_size: int,
        partitioner: Partitioner | None = None,
    ):
        """With a `partitioner`, inputs are split over the mesh's `data` axis and the decoded
        tokens come back replicated, so every process can detokenize them."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"BLEU batch_size={batch_size!r} must be an integer >= 1.")
        if not examples:
            raise ConfigError("BleuEvaluator got no task; give at least one translation task.")
        if partitioner is not None:
            decode = partitioner.jit(decode, out_shardings=partitioner.replicated)
        self._decode = decode
        self._examples = {e.task: e for e in examples}
        # On the device once: every eval of the run decodes the same inputs.
        self._inputs = {e.task: _batches(e.inputs, batch_size, partitioner) for e in examples}

    @property
    def tasks(self) -> list[str]:
        return list(self._examples)

    def hypotheses(self, params: Any, task: str) -> list[str]:
        """The detokenized outputs for a task's examples, in order."""
        examples = self._examples[task]
        outputs = [self._decode(params, batch) for batch in self._inputs[task]]
        tokens = np.concatenate(jax.device_get(outputs))[: len(examples.references)]
        return [detokenize(row, examples.vocabulary) for row in tokens]

    def evaluate(self, params: Any) -> dict[str, float]:
        """{task: corpus BLEU} for every task."""
        return {
            task: corpus_bleu(self.hypotheses(params, task), e.references, e.target_language)
            for task, e in self._examples.items()
        }

    @classmethod
    def for_tasks(
        cls,
        target_languages: Mapping[str, str],
        model: EncoderDecoder,
        task_feature_lengths: Mapping[str, int],
        *,
        batch_size: int,
        max_examples: int | None = None,
        beam_size: int = 4,
        alpha: float = 0.6,
        partitioner: Partitioner | None = None,
    ) -> BleuEvaluator:
        """The trainer's evaluator: validation examples, beam search up to the targets length."""
        examples = [
            read_bleu_examples(
                task, task_feature_lengths, target_language=lang, max_examples=max_examples
            )
            for task, lang in target_languages.items()
        ]
        eos_ids = {e.vocabulary.eos_id for e in examples}
        if len(eos_ids) != 1 or None in eos_ids:
            raise ConfigError(
                f"BLEU tasks {list(target_languages)} do not share one EOS id ({eos_ids}); "
                "beam search stops at one EOS."
            )
        decode = beam_decoder(
            model,
            int(task_feature_lengths["targets"]),
            beam_size=beam_size,
            alpha=alpha,
            eos_id=eos_ids.pop(),
        )
        return cls(decode, examples, batch_size, partitioner)

"""Registering tasks, problems and mixtures — the SeqIO way, with ptjf's rates and vocabularies.

A *problem* is a set of tasks that share one vocabulary (SeqIO mixes only tasks with the same
output features). Its SentencePiece model is trained on the training text of every task
registered under it — the paper's "one vocabulary per NMT problem" — so register all tasks of a
problem before the first one is used. Mixtures of these tasks are in `ptjf.tasks.mixtures`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import seqio

from ptjf import storage
from ptjf.data import preprocessors as prep
from ptjf.data.sources import InMemorySource, LoadFn, read_jsonl, read_text, read_tsv
from ptjf.data.splits import SPLITS, SplitSpec, split_of, subsample
from ptjf.data.stored_vocabulary import StoredSentencePieceVocabulary
from ptjf.data.tfds_source import (  # noqa: F401  (re-exported: ptjf.tasks' TFDS helpers)
    TFDS_DATA_DIR_MACRO,
    TfdsSource,
    check_tfds_prepared,
    tfds_data_dir,
)
from ptjf.data.vocabularies import CachedSentencePieceVocabulary, VocabularySpec
from ptjf.errors import ConfigError, DataError, UnknownNameError

TextFn = Callable[[], Iterable[str]]
_LOCK = threading.RLock()


# --- problems: one shared vocabulary per set of tasks -------------------------------------


@dataclasses.dataclass
class Problem:
    """Tasks sharing one vocabulary, trained on all their training text."""

    name: str
    spec: VocabularySpec
    corpora: dict[str, TextFn] = dataclasses.field(default_factory=dict)
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    vocabulary: CachedSentencePieceVocabulary | None = None

    def corpus(self) -> Iterable[str]:
        seen: set[str] = set()
        for task in sorted(self.corpora):
            for text in self.corpora[task]():
                if text and text not in seen:
                    seen.add(text)
                    yield text

    def fingerprint(self) -> str:
        return json.dumps(sorted(self.fingerprints.items()))

    def built(self) -> bool:
        return bool(self.vocabulary and self.vocabulary._sentencepiece_model_file)


_PROBLEMS: dict[str, Problem] = {}


def problem_vocabulary(
    problem: str, vocab_size: int = 8000, max_sentences: int = 60_000, extra_ids: int = 100
) -> CachedSentencePieceVocabulary:
    """The shared vocabulary of `problem`, created on first call with these settings."""
    with _LOCK:
        spec = VocabularySpec(
            name=problem,
            vocab_size=vocab_size,
            corpus_id=f"problem:{problem}",
            max_sentences=max_sentences,
            extra_ids=extra_ids,
        )
        p = _PROBLEMS.get(problem)
        if p is None:
            p = _PROBLEMS[problem] = Problem(problem, spec)
            p.vocabulary = CachedSentencePieceVocabulary(spec, p.corpus, p.fingerprint)
        elif p.spec != spec:
            raise ConfigError(
                f"Problem {problem!r} already has a vocabulary with {p.spec}; a task asked for "
                f"{spec}. Tasks of one problem share one vocabulary: use the same vocab_size, "
                "or a different problem name."
            )
        assert p.vocabulary is not None
        return p.vocabulary


def _join_problem(
    problem: str, task: str, text_fn: TextFn, fingerprint: str, **vocab_kw
) -> seqio.Vocabulary:
    vocab = problem_vocabulary(problem, **vocab_kw)
    p = _PROBLEMS[problem]
    if p.built() and p.fingerprints.get(task) != fingerprint:
        raise ConfigError(
            f"Task {task!r} joins problem {problem!r}, whose vocabulary was already built from "
            f"{sorted(p.corpora)}. Register every task of a problem before using any of them "
            "(or give the new task its own problem)."
        )
    p.corpora[task] = text_fn
    p.fingerprints[task] = fingerprint
    return vocab


def problems() -> dict[str, Problem]:
    return dict(_PROBLEMS)


# --- tasks ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What ptjf knows about a task beyond SeqIO's registry (for reports, BLEU, the CLI)."""

    name: str
    kind: str  # "translation" | "lm"
    languages: tuple[str, ...]
    problem: str | None
    train_size: int | None
    description: str


_TASKS: dict[str, TaskInfo] = {}


def task_info(name: str) -> TaskInfo:
    if name not in _TASKS:
        raise UnknownNameError("ptjf task", name, _TASKS)
    return _TASKS[name]


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def _remove_existing(name: str, overwrite: bool) -> None:
    if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
        if not overwrite:
            raise ConfigError(
                f"A task or mixture named {name!r} is already registered; choose another name "
                "or pass overwrite=True."
            )
        seqio.TaskRegistry.remove(name)
        seqio.MixtureRegistry.remove(name)


def _user_vocabulary(
    name: str, vocabulary: seqio.Vocabulary | str | os.PathLike | None
) -> seqio.Vocabulary | None:
    """The task's vocabulary as given: a `seqio.Vocabulary`, or the path (local or gs://) of a
    SentencePiece model such as a T5X checkpoint's own (100 sentinel ids, as in T5X).

    A user-supplied model that is not there fails at registration, not deep inside tf.data at
    the first batch (ptjf's own cached vocabularies build themselves).
    """
    if isinstance(vocabulary, (str, os.PathLike)):
        vocabulary = StoredSentencePieceVocabulary(os.fspath(vocabulary))
    if isinstance(vocabulary, StoredSentencePieceVocabulary):
        path = vocabulary.source
    elif type(vocabulary) is seqio.SentencePieceVocabulary:
        path = vocabulary.sentencepiece_model_file
    else:
        return vocabulary
    if not storage.exists(path):
        raise DataError(
            f"Task {name!r}: the vocabulary's SentencePiece model {path!r} does not exist. Pass "
            "an existing .model file (local or gs://), or leave vocabulary=None to build one "
            "from the task's training text."
        )
    return vocabulary


def _add_task(
    name: str,
    *,
    kind: str,
    languages: tuple[str, ...],
    loader: LoadFn | None = None,
    source: seqio.DataSource | None = None,
    text_fn: TextFn,
    fingerprint: str,
    task_preprocessors: list[Callable[..., Any]],
    token_preprocessors: Sequence[Callable[..., Any]] = (),
    problem: str | None,
    vocabulary: seqio.Vocabulary | str | None,
    vocab_size: int,
    vocab_sentences: int | None = None,
    train_size: int | None,
    description: str,
    overwrite: bool,
) -> seqio.Task:
    """Registers a task over `source` (or an in-memory source over `loader`).

    `token_preprocessors` run on token ids, between tokenizing and appending EOS (where span
    corruption goes); `vocab_sentences` caps the problem's vocabulary corpus.
    """
    if (loader is None) == (source is None):
        raise ConfigError(f"Task {name!r}: give exactly one of loader= and source=.")
    vocabulary = _user_vocabulary(name, vocabulary)
    with _LOCK:
        _remove_existing(name, overwrite)
        if vocabulary is None:
            vocab_kw = {"max_sentences": vocab_sentences} if vocab_sentences else {}
            vocabulary = _join_problem(
                problem or name, name, text_fn, fingerprint, vocab_size=vocab_size, **vocab_kw
            )
        if source is None:
            source = InMemorySource(loader, SPLITS, description=f"task {name!r} ({description})")
        task = seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=[
                *task_preprocessors,
                seqio.preprocessors.tokenize,
                *token_preprocessors,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features(vocabulary),
            metric_fns=[],
            # An in-memory source permutes whole epochs itself; a buffer would only add to
            # every checkpoint of the input stream (ptjf.data.input_state).
            shuffle_buffer_size=None if isinstance(source, InMemorySource) else 1000,
        )
        _TASKS[name] = TaskInfo(name, kind, languages, problem or name, train_size, description)
        return task


def _split_rows(rows: Sequence[tuple[str, ...]], split_spec: SplitSpec) -> dict[str, list]:
    out: dict[str, list] = {s: [] for s in SPLITS}
    for row in rows:
        out[split_of(row[0], split_spec)].append(row)
    return out


def _file_fingerprint(data: Mapping[str, Path]) -> str:
    parts = []
    for split, p in sorted(data.items()):
        st = Path(p).stat() if Path(p).exists() else None
        parts.append(
            f"{split}={Path(p).resolve()}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}"
        )
    return "|".join(parts)


def _normalise_data(data: str | Path | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(data, (str, Path)):
        return {"all": Path(data)}
    unknown = set(data) - set(SPLITS)
    if unknown:
        raise ConfigError(f"Unknown split(s) {sorted(unknown)} in data; use {list(SPLITS)}.")
    if "train" not in data:
        raise ConfigError("data must name a 'train' file (and optionally 'validation', 'test').")
    return {k: Path(v) for k, v in data.items()}


def _file_loader(
    data: dict[str, Path],
    read: Callable[[Path], list[tuple[str, ...]]],
    split_spec: SplitSpec,
    train_size: int | None,
) -> Callable[[str], list[tuple[str, ...]]]:
    """Rows per split: from per-split files, or one file split by a hash of each row's first field."""

    @functools.cache
    def rows(split: str) -> list[tuple[str, ...]]:
        if "all" in data:
            chosen = _split_rows(read(data["all"]), split_spec)[split]
        elif split in data:
            chosen = read(data[split])
        else:
            chosen = []
        if split == "train" and train_size is not None:
            by_key = {r[0]: r for r in chosen}
            chosen = [by_key[k] for k in subsample(by_key, train_size)]
        return chosen

    return rows


def register_translation_task(
    name: str,
    *,
    source_language: str,
    target_language: str,
    data: str | Path | Mapping[str, str | Path],
    format: str = "tsv",
    source_key: str = "source",
    target_key: str = "target",
    problem: str | None = None,
    vocabulary: seqio.Vocabulary | str | None = None,
    vocab_size: int = 8000,
    train_size: int | None = None,
    split_spec: SplitSpec = SplitSpec(),
    overwrite: bool = False,
) -> seqio.Task:
    """Registers a translation task from TSV (source<TAB>target) or JSON-lines files.

    `data` is one file (split ~96/2/2 by a hash of the source text) or a mapping from split
    name to file. The vocabulary is `vocabulary` when given, else the shared vocabulary of
    `problem` (default: the task's own name), trained on the training text of its tasks.
    """
    files = _normalise_data(data)
    if format == "tsv":
        read = read_tsv
    elif format == "jsonl":
        read = functools.partial(read_jsonl, source_key=source_key, target_key=target_key)
    else:
        raise ConfigError(
            f"format={format!r} is not supported for translation; use 'tsv' or 'jsonl'."
        )
    rows = _file_loader(files, read, split_spec, train_size)
    return _add_task(
        name,
        kind="translation",
        languages=(source_language, target_language),
        loader=lambda split: [{"source": s, "target": t} for s, t in rows(split)],
        text_fn=lambda: itertools.chain.from_iterable(rows("train")),
        fingerprint=f"{format}:{_file_fingerprint(files)}:{train_size}:{split_spec}",
        task_preprocessors=[
            functools.partial(
                prep.format_translation,
                source_language=source_language,
                target_language=target_language,
            )
        ],
        problem=problem,
        vocabulary=vocabulary,
        vocab_size=vocab_size,
        train_size=train_size,
        description=f"{source_language}→{target_language} from {', '.join(map(str, files.values()))}",
        overwrite=overwrite,
    )


def register_lm_task(
    name: str,
    *,
    language: str,
    data: str | Path | Mapping[str, str | Path],
    format: str = "text",
    text_key: str = "text",
    problem: str | None = None,
    vocabulary: seqio.Vocabulary | str | None = None,
    vocab_size: int = 8000,
    train_size: int | None = None,
    split_spec: SplitSpec = SplitSpec(),
    overwrite: bool = False,
) -> seqio.Task:
    """Registers a monolingual (prefix-LM) task from plain-text (one example a line) or JSONL."""
    files = _normalise_data(data)
    if format == "text":

        def read(p: Path) -> list[tuple[str, ...]]:
            return [(t,) for t in read_text(p)]
    elif format == "jsonl":

        def read(p: Path) -> list[tuple[str, ...]]:
            return [(s,) for s, _ in read_jsonl(p, text_key, None)]
    else:
        raise ConfigError(
            f"format={format!r} is not supported for LM tasks; use 'text' or 'jsonl'."
        )
    rows = _file_loader(files, read, split_spec, train_size)
    return make_lm_task(
        name,
        language=language,
        loader=lambda split: [{"text": r[0]} for r in rows(split)],
        text_fn=lambda: (r[0] for r in rows("train")),
        fingerprint=f"{format}:{_file_fingerprint(files)}:{train_size}:{split_spec}",
        problem=problem,
        vocabulary=vocabulary,
        vocab_size=vocab_size,
        train_size=train_size,
        description=f"{language} text from {', '.join(map(str, files.values()))}",
        overwrite=overwrite,
    )


def make_translation_task(
    name: str,
    *,
    source_language: str,
    target_language: str,
    key_map: Mapping[str, str] | None = None,
    **kw: Any,
) -> seqio.Task:
    """Registers a translation task from a loader (or `source=`) of {source, target} examples.

    `key_map` renames the source's features first, e.g. {"source": "en", "target": "ro"} for
    TFDS's WMT examples, which are keyed by language.
    """
    rename = (
        [functools.partial(seqio.preprocessors.rekey, key_map=dict(key_map))] if key_map else []
    )
    return _add_task(
        name,
        kind="translation",
        languages=(source_language, target_language),
        task_preprocessors=[
            *rename,
            functools.partial(
                prep.format_translation,
                source_language=source_language,
                target_language=target_language,
            ),
        ],
        **kw,
    )


def make_lm_task(name: str, *, language: str, **kw: Any) -> seqio.Task:
    """Registers a prefix-LM task from a loader of {text} examples per split."""
    return _add_task(
        name,
        kind="lm",
        languages=(language,),
        task_preprocessors=[prep.drop_short_texts, prep.prefix_lm],
        **kw,
    )


def _span_corruption(
    dataset: Any,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    *,
    noise_density: float,
    mean_noise_span_length: float,
) -> Any:
    # Imported when a dataset is built, not when tasks are registered.
    from ptjf.data.span_corruption import span_corruption

    return span_corruption(
        dataset,
        sequence_length,
        output_features,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )


def make_span_corruption_task(
    name: str,
    *,
    language: str,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    **kw: Any,
) -> seqio.Task:
    """Registers a T5 span-corruption LM task from a loader (or `source=`) of {text} examples.

    SeqIO's usual LM pipeline (`ptjf.data.span_corruption`): the text becomes `targets`, is
    tokenized, cut into chunks and span corrupted into `inputs`/`targets` (15% noise, mean
    span 3 by default), then gets EOS. Sequence lengths too short for a corrupted chunk raise
    `ConfigError` when the dataset is built.
    """
    return _add_task(
        name,
        kind="lm",
        languages=(language,),
        task_preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
        ],
        token_preprocessors=[
            functools.partial(
                _span_corruption,
                noise_density=noise_density,
                mean_noise_span_length=mean_noise_span_length,
            )
        ],
        **kw,
    )


# --- lookup and sizes --------------------------------------------------------------------


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
    """The registered SeqIO task or mixture `name`; unknown names list the closest ones."""
    if name in seqio.MixtureRegistry.names():
        return seqio.get_mixture_or_task(name)
    if name in seqio.TaskRegistry.names():
        return seqio.get_mixture_or_task(name)
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    raise UnknownNameError(
        "task or mixture",
        name,
        known,
        hint="Register it with ptjf.tasks.register_* (and import the module that does).",
    )


def task_size(name: str, split: str = "train") -> int:
    """Number of examples in a task's split, counted from its source."""
    task = get_task_or_mixture(name)
    if not isinstance(task, seqio.Task):
        raise ConfigError(f"{name!r} is a mixture; task_size takes a task name.")
    n = task.source.num_input_examples(split)
    if n is None:
        raise DataError(f"Task {name!r} does not know the size of its {split!r} split.")
    return int(n)

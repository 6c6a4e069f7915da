"""WMT translation over TensorFlow Datasets: the paper's NMT problems (Sec. 4.1, Table 1, App. A.1).

The paper trains one 64k SentencePiece vocabulary per NMT *problem* (e.g. En→{Zh, Fr}) on
that problem's training text. A SeqIO task has one vocabulary, so a pair is registered once
per problem it belongs to, named `<problem>.translate_<source>_<target>`:

| problem (= mixture) | tasks                                                        |
|---------------------|--------------------------------------------------------------|
| `wmt_en_zh_fr`      | `wmt_en_zh_fr.translate_en_fr`, `wmt_en_zh_fr.translate_en_zh` |
| `wmt_en_ro_fr`      | `wmt_en_ro_fr.translate_en_fr`, `wmt_en_ro_fr.translate_en_ro` |
| `wmt_en_hi_fr`      | `wmt_en_hi_fr.translate_en_fr`, `wmt_en_hi_fr.translate_en_hi` |
| `wmt_en_cs`         | `wmt_en_cs.translate_en_cs` (no mixture)                       |

En-Fr is `wmt15_translate/fr-en`, En-Zh `wmt19_translate/zh-en`, En-Ro `wmt16_translate/ro-en`,
En-Hi `wmt14_translate/hi-en`, En-Cs `wmt16_translate/cs-en` (TFDS 1.0.0 of each), always
English → the other language. The TFDS splits are the task's splits: the paper's evaluation
sets are TFDS's validation splits (newstest2014 + newsdiscussdev2015 for Fr: 4,503 pairs;
newstest2018 for Zh: 3,981; newsdev2016 for Ro: 1,999; newsdev2014 for Hi: 520), and TFDS's
WMT19 has no test split. Each mixture samples its tasks 0.5 / 0.5; its sizes are Table 1's
training pairs, so `@mixture_rates(method="temperature", tau=…)` works before any data exists.

Nothing is read when these are registered. The first use of a task resolves the TFDS data dir
(`registration.tfds_data_dir`: `--gin.TFDS_DATA_DIR`, `$TFDS_DATA_DIR`, or a `data_dir=`),
checks the dataset is prepared there (else a `DataError` with the `tfds build` command), and
builds the problem's vocabulary from both sides of the first `VOCAB_PAIRS` training pairs of
each task (TFDS shuffles examples when it writes them, so the head of the split is a fixed
pseudo-random sample). docs/data.md says how to prepare the data.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import seqio

from ptjf.data.splits import SPLITS
from ptjf.errors import ConfigError, UnknownNameError

from . import mixtures
from . import registration as reg

TFDS_VERSION = "1.0.0"  # the version of every WMT builder config in TFDS 4.x
VOCAB_SIZE = 64_000  # paper App. A.1
# The vocabulary is trained on both sides of this many training pairs per task, at most
# VOCAB_SENTENCES sentences per problem: enough text for 64k pieces, small enough to train
# SentencePiece in minutes rather than on all 40M En-Fr pairs.
VOCAB_PAIRS = 500_000
VOCAB_SENTENCES = 2_000_000

# Table 1: training pairs (TFDS train split) and evaluation pairs (TFDS validation split).
TABLE1 = {
    "wmt15_translate/fr-en": (40_853_298, 4_503),
    "wmt19_translate/zh-en": (25_986_436, 3_981),
    "wmt16_translate/ro-en": (610_320, 1_999),
    "wmt14_translate/hi-en": (313_748, 520),
}
# Expected training pairs, used for size-based rates before the data is counted. En-Cs is not
# in the paper; its TFDS train split depends on whether CzEng (a manual download) was given,
# so its size is read from the prepared dataset's metadata instead.
EXPECTED_TRAIN_SIZES: dict[str, int | None] = {
    **{pair: sizes[0] for pair, sizes in TABLE1.items()},
    "wmt16_translate/cs-en": None,
}
PROBLEMS: dict[str, tuple[str, ...]] = {
    "wmt_en_zh_fr": ("wmt15_translate/fr-en", "wmt19_translate/zh-en"),
    "wmt_en_ro_fr": ("wmt15_translate/fr-en", "wmt16_translate/ro-en"),
    "wmt_en_hi_fr": ("wmt15_translate/fr-en", "wmt14_translate/hi-en"),
    "wmt_en_cs": ("wmt16_translate/cs-en",),
}
# TFDS's WMT19 builder has validation but no test split (newstest2019 came after it).
_WITHOUT_TEST = ("wmt19_translate",)
_PAIR = re.compile(
    r"^(?P<builder>[a-z0-9_]+)/(?P<a>[a-z]+)-(?P<b>[a-z]+)(?::(?P<version>[\d.]+))?$"
)


def parse_pair(tfds_name: str) -> tuple[str, str, tuple[str, str], str]:
    """'wmt16_translate/ro-en[:1.0.0]' → ('wmt16_translate', 'ro-en', ('ro', 'en'), '1.0.0')."""
    m = _PAIR.match(tfds_name.strip()) if isinstance(tfds_name, str) else None
    if m is None:
        raise ConfigError(
            f"{tfds_name!r} is not a TFDS translation dataset name; expected "
            "'<builder>/<xx>-<yy>[:version]', e.g. 'wmt16_translate/de-en'."
        )
    config = f"{m['a']}-{m['b']}"
    return m["builder"], config, (m["a"], m["b"]), m["version"] or TFDS_VERSION


def task_name(problem: str, source_language: str, target_language: str) -> str:
    return f"{problem}.translate_{source_language}_{target_language}"


def _check_exists(builder: str, config: str) -> None:
    """Unknown builders and configs fail at registration, from TFDS's code (no data read)."""
    import tensorflow_datasets as tfds

    try:
        cls = tfds.builder_cls(builder)
    except tfds.core.registered.DatasetNotFoundError:
        known = [n for n in tfds.list_builders(with_community_datasets=False) if "wmt" in n]
        raise UnknownNameError(
            "TFDS translation dataset",
            builder,
            known,
            hint="Name a TFDS builder, e.g. 'wmt16_translate/de-en'.",
        ) from None
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in configs:
        raise UnknownNameError(
            f"language pair of {builder}",
            config,
            configs,
            hint=f"{builder} has: {', '.join(configs)}.",
        )


def manual_download_hint(builder: Any) -> str:
    """The files a WMT builder needs in `--manual_dir` (e.g. HindEnCorp for hi-en), read from
    TFDS's own table of sub-datasets; '' when none (or when the builder is not a WMT one)."""
    try:
        from tensorflow_datasets.translate import wmt as tfds_wmt

        source = builder.builder_config.language_pair[0]
        names = itertools.chain.from_iterable(builder.subsets.values())
        needed = [
            (f, ", ".join(tfds_wmt.DATASET_MAP[n].get_url(source)))
            for n in names
            for f in tfds_wmt.DATASET_MAP[n].get_manual_dl_files(source)
        ]
    except (AttributeError, ImportError, KeyError, TypeError):
        return ""
    if not needed:
        return ""
    files = "; ".join(f"{f} (from {url})" for f, url in needed)
    return (
        "Add --manual_dir=DIR to that command, DIR holding the files TFDS cannot download "
        f"itself: {files}.\n"
    )


def _pair_text(source: reg.TfdsSource, languages: tuple[str, str], pairs: int) -> Iterator[str]:
    ds = source.get_dataset("train", shuffle=False).take(pairs)
    for ex in ds.as_numpy_iterator():
        for lang in languages:
            yield ex[lang].decode("utf-8")


def register_wmt_pair(
    tfds_name: str,
    *,
    problem: str,
    source_language: str = "en",
    name: str | None = None,
    expected_train_size: int | None = None,
    data_dir: str | None = None,
    vocab_size: int = VOCAB_SIZE,
    vocab_pairs: int = VOCAB_PAIRS,
    vocab_sentences: int = VOCAB_SENTENCES,
    validate: bool = True,
    overwrite: bool = False,
) -> seqio.Task:
    """Registers the TFDS translation dataset `tfds_name` as a task of `problem`.

    Translates `source_language` (English by default) into the pair's other language; the
    task is `<problem>.translate_<source>_<target>` unless `name` is given, and shares the
    problem's vocabulary (trained on both sides of the first `vocab_pairs` training pairs of
    each of its tasks). `expected_train_size` (default: Table 1's count, when the pair is in
    it) is what size-based rates use before the data is counted. `data_dir` pins this task's
    TFDS data dir (else `registration.tfds_data_dir` decides at first use).
    """
    builder, config, languages, version = parse_pair(tfds_name)
    if validate:
        _check_exists(builder, config)
    if source_language not in languages:
        raise ConfigError(
            f"source_language={source_language!r} is not a language of {tfds_name!r} "
            f"({languages[0]!r}, {languages[1]!r})."
        )
    target_language = languages[1] if languages[0] == source_language else languages[0]
    full = f"{builder}/{config}:{version}"
    splits = [s for s in SPLITS if not (s == "test" and builder in _WITHOUT_TEST)]
    source = reg.TfdsSource(
        full,
        {s: s for s in splits},
        data_dir=data_dir,
        description=f"TFDS {full}",
        build_hint=manual_download_hint,
    )
    if expected_train_size is None:
        expected_train_size = EXPECTED_TRAIN_SIZES.get(f"{builder}/{config}")
    both = (source_language, target_language)
    return reg.make_translation_task(
        name or task_name(problem, source_language, target_language),
        source_language=source_language,
        target_language=target_language,
        key_map={"source": source_language, "target": target_language},
        source=source,
        text_fn=lambda: _pair_text(source, both, vocab_pairs),
        fingerprint=f"tfds:{full}:{source_language}-{target_language}:first {vocab_pairs} pairs",
        problem=problem,
        vocabulary=None,
        vocab_size=vocab_size,
        vocab_sentences=vocab_sentences,
        train_size=expected_train_size,
        description=f"WMT {source_language}→{target_language} from TFDS {full}",
        overwrite=overwrite,
    )


def register_wmt_problem(
    problem: str,
    pairs: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    **pair_kw: Any,
) -> list[str]:
    """Registers every pair of `problem` (one shared vocabulary) and, for two or more pairs,
    the mixture `problem` over them: static `weights` by task name (default equal).

    The mixture's sizes are the pairs' expected training sizes when all are known (so
    temperature rates need no data), else counted from the prepared datasets' metadata.
    Returns the task names, in the order of `pairs`.
    """
    if not pairs:
        raise ConfigError(f"WMT problem {problem!r} names no pairs.")
    tasks = [register_wmt_pair(p, problem=problem, **pair_kw).name for p in pairs]
    if len(tasks) > 1:
        expected = {t: reg.task_info(t).train_size for t in tasks}
        sizes = expected if all(v is not None for v in expected.values()) else None
        mixtures.register_mixture(
            problem,
            tasks,
            method="static",
            weights=dict(weights) if weights is not None else dict.fromkeys(tasks, 1.0),
            sizes=sizes,
            size_unit="examples",
            overwrite=pair_kw.get("overwrite", False),
        )
    return tasks


def register_defaults() -> None:
    """The problems, tasks and mixtures in the module docstring."""
    for problem, pairs in PROBLEMS.items():
        register_wmt_problem(problem, pairs, validate=False, overwrite=True)


register_defaults()

"""mC4 span-corruption LM tasks over TensorFlow Datasets: the paper's many-task study (Sec. 4.2).

TFDS serves mC4 as `c4/multilingual`, one split per language: `<code>` (train) and
`<code>-validation`. Version 3.1.0 keeps documents whose language-ID confidence is at least
0.95, the filter the paper uses (App. B, after UniMax); it is the version read here.

Registered here (problem "mc4": one 64k SentencePiece vocabulary, trained on a corpus in which
each language appears at its τ = 3.33 temperature-sampling rate, App. B):
- `mc4.<code>` for en, hi, gu, gd, sw: T5 span corruption (15% noise, mean span 3) over the
  `text` feature, SeqIO's usual LM pipeline;
- mixtures sized by Table 2's characters (billions: en 13,396; hi 75; gu 3.6; gd 0.8;
  sw 4.1): `mc4` (τ = 3.33, the paper's baseline and PTJF fine-tuning rates),
  `mc4_tau1.43`, `mc4_tau2`, `mc4_tau3.33`, `mc4_tau5`, and `mc4_unimax`.

`register_language(code, size=…)` adds any of mC4's languages to a problem, and
`register_problem(name, {code: size, …})` a whole problem with its mixtures in one call, e.g.
`register_problem("mc4_yo", {**TABLE2_SIZES, "yo": 0.5})`. Nothing is read when these are
registered: the first use resolves the TFDS data dir and checks the data is prepared.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence

import seqio

from ptjf.data.vocabularies import CachedSentencePieceVocabulary, VocabularySpec, temperature_corpus
from ptjf.errors import ConfigError, UnknownNameError

from . import mixtures
from . import registration as reg

TFDS_NAME = "c4/multilingual"
TFDS_VERSION = "3.1.0"
# The split names of c4/multilingual (TFDS's c4.MC4_LANGUAGES): 101 languages, six of them
# also in Latin script (`-Latn`). TFDS's "und" split (language unknown) is not a language.
LANGUAGES = (
    *("af", "am", "ar", "az", "be", "bg", "bg-Latn", "bn", "ca", "ceb", "co", "cs", "cy"),
    *("da", "de", "el", "el-Latn", "en", "eo", "es", "et", "eu", "fa", "fi", "fil", "fr"),
    *("fy", "ga", "gd", "gl", "gu", "ha", "haw", "hi", "hi-Latn", "hmn", "ht", "hu", "hy"),
    *("id", "ig", "is", "it", "iw", "ja", "ja-Latn", "jv", "ka", "kk", "km", "kn", "ko"),
    *("ku", "ky", "la", "lb", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms"),
    *("mt", "my", "ne", "nl", "no", "ny", "pa", "pl", "ps", "pt", "ro", "ru", "ru-Latn"),
    *("sd", "si", "sk", "sl", "sm", "sn", "so", "sq", "sr", "st", "su", "sv", "sw", "ta"),
    *("te", "tg", "th", "tr", "uk", "ur", "uz", "vi", "xh", "yi", "yo", "zh", "zh-Latn", "zu"),
)
# Table 2: billions of characters per language.
TABLE2_SIZES = {"en": 13_396.0, "hi": 75.0, "gu": 3.6, "gd": 0.8, "sw": 4.1}
SIZE_UNIT = "characters"
PROBLEM = "mc4"
VOCAB_SIZE = 64_000  # paper App. B
VOCAB_TAU = 3.33  # paper App. B
VOCAB_SENTENCES = 2_000_000  # lines of text in the vocabulary corpus (ptjf's choice)
VOCAB_SEED = 0
# SentencePiece skips sentences over 4,192 bytes; Hindi or Gujarati (3 bytes a character)
# would lose long lines far more often than English, skewing the corpus' shares. Cutting lines
# at 1,000 characters keeps every line.
MAX_LINE_CHARS = 1_000
TAUS = (1.43, 2.0, 3.33, 5.0)  # paper Sec. 4.2
PAPER_TAU = 3.33
# UniMax needs a budget and an epoch cap, which the paper does not give; in billions of
# characters, like the sizes. Only the rates' ratios matter to a mixture.
UNIMAX_BUDGET = 1_000.0
UNIMAX_MAX_EPOCHS = 5.0
NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
MC4_BUILD_HINT = (
    "c4/multilingual is an Apache Beam dataset built from every Common Crawl dump: at this "
    "size it needs a distributed runner (add --beam_pipeline_options=runner=DataflowRunner,…), "
    "or use a data dir that already has it.\n"
)


def task_name(problem: str, code: str) -> str:
    return f"{problem}.{code.replace('-', '_')}"


def check_language(code: str) -> str:
    """`code` if it is one of mC4's languages, else `UnknownNameError` naming the closest."""
    if code not in LANGUAGES:
        raise UnknownNameError(
            "mC4 language",
            code,
            LANGUAGES,
            hint="Use a split name of TFDS's c4/multilingual (an ISO code such as 'yo').",
        )
    return code


# --- problems: languages sharing one temperature-sampled vocabulary -----------------------


@dataclasses.dataclass
class Mc4Problem:
    """Languages sharing one vocabulary, trained on a temperature-sampled corpus of them."""

    name: str
    spec: VocabularySpec
    tau: float
    sizes: dict[str, float] = dataclasses.field(default_factory=dict)
    texts: dict[str, reg.TextFn] = dataclasses.field(default_factory=dict)
    tasks: dict[str, str] = dataclasses.field(default_factory=dict)  # code → task name
    vocabulary: CachedSentencePieceVocabulary | None = None

    def corpus(self) -> Iterator[str]:
        """The vocabulary's training text: each language at its τ-rate of the sizes."""
        return temperature_corpus(
            self.texts,
            self.sizes,
            self.tau,
            self.spec.max_sentences,
            seed=self.spec.seed,
            unit=SIZE_UNIT,
        )

    def fingerprint(self) -> str:
        return json.dumps(sorted(self.sizes.items()))

    def built(self) -> bool:
        return bool(self.vocabulary and self.vocabulary._sentencepiece_model_file)


_PROBLEMS: dict[str, Mc4Problem] = {}
_LOCK = threading.RLock()


def problem(name: str) -> Mc4Problem:
    if name not in _PROBLEMS:
        raise UnknownNameError("mC4 problem", name, _PROBLEMS)
    return _PROBLEMS[name]


def _problem(
    name: str, vocab_size: int, tau: float, sentences: int, seed: int, tfds_name: str
) -> Mc4Problem:
    spec = VocabularySpec(
        name=name,
        vocab_size=vocab_size,
        corpus_id=f"tfds:{tfds_name}:lines<={MAX_LINE_CHARS}:tau={tau}",
        max_sentences=sentences,
        seed=seed,
    )
    p = _PROBLEMS.get(name)
    if p is None:
        p = _PROBLEMS[name] = Mc4Problem(name, spec, tau)
        p.vocabulary = CachedSentencePieceVocabulary(spec, p.corpus, p.fingerprint)
    elif (p.spec, p.tau) != (spec, tau):
        raise ConfigError(
            f"mC4 problem {name!r} already has a vocabulary with {p.spec} (tau={p.tau}); a "
            f"language asked for {spec} (tau={tau}). Languages of one problem share one "
            "vocabulary: use the same settings, or another problem name."
        )
    return p


def _lines(source: reg.TfdsSource) -> Iterator[str]:
    """The non-blank lines of the training documents, in the prepared dataset's order."""
    for ex in source.get_dataset("train", shuffle=False).as_numpy_iterator():
        for line in ex["text"].decode("utf-8").split("\n"):
            line = line.strip()
            if line:
                yield line[:MAX_LINE_CHARS]


def register_language(
    code: str,
    *,
    size: float | None = None,
    problem: str = PROBLEM,
    data_dir: str | None = None,
    tfds_version: str = TFDS_VERSION,
    vocab_size: int = VOCAB_SIZE,
    vocab_tau: float = VOCAB_TAU,
    vocab_sentences: int = VOCAB_SENTENCES,
    vocab_seed: int = VOCAB_SEED,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    overwrite: bool = False,
) -> seqio.Task:
    """Registers `<problem>.<code>`: span corruption over mC4's `code` documents.

    `size` is the language's training data in billions of characters (Table 2's for en, hi,
    gu, gd, sw; give it for any other language): it sets the language's share of the
    problem's vocabulary corpus and its rate in the problem's mixtures. Register every
    language of a problem before using any of them: the vocabulary is built from all of them.
    """
    check_language(code)
    if size is None:
        size = TABLE2_SIZES.get(code)
    if size is None or not float(size) > 0:
        raise ConfigError(
            f"mC4 language {code!r} needs size= (> 0): its training data in billions of "
            f"characters (Table 2 gives en, hi, gu, gd, sw), got {size!r}."
        )
    name = task_name(problem, code)
    tfds_name = f"{TFDS_NAME}:{tfds_version}"
    source = reg.TfdsSource(
        tfds_name,
        {"train": code, "validation": f"{code}-validation"},
        data_dir=data_dir,
        description=f"mC4 {code} (TFDS {tfds_name})",
        build_hint=MC4_BUILD_HINT,
    )
    text = functools.partial(_lines, source)
    with _LOCK:
        p = _problem(problem, vocab_size, vocab_tau, vocab_sentences, vocab_seed, tfds_name)
        if p.built() and p.sizes.get(code) != float(size):
            raise ConfigError(
                f"mC4 language {code!r} joins problem {problem!r}, whose vocabulary was already "
                f"built from {sorted(p.sizes)}. Register every language of a problem before "
                "using any of them (or give the new language its own problem)."
            )
        task = reg.make_span_corruption_task(
            name,
            language=code,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
            source=source,
            text_fn=text,
            fingerprint="",
            problem=problem,
            vocabulary=p.vocabulary,
            vocab_size=vocab_size,
            train_size=None,
            description=f"mC4 {code} span corruption from TFDS {tfds_name}",
            overwrite=overwrite,
        )
        p.sizes[code] = float(size)
        p.texts[code] = text
        p.tasks[code] = name
    return task


def vocabulary_corpus(name: str = PROBLEM) -> Iterator[str]:
    """The text problem `name`'s vocabulary is (or would be) trained on."""
    return problem(name).corpus()


def register_mixtures(
    problem_name: str = PROBLEM,
    *,
    languages: Sequence[str] | None = None,
    taus: Sequence[float] = TAUS,
    unimax_budget: float = UNIMAX_BUDGET,
    unimax_max_epochs: float = UNIMAX_MAX_EPOCHS,
    overwrite: bool = False,
) -> list[str]:
    """Registers the problem's mixtures over `languages` (default: all of its languages),
    sized by their characters: `<problem>` (τ = 3.33), `<problem>_tau<τ>` for each τ, and
    `<problem>_unimax`. Returns their names."""
    p = problem(problem_name)
    codes = list(languages) if languages is not None else list(p.tasks)
    missing = [c for c in codes if c not in p.tasks]
    if missing:
        raise ConfigError(
            f"Languages {missing} are not registered in mC4 problem {problem_name!r} (it has "
            f"{list(p.tasks)}); register them first with register_language(code, problem=…)."
        )
    tasks = [p.tasks[c] for c in codes]
    sizes = {p.tasks[c]: p.sizes[c] for c in codes}
    common = dict(sizes=sizes, size_unit=SIZE_UNIT, overwrite=overwrite)
    names = []
    for name, tau in [(problem_name, PAPER_TAU)] + [(f"{problem_name}_tau{t:g}", t) for t in taus]:
        mixtures.register_mixture(name, tasks, method="temperature", tau=tau, **common)
        names.append(name)
    mixtures.register_mixture(
        f"{problem_name}_unimax",
        tasks,
        method="unimax",
        budget=unimax_budget,
        max_epochs=unimax_max_epochs,
        **common,
    )
    names.append(f"{problem_name}_unimax")
    return names


def register_problem(
    name: str,
    sizes: Mapping[str, float],
    *,
    mixtures: bool = True,
    overwrite: bool = False,
    **language_kw,
) -> list[str]:
    """Registers the languages `sizes` names (code → billions of characters) as problem
    `name`, sharing one vocabulary, and its mixtures. Returns the task names."""
    if not sizes:
        raise ConfigError(f"mC4 problem {name!r} names no languages.")
    for code in sizes:
        check_language(code)
    tasks = [
        register_language(code, size=size, problem=name, overwrite=overwrite, **language_kw).name
        for code, size in sizes.items()
    ]
    if mixtures:
        register_mixtures(name, overwrite=overwrite)
    return tasks


def register_defaults() -> None:
    """The tasks and mixtures in the module docstring."""
    register_problem(PROBLEM, TABLE2_SIZES, overwrite=True)


register_defaults()

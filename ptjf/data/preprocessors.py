"""Text preprocessors for ptjf's tasks (tf.data maps, SeqIO style).

Translation examples become T5-style `inputs`/`targets` with a task prefix
("translate English to French: …") so that one model and one vocabulary serve every pair of a
problem. Monolingual text becomes a prefix-LM example until span corruption lands: the verse is
cut at a uniformly random word boundary, the first part is `inputs`, the rest `targets`.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

LANGUAGE_NAMES = {
    "en": "English",
    "fr": "French",
    "es": "Spanish",
    "ru": "Russian",
    "tl": "Tagalog",
    "vi": "Vietnamese",
    "de": "German",
    "ro": "Romanian",
    "hi": "Hindi",
    "zh": "Chinese",
    "cs": "Czech",
    "it": "Italian",
    "pt": "Portuguese",
    "sw": "Swahili",
    "gu": "Gujarati",
    "gd": "Scottish Gaelic",
}


def language_name(code: str) -> str:
    """English name of a language code, for translation prefixes (the code itself if unknown)."""
    return LANGUAGE_NAMES.get(code, code)


def translation_prefix(source_language: str, target_language: str) -> str:
    return f"translate {language_name(source_language)} to {language_name(target_language)}: "


def format_translation(
    dataset: tf.data.Dataset, source_language: str, target_language: str
) -> tf.data.Dataset:
    """{source, target} → {inputs: prefix + source, targets: target}."""
    prefix = translation_prefix(source_language, target_language)

    def fn(ex):
        return {"inputs": tf.strings.join([prefix, ex["source"]]), "targets": ex["target"]}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def drop_short_texts(dataset: tf.data.Dataset, min_words: int = 2) -> tf.data.Dataset:
    """Keeps texts with at least `min_words` words, so a prefix-LM split leaves both sides."""
    return dataset.filter(lambda ex: tf.size(tf.strings.split(ex["text"])) >= min_words)


@seqio.map_over_dataset(num_seeds=1)
def prefix_lm(ex, seed):
    """{text} → {inputs: the first k words, targets: the rest}, k uniform in [1, n-1].

    The cut is drawn from SeqIO's per-example seed, so it differs between epochs yet is
    reproducible for a fixed task seed.
    """
    words = tf.strings.split(ex["text"])
    n = tf.size(words)
    k = tf.random.stateless_uniform(
        [], seed=seed, minval=1, maxval=tf.maximum(n, 2), dtype=tf.int32
    )
    return {
        "inputs": tf.strings.reduce_join(words[:k], separator=" "),
        "targets": tf.strings.reduce_join(words[k:], separator=" "),
    }

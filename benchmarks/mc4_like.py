"""A made-up c4/multilingual:3.1.0 in TFDS format: mC4's features and split names, local data.

ptjf's mC4 tasks read TFDS's `c4/multilingual` (`ptjf.tasks.mc4`). This builder writes a
dataset with the same name, config, version, features and split names (`<code>` and
`<code>-validation`), from words made of each language's own syllables, so that the benchmarks
and tests run the real TFDS → SeqIO → span corruption → packing pipeline without a download.

    from mc4_like import prepare
    prepare(data_dir, docs={"en": 2000, "sw": 200}, words_per_doc=600, num_shards=64)

`num_shards` files per split, as mC4's 1,024 per language let each host of a pod read whole
files of its own (SeqIO shards by file when there are at least as many files as hosts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.text import c4 as tfds_c4

SYLLABLES = {
    "en": "ba be bi bo bu ka ke ki ko ku ta te ti to tu wa we wi wo",
    "hi": "क का कि की को ग गा गि न ना नि म मा मि र रा रि स सा सि",
    "gu": "ક કા કિ કી ગ ગા ગિ ન ના નિ મ મા મિ ર રા રિ સ સા સિ",
    "gd": "bà bè bì bò cà cè cì dà dè dì là lè lì mà mè mì rà rè rì",
    "sw": "ja je ji jo ju nya nye nyi mwa mwe mwi pa pe pi pu za ze zi",
}
FEATURES = ("text", "url", "content-type", "content-length", "timestamp")
MIN_VALIDATION_DOCS = 3


def document(lang: str, doc: int, words: int) -> str:
    """Document `doc` of `lang`: `words` words of 1–3 syllables, in lines of 12 words."""
    syllables = SYLLABLES[lang].split()
    rng = np.random.default_rng([sum(map(ord, lang)), doc])
    counts = rng.integers(1, 4, size=words)
    picks = rng.integers(0, len(syllables), size=int(counts.sum()))
    out, i = [], 0
    for c in counts:
        out.append("".join(syllables[j] for j in picks[i : i + c]))
        i += c
    lines = [" ".join(out[k : k + 12]) for k in range(0, words, 12)]
    return "\n".join(lines) + f" {doc}"


# The name, config and version of TFDS's own mC4 builder, which ptjf's mC4 tasks open.
[REAL_CONFIG] = [c for c in tfds_c4.C4.BUILDER_CONFIGS if c.name == "multilingual"]


def builder_class(
    docs: Mapping[str, int],
    words_per_doc: int,
    validation_docs: int = MIN_VALIDATION_DOCS,
    *,
    text: Callable[[str, int], str] | None = None,
    validation_first: int = 1_000_000,
) -> type:
    """A c4/multilingual builder over `docs` training documents per language and
    `validation_docs` validation documents (numbered from `validation_first`). `text(lang, doc)`
    writes a document; by default `document(lang, doc, words_per_doc)`."""
    write = text or (lambda lang, d: document(lang, d, words_per_doc))

    class MadeUpC4(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = tfds_c4.C4.name
        BUILDER_CONFIGS = (
            tfds.core.BuilderConfig(name=REAL_CONFIG.name, version=REAL_CONFIG.version),
        )

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FEATURES}),
            )

        def _split_generators(self, dl_manager):
            splits = {}
            for lang, n in docs.items():
                splits[lang] = self._docs(lang, range(n))
                splits[f"{lang}-validation"] = self._docs(
                    lang, range(validation_first, validation_first + validation_docs)
                )
            return splits

        def _docs(self, lang, numbers):
            for d in numbers:
                body = write(lang, d)
                yield (
                    f"{lang}{d}",
                    {
                        "text": body,
                        "url": f"https://example.org/{lang}/{d}",
                        "content-type": "text/plain",
                        "content-length": str(len(body)),
                        "timestamp": "2020-01-01T00:00:00Z",
                    },
                )

        def _generate_examples(self):
            raise NotImplementedError  # each split above generates its own examples

    return MadeUpC4


def prepare(
    data_dir: str, docs: Mapping[str, int], words_per_doc: int, num_shards: int | None = None
) -> str:
    """Writes the dataset under `data_dir` (once; a prepared one is kept). Returns data_dir.

    Every split needs at least `num_shards` documents (TFDS writes no empty file).
    """
    if num_shards is not None and min(docs.values()) < num_shards:
        raise ValueError(f"docs={dict(docs)}: every language needs >= {num_shards} documents.")
    validation = max(MIN_VALIDATION_DOCS, num_shards or 0)
    builder = builder_class(docs, words_per_doc, validation)(
        config=REAL_CONFIG.name, data_dir=data_dir
    )
    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(num_shards=num_shards) if num_shards else None
        builder.download_and_prepare(download_config=config)
    return data_dir

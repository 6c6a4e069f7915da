"""SeqIO data sources over examples held in memory, and readers for user files.

The embedded Bible data and small user corpora (TSV / JSONL / plain text) fit in memory, so a
source loads them lazily on first use — importing `ptjf.tasks` never touches the disk — and
serves them as `tf.data` with SeqIO's shuffling and per-host sharding contract.

Shuffling is a permutation of example indices per epoch (`tf.random.experimental.index_shuffle`,
keyed by a seed that tf.data draws afresh on each repetition), not a shuffle buffer: the
stream's state is a few counters, so a checkpoint of the input iterator stays small and quick
to write and read at any step (`ptjf.data.input_state`), where a buffer over the whole split
would be copied into every checkpoint.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import seqio

from ptjf.data.tf_cpu import tensorflow_on_cpu
from ptjf.errors import DataError

tf = tensorflow_on_cpu()

Example = dict[str, Any]
LoadFn = Callable[[str], Sequence[Example]]


class InMemorySource(seqio.DataSource):
    """A `seqio.DataSource` whose examples come from `load_fn(split)`, called once per split.

    Every example of a split must have the same keys; values are strings or integers.
    Sizes (`num_input_examples`) are exact, which is what temperature and UniMax rates use.
    """

    def __init__(self, load_fn: LoadFn, splits: Sequence[str], description: str):
        # The source shuffles whole epochs itself: SeqIO's task-level buffer is not needed.
        super().__init__(
            splits=splits,
            num_input_examples=None,
            caching_permitted=False,
            performs_internal_shuffling=True,
        )
        self._load_fn = load_fn
        self._description = description
        self._cache: dict[str, Sequence[Example]] = {}
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self._description

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def examples(self, split: str) -> Sequence[Example]:
        """The split's examples (loaded on first call). Raises `DataError` if it is empty."""
        if split not in self.splits:
            raise DataError(
                f"{self._description} has no split {split!r}; available splits: "
                f"{', '.join(self.splits)}."
            )
        with self._lock:
            if split not in self._cache:
                self._cache[split] = list(self._load_fn(split))
        examples = self._cache[split]
        if not examples:
            raise DataError(
                f"The {split!r} split of {self._description} is empty: check the data files "
                "or the split percentages / train_size of the task."
            )
        return examples

    def num_input_examples(self, split: str) -> int:
        return len(self.examples(split))

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # SeqIO's Task applies these itself.
        examples = self.examples(split)
        keys = sorted(examples[0])
        columns = {}
        for k in keys:
            try:
                columns[k] = [ex[k] for ex in examples]
            except KeyError:
                raise DataError(
                    f"Examples of {self._description} ({split}) do not all have the key {k!r}."
                ) from None
        indices = _epoch_indices(len(examples), shuffle, seed, shard_info)
        table = {k: tf.constant(v) for k, v in columns.items()}
        return indices.map(
            lambda i: {k: tf.gather(v, i) for k, v in table.items()},
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


def _epoch_indices(
    n: int, shuffle: bool, seed: int | None, shard_info: seqio.ShardInfo | None
) -> tf.data.Dataset:
    """One epoch of this shard's example indices (shard i of k holds i, i + k, i + 2k, …),
    in order or permuted. Each repetition of the dataset (SeqIO repeats the source) draws a new
    permutation key from a seeded generator, so epochs differ yet the stream is a pure
    function of `seed`; without a seed the keys are non-deterministic."""
    index, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    m = len(range(index, n, num_shards))
    if m == 0:
        return tf.data.Dataset.range(0)
    if not shuffle:
        return tf.data.Dataset.range(index, n, num_shards)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

    def epoch(key: tf.Tensor) -> tf.data.Dataset:
        key2 = tf.stack([key, tf.constant(0x5EED, tf.int64)])
        return tf.data.Dataset.range(m).map(
            lambda j: (
                index + num_shards * tf.random.experimental.index_shuffle(j, key2, max_index=m - 1)
            )
        )

    return keys.flat_map(epoch)


def _lines(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Data file {str(p)!r} does not exist (or is not a file); check the path.")
    return p.read_text(encoding="utf-8").splitlines()


def read_tsv(
    path: str | Path, source_column: int = 0, target_column: int = 1
) -> list[tuple[str, str]]:
    """(source, target) pairs from a tab-separated file; blank lines are skipped."""
    pairs = []
    need = max(source_column, target_column) + 1
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < need:
            raise DataError(
                f"{path}:{lineno}: expected at least {need} tab-separated columns "
                f"(source in column {source_column}, target in column {target_column}), "
                f"found {len(cols)}; separate source and target with a tab character."
            )
        pairs.append((cols[source_column].strip(), cols[target_column].strip()))
    return pairs


def read_jsonl(path: str | Path, source_key: str, target_key: str | None) -> list[tuple[str, str]]:
    """(source, target) pairs — or (text, "") when `target_key` is None — from JSON lines."""
    rows = []
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); one object per line."
            ) from None
        wanted = [source_key] + ([target_key] if target_key else [])
        missing = [k for k in wanted if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise DataError(f"{path}:{lineno}: missing key(s) {missing}; each line needs {wanted}.")
        rows.append(
            (str(obj[source_key]).strip(), str(obj[target_key]).strip() if target_key else "")
        )
    return rows


def read_text(path: str | Path) -> list[str]:
    """One example per non-blank line."""
    return [line.strip() for line in _lines(path) if line.strip()]

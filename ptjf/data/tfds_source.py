"""TFDS datasets as SeqIO sources that read nothing until first use, and say how to prepare them.

Registering the WMT and mC4 tasks must not touch the network or the disk; the data dir is
resolved when a task first reads its data (T5X's `TFDS_DATA_DIR` gin macro, the environment, or
a task's own), and an unprepared dataset is reported with the `tfds build` command that
prepares it instead of SeqIO's AssertionError deep inside tf.data.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import seqio

from ptjf.errors import DataError

TFDS_DATA_DIR_MACRO = "TFDS_DATA_DIR"


def tfds_data_dir(data_dir: str | None = None) -> str | None:
    """Where TFDS datasets are read from, decided when the data is first used.

    In order: SeqIO's global `seqio.set_tfds_data_dir_override` (SeqIO applies it to every
    TFDS source, so it must win here too), `data_dir` (a task's own), the gin macro
    `TFDS_DATA_DIR` (T5X's name: `--gin.TFDS_DATA_DIR=gs://bucket/tfds`), the environment
    variable `TFDS_DATA_DIR`, else None (TFDS's default, `~/tensorflow_datasets`). A GCS path
    works wherever a local one does.
    """
    if seqio.utils._TFDS_DATA_DIR_OVERRIDE:
        return str(seqio.utils._TFDS_DATA_DIR_OVERRIDE)
    if data_dir:
        return str(data_dir)
    try:
        from_gin = gin.query_parameter(f"%{TFDS_DATA_DIR_MACRO}")
    except ValueError:  # the macro is not bound
        from_gin = None
    if from_gin:
        return str(from_gin)
    return os.environ.get("TFDS_DATA_DIR") or None


def _default_tfds_dir() -> str:
    try:
        from tensorflow_datasets.core import constants

        return str(constants.get_default_data_dir())
    except (ImportError, AttributeError):
        return "~/tensorflow_datasets"


BuildHint = str | Callable[[Any], str]


def check_tfds_prepared(tfds_name: str, data_dir: str | None, build_hint: BuildHint = "") -> None:
    """Raises `DataError` unless TFDS dataset `tfds_name` ("name/config:version") is prepared
    under `data_dir`, naming the directory and the `tfds build` command that prepares it.

    `build_hint` adds to the message (e.g. files `tfds build` needs in --manual_dir); a
    callable gets the unprepared TFDS builder.

    SeqIO would otherwise fail deep inside `tf.data` with an AssertionError about
    `download_and_prepare`; here the check runs once, when a task first reads its data.
    """
    import tensorflow_datasets as tfds

    shown = data_dir or _default_tfds_dir()
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        raise DataError(
            f"TFDS cannot open dataset {tfds_name!r} (data dir {shown!r}): "
            f"{str(e).splitlines()[0]} Check the dataset name, config and version."
        ) from None
    if builder.is_prepared():
        return
    command = f"tfds build {tfds_name} --data_dir={shown}"
    hint = build_hint(builder) if callable(build_hint) else build_hint
    raise DataError(
        f"The TFDS dataset {tfds_name!r} is not prepared in the data dir {shown!r} (no "
        f"dataset_info.json under {str(builder.data_dir)!r}). Prepare it once with\n"
        f"    {command}\n"
        "(the `tfds` command needs `pip install apache-beam`; or, in Python: "
        f"tfds.builder({tfds_name!r}, data_dir={shown!r}).download_and_prepare()).\n"
        f"{hint}"
        "Or point ptjf at a data dir that has it: --gin.TFDS_DATA_DIR=DIR, the environment "
        "variable TFDS_DATA_DIR, or data_dir= when registering the task."
    )


class TfdsSource(seqio.DataSource):
    """A `seqio.TfdsDataSource` whose data dir is resolved, and checked, on first use.

    Registering a task reads nothing; the first read (a dataset, a size, the vocabulary
    corpus) resolves `tfds_data_dir(data_dir)` and checks the dataset is prepared there, so a
    run fails at once with the `tfds build` command rather than deep inside tf.data. SeqIO
    never downloads or prepares data through this source (read_only).
    """

    def __init__(
        self,
        tfds_name: str,
        splits: Mapping[str, str],
        *,
        data_dir: str | None = None,
        description: str = "",
        build_hint: BuildHint = "",
    ):
        super().__init__(splits=tuple(splits), num_input_examples=None, caching_permitted=True)
        self.tfds_name = tfds_name
        self._split_map = dict(splits)
        self._data_dir = data_dir
        self._description = description or tfds_name
        self._build_hint = build_hint
        self._sources: dict[str | None, seqio.TfdsDataSource] = {}
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self._description

    @property
    def data_dir(self) -> str | None:
        return tfds_data_dir(self._data_dir)

    def tfds_source(self) -> seqio.TfdsDataSource:
        """The SeqIO source over the resolved data dir (checked once per data dir)."""
        data_dir = self.data_dir
        with self._lock:
            if data_dir not in self._sources:
                check_tfds_prepared(self.tfds_name, data_dir, self._build_hint)
                self._sources[data_dir] = seqio.TfdsDataSource(
                    self.tfds_name, tfds_data_dir=data_dir, splits=self._split_map, read_only=True
                )
            return self._sources[data_dir]

    def _check_split(self, split: str) -> None:
        if split not in self._split_map:
            raise DataError(
                f"{self._description} has no split {split!r}; available splits: "
                f"{', '.join(self._split_map)}."
            )

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> Sequence[str]:
        self._check_split(split)
        return self.tfds_source().list_shards(split)

    def num_input_examples(self, split: str) -> int | None:
        self._check_split(split)
        return self.tfds_source().num_input_examples(split)

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
    ) -> Any:
        del sequence_length, use_cached, num_epochs  # SeqIO's Task applies these itself.
        self._check_split(split)
        return self.tfds_source().get_dataset(
            split, shuffle=shuffle, seed=seed, shard_info=shard_info
        )

"""Training and evaluation batches: SeqIO encoder-decoder features plus per-token task ids.

Batches carry the features of SeqIO's `EncDecFeatureConverter` (`encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`, and when packed the
`*_segment_ids` / `*_positions`), all int32 `[batch, length]`, plus `task_ids`: for every
decoder token the index of its task in the mixture's order, -1 on padding. The trainer counts
examples and tokens seen per task from `task_ids` (the paper's "examples seen" axis, Fig. 2)
and gives the model only the model features.

SeqIO 0.0.20's converters refuse pass-through features when packing, so packing is SeqIO's
`trim_and_pack_dataset` over {inputs, targets, task_ids}: `task_ids` has the targets' length
and packs exactly as they do. The conversion after it follows the converter's conventions
(decoder inputs are the targets shifted right with 0 at each segment's start; loss weight 1 on
every non-padding target token).

The training stream is a pure function of (`DatasetConfig`, shard): every shuffle and the task
sampler are seeded and tf.data runs deterministically. A stream resumes from its saved
iterator state (`ptjf.data.input_state`: cost independent of the step), or, as the fallback,
by replaying: `start_batch=n` without a state reads and discards n batches, exact but linear in
n. TensorFlow combines op seeds with its global seed, so `tf.random.set_seed` elsewhere changes
the stream: leave it unset (or set it identically).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from ptjf.data import mixing
from ptjf.data.input_state import HostStream, ShardStream
from ptjf.data.tracing import without_autograph
from ptjf.errors import ConfigError, DataError
from ptjf.rate_schedules import RateSchedule

Batch = dict[str, np.ndarray]
FEATURE_KEYS = ("inputs", "targets")
PREFETCH_BATCHES = 4


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_lengths(lengths: Mapping[str, int], where: str = "task_feature_lengths") -> dict:
    """Validated {"inputs": L_in, "targets": L_tgt} as a plain dict."""
    if not isinstance(lengths, Mapping) or set(lengths) != set(FEATURE_KEYS):
        raise ConfigError(
            f"{where}={lengths!r}: expected a mapping with exactly the keys 'inputs' and "
            "'targets', e.g. {'inputs': 128, 'targets': 128}."
        )
    for key in FEATURE_KEYS:
        value = lengths[key]
        if not _is_int(value) or value < 2:
            raise ConfigError(
                f"{where}[{key!r}]={value!r}: sequence lengths must be integers >= 2 (tokens "
                "per example, EOS included; a length of 1 leaves room for EOS only)."
            )
    return {k: int(lengths[k]) for k in FEATURE_KEYS}


def _check_positive(name: str, value: object) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{name}={value!r}: expected a positive integer.")


@gin.configurable("DatasetConfig")
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """What a stage trains on (shaped like T5X's `utils.DatasetConfig`).

    rates: static weights overriding a mixture's own rates (one point of the paper's rate
        grid); tasks left out get rate 0. None keeps the mixture's rates.
    module: imported before the name is looked up, so a gin file can name the module that
        registers its tasks (T5X habit).
    seed: None gives a different, non-reproducible stream each time (no exact resume).
    """

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    split: str = "train"
    shuffle: bool = True
    seed: int | None = 0
    pack: bool = True
    rates: Mapping[str, float] | None = None
    module: str | None = None
    rate_schedule: RateSchedule | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
            raise ConfigError(
                f"DatasetConfig.mixture_or_task_name={self.mixture_or_task_name!r}: expected "
                "the name of a registered task or mixture."
            )
        lengths = check_lengths(self.task_feature_lengths, "DatasetConfig.task_feature_lengths")
        object.__setattr__(self, "task_feature_lengths", lengths)
        _check_positive("DatasetConfig.batch_size", self.batch_size)
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigError(f"DatasetConfig.seed={self.seed!r}: expected an integer or None.")
        if self.rates is not None:
            object.__setattr__(self, "rates", dict(self.rates))
        if self.rate_schedule is not None:
            if self.rates is not None:
                raise ConfigError(
                    "DatasetConfig has both rates and a rate_schedule; give one: static rates, "
                    "or a schedule whose first point holds the starting rates."
                )
            if not isinstance(self.rate_schedule, RateSchedule):
                raise ConfigError(
                    f"DatasetConfig.rate_schedule={self.rate_schedule!r}: expected a "
                    "RateSchedule (@PiecewiseRates(), @LinearRates() or @TemperatureSchedule())."
                )


def _import_module(config: DatasetConfig) -> None:
    if config.module:
        try:
            importlib.import_module(config.module)
        except ImportError as e:
            raise ConfigError(
                f"DatasetConfig.module={config.module!r} cannot be imported ({e}); name an "
                "importable module that registers the task or mixture, or leave it None."
            ) from e


def mixture_task_names(config: DatasetConfig) -> list[str]:
    """The config's tasks; position in this list is the task id in `task_ids`."""
    _import_module(config)
    return mixing.task_names(config.mixture_or_task_name)


def effective_rates(config: DatasetConfig) -> dict[str, float]:
    """The normalised rates the stream samples with, in task order (0 for dropped tasks); with
    a rate schedule, those of its step 0 (`rates_at` gives any step's)."""
    _import_module(config)
    if config.rate_schedule is not None:
        return rates_at(config, 0)
    return mixing.mixture_rates(config.mixture_or_task_name, config.rates)


def bound_schedule(config: DatasetConfig) -> RateSchedule | None:
    """The config's rate schedule over the mixture's tasks, in task order (None without one);
    a task it names that the mixture lacks is an error naming the closest."""
    if config.rate_schedule is None:
        return None
    _import_module(config)
    name = config.mixture_or_task_name
    return config.rate_schedule.bind(mixing.task_names(name), lambda: mixing.mixture_sizes(name))


def rates_at(config: DatasetConfig, step: int) -> dict[str, float]:
    """The normalised rates the stream samples stage step `step`'s examples with, in task order
    (the static rates at every step for a config without a schedule)."""
    schedule = bound_schedule(config)
    if schedule is None:
        return effective_rates(config)
    return schedule.rates_at(step)


# --- features ------------------------------------------------------------------------------


def _model_features(ex: Mapping[str, tf.Tensor], packed: bool) -> dict[str, tf.Tensor]:
    targets = ex["targets"]
    segments = ex["targets_segment_ids"] if packed else None
    out = {
        "encoder_input_tokens": ex["inputs"],
        "decoder_target_tokens": targets,
        "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
            targets, sequence_id=segments, bos_id=0
        ),
        "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32),
        "task_ids": ex["task_ids"] - 1,
    }
    if packed:
        out["encoder_segment_ids"] = ex["inputs_segment_ids"]
        out["decoder_segment_ids"] = ex["targets_segment_ids"]
        out["encoder_positions"] = ex["inputs_positions"]
        out["decoder_positions"] = ex["targets_positions"]
    return out


def to_features(ds: tf.data.Dataset, lengths: Mapping[str, int], pack: bool) -> tf.data.Dataset:
    """{inputs, targets, task_ids} examples → fixed-length model features (packed or padded).

    SeqIO's packing loop needs AutoGraph; padding and the feature maps are traced without it
    (`ptjf.data.tracing`).
    """
    feature_lengths = {**lengths, "task_ids": lengths["targets"]}
    if pack:
        ds = seqio.utils.trim_and_pack_dataset(ds, feature_lengths)
    else:
        ds = without_autograph(lambda: seqio.utils.trim_and_pad_dataset(ds, feature_lengths))
    return without_autograph(
        lambda: ds.map(lambda ex: _model_features(ex, pack), num_parallel_calls=tf.data.AUTOTUNE)
    )


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Deterministic order; and a position that tf.data cannot save exactly (a stateful
    `tf.py_function` would be restored as if it had no state) is refused, not approximated."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
    return ds.with_options(options)


# --- training ------------------------------------------------------------------------------


def train_batches(
    config: DatasetConfig,
    *,
    start_batch: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    state: bytes | None = None,
) -> ShardStream:
    """The infinite stream of this shard's training batches, `[batch_size // num_shards, L]`.

    Shard `shard_index` reads a disjoint 1/`num_shards` of every task (SeqIO `ShardInfo`).
    `start_batch=n` yields what the uninterrupted stream yields from batch n on: restored from
    `state` (what `save()` returned after n batches) when given, else by replaying n batches.
    Batches become numpy arrays only when taken.
    """
    _check_positive("num_shards", num_shards)
    if not _is_int(shard_index) or not 0 <= shard_index < num_shards:
        raise ConfigError(
            f"shard_index={shard_index!r} is out of range for num_shards={num_shards}; "
            f"expected 0 <= shard_index < {num_shards}."
        )
    if config.batch_size % num_shards:
        raise ConfigError(
            f"batch_size={config.batch_size} is not divisible by num_shards={num_shards}: "
            "each host takes batch_size // num_shards rows; choose a batch size that is a "
            "multiple of the number of hosts."
        )
    if not _is_int(start_batch) or start_batch < 0:
        raise ConfigError(f"start_batch={start_batch!r}: expected an integer >= 0.")
    names = mixture_task_names(config)
    shard_info = seqio.ShardInfo(index=shard_index, num_shards=num_shards)
    schedule = bound_schedule(config)
    if schedule is None:
        examples = mixing.mixed_dataset(
            names,
            effective_rates(config),
            split=config.split,
            lengths=config.task_feature_lengths,
            shuffle=config.shuffle,
            seed=config.seed,
            shard_info=shard_info,
        )
    else:
        # Row n belongs to step n // rows; packed, each task packs on its own (see there).
        examples = mixing.scheduled_dataset(
            names,
            schedule,
            rows_per_step=config.batch_size // num_shards,
            split=config.split,
            lengths=config.task_feature_lengths,
            shuffle=config.shuffle,
            seed=config.seed,
            shard_info=shard_info,
            to_rows=(
                (lambda ds: to_features(ds, config.task_feature_lengths, pack=True))
                if config.pack
                else None
            ),
        )
    if schedule is None or not config.pack:
        ds = to_features(examples, config.task_feature_lengths, config.pack)
    else:
        ds = examples
    ds = ds.batch(config.batch_size // num_shards, drop_remainder=True)
    ds = _deterministic(ds).prefetch(PREFETCH_BATCHES)
    stream = ShardStream(
        ds, f"input shard {shard_index} of {num_shards} of {config.mixture_or_task_name!r}"
    )
    if state is not None:
        stream.restore(state, start_batch)
    elif start_batch:
        stream.replay(start_batch)
    return stream


def check_input_shards(batch_size: int, num_host_shards: int, input_shards: int | None) -> int:
    """The number of input shards the stream is cut into (`host_train_batches`), checked."""
    shards = num_host_shards if input_shards is None else input_shards
    if not _is_int(shards) or shards < 1 or shards % num_host_shards:
        raise ConfigError(
            f"train.input_shards={input_shards!r} must be a multiple of the {num_host_shards} "
            "data shard(s) the hosts feed (or None for one per host)."
        )
    if batch_size % shards:
        raise ConfigError(
            f"BATCH_SIZE={batch_size} does not split into {shards} input shards of equal size; "
            "choose train.input_shards (or the number of hosts) so that it divides the batch."
        )
    return shards


def host_train_batches(
    config: DatasetConfig,
    *,
    start_batch: int = 0,
    host_shard: int = 0,
    num_host_shards: int = 1,
    input_shards: int | None = None,
    states: Mapping[int, bytes] | None = None,
) -> HostStream:
    """This host's rows of every global batch, the stream cut into `input_shards` shards.

    None reads one shard per host (each host reads 1/`num_host_shards` of every task, the
    cheapest). A fixed `input_shards` makes the global batches the same on any number of
    hosts: host h reads shards h·k … h·k+k−1 (k = input_shards / num_host_shards) and stacks
    their rows, so a run resumed on another topology, or checked against a single process,
    sees exactly the batches it would have seen.

    `states` ({input shard: saved state}, `HostStream.save()` of any host grouping) restores
    each shard at `start_batch`; None replays.
    """
    shards = check_input_shards(config.batch_size, num_host_shards, input_shards)
    per_host = shards // num_host_shards
    mine = [host_shard * per_host + j for j in range(per_host)]
    if states is not None and (missing := [i for i in mine if i not in states]):
        raise DataError(
            f"No saved input state for shard(s) {missing} of {shards}; the checkpoint holds "
            f"shards {sorted(states)}."
        )
    return HostStream(
        {
            i: train_batches(
                config,
                start_batch=start_batch,
                shard_index=i,
                num_shards=shards,
                state=None if states is None else states[i],
            )
            for i in mine
        }
    )


def count_by_task(batch: Mapping[str, np.ndarray], num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """(examples, tokens) per task in a batch, each int64 `[num_tasks]`.

    examples: target segments (a packed row holds several; an unpacked row with any real
    target token is one); tokens: real target tokens. Ids < 0 (padding) count nowhere.
    """
    task_ids = np.asarray(batch["task_ids"])
    if task_ids.ndim != 2:
        raise DataError(f"task_ids has shape {task_ids.shape}; expected [batch, target_length].")
    if task_ids.size and task_ids.max() >= num_tasks:
        raise DataError(
            f"task_ids holds task id {int(task_ids.max())} but num_tasks={num_tasks}; pass the "
            "number of tasks of the mixture the batch came from (len(mixture_task_names))."
        )
    real = task_ids >= 0
    segments = batch.get("decoder_segment_ids")
    segments = real.astype(np.int32) if segments is None else np.asarray(segments)
    new_segment = np.ones_like(real)
    new_segment[:, 1:] = segments[:, 1:] != segments[:, :-1]
    starts = real & new_segment
    tokens = np.bincount(task_ids[real], minlength=num_tasks)
    examples = np.bincount(task_ids[starts], minlength=num_tasks)
    return examples.astype(np.int64), tokens.astype(np.int64)


# --- evaluation ----------------------------------------------------------------------------


def eval_batches(
    task_name: str,
    split: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    max_examples: int | None = None,
) -> list[Batch]:
    """Every example of a task's split once, in the source's fixed order, unpacked.

    `max_examples` keeps the first n (the paper's training-set panel is a fixed subset of the
    training split). The last batch is filled with all-zero rows (loss weight 0, task id -1),
    so every batch has one shape and the eval step compiles once. `task_ids` is 0 on real
    target tokens: each eval task is scored on its own.
    """
    lengths = check_lengths(task_feature_lengths)
    _check_positive("batch_size", batch_size)
    if max_examples is not None:
        _check_positive("max_examples", max_examples)
    if mixing.task_names(task_name) != [task_name]:
        raise ConfigError(
            f"{task_name!r} is a mixture; eval_batches takes one task name (evaluate each of "
            f"its tasks: {mixing.task_names(task_name)})."
        )
    ds = mixing.task_dataset(
        task_name,
        0,
        split=split,
        lengths=lengths,
        shuffle=False,
        seed=None,
        shard_info=None,
        num_epochs=1,
    )
    if max_examples is not None:
        ds = ds.take(max_examples)
    ds = _deterministic(to_features(ds, lengths, pack=False).batch(batch_size))
    batches = list(ds.as_numpy_iterator())
    if not batches:
        raise DataError(
            f"Task {task_name!r} gives no example for split {split!r} after preprocessing; "
            "check its data and preprocessors."
        )
    last = batches[-1]
    missing = batch_size - len(last["task_ids"])
    if missing:
        batches[-1] = {
            k: np.concatenate(
                [v, np.full((missing, *v.shape[1:]), -1 if k == "task_ids" else 0, v.dtype)]
            )
            for k, v in last.items()
        }
    return batches


def num_eval_examples(batches: Sequence[Mapping[str, np.ndarray]]) -> int:
    """Real (non-padding) examples in eval batches."""
    return int(sum(np.count_nonzero((np.asarray(b["task_ids"]) >= 0).any(axis=1)) for b in batches))

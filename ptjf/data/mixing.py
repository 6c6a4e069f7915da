"""Which tasks a run trains on, at which rates, and the tf.data stream that mixes them.

A mixture is sampled example by example: each task's split is repeated and shuffled on its
own, then `tf.data.Dataset.sample_from_datasets` draws the next example from task i with
probability r_i (big_vision's way of mixing by normalised weight). The rates are the mixture's
own (`ptjf.tasks.mixture_spec(name).rates()`) or a static override, e.g. one point of the
paper's rate grid (Sec. 4), normalised by `ptjf.sampling.static_rates`. A task with rate 0
keeps its task id but is never read.

Every example carries a `task_ids` feature (task index + 1 on each target token, so 0 stays the
padding value that SeqIO's packing relies on), which lets the trainer count examples seen per
task after packing has put several tasks in one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from ptjf import sampling
from ptjf.data.tracing import without_autograph
from ptjf.errors import DataError, RatesError

# ptjf.tasks is imported lazily: importing it registers the embedded tasks.


def _tasks_module():
    import ptjf.tasks

    return ptjf.tasks


def task_names(name: str) -> list[str]:
    """The tasks of mixture `name` in the mixture's order (= task id order); [name] for a task.

    Raises the registry's `UnknownNameError` (naming the closest names) for an unknown name.
    """
    tasks = _tasks_module()
    provider = tasks.get_task_or_mixture(name)
    if isinstance(provider, seqio.Task):
        return [name]
    try:
        return list(tasks.mixture_spec(name).tasks)
    except KeyError:
        # A mixture registered with SeqIO directly rather than through ptjf.tasks.
        return [t.name for t in provider.tasks]


def mixture_rates(name: str, override: Mapping[str, float] | None = None) -> dict[str, float]:
    """Normalised sampling rates of `name`'s tasks, in task order.

    `override` (static weights, normalised here) replaces the mixture's own rates; tasks it
    leaves out get rate 0. Without it: a ptjf mixture's rates, a plain SeqIO mixture's rates
    normalised, or {name: 1.0} for a single task.
    """
    names = task_names(name)
    if override is not None:
        if not isinstance(override, Mapping):
            raise RatesError(
                f"rates={override!r} for {name!r} must be a mapping from task name to weight, "
                f"e.g. {{{names[0]!r}: 1.0}}."
            )
        extra = sorted(set(override) - set(names))
        if extra:
            raise RatesError(
                f"rates name {extra}, which are not tasks of {name!r} (its tasks: {names}); "
                "give weights only for those tasks (a task left out gets rate 0)."
            )
        return sampling.static_rates({t: override.get(t, 0.0) for t in names})
    provider = _tasks_module().get_task_or_mixture(name)
    if isinstance(provider, seqio.Task):
        return {name: 1.0}
    try:
        rates = _tasks_module().mixture_spec(name).rates()
    except KeyError:
        rates = {t.name: float(provider.get_rate(t)) for t in provider.tasks}
    return sampling.static_rates({t: rates[t] for t in names})


def mixture_sizes(name: str) -> dict[str, float]:
    """{task: size} of `name`'s tasks: a ptjf mixture's own sizes (given, or counted from the
    data), else each task's training-split size; what a `TemperatureSchedule` weighs."""
    tasks = _tasks_module()
    try:
        return tasks.mixture_spec(name).resolved_sizes()
    except KeyError:
        return {t: float(tasks.task_size(t)) for t in task_names(name)}


def derive_seed(seed: int | None, *parts: object) -> int | None:
    """A seed for one part of the pipeline (a task, the sampler, a shard), stable across
    processes (unlike Python's `hash`), so the stream is a pure function of the config."""
    if seed is None:
        return None
    text = "|".join(map(str, (seed, *parts)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


def _with_task_ids(ds: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
    def fn(ex):
        targets = tf.cast(ex["targets"], tf.int32)
        return {
            "inputs": tf.cast(ex["inputs"], tf.int32),
            "targets": targets,
            "task_ids": tf.fill(tf.shape(targets), tf.constant(task_id + 1, tf.int32)),
        }

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def task_dataset(
    task_name: str,
    task_id: int,
    *,
    split: str,
    lengths: Mapping[str, int],
    shuffle: bool,
    seed: int | None,
    shard_info: seqio.ShardInfo | None,
    num_epochs: int | None,
) -> tf.data.Dataset:
    """One task's tokenized examples (targets trimmed with EOS kept, as SeqIO does) plus
    `task_ids`. SeqIO's in-memory cache is off so that each epoch is a fresh permutation of
    the source (the cache would freeze the first epoch's order). Built without AutoGraph
    unless the task's preprocessors need it (`ptjf.data.tracing`)."""
    task = seqio.get_mixture_or_task(task_name)

    def build() -> tf.data.Dataset:
        ds = task.get_dataset(
            sequence_length=dict(lengths),
            split=split,
            shuffle=shuffle,
            seed=seed,
            shard_info=shard_info,
            num_epochs=num_epochs,
            try_in_mem_cache=False,
        )
        return _with_task_ids(ds, task_id)

    return without_autograph(build, f"task {task_name!r}")


def check_not_empty(
    task_name: str, *, split: str, lengths: Mapping[str, int], shard_info: seqio.ShardInfo
) -> None:
    """Raises `DataError` if a task gives no example at all for this host: an empty repeated
    dataset would otherwise be skipped silently by the sampler.

    It reads its own unshuffled pass: taking an example from the stream's dataset would start
    one of its shuffles, so the stream's order would depend on this check.
    """
    ds = task_dataset(
        task_name,
        0,
        split=split,
        lengths=lengths,
        shuffle=False,
        seed=None,
        shard_info=shard_info,
        num_epochs=1,
    )
    if next(iter(ds.take(1)), None) is None:
        raise DataError(
            f"Task {task_name!r} gives no example for split {split!r} on shard "
            f"{shard_info.index} of {shard_info.num_shards}: its data is empty after "
            "preprocessing, or smaller than the number of shards. Check the task's data and "
            "preprocessors, use fewer hosts, or give the task rate 0."
        )


def _task_streams(
    tasks: Sequence[tuple[int, str]],
    split: str,
    lengths: Mapping[str, int],
    shuffle: bool,
    seed: int | None,
    shard_info: seqio.ShardInfo,
) -> list[tf.data.Dataset]:
    """Each (task id, task)'s split repeated forever, checked non-empty first, with a seed of
    its own per task and shard."""
    for _, t in tasks:
        check_not_empty(t, split=split, lengths=lengths, shard_info=shard_info)
    return [
        task_dataset(
            t,
            i,
            split=split,
            lengths=lengths,
            shuffle=shuffle,
            seed=derive_seed(seed, "task", t, shard_info.index),
            shard_info=shard_info,
            num_epochs=None,
        )
        for i, t in tasks
    ]


def mixed_dataset(
    names: Sequence[str],
    rates: Mapping[str, float],
    *,
    split: str,
    lengths: Mapping[str, int],
    shuffle: bool,
    seed: int | None,
    shard_info: seqio.ShardInfo,
) -> tf.data.Dataset:
    """The infinite stream of {inputs, targets, task_ids} examples, tasks drawn by rate.

    Seeds are derived per task and per shard from `seed` so that hosts do not draw the same
    task sequence and tasks do not share shuffles.
    """
    active = [(i, t) for i, t in enumerate(names) if rates[t] > 0]
    datasets = _task_streams(active, split, lengths, shuffle, seed, shard_info)
    if len(datasets) == 1:
        return datasets[0]
    return tf.data.Dataset.sample_from_datasets(
        datasets,
        weights=[rates[t] for _, t in active],
        seed=derive_seed(seed, "sampler", shard_info.index),
        stop_on_empty_dataset=False,
    )


# --- rates that change with the step ---------------------------------------------------------


def _curve_logits(curve, step: tf.Tensor) -> tf.Tensor:
    """Log-rates [K] of `curve` (`ptjf.rate_schedules.Curve`) at `step`, in the graph: the rule
    of `Curve.value_at` (knot before, knot after, clipped linear fraction or held value)."""
    steps = tf.constant(curve.steps, tf.int64)
    values = tf.constant(curve.values, tf.float64)
    last = len(curve.steps) - 1
    i = tf.searchsorted(steps, tf.reshape(step, [1]), side="right")[0] - 1
    lo = tf.maximum(i, 0)
    hi = lo if curve.hold else tf.where(i < 0, lo, tf.minimum(i + 1, last))
    width = tf.cast(tf.maximum(tf.gather(steps, hi) - tf.gather(steps, lo), 1), tf.float64)
    frac = tf.clip_by_value(tf.cast(step - tf.gather(steps, lo), tf.float64) / width, 0.0, 1.0)
    low = tf.gather(values, lo)
    value = low + frac * (tf.gather(values, hi) - low)
    if curve.log_sizes is None:
        return tf.math.log(value / tf.reduce_sum(value))
    log_sizes = tf.constant(curve.log_sizes, tf.float64)
    return (log_sizes - tf.reduce_max(log_sizes)) / value


def scheduled_dataset(
    names: Sequence[str],
    schedule,
    *,
    rows_per_step: int,
    split: str,
    lengths: Mapping[str, int],
    shuffle: bool,
    seed: int | None,
    shard_info: seqio.ShardInfo,
    to_rows: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None,
) -> tf.data.Dataset:
    """The infinite stream of batch rows whose task follows `schedule` (a bound
    `ptjf.rate_schedules.RateSchedule` over `names`), row by row.

    Row n of this shard belongs to schedule step n // rows_per_step (the shard's rows per
    batch), exactly. Its task is drawn by `tf.random.stateless_categorical` from the rates at
    that step with the seed (derive_seed(seed, "schedule", shard), n), so the sequence of tasks
    is a pure function of (seed, shard, n), and `choose_from_datasets` takes the next row of
    that task. The index is a `Dataset.range` that tf.data's iterator state saves and restores,
    so a resumed stream continues at the same n. With `seed=None` the draws change from run to
    run.

    Without `to_rows` a row is one example (the caller pads it). With `to_rows` (packing), each
    task's examples are packed into rows on their own first, because the step a packed example
    lands in is only known after packing: drawing whole rows keeps the schedule's step exact,
    and the rates are then shares of rows (of tokens, roughly) rather than of examples.
    """
    curve = schedule.curve()
    if list(curve.tasks) != list(names):
        raise RatesError(
            f"The rate schedule gives rates for {list(curve.tasks)}, but the stream's tasks are "
            f"{list(names)}; bind the schedule to the mixture's tasks first."
        )
    if rows_per_step < 1:
        raise RatesError(f"rows_per_step={rows_per_step!r}: expected an integer >= 1.")
    active = set(schedule.active_tasks())
    chosen = [(i, t) for i, t in enumerate(names) if t in active]
    datasets = _task_streams(chosen, split, lengths, shuffle, seed, shard_info)
    if to_rows is not None:
        datasets = [to_rows(ds) for ds in datasets]
    # Task id → position among the datasets read (a task never drawn maps anywhere: rate 0).
    position = [0] * len(names)
    for k, (i, _) in enumerate(chosen):
        position[i] = k
    positions = tf.constant(position, tf.int64)
    base = derive_seed(seed, "schedule", shard_info.index)
    if base is None:
        import random

        base = random.SystemRandom().getrandbits(31)

    def draw(index: tf.Tensor) -> tf.Tensor:
        logits = _curve_logits(curve, index // rows_per_step)
        task = tf.random.stateless_categorical(
            tf.reshape(logits, [1, -1]),
            1,
            seed=tf.stack([tf.constant(base, tf.int64), index]),
            dtype=tf.int64,
        )[0, 0]
        return tf.gather(positions, task)

    choices = without_autograph(
        lambda: tf.data.Dataset.range(tf.int64.max).map(draw), "the rate schedule's draws"
    )
    if len(datasets) == 1:
        return datasets[0]
    return tf.data.Dataset.choose_from_datasets(datasets, choices, stop_on_empty_dataset=False)

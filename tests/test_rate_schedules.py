"""Rate schedules inside a stage: exact values, bad inputs, and the stream that follows them."""

from __future__ import annotations

import dataclasses
import itertools
import math

import gin
import numpy as np
import ptjf.tasks as T
import pytest
import seqio
import tensorflow as tf

from ptjf import stages
from ptjf.data import batches as B
from ptjf.data import input_state, mixing
from ptjf.errors import ConfigError, RatesError
from ptjf.rate_schedules import LinearRates, PiecewiseRates, TemperatureSchedule

LENGTHS = {"inputs": 4, "targets": 4}
A, B_ = "rs_task_a", "rs_task_b"
MIX = "rs_mix"
# Task A's targets start with 100 + i (i = its example index), task B's with 500 + i.
BASE = {A: 100, B_: 500}


@pytest.fixture(scope="module")
def mix():
    vocab = seqio.PassThroughVocabulary(size=1000, eos_id=1)
    for name, size in ((A, 40), (B_, 30)):
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        first = BASE[name]

        def source(split, shuffle_files, seed=None, first=first, size=size):
            ids = tf.range(first, first + size, dtype=tf.int32)
            return tf.data.Dataset.from_tensor_slices(
                {"inputs": tf.stack([ids, ids + 1], 1), "targets": tf.reshape(ids, [-1, 1])}
            )

        features = {k: seqio.Feature(vocabulary=vocab, add_eos=True) for k in LENGTHS}
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                source, splits=["train"], num_input_examples={"train": size}
            ),
            preprocessors=[seqio.preprocessors.append_eos_after_trim],
            output_features=features,
            metric_fns=[],
        )
    T.register_mixture(MIX, [A, B_], method="static", weights={A: 1.0, B_: 1.0}, overwrite=True)
    return MIX


def _config(schedule, batch_size: int = 4, **kw) -> B.DatasetConfig:
    return B.DatasetConfig(
        mixture_or_task_name=MIX,
        task_feature_lengths=LENGTHS,
        batch_size=batch_size,
        shuffle=False,
        pack=False,
        seed=7,
        rate_schedule=schedule,
        **kw,
    )


def _take(config, n, **kw):
    return list(itertools.islice(B.train_batches(config, **kw), n))


def _tasks(batch) -> list[int]:
    """The task id of each (unpacked) row."""
    return [int(row[0]) for row in batch["task_ids"]]


# --- values by hand -----------------------------------------------------------------------------


def test_piecewise_rates_hold_each_point_until_the_next():
    s = PiecewiseRates(points=[(0, {"a": 3.0, "b": 1.0}), (100, {"a": 0.0, "b": 2.0})])
    assert s.rates_at(0) == {"a": 0.75, "b": 0.25}
    assert s.rates_at(99) == {"a": 0.75, "b": 0.25}
    assert s.rates_at(100) == {"a": 0.0, "b": 1.0}
    assert s.rates_at(10**9) == {"a": 0.0, "b": 1.0}


def test_linear_rates_interpolate_between_the_steps_and_hold_outside():
    s = LinearRates(
        start_rates={"a": 1.0, "b": 0.0},
        end_rates={"a": 0.0, "b": 4.0},
        start_step=20,
        end_step=120,
    )
    assert s.rates_at(0) == {"a": 1.0, "b": 0.0}
    assert s.rates_at(20) == {"a": 1.0, "b": 0.0}
    assert s.rates_at(45) == {"a": 0.75, "b": 0.25}
    assert s.rates_at(70) == {"a": 0.5, "b": 0.5}
    assert s.rates_at(120) == {"a": 0.0, "b": 1.0}
    assert s.rates_at(500) == {"a": 0.0, "b": 1.0}


def test_temperature_schedule_follows_tau_of_the_step():
    s = TemperatureSchedule(points=[(0, 5.0), (100, 1.0)], sizes={"hi": 100.0, "lo": 1.0})
    # τ(0) = 5: 100^(1/5) : 1; τ(50) = 3: 100^(1/3) : 1; τ ≥ 100 is 1: proportional.
    for step, tau in ((0, 5.0), (50, 3.0), (100, 1.0), (1000, 1.0)):
        w = 100.0 ** (1 / tau)
        got = s.rates_at(step)
        assert got["hi"] == pytest.approx(w / (w + 1), rel=1e-12)
        assert got["lo"] == pytest.approx(1 / (w + 1), rel=1e-12)
    assert s.rates_at(100) == pytest.approx({"hi": 100 / 101, "lo": 1 / 101}, rel=1e-12)


def test_the_stream_evaluates_the_same_rates_in_the_graph():
    schedules = [
        PiecewiseRates(points=[(0, {"a": 3.0, "b": 1.0}), (10, {"a": 0.0, "b": 1.0})]),
        LinearRates(start_rates={"a": 1.0, "b": 0.0}, end_rates={"a": 0.2, "b": 0.8}, end_step=8),
        TemperatureSchedule(points=[(2, 5.0), (9, 1.2)], sizes={"a": 1000.0, "b": 3.0}),
    ]
    for s in schedules:
        curve = s.curve()
        for step in (0, 1, 2, 5, 8, 9, 10, 50):
            logits = mixing._curve_logits(curve, tf.constant(step, tf.int64)).numpy()
            want = [s.rates_at(step)[t] for t in curve.tasks]
            got = np.exp(logits - logits.max())  # a categorical's logits: up to a constant
            assert got / got.sum() == pytest.approx(want, rel=1e-12, abs=1e-15), (s, step)


# --- bad inputs, all before the first step ---------------------------------------------------


def test_steps_that_do_not_increase_are_refused():
    with pytest.raises(RatesError, match=r"steps \[0, 50, 50\] are not strictly increasing"):
        PiecewiseRates(points=[(0, {"a": 1.0}), (50, {"a": 1.0}), (50, {"a": 2.0})])
    with pytest.raises(RatesError, match=r"steps \[10, 5\] are not strictly increasing"):
        LinearRates(start_rates={"a": 1}, end_rates={"a": 1}, start_step=10, end_step=5)
    with pytest.raises(RatesError, match=r"steps \[0, 0\] are not strictly increasing"):
        TemperatureSchedule(points=[(0, 2.0), (0, 1.0)])
    with pytest.raises(RatesError, match="is not an integer >= 0"):
        PiecewiseRates(points=[(0, {"a": 1.0}), (-3, {"a": 1.0})])


def test_a_piecewise_schedule_must_start_at_step_0():
    with pytest.raises(RatesError, match="first point starts at step 5, not 0"):
        PiecewiseRates(points=[(5, {"a": 1.0})])


def test_points_outside_the_stage_are_refused():
    schedule = PiecewiseRates(points=[(0, {"a": 1.0, "b": 0.0}), (100, {"a": 0.0, "b": 1.0})])
    with pytest.raises(RatesError, match=r"step\(s\) \[100\] outside the stage's steps \[0, 100\)"):
        stages.Stage(name="joint", mixture_or_task_name=MIX, steps=100, rate_schedule=schedule)
    tau = TemperatureSchedule(points=[(0, 2.0), (20, 1.0)])
    with pytest.raises(RatesError, match=r"step\(s\) \[20\] outside"):
        stages.Stage(name="joint", mixture_or_task_name=MIX, steps=20, rate_schedule=tau)
    ok = stages.Stage(name="joint", mixture_or_task_name=MIX, steps=21, rate_schedule=tau)
    assert ok.rate_schedule is tau


def test_points_naming_different_tasks_are_refused_naming_them():
    with pytest.raises(RatesError, match=r"only at step 0: \['b'\]; only at step 10: \['c'\]"):
        PiecewiseRates(points=[(0, {"a": 1.0, "b": 1.0}), (10, {"a": 1.0, "c": 1.0})])
    with pytest.raises(RatesError, match=r"only at step 0: \[\]; only at step 9: \['z'\]"):
        LinearRates(start_rates={"a": 1}, end_rates={"a": 1, "z": 1}, end_step=9)


def test_a_temperature_that_is_not_positive_is_refused():
    with pytest.raises(RatesError, match=r"point at step 10: τ=0.0 is <= 0"):
        TemperatureSchedule(points=[(0, 3.0), (10, 0.0)])
    with pytest.raises(RatesError, match=r"τ=-1 is <= 0"):
        TemperatureSchedule(points=[(0, -1)])
    with pytest.raises(RatesError, match="not a finite number"):
        TemperatureSchedule(points=[(0, math.inf)])


def test_rates_that_sum_to_zero_or_are_negative_are_refused():
    with pytest.raises(RatesError, match=r"point at step 10: the rates .* sum to zero"):
        PiecewiseRates(points=[(0, {"a": 1.0, "b": 0.0}), (10, {"a": 0.0, "b": 0.0})])
    with pytest.raises(RatesError, match=r"end_rates: the rate of 'b' is negative \(-0.5\)"):
        LinearRates(start_rates={"a": 1, "b": 0}, end_rates={"a": 1, "b": -0.5}, end_step=3)


def test_rates_and_a_schedule_together_are_refused():
    schedule = PiecewiseRates(points=[(0, {"a": 1.0})])
    with pytest.raises(ConfigError, match=r"both Stage\.rates and Stage\.rate_schedule"):
        stages.Stage(
            name="joint",
            mixture_or_task_name=MIX,
            steps=10,
            rates={"a": 1.0},
            rate_schedule=schedule,
        )


def test_unknown_task_names_are_refused_naming_the_closest(mix):
    schedule = PiecewiseRates(points=[(0, {A: 1.0, "rs_task_c": 1.0})])
    with pytest.raises(
        RatesError,
        match=r"\['rs_task_c'\] that are not tasks .*closest \['rs_task_b', 'rs_task_a'\]",
    ):
        B.bound_schedule(_config(schedule))
    tau = TemperatureSchedule(points=[(0, 2.0)], sizes={A: 1.0, "rs_tsk_b": 2.0})
    with pytest.raises(RatesError, match=r"'rs_tsk_b': closest \['rs_task_b'"):
        B.bound_schedule(_config(tau))


def test_gin_builds_each_kind_as_a_stage_schedule():
    gin.parse_config(
        """
        joint/Stage.name = 'joint'
        joint/Stage.mixture_or_task_name = 'rs_mix'
        joint/Stage.steps = 1000
        joint/Stage.rate_schedule = @PiecewiseRates()
        PiecewiseRates.points = [(0, {'hi': 1.0, 'lo': 0.0}), (500, {'hi': 0.5, 'lo': 0.5})]
        cool/Stage.name = 'cool'
        cool/Stage.mixture_or_task_name = 'rs_mix'
        cool/Stage.steps = 1000
        cool/Stage.rate_schedule = @TemperatureSchedule()
        TemperatureSchedule.points = [(0, 5.0), (999, 1.43)]
        decay/Stage.name = 'decay'
        decay/Stage.mixture_or_task_name = 'rs_mix'
        decay/Stage.steps = 100
        decay/Stage.rate_schedule = @LinearRates()
        LinearRates.start_rates = {'hi': 0.9, 'lo': 0.1}
        LinearRates.end_rates = {'hi': 0.5, 'lo': 0.5}
        LinearRates.end_step = 99
        """
    )
    with gin.config_scope("joint"):
        joint = stages.Stage()
    with gin.config_scope("cool"):
        cool = stages.Stage()
    with gin.config_scope("decay"):
        decay = stages.Stage()
    assert joint.rate_schedule.rates_at(600) == {"hi": 0.5, "lo": 0.5}
    assert cool.rate_schedule.steps == (0, 999)
    assert decay.rate_schedule.rates_at(99) == {"hi": 0.5, "lo": 0.5}


# --- the stream ---------------------------------------------------------------------------------


def test_the_stream_switches_task_exactly_at_the_scheduled_step(mix):
    schedule = PiecewiseRates(points=[(0, {A: 1.0, B_: 0.0}), (3, {A: 0.0, B_: 1.0})])
    batches = _take(_config(schedule), 6)
    assert [_tasks(b) for b in batches] == [[0] * 4] * 3 + [[1] * 4] * 3
    # Each task's examples come in its own order (unshuffled): A's first 12, then B's first 12.
    firsts = [int(t) for b in batches for t in b["decoder_target_tokens"][:, 0]]
    assert firsts == list(range(100, 112)) + list(range(500, 512))


def test_a_constant_schedule_samples_near_its_rates(mix):
    schedule = PiecewiseRates(points=[(0, {A: 0.7, B_: 0.3})])
    tasks = [t for b in _take(_config(schedule, batch_size=8), 100) for t in _tasks(b)]
    share = tasks.count(0) / len(tasks)
    # 800 draws: the standard deviation of the share is 0.016; 0.06 is almost 4 of them.
    assert abs(share - 0.7) < 0.06, share
    assert tasks.count(1) > 0


def test_a_linear_schedule_moves_the_counts(mix):
    schedule = LinearRates(start_rates={A: 1.0, B_: 0.0}, end_rates={A: 0.0, B_: 1.0}, end_step=59)
    batches = _take(_config(schedule, batch_size=8), 60)
    first, last = (
        [t for b in batches[:10] for t in _tasks(b)],
        [t for b in batches[-10:] for t in _tasks(b)],
    )
    # Expected B shares: about 0.08 over steps 0–9 and 0.92 over steps 50–59 (80 rows each).
    assert first.count(1) < 20, first
    assert last.count(1) > 60, last
    assert _tasks(batches[0]) == [0] * 8  # rate 1.0 for A at step 0


def test_the_stream_is_a_pure_function_of_seed_and_index(mix):
    schedule = LinearRates(start_rates={A: 0.5, B_: 0.5}, end_rates={A: 0.1, B_: 0.9}, end_step=19)
    one, two = _take(_config(schedule), 20), _take(_config(schedule), 20)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(one, two, strict=True) for k in a)
    other = _take(B.DatasetConfig(**{**_config(schedule).__dict__, "seed": 8}), 20)
    assert [_tasks(b) for b in other] != [_tasks(b) for b in one]


def test_a_restored_stream_continues_exactly(mix):
    schedule = PiecewiseRates(points=[(0, {A: 0.6, B_: 0.4}), (7, {A: 0.2, B_: 0.8})])
    config = _config(schedule)
    uninterrupted = _take(config, 14)
    stream = B.train_batches(config)
    for _ in range(5):
        next(stream)
    state = stream.save()
    resumed = B.train_batches(config, start_batch=5, state=state)
    continued = [next(resumed) for _ in range(9)]
    assert all(
        np.array_equal(a[k], b[k])
        for a, b in zip(uninterrupted[5:], continued, strict=True)
        for k in a
    )
    assert {t for b in continued for t in _tasks(b)} == {0, 1}


def test_a_stream_without_a_schedule_is_the_static_sampler(mix):
    config = B.DatasetConfig(
        mixture_or_task_name=MIX,
        task_feature_lengths=LENGTHS,
        batch_size=4,
        shuffle=False,
        pack=False,
        seed=7,
        rates={A: 0.7, B_: 0.3},
    )
    got = _take(config, 5)
    examples = mixing.mixed_dataset(
        [A, B_],
        {A: 0.7, B_: 0.3},
        split="train",
        lengths=LENGTHS,
        shuffle=False,
        seed=7,
        shard_info=seqio.ShardInfo(index=0, num_shards=1),
    )
    want = list(B.to_features(examples, LENGTHS, False).batch(4).take(5).as_numpy_iterator())
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(want, got, strict=True) for k in a)


def test_the_saved_descriptor_names_the_schedule(mix):
    one = PiecewiseRates(points=[(0, {A: 0.6, B_: 0.4}), (7, {A: 0.2, B_: 0.8})])
    two = PiecewiseRates(points=[(0, {A: 0.6, B_: 0.4}), (8, {A: 0.2, B_: 0.8})])
    described = [
        input_state.describe(
            _config(s),
            [A, B_],
            B.effective_rates(_config(s)),
            input_shards=1,
            vocabulary=None,
            schedule=B.bound_schedule(_config(s)),
        )
        for s in (one, two)
    ]
    diff = input_state.differences(*described)
    assert len(diff) == 1 and diff[0].startswith("rate_schedule: saved"), diff
    static = input_state.describe(
        _config(None), [A, B_], {A: 0.5, B_: 0.5}, input_shards=1, vocabulary=None
    )
    assert "rate_schedule" not in static
    assert B.rates_at(_config(one), 7) == {A: 0.2, B_: 0.8}


def _row_tasks(batch) -> list[set[int]]:
    """The task ids in each packed row (-1 is padding)."""
    return [{int(t) for t in row if t >= 0} for row in batch["task_ids"]]


def test_a_packed_stream_follows_the_schedule_step_by_step(mix):
    # Row n belongs to step n // rows exactly: each task packs on its own, whole rows are drawn.
    schedule = PiecewiseRates(points=[(0, {A: 1.0, B_: 0.0}), (3, {A: 0.0, B_: 1.0})])
    got = _take(_packed(schedule), 6)
    for step, batch in enumerate(got):
        rows = _row_tasks(batch)
        want = {0} if step < 3 else {1}
        assert all(r == want for r in rows), (step, rows)
        assert batch["decoder_segment_ids"].max() >= 2  # rows really hold several examples


def test_a_packed_scheduled_stream_restores_exactly(mix):
    schedule = PiecewiseRates(points=[(0, {A: 0.6, B_: 0.4}), (4, {A: 0.2, B_: 0.8})])
    uninterrupted = _take(_packed(schedule), 10)
    stream = B.train_batches(_packed(schedule))
    for _ in range(4):
        next(stream)
    resumed = B.train_batches(_packed(schedule), start_batch=4, state=stream.save())
    continued = [next(resumed) for _ in range(6)]
    assert all(
        np.array_equal(a[k], b[k])
        for a, b in zip(uninterrupted[4:], continued, strict=True)
        for k in a
    )
    rows = [r for b in uninterrupted for r in _row_tasks(b)]
    assert all(len(r) == 1 for r in rows) and {t for r in rows for t in r} == {0, 1}


def _packed(schedule) -> B.DatasetConfig:
    """Packed, with rows long enough for two examples (3 input tokens each)."""
    lengths = {"inputs": 8, "targets": 8}
    return dataclasses.replace(_config(schedule), pack=True, task_feature_lengths=lengths)

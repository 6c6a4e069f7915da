"""Schedules: exact values at chosen stage-local steps, config validation, gin."""

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjf.errors import ConfigError, UnknownNameError
from ptjf.training import schedules
from ptjf.training.schedules import ScheduleConfig, make_schedule


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_constant():
    np.testing.assert_allclose(_values(schedules.constant(3e-4), [0, 7, 10**6]), 3e-4, rtol=1e-6)


def test_warmup_cosine_exact():
    peak, warmup, total = 1e-3, 100, 500
    schedule = schedules.warmup_cosine(peak, warmup, total)
    steps = [0, 50, 100, 300, 400, 500, 900]
    expected = [
        0.0,
        peak * 0.5,
        peak,
        peak * 0.5,  # half-way through the decay: cos(π/2) = 0
        peak * 0.5 * (1 + math.cos(math.pi * 0.75)),
        0.0,
        0.0,
    ]
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6, atol=1e-12)


def test_warmup_cosine_end_lr():
    schedule = schedules.warmup_cosine(1.0, 0, 10, end_lr=0.1)
    np.testing.assert_allclose(_values(schedule, [0, 5, 10, 20]), [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_constant_then_rsqrt_exact_and_t5x_form():
    schedule = schedules.constant_then_rsqrt(0.01, 10_000)
    steps = [0, 5_000, 10_000, 40_000, 90_000]
    expected = [0.01, 0.01, 0.01, 0.005, 0.01 / 3]
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6)
    # T5X's mT5 form: 1 / sqrt(max(step, 10k)) with base 1.0.
    t5x = [1.0 / math.sqrt(max(s, 10_000)) for s in steps]
    np.testing.assert_allclose(_values(schedule, steps), t5x, rtol=1e-6)


def test_warmup_rsqrt_exact():
    schedule = schedules.warmup_rsqrt(0.01, 100)
    steps = [0, 25, 100, 400, 10_000]
    expected = [0.0, 0.0025, 0.01, 0.005, 0.001]
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6, atol=1e-12)


def test_schedules_are_traceable_and_float32():
    schedule = schedules.warmup_cosine(1.0, 4, 8)
    values = jax.jit(jax.vmap(schedule))(jnp.arange(10, dtype=jnp.int32))
    assert values.dtype == jnp.float32
    np.testing.assert_allclose(values[:5], [0.0, 0.25, 0.5, 0.75, 1.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["warmup_cosine", "warmup_rsqrt"])
def test_second_stage_warmup_starts_from_zero(name):
    """A stage's schedule counts its own steps: stage 2 restarts at 0, not at stage 1's end."""
    config = ScheduleConfig(name=name, peak_lr=5e-3, warmup_steps=10)
    stage1 = make_schedule(config, total_steps=40)
    stage1_end = float(stage1(39))
    assert stage1_end > 0.0
    stage2 = make_schedule(config, total_steps=30)
    assert float(stage2(0)) == 0.0
    assert float(stage2(1)) == pytest.approx(5e-4, rel=1e-6)
    assert float(stage2(10)) == pytest.approx(5e-3, rel=1e-6)


def test_make_schedule_dispatch():
    cosine = make_schedule(ScheduleConfig("warmup_cosine", 1.0, warmup_steps=2), total_steps=6)
    np.testing.assert_allclose(_values(cosine, [1, 4]), [0.5, 0.5], rtol=1e-6)
    rsqrt = make_schedule(ScheduleConfig("constant_then_rsqrt", 0.02, constant_steps=4), 100)
    np.testing.assert_allclose(_values(rsqrt, [3, 16]), [0.02, 0.01], rtol=1e-6)
    const = make_schedule(ScheduleConfig("constant", 0.3), 100)
    np.testing.assert_allclose(_values(const, [0, 99]), [0.3, 0.3], rtol=1e-6)


def test_unknown_name():
    with pytest.raises(UnknownNameError, match="warmup_cosine"):
        ScheduleConfig(name="warmup_cosin", peak_lr=1.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "constant", "peak_lr": -1.0}, "peak_lr"),
        ({"name": "warmup_cosine", "peak_lr": 1.0, "warmup_steps": -1}, "warmup_steps"),
        ({"name": "warmup_cosine", "peak_lr": 1.0, "end_lr": 2.0}, "end_lr"),
        ({"name": "warmup_rsqrt", "peak_lr": 1.0, "warmup_steps": 0}, "warmup_steps"),
        ({"name": "constant_then_rsqrt", "peak_lr": 1.0, "constant_steps": 0}, "constant_steps"),
    ],
)
def test_invalid_config_names_field_and_value(kwargs, field):
    with pytest.raises(ConfigError, match=rf"ScheduleConfig\.{field} = -?\d"):
        ScheduleConfig(**kwargs)


def test_invalid_total_steps_and_long_warmup():
    with pytest.raises(ConfigError, match="total_steps = 0"):
        make_schedule(ScheduleConfig("constant", 1.0), total_steps=0)
    with pytest.raises(ConfigError, match=r"warmup_steps = 50 .* 20 steps"):
        make_schedule(ScheduleConfig("warmup_cosine", 1.0, warmup_steps=50), total_steps=20)


def test_gin_configurable():
    with gin.unlock_config():
        gin.parse_config(
            "ScheduleConfig.name = 'warmup_rsqrt'\n"
            "ScheduleConfig.peak_lr = 0.01\n"
            "ScheduleConfig.warmup_steps = 100\n"
        )
    try:
        config = ScheduleConfig()
    finally:
        gin.clear_config()
    assert config == ScheduleConfig("warmup_rsqrt", 0.01, warmup_steps=100)


def test_decay_steps_follows_a_longer_run_and_is_cut_at_the_stage_end():
    """The restart baseline's first stage: the first N1 steps of an N-step cosine."""
    long_run = make_schedule(ScheduleConfig("warmup_cosine", 1.0, warmup_steps=2), 10)
    prefix = make_schedule(ScheduleConfig("warmup_cosine", 1.0, warmup_steps=2, decay_steps=10), 6)
    for step in range(7):
        assert float(prefix(step)) == float(long_run(step))
    assert float(prefix(6)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    with pytest.raises(ConfigError, match=r"ScheduleConfig\.decay_steps = 0"):
        ScheduleConfig("warmup_cosine", 1.0, decay_steps=0)

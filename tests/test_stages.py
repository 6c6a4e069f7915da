"""Stages and plans: validation, schedules per stage, the stage switch's fresh optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjf import stages as stg
from ptjf.errors import ConfigError
from ptjf.training.optimizers import OptimizerConfig, make_optimizer
from ptjf.training.schedules import ScheduleConfig

COSINE = ScheduleConfig(name="warmup_cosine", peak_lr=1.0, warmup_steps=10)


def _stage(name: str, steps: int = 100, **kw) -> stg.Stage:
    return stg.Stage(
        name=name, mixture_or_task_name="bible_en_fr_tl", steps=steps, schedule=COSINE, **kw
    )


def test_stage_with_zero_steps_is_refused():
    with pytest.raises(ConfigError, match="at least 1 step"):
        _stage("joint", steps=0)


@pytest.mark.parametrize("name", ["", "a/b", "12"])
def test_stage_names_must_be_directory_words(name):
    with pytest.raises(ConfigError, match="Stage name"):
        _stage(name)


def test_keeping_optimizer_but_resetting_schedule_is_refused():
    with pytest.raises(ConfigError, match="reset both"):
        _stage("joint", reset_optimizer=False, reset_schedule=True)


def test_plan_validation():
    with pytest.raises(ConfigError, match="empty"):
        stg.Plan(stages=[])
    with pytest.raises(ConfigError, match=r"two stages named \['a'\]"):
        stg.Plan(stages=[_stage("a"), _stage("a")])
    plan = stg.Plan(stages=[_stage("a", 30), _stage("b", 70)])
    assert plan.total_steps == 100 and plan.steps_before(1) == 30


def test_every_stage_schedule_counts_its_own_steps():
    plan = stg.Plan(stages=[_stage("pretrain", 100), _stage("joint", 50)])
    first, second = stg.stage_schedule(plan, 0), stg.stage_schedule(plan, 1)
    assert float(first(0)) == 0.0 and float(second(0)) == 0.0  # the switch warms up from 0 again
    assert float(second(10)) == pytest.approx(1.0)
    assert float(second(50)) == pytest.approx(0.0, abs=1e-6)  # decays to 0 at the stage's end
    assert float(first(55)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 45 / 90)), rel=1e-5)


def test_schedule_without_reset_continues_the_previous_one():
    plan = stg.Plan(stages=[_stage("a", 100), _stage("b", 50, reset_schedule=False)])
    continued = stg.stage_schedule(plan, 1)
    one_long = stg.schedules.make_schedule(COSINE, 150)
    for step in (0, 7, 49):
        assert float(continued(step)) == pytest.approx(float(one_long(step + 100)), rel=1e-6)


def test_switch_state_has_the_params_and_a_fresh_optimizer_state():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    tx = make_optimizer(OptimizerConfig(name="adam"), optax.constant_schedule(0.1))
    trained = stg.switch_state(params, tx)
    for _ in range(3):
        grads = jax.tree.map(jnp.ones_like, trained.params)
        trained = trained.apply_gradients(grads, tx)
    switched = stg.switch_state(trained.params, tx)
    assert int(switched.step) == 0
    jax.tree.map(np.testing.assert_array_equal, switched.params, trained.params)
    jax.tree.map(np.testing.assert_array_equal, switched.opt_state, tx.init(trained.params))
    mu = switched.opt_state[0].mu if hasattr(switched.opt_state[0], "mu") else None
    leaves = jax.tree.leaves(switched.opt_state)
    assert all(float(jnp.abs(x).sum()) == 0 for x in leaves), mu


def test_plan_eval_tasks_include_tasks_not_yet_trained():
    plan = stg.Plan(
        stages=[
            stg.Stage(name="pretrain", mixture_or_task_name="bible_translate_en_fr", steps=5),
            stg.Stage(name="joint", mixture_or_task_name="bible_en_fr_tl", steps=5),
        ]
    )
    assert stg.plan_eval_tasks(plan) == ["bible_translate_en_fr", "bible_translate_en_tl_low"]


def test_carry_state_keeps_the_optimizer_state_and_restarts_the_step():
    params = {"w": jnp.ones(3)}
    tx = make_optimizer(OptimizerConfig(name="adam"), optax.constant_schedule(0.1))
    state = stg.switch_state(params, tx).apply_gradients({"w": jnp.full(3, 2.0)}, tx)
    carried = stg.carry_state(state)
    assert int(carried.step) == 0 and int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, carried.opt_state, state.opt_state)
    assert float(jnp.abs(carried.opt_state[0].mu["w"]).sum()) > 0


def test_carried_stage_logs_the_learning_rate_its_optimizer_applies():
    # A plan cut in two without resets: the second stage keeps the first's Adam state, whose
    # count (which drives the schedule inside the optimizer) goes on from 6 while the
    # stage-local step restarts at 0. Every gradient is all ones, so Adam's bias-corrected
    # moments are exactly 1 and each update is -lr / (1 + eps): the learning rate applied.
    from ptjf.models import EncoderDecoder, init_params, preset
    from ptjf.training import steps
    from ptjf.training.evaluation import make_apply_fn

    schedule = ScheduleConfig(name="warmup_cosine", peak_lr=1e-2, warmup_steps=2)
    plan = stg.Plan(
        stages=[
            stg.Stage(name="a", mixture_or_task_name="bible_en_fr_tl", steps=6, schedule=schedule),
            stg.Stage(
                name="b",
                mixture_or_task_name="bible_en_fr_tl",
                steps=4,
                schedule=schedule,
                reset_optimizer=False,
                reset_schedule=False,
            ),
        ]
    )
    config = preset("tiny", 64)
    tx_a, _ = stg.make_tx(plan, 0)
    state = stg.switch_state(init_params(config, jax.random.key(0)), tx_a)
    ones = jax.tree.map(jnp.ones_like, state.params)
    for _ in range(plan.stages[0].steps):
        state = state.apply_gradients(ones, tx_a)
    tx_b, schedule_b = stg.make_tx(plan, 1)
    state = stg.carry_state(state)
    for _ in range(2):
        state = state.apply_gradients(ones, tx_b)
    assert int(state.step) == 2  # stage b's third update is next

    applied = (
        state.params["decoder"]["logits_dense"]["kernel"]
        - state.apply_gradients(ones, tx_b).params["decoder"]["logits_dense"]["kernel"]
    )
    applied_lr = float(np.median(np.asarray(applied))) * (1 + 1e-8)
    # The same update, run by the train step, and the learning rate it logs for it.
    train_step = steps.make_train_step(
        make_apply_fn(EncoderDecoder(config)), tx_b, schedule=schedule_b
    )
    tokens = jnp.ones((2, 4), jnp.int32)
    batch = {
        "encoder_input_tokens": tokens,
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": tokens,
        "decoder_loss_weights": jnp.ones((2, 4), jnp.float32),
    }
    _, metrics = jax.jit(train_step)(state, batch, jax.random.key(1))
    one_long = stg.schedules.make_schedule(schedule, 10)  # the uncut run's schedule
    assert applied_lr == pytest.approx(float(one_long(8)), rel=1e-3)
    assert float(metrics["learning_rate"]) == pytest.approx(applied_lr, rel=1e-3)


def test_carried_optimizer_continues_the_schedule_from_where_its_count_began():
    # b resets the optimizer but not the schedule; c carries b's optimizer state, whose count
    # began at b's start (50 steps into the schedule), so c's step k is its count 30 + k.
    plan = stg.Plan(
        stages=[
            _stage("a", 50),
            _stage("b", 30, reset_schedule=False),
            _stage("c", 20, reset_optimizer=False, reset_schedule=False),
        ]
    )
    one_long = stg.schedules.make_schedule(COSINE, 100)
    carried = stg.stage_schedule(plan, 2)  # evaluated at the carried optimizer's count
    for step in (0, 7, 19):
        assert float(carried(30 + step)) == pytest.approx(float(one_long(80 + step)), rel=1e-6)

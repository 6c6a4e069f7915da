"""Optimizers: first updates by hand, Adafactor state layouts, fresh state, config errors."""

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjf.errors import ConfigError, UnknownNameError
from ptjf.training import schedules
from ptjf.training.optimizers import (
    OptimizerConfig,
    make_optimizer,
    paper_mc4_adafactor,
    t5_adafactor,
)

RNG = np.random.default_rng(0)
PARAMS = {
    "w": jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32),
    "b": jnp.asarray(RNG.normal(size=(6,)), jnp.float32),
}
GRADS = {
    "w": jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32),
    "b": jnp.asarray(RNG.normal(size=(6,)), jnp.float32),
}


def _first_update(config, lr=0.1, params=PARAMS, grads=GRADS):
    tx = make_optimizer(config, schedules.constant(lr))
    updates, _ = tx.update(grads, tx.init(params), params)
    return {k: np.asarray(v, np.float64) for k, v in updates.items()}


def _np(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def test_adam_first_update_by_hand():
    eps = 1e-8
    updates = _first_update(OptimizerConfig(name="adam", b1=0.9, b2=0.98), lr=0.1)
    # Bias-corrected moments after one step are g and g², so the step is lr·g/(|g|+eps).
    for name, g in _np(GRADS).items():
        np.testing.assert_allclose(updates[name], -0.1 * g / (np.abs(g) + eps), rtol=1e-5)


def test_global_norm_clipping_applies_before_adam():
    grads = {"w": jnp.zeros((4, 6)), "b": jnp.array([3.0, 4.0, 0, 0, 0, 0])}
    config = OptimizerConfig(name="adam", eps=1.0, grad_clip_norm=1.0)
    updates = _first_update(config, lr=0.1, grads=grads)
    clipped = np.array([0.6, 0.8, 0, 0, 0, 0])  # norm 5 scaled to 1
    np.testing.assert_allclose(updates["b"], -0.1 * clipped / (clipped + 1.0), rtol=1e-5)
    unclipped = _first_update(OptimizerConfig(name="adam", eps=1.0), lr=0.1, grads=grads)
    np.testing.assert_allclose(unclipped["b"][:2], -0.1 * np.array([3 / 4, 4 / 5]), rtol=1e-5)


def test_adamw_decay_is_scaled_by_learning_rate():
    updates = _first_update(OptimizerConfig(name="adamw", weight_decay=0.01), lr=0.1)
    for name, g in _np(GRADS).items():
        expected = -0.1 * (g / (np.abs(g) + 1e-8) + 0.01 * _np(PARAMS)[name])
        np.testing.assert_allclose(updates[name], expected, rtol=1e-5)


def test_paper_adafactor_first_update_by_hand():
    """Non-factored, momentum 0.9: first step is -(1-0.9)·lr·rms(param)·sign(g)."""
    config = paper_mc4_adafactor()
    updates = _first_update(config, lr=0.01)
    for name, g in _np(GRADS).items():
        rms = np.sqrt(np.mean(_np(PARAMS)[name] ** 2))
        np.testing.assert_allclose(updates[name], -0.1 * 0.01 * rms * np.sign(g), rtol=1e-5)


def test_t5_adafactor_factored_first_update_by_hand():
    config = dataclasses.replace(t5_adafactor(), min_dim_size_to_factor=4)
    updates = _first_update(config, lr=0.01)
    g = _np(GRADS)["w"]
    sq = g**2 + 1e-30
    row, col = sq.mean(axis=1), sq.mean(axis=0)
    u = g / np.sqrt(np.outer(row, col) / row.mean())
    u = u / max(1.0, np.sqrt(np.mean(u**2)))  # update clipping at threshold 1
    rms_w = np.sqrt(np.mean(_np(PARAMS)["w"] ** 2))
    np.testing.assert_allclose(updates["w"], -0.01 * rms_w * u, rtol=1e-5)


def _leaf(state, name):
    found = optax.tree_utils.tree_get_all_with_path(state, name)
    assert len(found) == 1, f"{name}: {found}"
    return found[0][1]


def test_adafactor_non_factored_state_is_full_shape_with_momentum():
    state = make_optimizer(paper_mc4_adafactor(), schedules.constant(0.01)).init(PARAMS)
    v = _leaf(state, "v")
    assert v["w"].shape == (4, 6) and v["b"].shape == (6,)
    assert _leaf(state, "v_row")["w"].shape == (1,)
    assert _leaf(state, "ema")["w"].shape == (4, 6)


def test_adafactor_factored_state_has_row_and_col_and_no_momentum():
    config = dataclasses.replace(t5_adafactor(), min_dim_size_to_factor=4)
    state = make_optimizer(config, schedules.constant(0.01)).init(PARAMS)
    assert _leaf(state, "v_row")["w"].shape == (4,)
    assert _leaf(state, "v_col")["w"].shape == (6,)
    assert _leaf(state, "v")["w"].shape == (1,)
    assert _leaf(state, "v")["b"].shape == (6,)  # 1-D params are never factored
    assert optax.tree_utils.tree_get_all_with_path(state, "ema") == []
    # With T5's threshold of 128 the same tiny matrix is not factored.
    state128 = make_optimizer(t5_adafactor(), schedules.constant(0.01)).init(PARAMS)
    assert _leaf(state128, "v")["w"].shape == (4, 6)


@pytest.mark.parametrize(
    "config", [OptimizerConfig(name="adam", grad_clip_norm=1.0), paper_mc4_adafactor()]
)
def test_fresh_init_is_zero_with_count_zero(config):
    """The stage switch relies on `tx.init` giving zero moments and a zero step count."""
    tx = make_optimizer(config, schedules.constant(0.01))
    state = tx.init(PARAMS)
    for _ in range(2):
        _, state = tx.update(GRADS, state, PARAMS)
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")
    assert counts and all(int(count) == 2 for _, count in counts)
    fresh = tx.init(PARAMS)
    for leaf in jax.tree.leaves(fresh):
        assert not np.any(np.asarray(leaf))


def test_fresh_stage_with_warmup_first_update_is_zero():
    schedule = schedules.warmup_cosine(5e-3, 10, 100)
    tx = make_optimizer(OptimizerConfig(name="adam"), schedule)
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))


def test_unknown_optimizer_name():
    with pytest.raises(UnknownNameError, match="adafactor"):
        OptimizerConfig(name="adafacter")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"b1": 1.0}, "b1"),
        ({"weight_decay": 0.1}, "weight_decay"),  # adam has no decoupled decay
        ({"name": "adamw", "weight_decay": -0.1}, "weight_decay"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm"),
        ({"name": "adafactor", "momentum": 1.5}, "momentum"),
        ({"name": "adafactor", "clipping_threshold": 0.5}, "clipping_threshold"),
        ({"name": "adafactor", "min_dim_size_to_factor": 0}, "min_dim_size_to_factor"),
    ],
)
def test_invalid_config_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"OptimizerConfig\.{field} = "):
        OptimizerConfig(**kwargs)


def test_gin_configurable():
    with gin.unlock_config():
        gin.parse_config(
            "OptimizerConfig.name = 'adafactor'\n"
            "OptimizerConfig.factored = False\n"
            "OptimizerConfig.momentum = 0.9\n"
        )
    try:
        config = OptimizerConfig()
    finally:
        gin.clear_config()
    assert config == paper_mc4_adafactor()


@pytest.mark.parametrize(
    ("kwargs", "field", "owner"),
    [
        ({"name": "adam", "momentum": 0.9}, "momentum", "Adafactor"),
        ({"name": "adam", "factored": False}, "factored", "Adafactor"),
        ({"name": "adamw", "decay_rate": 0.5}, "decay_rate", "Adafactor"),
        ({"name": "adam", "min_dim_size_to_factor": 16}, "min_dim_size_to_factor", "Adafactor"),
        ({"name": "adam", "clipping_threshold": None}, "clipping_threshold", "Adafactor"),
        (
            {"name": "adam", "multiply_by_parameter_scale": False},
            "multiply_by_parameter_scale",
            "Adafactor",
        ),
        ({"name": "adafactor", "b1": 0.8}, "b1", "Adam"),
        ({"name": "adafactor", "b2": 0.98}, "b2", "Adam"),
    ],
)
def test_an_option_of_the_other_optimizer_is_refused(kwargs, field, owner):
    with pytest.raises(ConfigError) as err:
        OptimizerConfig(**kwargs)
    message = str(err.value)
    assert message.startswith(f"OptimizerConfig.{field} = {kwargs[field]!r} is an option of ")
    assert f"is an option of {owner} (" in message
    assert f"the optimizer in use is OptimizerConfig.name = {kwargs['name']!r}" in message


def test_defaults_of_the_other_optimizer_are_not_refused():
    # Every field at its default, and the helpers that spell Adafactor's defaults out.
    for name in ("adam", "adamw", "adafactor"):
        OptimizerConfig(name=name)
    OptimizerConfig(name="adam", decay_rate=0.8, factored=True, momentum=None, eps=1e-6)
    assert t5_adafactor().b1 == OptimizerConfig().b1
    paper_mc4_adafactor()


def test_an_adafactor_option_bound_in_gin_for_adam_is_refused_by_name():
    with gin.unlock_config():
        gin.parse_config("OptimizerConfig.name = 'adam'\nOptimizerConfig.momentum = 0.9")
    try:
        with pytest.raises(ConfigError) as err:
            OptimizerConfig()
    finally:
        gin.clear_config()
    assert (
        "OptimizerConfig.momentum = 0.9 is an option of Adafactor ('adafactor'), but the "
        "optimizer in use is OptimizerConfig.name = 'adam', which ignores it. Remove the "
        "momentum setting"
    ) in str(err.value)

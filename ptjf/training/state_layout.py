"""Shapes, dtypes and shardings of a run's train state, without allocating it: what a restore
targets and what the train step compiles for, on any mesh."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from ptjf import stages as stg
from ptjf.models import EncoderDecoder, TransformerConfig, init_params, param_logical_axes
from ptjf.runtime.partitioning import Partitioner
from ptjf.training.train_state import TrainState


# Tracing the model's initialiser takes about a second for mT5-small, and a stage asks for its
# shapes and axes several times; both are pure functions of the (frozen) config.
@functools.lru_cache(maxsize=8)
def abstract_params(config: TransformerConfig):
    """Shapes and dtypes of the model's parameters, without allocating them."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


@functools.lru_cache(maxsize=8)
def _logical_axes(config: TransformerConfig) -> Any:
    return param_logical_axes(EncoderDecoder(config))


def param_shardings(partitioner: Partitioner, config: TransformerConfig) -> Any:
    """Each parameter's NamedSharding, from its logical axes and the partitioner's rules."""
    return partitioner.param_shardings(_logical_axes(config), abstract_params(config))


def _abstract_state(config: TransformerConfig, tx: optax.GradientTransformation) -> TrainState:
    return jax.eval_shape(lambda p: stg.switch_state(p, tx), abstract_params(config))


def state_shardings(
    partitioner: Partitioner, config: TransformerConfig, tx: optax.GradientTransformation
) -> TrainState:
    """The `TrainState` of shardings for `tx`'s optimizer state over the model's parameters."""
    return partitioner.state_shardings(
        _abstract_state(config, tx), param_shardings(partitioner, config)
    )


def sharded_state_target(
    partitioner: Partitioner,
    config: TransformerConfig,
    tx: optax.GradientTransformation,
    shardings: TrainState,
) -> TrainState:
    """The train state as shapes, dtypes and `shardings`: a restore target, and what the train
    step compiles for."""
    return partitioner.with_shardings(_abstract_state(config, tx), shardings)


def sharded_params_target(partitioner: Partitioner, config: TransformerConfig) -> Any:
    """Restore target for parameters: shapes, dtypes and this mesh's shardings."""
    return partitioner.with_shardings(abstract_params(config), param_shardings(partitioner, config))

"""Partitioning rules, optimizer-state layouts, meshes and multi-process start-up, in-process."""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ptjf.data import batches as data
from ptjf.errors import ConfigError
from ptjf.runtime import distributed
from ptjf.runtime import partitioning as pt


def test_standard_rules_are_t5x_1d_rules():
    rules = dict(reversed(pt.standard_logical_axis_rules()))  # first rule wins
    assert rules == {
        "batch": "data",
        "vocab": "model",
        "mlp": "model",
        "heads": "model",
        "joined_kv": "model",
        "kv": None,
        "embed": None,
        "length": None,
        "relpos_buckets": None,
        "cache": None,
    }


@pytest.mark.parametrize(
    "logical,params_2d,expected",
    [
        (("embed", "mlp"), False, P(None, "model")),
        (("embed", "mlp"), True, P("data", "model")),
        (("vocab", "embed"), True, P("model", "data")),
        # An activation keeps `embed` whole: `batch` already took `data`.
        (("batch", "length", "embed"), True, P("data", None, None)),
        (("batch", "length", "mlp"), False, P("data", None, "model")),
    ],
)
def test_logical_axes_map_to_mesh_axes(logical, params_2d, expected):
    import flax.linen as nn

    rules = pt.standard_logical_axis_rules(parameter_partitioning_dims=2 if params_2d else 1)
    assert nn.logical_to_mesh_axes(logical, rules) == expected


def test_activation_2d_splits_embed_over_model():
    import flax.linen as nn

    rules = pt.standard_logical_axis_rules(activation_partitioning_dims=2)
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", None, "model")


def test_additional_rules_take_precedence_and_bad_ones_are_refused():
    import flax.linen as nn

    rules = pt.standard_logical_axis_rules(additional_rules=[("length", "model")])
    assert nn.logical_to_mesh_axes(("batch", "length"), rules) == P("data", "model")
    with pytest.raises(ConfigError, match="malformed"):
        pt.standard_logical_axis_rules(additional_rules=[("length", "tensor")])
    with pytest.raises(ConfigError, match="expected 1 or 2"):
        pt.standard_logical_axis_rules(parameter_partitioning_dims=3)


def test_rules_and_partitioner_are_gin_configurable():
    gin.parse_config(
        [
            "partitioning.PjitPartitioner.num_partitions = 1",
            "partitioning.PjitPartitioner.logical_axis_rules = "
            "@partitioning.standard_logical_axis_rules()",
            "partitioning.standard_logical_axis_rules.parameter_partitioning_dims = 2",
        ]
    )
    part = pt.Partitioner()
    assert ("embed", "data") in part.rules
    assert part.mesh.shape == {"data": 1, "model": 1}


def test_a_mesh_that_does_not_fit_the_devices_names_the_choices():
    devices = jax.devices()[:1]
    with pytest.raises(ConfigError, match=r"does not divide the 1 device.*from \[1\]"):
        pt.make_mesh(2, devices)
    with pytest.raises(ConfigError, match="integer >= 1"):
        pt.make_mesh(0, devices)


def test_spec_fits_leaves_uneven_axes_whole():
    mesh = pt.make_mesh(1, jax.devices()[:1])
    assert pt._spec_fits(P("model", None), (3, 4), mesh) == P("model", None)
    fake = type("M", (), {"shape": {"data": 4, "model": 2}})()
    assert pt._spec_fits(P("data", "model"), (6, 4), fake) == P(None, "model")
    assert pt._spec_fits(P(("data", "model")), (16,), fake) == P(("data", "model"))
    assert pt._spec_fits(P(("data", "model")), (12,), fake) == P(None)


def test_optimizer_state_specs_for_adam_and_factored_adafactor():
    params = {"mlp": {"kernel": jnp.zeros((8, 16))}, "norm": {"scale": jnp.zeros((8,))}}
    specs = {"mlp": {"kernel": P(None, "model")}, "norm": {"scale": P(None)}}
    adam = jax.eval_shape(optax.adam(1e-3).init, params)
    got = pt.optimizer_state_specs(adam, specs, params)
    assert got[0].mu["mlp"]["kernel"] == P(None, "model")
    assert got[0].nu["norm"]["scale"] == P(None)
    assert got[0].count == P()
    factored = jax.eval_shape(optax.adafactor(1e-3, min_dim_size_to_factor=4).init, params)
    got = pt.optimizer_state_specs(factored, specs, params)
    state = next(s for s in got if hasattr(s, "v_row"))
    shapes = next(s for s in factored if hasattr(s, "v_row"))
    # v_row drops the last axis (16 → row statistics of shape (8,)), v_col the first.
    assert shapes.v_row["mlp"]["kernel"].shape == (8,)
    assert state.v_row["mlp"]["kernel"] == P(None)
    assert shapes.v_col["mlp"]["kernel"].shape == (16,)
    assert state.v_col["mlp"]["kernel"] == P("model")


def test_factored_statistics_of_a_square_kernel_keep_their_own_axis():
    params = {"q": {"kernel": jnp.zeros((16, 16))}}
    specs = {"q": {"kernel": P(None, "model")}}
    state = jax.eval_shape(optax.adafactor(1e-3, min_dim_size_to_factor=4).init, params)
    got = next(s for s in pt.optimizer_state_specs(state, specs, params) if hasattr(s, "v_row"))
    # optax reduces v_row over axis 1 and v_col over axis 0 when both have the same size.
    assert got.v_row["q"]["kernel"] == P(None)
    assert got.v_col["q"]["kernel"] == P("model")


def test_single_device_data_shard_and_batch_assembly():
    part = pt.Partitioner(devices=jax.devices()[:1])
    assert part.data_shard(8) == (0, 1)
    assert part.num_data_shards == 1
    local = {"x": np.arange(12, dtype=np.int32).reshape(4, 3)}
    batch = part.shard_batch(local)
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
    assert part.global_batch(local)["x"].shape == (4, 3)


def test_partitioned_jit_applies_the_model_constraints():
    import flax.linen as nn

    part = pt.Partitioner(devices=jax.devices()[:1])

    def fn(x):
        return nn.with_logical_constraint(x * 2, ("batch", "embed"))

    with part.context():
        constrained = jax.jit(fn).lower(jnp.ones((2, 4))).as_text()
    unconstrained = jax.jit(fn).lower(jnp.ones((2, 4))).as_text()
    # The constraint reaches the program only with the mesh and rules in scope.
    assert "sharding_constraint" in constrained and "sharding_constraint" not in unconstrained
    assert '[{"data"}, {}]' in constrained  # batch → data, embed whole
    np.testing.assert_array_equal(part.jit(fn)(jnp.ones((2, 4))), 2 * np.ones((2, 4)))


def test_input_shards_make_batches_independent_of_the_number_of_hosts(bible_vocab):
    config = data.DatasetConfig(
        mixture_or_task_name="bible_en_fr_tl",
        task_feature_lengths={"inputs": 16, "targets": 16},
        batch_size=8,
        seed=3,
    )
    one = next(data.host_train_batches(config, input_shards=2))
    halves = [
        next(data.host_train_batches(config, host_shard=h, num_host_shards=2, input_shards=2))
        for h in (0, 1)
    ]
    for key, value in one.items():
        assert value.shape[0] == 8
        np.testing.assert_array_equal(value, np.concatenate([h[key] for h in halves]))
    with pytest.raises(ConfigError, match="multiple of the 2 data shard"):
        data.host_train_batches(config, num_host_shards=2, input_shards=3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"process_count": 2}, "must come together"),
        (
            {"coordinator_address": "localhost", "process_count": 2, "process_index": 0},
            "is not HOST:PORT",
        ),
        (
            {"coordinator_address": "h:1", "process_count": 2, "process_index": 2},
            "out of range",
        ),
    ],
)
def test_bad_multiprocess_flags(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        distributed.DistributedConfig(**kwargs)


def test_cluster_detection_from_the_environment():
    detect = distributed.cluster_from_environment
    assert detect({}) is None
    assert detect({"TPU_WORKER_HOSTNAMES": "t0"}) is None  # a single-host TPU VM
    assert detect({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu_pod"
    assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"


def test_one_process_initialises_nothing():
    assert distributed.initialize(distributed.DistributedConfig(), env={}) is False
    single = distributed.DistributedConfig(
        coordinator_address="127.0.0.1:1", process_count=1, process_index=0
    )
    assert distributed.initialize(single) is False

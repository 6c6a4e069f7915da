"""Tests for ptjf.checkpoints.checkpointer: round trips, garbage collection, fit checks, discovery."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, NamedTuple

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjf.checkpoints import checkpointer as ck
from ptjf.checkpoints import integrity
from ptjf.errors import CheckpointError, ConfigError
from ptjf.training import train_state

SYNC = ck.CheckpointConfig(period=1, async_save=False)


def make_params(width: int = 4) -> dict:
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "emb": jax.random.normal(k1, (2, 3)),
        "enc": {"b": jax.random.normal(k2, (width,)), "w": jax.random.normal(k3, (3, width))},
    }


def make_state(step: int = 7, width: int = 4, tx=None) -> dict:
    """A train state after one Adam update, so every optimizer leaf holds distinct values."""
    params = make_params(width)
    tx = tx or optax.adam(1e-2)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}


def abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def assert_bitwise_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


META = ck.checkpoint_metadata(
    stage_index=1,
    stage_name="joint_finetune",
    global_step=107,
    parent=("/m/pretrain", 100),
    data_position={"examples_seen": {"en_fr": 640, "en_ro": 64}},
)


def saved(directory, steps=(7,), config=SYNC) -> ck.StageCheckpointer:
    ckpt = ck.StageCheckpointer(directory, config)
    for s in steps:
        assert ckpt.save(s, make_state(s), META, force=True)
    ckpt.wait()
    return ckpt


# --------------------------------------------------------------------------- round trips


def test_round_trip_is_bitwise_and_keeps_metadata(tmp_path):
    state = make_state(7)
    with ck.StageCheckpointer(tmp_path / "stage", SYNC) as ckpt:
        assert ckpt.save(7, state, META)
        restored, meta = ckpt.restore(target_state=abstract(state))
    assert_bitwise_equal(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert int(restored["step"]) == 7 and restored["step"].dtype == jnp.int32
    fingerprints = meta.pop("fingerprints")
    assert meta == {**META, "step": 7, "ptjf_version": "0.1.0"}
    # What a restore verifies: the saved arrays' checksums (ptjf.checkpoints.integrity).
    assert fingerprints == {
        "params": integrity.fingerprint(state["params"]),
        "opt_state": integrity.fingerprint(state["opt_state"]),
    }
    assert meta["lineage"] == {"parent_path": "/m/pretrain", "parent_step": 100}
    assert sorted(os.listdir(tmp_path / "stage" / "7")) == sorted(
        ["_CHECKPOINT_METADATA", "commit_success.txt", "metadata", "opt_state", "params", "step"]
    )


def test_async_save_then_wait_then_restore_from_a_fresh_checkpointer(tmp_path):
    config = ck.CheckpointConfig(period=5, keep=None, async_save=True)
    ckpt = ck.StageCheckpointer(tmp_path, config)
    states = {s: make_state(s) for s in (5, 10)}
    for s, state in states.items():
        assert ckpt.save(s, state, META)
    ckpt.wait()
    assert ckpt.all_steps() == [5, 10] and ckpt.latest_step() == 10
    ckpt.close()
    fresh = ck.StageCheckpointer(tmp_path, config, read_only=True)
    restored, meta = fresh.restore(5, target_state=abstract(states[5]))
    assert_bitwise_equal(restored, states[5])
    assert meta["step"] == 5
    assert fresh.read_metadata()["step"] == 10


def test_restore_places_arrays_on_the_target_sharding(tmp_path):
    state = make_state()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
    )
    ckpt = saved(tmp_path)
    restored, _ = ckpt.restore(target_state=target)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(restored))
    assert_bitwise_equal(restored, state)


def test_restore_rebuilds_dataclass_and_namedtuple_states(tmp_path):
    @flax.struct.dataclass
    class Flaxy:
        step: Any
        params: Any
        opt_state: Any
        rng: Any

    class Tupled(NamedTuple):
        step: Any
        params: Any
        opt_state: Any

    state = make_state()
    ckpt = saved(tmp_path)
    marker = jnp.array([3, 1], jnp.uint32)
    target = Flaxy(state["step"], abstract(state["params"]), abstract(state["opt_state"]), marker)
    restored, _ = ckpt.restore(target_state=target)
    assert isinstance(restored, Flaxy) and restored.rng is marker
    assert_bitwise_equal(restored.params, state["params"])
    restored_t, _ = ckpt.restore(target_state=Tupled(**abstract(state)))
    assert isinstance(restored_t, Tupled)
    assert_bitwise_equal(restored_t.opt_state, state["opt_state"])


def test_restore_onto_ptjf_train_state(tmp_path):
    tx = optax.adam(1e-2)
    state = train_state.create_train_state(make_params(), tx)
    state = state.apply_gradients(jax.tree.map(jnp.cos, state.params), tx)
    ckpt = ck.StageCheckpointer(tmp_path, SYNC)
    assert ckpt.save(1, state, META)
    target = jax.eval_shape(lambda p: train_state.create_train_state(p, tx), make_params())
    restored, meta = ckpt.restore(target_state=target)
    assert isinstance(restored, train_state.TrainState) and meta["step"] == 1
    assert_bitwise_equal(restored, state)


def test_restore_params_reads_params_only(tmp_path):
    ckpt = saved(tmp_path, steps=(3, 7))
    # Without the optimizer state on disk a params-only restore must still work: it never
    # opens that item (the stage switch), while a full restore needs it.
    (tmp_path / "7" / "opt_state").rename(tmp_path / "7" / "moved_away")
    params, meta = ckpt.restore_params(target_params=abstract(make_params()))
    assert_bitwise_equal(params, make_state(7)["params"])
    assert meta["step"] == 7
    with pytest.raises(CheckpointError, match="opt_state"):
        ckpt.restore(target_state=abstract(make_state()))
    raw, _ = ckpt.restore_params(3)
    assert_bitwise_equal(jax.tree.map(np.asarray, raw), make_state(3)["params"])


def test_stage_start_holds_no_optimizer_state_and_a_full_restore_says_what_to_do(tmp_path):
    params = make_state(7)["params"]
    with ck.StageCheckpointer(tmp_path / "joint", SYNC) as ckpt:
        ckpt.save_stage_start(params, META)
        assert ckpt.all_steps() == [0] and ckpt.starts_fresh(0)
        restored, meta = ckpt.restore_params(0, target_params=abstract(params))
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(0, target_state=abstract(make_state()))
        with pytest.raises(CheckpointError, match=r"already holds checkpoints \[0\]"):
            ckpt.save_stage_start(params, META)
    assert_bitwise_equal(restored, params)
    assert meta == {
        **META,
        "step": 0,
        "optimizer_state": "fresh",
        "ptjf_version": "0.1.0",
        "fingerprints": {"params": integrity.fingerprint(params)},
    }
    assert sorted(os.listdir(tmp_path / "joint" / "0")) == sorted(
        ["_CHECKPOINT_METADATA", "commit_success.txt", "metadata", "params", "step"]
    )
    assert (
        f"Checkpoint {tmp_path / 'joint' / '0'} is a stage start written by `ptjf switch`: it "
        "holds the parameters but no optimizer state (the stage builds a fresh one). Start the "
        "stage from it with `ptjf train`"
    ) in str(err.value)
    # What it points to for a params-only start is what works, not a knob nothing reads.
    assert "`Stage.init_from=PATH`, `ptjf switch --from=PATH`" in str(err.value)
    assert "RestoreConfig" not in str(err.value)
    # A full checkpoint is no stage start, nor is one that lost its optimizer state: that one
    # is damaged, and a full restore names the missing item.
    ckpt = saved(tmp_path / "pretrain")
    assert not ckpt.starts_fresh(7)
    (tmp_path / "pretrain" / "7" / "opt_state").rename(tmp_path / "pretrain" / "7" / "moved")
    assert not ckpt.starts_fresh(7)
    with pytest.raises(CheckpointError, match="has no item 'opt_state'"):
        ckpt.restore(7, target_state=abstract(make_state()))


def test_dtype_difference_is_cast_and_logged(tmp_path, caplog):
    ckpt = saved(tmp_path)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), make_params())
    with caplog.at_level(logging.WARNING, logger="ptjf.checkpoints.checkpointer"):
        params, _ = ckpt.restore_params(target_params=target)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
    expected = make_state(7)["params"]["enc"]["w"].astype(jnp.bfloat16)
    assert np.array_equal(np.asarray(params["enc"]["w"]), np.asarray(expected))
    assert "casting 3 arrays" in caplog.text and "enc/w: float32 -> bfloat16" in caplog.text


# --------------------------------------------------------------------------- fit checks


def test_shape_mismatch_names_first_path_and_both_shapes(tmp_path):
    ckpt = saved(tmp_path)
    wider = abstract(make_state(width=5))
    with pytest.raises(CheckpointError) as err:
        ckpt.restore(target_state=wider)
    msg = str(err.value)
    assert "at enc/b the checkpoint has shape (4,) but the model expects (5,)" in msg
    assert "(1 more arrays differ)" in msg and "another model" in msg
    assert str(tmp_path / "7") in msg


def test_missing_and_unexpected_keys_are_named(tmp_path):
    ckpt = saved(tmp_path)
    params = make_params()
    params["dec"] = {"kernel": jnp.zeros((2, 2))}
    del params["emb"]
    with pytest.raises(CheckpointError) as err:
        ckpt.restore_params(target_params=abstract(params))
    msg = str(err.value)
    assert "missing in the checkpoint: dec/kernel" in msg
    assert "in the checkpoint but not in the model: emb" in msg


def test_other_optimizer_state_points_to_a_parameters_only_start(tmp_path):
    ckpt = saved(tmp_path)
    sgd_state = make_state(tx=optax.sgd(0.1, momentum=0.9))
    with pytest.raises(
        CheckpointError,
        match=r"item 'opt_state'.*0/trace/emb.*parameters only.*ptjf switch --from=PATH",
    ):
        ckpt.restore(target_state=abstract(sgd_state))


def test_check_fits_orders_by_model_and_reports_casts():
    stored = {"a": ((2,), "float32"), "b/c": ((3, 4), "float32"), "b/d": ((1,), "int32")}
    same_shapes = {"b/d": ((1,), "int32"), "b/c": ((3, 4), "bfloat16"), "a": ((2,), "float32")}
    assert ck.check_fits(stored, same_shapes, "params", "x") == ["b/c: float32 -> bfloat16"]
    wrong = {"b/d": ((2,), "int32"), "b/c": ((4, 3), "float32"), "a": ((2,), "float32")}
    with pytest.raises(CheckpointError, match=r"at b/d the checkpoint has shape \(1,\)"):
        ck.check_fits(stored, wrong, "params", "x")


def test_tree_signature_matches_orbax_paths_for_optax_states():
    sig = ck.tree_signature(make_state()["opt_state"])
    assert sig["0/count"] == ((), "int32")
    assert sig["0/mu/enc/w"] == ((3, 4), "float32")
    assert len(sig) == 7  # count + 3 mu + 3 nu; EmptyState has no leaves


# --------------------------------------------------------------------------- saving policy


def test_period_force_and_duplicate_steps(tmp_path):
    ckpt = ck.StageCheckpointer(tmp_path, ck.CheckpointConfig(period=2, async_save=False))
    state = make_state()
    assert [ckpt.save(s, state, {}) for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert ckpt.save(5, state, {}, force=True)
    assert not ckpt.save(4, state, {}, force=True)  # already saved: skipped, not overwritten
    assert ckpt.all_steps() == [2, 4, 5]
    only_end = ck.StageCheckpointer(tmp_path / "b", ck.CheckpointConfig(period=0))
    assert not only_end.save(1000, state, {}) and only_end.save(1000, state, {}, force=True)
    only_end.close()
    assert only_end.all_steps() == [1000]


def test_keep_two_retains_the_two_newest(tmp_path):
    ckpt = saved(tmp_path, steps=(1, 2, 3, 4), config=ck.CheckpointConfig(1, keep=2))
    assert ckpt.all_steps() == [3, 4]
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == ["3", "4"]
    restored, _ = ckpt.restore(3, target_state=abstract(make_state()))
    assert_bitwise_equal(restored, make_state(3))


def test_garbage_collection_waits_for_the_successor(tmp_path):
    ckpt = ck.StageCheckpointer(tmp_path, ck.CheckpointConfig(period=1, keep=1))
    assert ckpt.save(1, make_state(1), {})
    ckpt.wait()
    assert ckpt.save(2, make_state(2), {})
    # Step 2 may still be in flight here, so step 1 must survive until the next wait/save.
    assert 1 in ck.finalized_steps(tmp_path)
    ckpt.wait()
    assert ck.finalized_steps(tmp_path) == [2]


def test_unfinished_step_directories_are_not_listed(tmp_path):
    saved(tmp_path / "pretrain", steps=(3,))
    (tmp_path / "pretrain" / "9.orbax-checkpoint-tmp").mkdir()
    (tmp_path / "finetune" / "4.orbax-checkpoint-tmp").mkdir(parents=True)
    ckpt = ck.StageCheckpointer(tmp_path / "pretrain", SYNC, read_only=True)
    assert ckpt.latest_step() == 3 and ckpt.all_steps() == [3]
    assert ck.find_latest(str(tmp_path), ["pretrain", "finetune"]) == (0, 3)


def test_metadata_must_be_json(tmp_path):
    ckpt = ck.StageCheckpointer(tmp_path, SYNC)
    with pytest.raises(CheckpointError, match=r"metadata\.data_position\.rng is a set"):
        ckpt.save(1, make_state(), {"data_position": {"rng": {1, 2}}})
    with pytest.raises(CheckpointError, match="key 3 of type int"):
        ckpt.save(1, make_state(), {3: "x"})
    with pytest.raises(CheckpointError, match="metadata says step 2"):
        ckpt.save(1, make_state(), {"step": 2})
    assert ckpt.save(1, make_state(), {"loss": np.float32(0.5), "pair": (1, "a")})
    meta = ckpt.read_metadata(1)
    assert set(meta.pop("fingerprints")) == {"params", "opt_state"}
    assert meta == {
        "loss": 0.5,
        "pair": [1, "a"],
        "step": 1,
        "ptjf_version": "0.1.0",
    }


# --------------------------------------------------------------------------- missing data


def test_missing_checkpoints_list_existing_steps(tmp_path):
    empty = ck.StageCheckpointer(tmp_path / "empty", SYNC)
    with pytest.raises(CheckpointError, match="has no finalised checkpoint"):
        empty.restore(target_state=abstract(make_state()))
    ckpt = saved(tmp_path / "s", steps=(10, 20))
    with pytest.raises(CheckpointError, match=r"step 15 .*steps that exist: 10, 20"):
        ckpt.restore_params(15)
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.StageCheckpointer(tmp_path / "nowhere", read_only=True)


def test_unwritable_directory_raises_with_the_path(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits, so make the directory impossible: under a regular file.
        blocker = tmp_path / "a_file"
        blocker.write_text("not a directory")
        target = blocker / "model" / "pretrain"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "pretrain"
    with pytest.raises(CheckpointError) as err:
        ck.StageCheckpointer(target, SYNC)
    assert str(target) in str(err.value) and "writable --gin.MODEL_DIR" in str(err.value)


def test_read_only_checkpointer_refuses_to_save(tmp_path):
    saved(tmp_path)
    ro = ck.StageCheckpointer(tmp_path, SYNC, read_only=True)
    with pytest.raises(CheckpointError, match="read-only"):
        ro.save(8, make_state(), {}, force=True)


# --------------------------------------------------------------------------- discovery, configs


def test_find_latest_prefers_the_later_stage(tmp_path):
    model_dir = str(tmp_path)
    names = ["pretrain", "joint_finetune"]
    assert ck.find_latest(model_dir, names) is None
    saved(tmp_path / "pretrain", steps=(10, 20))
    (tmp_path / "joint_finetune").mkdir()
    assert ck.find_latest(model_dir, names) == (0, 20)
    saved(tmp_path / "joint_finetune", steps=(5,))
    assert ck.find_latest(model_dir, names) == (1, 5)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/m/pretrain/100", ("/m/pretrain", 100)),
        ("/m/pretrain/100/", ("/m/pretrain", 100)),
        ("/m/pretrain/", ("/m/pretrain", None)),
        ("gs://bucket/run/ft/0", ("gs://bucket/run/ft", 0)),
        ("relative/stage2", ("relative/stage2", None)),
        ("1200", ("1200", None)),
    ],
)
def test_parse_checkpoint_path(path, expected):
    assert ck.parse_checkpoint_path(path) == expected


def test_restore_config_modes(tmp_path):
    saved(tmp_path / "pretrain", steps=(10, 20))
    stage = str(tmp_path / "pretrain")
    assert ck.RestoreConfig(stage, "latest").resolve() == (stage, 20)
    assert ck.RestoreConfig(f"{stage}/10", "specific").resolve() == (stage, 10)
    with pytest.raises(CheckpointError, match="steps that exist: 10, 20"):
        ck.RestoreConfig(f"{stage}/15", "specific").resolve()
    with pytest.raises(ConfigError, match="needs a step directory"):
        ck.RestoreConfig(stage, "specific")
    with pytest.raises(ConfigError, match="mode='specific'"):
        ck.RestoreConfig(f"{stage}/10", "latest")
    with pytest.raises(ConfigError, match="'latest'"):
        ck.RestoreConfig(stage, "newest")


def test_restore_config_is_no_gin_knob_that_nothing_reads():
    # No run reads a RestoreConfig (a stage starts from Stage.init_from or `ptjf switch`), so a
    # binding of it is refused by name instead of being silently ignored.
    from ptjf import config as ptjf_config

    with pytest.raises(ConfigError, match=r"Unknown gin configurable 'RestoreConfig'"):
        ptjf_config.parse_gin([], ["RestoreConfig.path = '/m/pretrain'"], finalize=False)
    assert "params_only" not in {f.name for f in dataclasses.fields(ck.RestoreConfig)}


def test_checkpoint_config_validation_and_gin():
    with pytest.raises(ConfigError, match="keep=0"):
        ck.CheckpointConfig(period=10, keep=0)
    with pytest.raises(ConfigError, match="period=-1"):
        ck.CheckpointConfig(period=-1)
    try:
        gin.parse_config("CheckpointConfig.period = 250\nCheckpointConfig.keep = 3")
        config = ck.CheckpointConfig()
    finally:
        gin.clear_config()
    assert (config.period, config.keep, config.async_save) == (250, 3, True)


def test_keep_steps_are_always_saved_and_never_collected(tmp_path):
    config = ck.CheckpointConfig(period=5, keep=1, async_save=False, keep_steps=(3,))
    ckpt = ck.StageCheckpointer(tmp_path, config)
    assert [ckpt.save(s, make_state(s), {}) for s in (1, 2, 3, 4, 5, 10)] == [
        False,
        False,
        True,  # a fork point, off the period
        False,
        True,
        True,
    ]
    ckpt.wait()
    assert ckpt.all_steps() == [3, 10]  # keep=1 collected 5 but not the fork point
    ckpt.close()
    with pytest.raises(ConfigError, match="keep_steps"):
        ck.CheckpointConfig(keep_steps=(-1,))

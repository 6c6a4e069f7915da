"""`ptjf switch` writes a stage start that shares the source's parameter files.

The switched step holds params (hard links where possible), step and metadata but no
optimizer state; the trainer rebuilds that state exactly as the in-process switch does. A
copy is written where links cannot be made, and a failed switch leaves no step behind.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from ptjf import stages as stg
from ptjf.checkpoints import checkpointer as ck
from ptjf.checkpoints import integrity
from ptjf.checkpoints import link as checkpoint_link
from ptjf.commands import switch
from ptjf.errors import CheckpointError, CorruptCheckpointError
from ptjf.models import init_params, preset
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import stage_state, state_layout
from ptjf.training.train_state import TrainState

CONFIG = preset("tiny", 64)
SOURCE_STEP = 4
MIXTURE = "bible_en_fr_tl"  # never read: the model is given, so no vocabulary is built
PLAN = stg.Plan(
    stages=[
        stg.Stage(name="pretrain", mixture_or_task_name=MIXTURE, steps=SOURCE_STEP),
        stg.Stage(name="joint", mixture_or_task_name=MIXTURE, steps=3),
    ]
)
SYNC = ck.CheckpointConfig(period=1, async_save=False)


def trained_state(tx: optax.GradientTransformation) -> TrainState:
    """A finished stage's state: parameters and an optimizer state after one update."""
    state = stg.switch_state(init_params(CONFIG, jax.random.key(0)), tx)
    return state.apply_gradients(jax.tree.map(lambda p: 0.01 * p + 0.1, state.params), tx)


@pytest.fixture(scope="module")
def source_state() -> TrainState:
    return trained_state(stg.make_tx(PLAN, 0)[0])


@pytest.fixture
def source(tmp_path, source_state) -> Path:
    """MODEL_DIR/pretrain with the finished pre-training's checkpoint."""
    stage_dir = tmp_path / "a" / "pretrain"
    meta = ck.checkpoint_metadata(
        stage_index=0,
        stage_name="pretrain",
        global_step=SOURCE_STEP,
        data_position={"batches": SOURCE_STEP},
        examples_seen={"en_fr": 16},
        tokens_seen={"en_fr": 300},
    )
    with ck.StageCheckpointer(stage_dir, SYNC) as c:
        assert c.save(SOURCE_STEP, source_state, meta, force=True)
    return stage_dir


def run_switch(source: Path, target: Path, **kwargs) -> tuple[str, int]:
    return switch.switch(str(source), str(target), PLAN, stage="joint", config=CONFIG, **kwargs)


def files_under(root: Path) -> dict[str, os.stat_result]:
    return {str(p.relative_to(root)): p.stat() for p in sorted(root.rglob("*")) if p.is_file()}


def restored_params(stage_dir: Path, step: int):
    with ck.StageCheckpointer(stage_dir, read_only=True) as c:
        return stage_state.restore_params(c, step, Partitioner(), CONFIG)


def assert_bitwise_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_switched_step_links_the_params_and_holds_no_optimizer_state(
    source, source_state, tmp_path, caplog
):
    target = tmp_path / "b" / "joint"
    with caplog.at_level(logging.INFO, logger="ptjf.checkpoints.link"):
        assert run_switch(source, target) == (str(source), SOURCE_STEP)
    assert "linked the parameter files" in caplog.text
    assert ck.finalized_steps(target) == [0]
    assert sorted(os.listdir(target)) == ["0"]  # the staging directory is gone
    assert sorted(os.listdir(target / "0")) == [
        "_CHECKPOINT_METADATA",
        "commit_success.txt",
        "metadata",
        "params",
        "step",
    ]
    # Every parameter file is the source's own file under a second name.
    linked = files_under(target / "0" / "params")
    original = files_under(source / str(SOURCE_STEP) / "params")
    assert linked.keys() == original.keys() and len(linked) > 3
    for name, st in linked.items():
        assert (st.st_ino, st.st_dev) == (original[name].st_ino, original[name].st_dev), name
        assert st.st_nlink == 2

    with ck.StageCheckpointer(target, read_only=True) as c:
        meta = c.read_metadata(0)
        assert c.starts_fresh(0)
        assert set(c._manager.metadata(0).item_metadata) >= {"params", "step", "metadata"}
        with pytest.raises(CheckpointError, match="no optimizer state") as err:
            c.restore(0, target_state=jax.eval_shape(lambda: source_state))
    assert "`ptjf train`" in str(err.value) and "restore_params" in str(err.value)
    source_fingerprint = integrity.fingerprint(source_state.params)
    assert meta == {
        "stage_index": 1,
        "stage_name": "joint",
        "global_step": SOURCE_STEP,
        "lineage": {"parent_path": str(source), "parent_step": SOURCE_STEP},
        "data_position": {"batches": 0},
        "examples_seen": {"en_fr": 16},
        "tokens_seen": {"en_fr": 300},
        "switched_by": "ptjf switch",
        "step": 0,
        "optimizer_state": "fresh",
        "ptjf_version": "0.1.0",
        "fingerprints": {"params": source_fingerprint},  # what the source recorded
    }
    handlers = (target / "0" / "_CHECKPOINT_METADATA").read_text()
    assert '"params": "orbax.checkpoint' in handlers  # a step written whole lists it too
    params, _ = restored_params(target, 0)
    assert_bitwise_equal(params, source_state.params)


def test_links_failing_falls_back_to_a_copy_with_the_same_bits(
    source, source_state, tmp_path, monkeypatch, caplog
):
    def cross_device(src, dst, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src)

    monkeypatch.setattr(os, "link", cross_device)
    target = tmp_path / "b" / "joint"
    with caplog.at_level(logging.INFO, logger="ptjf.checkpoints.link"):
        run_switch(source, target)
    assert "cannot link the parameter files (OSError: [Errno 18]" in caplog.text
    assert "wrote a copy of the parameters" in caplog.text
    assert ck.finalized_steps(target) == [0] and sorted(os.listdir(target)) == ["0"]
    assert "opt_state" not in os.listdir(target / "0")
    source_inodes = {st.st_ino for st in files_under(source / str(SOURCE_STEP)).values()}
    copied = files_under(target / "0" / "params")
    assert copied and all(st.st_nlink == 1 for st in copied.values())
    assert not source_inodes & {st.st_ino for st in copied.values()}
    params, meta = restored_params(target, 0)  # verified against the recorded fingerprint
    assert_bitwise_equal(params, source_state.params)
    assert meta["optimizer_state"] == "fresh"
    assert meta["fingerprints"] == {"params": integrity.fingerprint(source_state.params)}


def test_link_false_writes_a_copy(source, tmp_path):
    target = tmp_path / "b" / "joint"
    run_switch(source, target, link=False)
    assert all(st.st_nlink == 1 for st in files_under(target / "0" / "params").values())


def test_deleting_the_source_keeps_the_switched_checkpoint_restorable(
    source, source_state, tmp_path
):
    target = tmp_path / "b" / "joint"
    run_switch(source, target)
    shutil.rmtree(source)
    assert all(st.st_nlink == 1 for st in files_under(target / "0" / "params").values())
    params, meta = restored_params(target, 0)
    assert_bitwise_equal(params, source_state.params)
    assert meta["lineage"]["parent_step"] == SOURCE_STEP


def test_collecting_the_switched_step_leaves_the_source_intact(source, source_state, tmp_path):
    target = tmp_path / "b" / "joint"
    run_switch(source, target)
    with ck.StageCheckpointer(target, ck.CheckpointConfig(1, keep=1, async_save=False)) as c:
        assert c.save(1, source_state, {}, force=True)
    assert ck.finalized_steps(target) == [1]  # step 0 collected: only its own names unlinked
    assert all(st.st_nlink == 1 for st in files_under(source / str(SOURCE_STEP)).values())
    params, _ = restored_params(source, SOURCE_STEP)
    assert_bitwise_equal(params, source_state.params)


def test_a_crash_before_the_rename_leaves_no_step_and_the_rerun_succeeds(
    source, source_state, tmp_path, monkeypatch
):
    target = tmp_path / "b" / "joint"

    def crash(root):
        raise RuntimeError("crashed while syncing the staged step")

    with monkeypatch.context() as m:
        m.setattr(checkpoint_link, "fsync_directories", crash)
        with pytest.raises(RuntimeError, match="crashed while syncing"):
            run_switch(source, target)
    assert ck.finalized_steps(target) == [] and os.listdir(target) == []
    # A kill leaves the staging directory behind (a staged step, links); orbax ignores it
    # and the rerun clears it.
    staged = target / checkpoint_link.STAGING / "0"
    (staged / "step").mkdir(parents=True)
    checkpoint_link.link_tree(str(source / str(SOURCE_STEP) / "params"), str(staged / "params"))
    with ck.StageCheckpointer(target) as c:
        assert c.all_steps() == [] and c.latest_step() is None
    run_switch(source, target)
    assert ck.finalized_steps(target) == [0] and sorted(os.listdir(target)) == ["0"]
    params, _ = restored_params(target, 0)
    assert_bitwise_equal(params, source_state.params)


def test_parameters_that_do_not_fit_are_refused_before_anything_is_written(source, tmp_path):
    target = tmp_path / "b" / "joint"
    wider = preset("tiny", 80)
    with pytest.raises(
        CheckpointError,
        match=r"the checkpoint has shape \(32, 64\) but the model expects \(32, 80\)",
    ):
        switch.switch(str(source), str(target), PLAN, config=wider)
    assert not target.exists()


def test_a_corrupted_source_is_refused_and_nothing_is_written(source, tmp_path):
    data = [
        p
        for p in (source / str(SOURCE_STEP) / "params").rglob("*")
        if p.is_file() and p.parent.name == "d"
    ]
    largest = max(data, key=lambda p: p.stat().st_size)
    raw = bytearray(largest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    largest.write_bytes(bytes(raw))
    target = tmp_path / "b" / "joint"
    with pytest.raises(CorruptCheckpointError, match="is corrupted"):
        run_switch(source, target, verify=True)
    assert not target.exists()

    # Unverified (the default), the switch links the damaged files without reading them; the
    # trainer's restore checks the fingerprint the source recorded and refuses them.
    run_switch(source, target)
    tx, _ = stg.make_tx(PLAN, 1)
    with pytest.raises(CorruptCheckpointError, match="reads back as saved"):
        stage_state.build_state(PLAN, 1, str(target.parent), CONFIG, SYNC, 0, tx, Partitioner())


def test_the_trainer_starts_a_switched_stage_exactly_as_the_in_process_switch(source, tmp_path):
    tx, _ = stg.make_tx(PLAN, 1)
    partitioner = Partitioner()
    shardings = state_layout.state_shardings(partitioner, CONFIG, tx)

    def build(model_dir: Path):
        return stage_state.build_state(PLAN, 1, str(model_dir), CONFIG, SYNC, 0, tx, partitioner)

    # In-process: no joint checkpoint yet, so the stage switches from its previous stage.
    in_process, _, parent = build(source.parent)
    assert parent == (str(source), SOURCE_STEP)
    target = tmp_path / "b" / "joint"
    run_switch(source, target)
    resumed, meta, parent = build(target.parent)
    assert parent == (str(source), SOURCE_STEP) and meta["optimizer_state"] == "fresh"
    assert_bitwise_equal(resumed, in_process)
    # And what switched_state builds from the source's parameters, placed the same way.
    with ck.StageCheckpointer(source, read_only=True) as c:
        params, _ = stage_state.restore_params(c, SOURCE_STEP, partitioner, CONFIG)
    expected = stage_state.switched_state(params, tx, shardings, partitioner)
    assert_bitwise_equal(resumed, expected)
    assert jax.tree.map(lambda x: x.sharding, resumed) == jax.tree.map(
        lambda x: x.sharding, expected
    )
    assert int(resumed.step) == 0
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(resumed.opt_state))


def test_switched_step_records_the_global_step_of_the_source(source_state, tmp_path):
    # Forked from step 2 of a pre-training the plan gives 4 steps: the joint stage starts at
    # global step 2 (where its parameters were), not at PLAN.steps_before(1) == 4.
    early = tmp_path / "a" / "pretrain"
    meta = ck.checkpoint_metadata(
        stage_index=0, stage_name="pretrain", global_step=2, data_position={"batches": 2}
    )
    with ck.StageCheckpointer(early, SYNC) as c:
        assert c.save(2, source_state, meta, force=True)
    target = tmp_path / "b" / "joint"
    assert run_switch(early, target) == (str(early), 2)
    assert PLAN.steps_before(1) == SOURCE_STEP != 2
    with ck.StageCheckpointer(target, read_only=True) as c:
        switched = c.read_metadata(0)
    assert switched["global_step"] == 2
    assert switched["lineage"] == {"parent_path": str(early), "parent_step": 2}


def test_without_a_target_the_switch_writes_model_dir_slash_stage(source, tmp_path):
    run = tmp_path / "b"
    assert switch.switch(
        str(source), None, PLAN, stage="joint", config=CONFIG, model_dir=str(run)
    ) == (str(source), SOURCE_STEP)
    assert ck.finalized_steps(run / "joint") == [0] and sorted(os.listdir(run)) == ["joint"]

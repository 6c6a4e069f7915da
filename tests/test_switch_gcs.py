"""`ptjf switch` and checkpoint quarantine on gs:// (a GCS API on 127.0.0.1, fake-gcs-server).

GCS to GCS, the parameter objects are copied by GCS itself into a step written in place, whose
commit marker comes last; a crash before it leaves no step orbax would take as finalised. GCS to
local disk and back, orbax writes the parameters. Either way they are the source's bit for bit,
with no optimizer state. A corrupted step on GCS is moved aside without ever looking finalised
where it was, and stays where it was moved.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
import pytest
from test_switch_links import (
    CONFIG,
    PLAN,
    SOURCE_STEP,
    SYNC,
    trained_state,
)

from ptjf import stages as stg
from ptjf import storage
from ptjf.checkpoints import checkpointer as ck
from ptjf.checkpoints import integrity
from ptjf.checkpoints import link as checkpoint_link
from ptjf.commands import switch
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import metrics_io, stage_state, state_layout
from ptjf.training.train_state import TrainState


@pytest.fixture(scope="module")
def source_state() -> TrainState:
    """The source run of the local switch tests (tests/test_switch_links.py)."""
    return trained_state(stg.make_tx(PLAN, 0)[0])


def save_source(stage_dir: str, state: TrainState, steps=(SOURCE_STEP,)) -> str:
    meta = ck.checkpoint_metadata(
        stage_index=0,
        stage_name="pretrain",
        global_step=SOURCE_STEP,
        data_position={"batches": SOURCE_STEP},
        examples_seen={"en_fr": 16},
    )
    with ck.StageCheckpointer(stage_dir, SYNC) as c:
        for step in steps:
            assert c.save(step, state, meta, force=True)
    return stage_dir


@pytest.fixture
def gcs_source(gcs_bucket, source_state) -> str:
    """gs://BUCKET/a/pretrain with the finished pre-training's checkpoint."""
    return save_source(f"{gcs_bucket}/a/pretrain", source_state)


def run_switch(source: str, target: str, **kwargs) -> tuple[str, int]:
    return switch.switch(source, target, PLAN, stage="joint", config=CONFIG, **kwargs)


def restored_params(stage_dir: str, step: int):
    with ck.StageCheckpointer(stage_dir, read_only=True) as c:
        return stage_state.restore_params(c, step, Partitioner(), CONFIG)


def assert_bitwise_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def state_target(index: int) -> TrainState:
    """Stage `index`'s train state as shapes, dtypes and shardings (a restore target)."""
    tx, _ = stg.make_tx(PLAN, index)
    partitioner = Partitioner()
    shardings = state_layout.state_shardings(partitioner, CONFIG, tx)
    return state_layout.sharded_state_target(partitioner, CONFIG, tx, shardings)


def assert_switched(target: str, source_state: TrainState) -> None:
    """Step 0 only, the source's parameters bit for bit, and a fresh optimizer state."""
    assert ck.finalized_steps(target) == [0]
    assert storage.listdir(target) == ["0"]  # no staging directory left
    assert "opt_state" not in storage.listdir(storage.join(target, "0"))
    params, meta = restored_params(target, 0)  # checked against the recorded fingerprint
    assert_bitwise_equal(params, source_state.params)
    assert meta["optimizer_state"] == "fresh" and meta["step"] == 0
    assert meta["fingerprints"] == {"params": integrity.fingerprint(source_state.params)}
    # What the trainer starts the stage from: these parameters, a fresh optimizer state, step 0.
    tx, _ = stg.make_tx(PLAN, 1)
    run_dir = storage.dirname(target)
    state, meta, parent = stage_state.build_state(
        PLAN, 1, run_dir, CONFIG, SYNC, 0, tx, Partitioner()
    )
    assert parent == (meta["lineage"]["parent_path"], SOURCE_STEP)
    assert_bitwise_equal(state.params, source_state.params)
    assert int(state.step) == 0
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(state.opt_state))


def test_the_commit_marker_is_orbaxs():
    from orbax.checkpoint._src.path import atomicity_types

    assert checkpoint_link.COMMIT_SUCCESS_FILE == atomicity_types.COMMIT_SUCCESS_FILE


def test_gcs_to_gcs_copies_the_parameter_objects_server_side(
    gcs_source, gcs_bucket, source_state, monkeypatch, caplog
):
    read = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda p: read.append(str(p)) or real_read(p))
    target = f"{gcs_bucket}/b/joint"
    with caplog.at_level(logging.INFO, logger="ptjf.checkpoints.link"):
        assert run_switch(gcs_source, target) == (gcs_source, SOURCE_STEP)
    assert "copied the parameter objects" in caplog.text and "cannot" not in caplog.text
    # Every parameter object is the source's, and none passed through this host.
    source_params = f"{gcs_source}/{SOURCE_STEP}/params"
    files = sorted(storage.walk_files(source_params))
    assert len(files) > 3 and sorted(storage.walk_files(f"{target}/0/params")) == files
    for rel in files:
        assert storage.read_bytes(f"{target}/0/params/{rel}") == real_read(f"{source_params}/{rel}")
    assert not [p for p in read if p.startswith(source_params)]
    step_files = set(storage.walk_files(f"{target}/0"))
    assert {"commit_success.txt", "_CHECKPOINT_METADATA", "metadata/metadata"} <= step_files
    handlers = json.loads(storage.read_text(f"{target}/0/_CHECKPOINT_METADATA"))["item_handlers"]
    assert set(handlers) == {"params", "step", "metadata"}  # as a step written whole lists them
    assert_switched(target, source_state)
    with ck.StageCheckpointer(target, read_only=True) as c:
        assert c.read_metadata(0)["lineage"] == {
            "parent_path": gcs_source,
            "parent_step": SOURCE_STEP,
        }


@pytest.mark.parametrize("direction", ["gcs-to-local", "local-to-gcs"])
def test_between_gcs_and_local_disk_orbax_writes_the_parameters(
    direction, gcs_bucket, source_state, tmp_path, caplog
):
    if direction == "gcs-to-local":
        source = save_source(f"{gcs_bucket}/a/pretrain", source_state)
        target = str(tmp_path / "b" / "joint")
    else:
        source = save_source(str(tmp_path / "a" / "pretrain"), source_state)
        target = f"{gcs_bucket}/b/joint"
    with caplog.at_level(logging.INFO, logger="ptjf.checkpoints.link"):
        run_switch(source, target)
    assert "wrote a copy of the parameters" in caplog.text
    assert_switched(target, source_state)


def test_a_crash_mid_publish_leaves_no_finalized_step_and_the_rerun_succeeds(
    gcs_source, gcs_bucket, source_state, monkeypatch
):
    target = f"{gcs_bucket}/b/joint"
    real_write = storage.write_text

    def crash_at_the_marker(path, text):
        if str(path).endswith("/0/commit_success.txt"):
            raise RuntimeError("killed while publishing")
        real_write(path, text)

    with monkeypatch.context() as m:
        m.setattr(storage, "write_text", crash_at_the_marker)
        # A kill: nothing is cleaned up after it.
        m.setattr(checkpoint_link, "_discard_unfinished", lambda *a: None)
        with pytest.raises(RuntimeError, match="killed while publishing"):
            run_switch(gcs_source, target)
    # Everything but the marker is in place, and orbax takes none of it as a step.
    left = set(storage.walk_files(f"{target}/0"))
    assert {"_CHECKPOINT_METADATA", "metadata/metadata"} <= left and len(left) > 8
    assert "commit_success.txt" not in left
    assert ck.finalized_steps(target) == []
    with ck.StageCheckpointer(target, read_only=True) as c:
        assert c.all_steps() == [] and c.latest_step() is None
    # The rerun clears what the crash left and publishes the step.
    run_switch(gcs_source, target)
    assert_switched(target, source_state)


def test_a_failed_publish_cleans_up_after_itself(gcs_source, gcs_bucket, monkeypatch):
    target = f"{gcs_bucket}/b/joint"
    real_copy = storage.copy_files

    def copy_half(pairs):
        real_copy(pairs[: len(pairs) // 2])
        raise OSError("connection reset")

    monkeypatch.setattr(storage, "copy_files", copy_half)
    with pytest.raises(OSError, match="connection reset"):
        run_switch(gcs_source, target)
    assert ck.finalized_steps(target) == [] and storage.listdir(target) == []


def test_copy_metrics_into_a_bucket_writes_the_logs_first_part(gcs_source, gcs_bucket):
    records = [{"global_step": s, "stage": "pretrain", "loss": 1.0 / (s + 1)} for s in (0, 2, 4, 6)]
    source_run = storage.dirname(gcs_source)
    storage.write_text(
        f"{source_run}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records)
    )
    target = f"{gcs_bucket}/b/joint"
    assert switch.copy_metrics(gcs_source, SOURCE_STEP, target) == 3
    part = f"{gcs_bucket}/b/{metrics_io.METRICS_FILE}.parts/00000000.jsonl"
    assert storage.isfile(part)
    assert metrics_io.read_metrics(f"{gcs_bucket}/b") == records[:3]
    assert switch.copy_metrics(gcs_source, SOURCE_STEP, target) == 0  # a rerun: nothing


def test_copy_metrics_from_a_bucket_to_local_disk(gcs_source, tmp_path):
    records = [{"global_step": s, "stage": "pretrain"} for s in (0, 4, 8)]
    storage.write_text(
        f"{storage.dirname(gcs_source)}/metrics.jsonl",
        "".join(json.dumps(r) + "\n" for r in records),
    )
    target = tmp_path / "b" / "joint"
    assert switch.copy_metrics(gcs_source, SOURCE_STEP, str(target)) == 2
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == records[:2]


# --- quarantine ---------------------------------------------------------------------------------


def corrupt_params(step_dir: str) -> None:
    """Flips a byte in the middle of the largest parameter data object."""
    params = f"{step_dir}/params"
    data = [f for f in storage.walk_files(params) if "/d/" in f"/{f}"]
    largest = max(data, key=lambda f: storage.size(f"{params}/{f}"))
    raw = bytearray(storage.read_bytes(f"{params}/{largest}"))
    raw[len(raw) // 2] ^= 0xFF
    storage.write_bytes(f"{params}/{largest}", bytes(raw))


def test_quarantine_on_gcs_moves_the_step_aside_and_it_stays_there(
    gcs_bucket, source_state, monkeypatch
):
    stage_dir = save_source(f"{gcs_bucket}/run/pretrain", source_state, steps=(2, SOURCE_STEP))
    before = sorted(storage.walk_files(f"{stage_dir}/{SOURCE_STEP}"))
    corrupt_params(f"{stage_dir}/{SOURCE_STEP}")
    monkeypatch.setattr(stage_state.time, "time", lambda: 1000.0)
    state, meta = stage_state.restore_newest_good(
        stage_dir, [2, SOURCE_STEP], SYNC, state_target(0)
    )
    assert meta["step"] == 2
    assert_bitwise_equal(state.params, source_state.params)
    assert ck.finalized_steps(stage_dir) == [2]
    assert not storage.exists(f"{stage_dir}/{SOURCE_STEP}")
    moved = f"{stage_dir}/corrupted/{SOURCE_STEP}-1000"
    assert sorted(storage.walk_files(moved)) == before  # every object, the marker included
    # A writable checkpointer on the stage (the trainer's) deletes every directory without a
    # commit marker as an unfinished save, on GCS; the quarantined step is not one of them.
    with ck.StageCheckpointer(stage_dir, SYNC) as c:
        assert c.save(3, source_state, {}, force=True)  # waits for orbax's clean-up first
    assert sorted(storage.walk_files(moved)) == before
    assert ck.finalized_steps(stage_dir) == [2, 3]


def test_a_quarantine_that_stops_midway_leaves_no_finalized_step(
    gcs_bucket, source_state, monkeypatch
):
    stage_dir = save_source(f"{gcs_bucket}/run/pretrain", source_state, steps=(2, SOURCE_STEP))

    def crash(pairs):
        raise OSError("killed while copying")

    monkeypatch.setattr(storage, "copy_files", crash)
    with pytest.raises(OSError, match="killed while copying"):
        stage_state.quarantine(stage_dir, SOURCE_STEP)
    # The step's files are still there, but orbax no longer takes it as a checkpoint.
    assert storage.exists(f"{stage_dir}/{SOURCE_STEP}/params")
    assert ck.finalized_steps(stage_dir) == [2]


def test_quarantine_on_local_disk_is_a_rename(tmp_path, source_state):
    stage_dir = save_source(str(tmp_path / "pretrain"), source_state)
    inode = os.stat(os.path.join(stage_dir, str(SOURCE_STEP), "params")).st_ino
    where = stage_state.quarantine(stage_dir, SOURCE_STEP)
    assert os.stat(os.path.join(where, "params")).st_ino == inode
    assert ck.finalized_steps(stage_dir) == [] and os.listdir(stage_dir) == ["corrupted"]
    assert os.listdir(os.path.dirname(where)) == [os.path.basename(where)]  # as it always was


def test_the_cli_switch_with_exist_ok_sees_a_checkpoint_in_the_bucket(
    gcs_source, gcs_bucket, capsys
):
    from ptjf.commands import cli

    argv = [
        "switch",
        f"--from={gcs_source}",
        f"--to={gcs_source}",  # holds a checkpoint: a rerun of a fork's switch
        "--exist_ok",
        "--gin_file=runs/ptjf.gin",
        "--gin_file=models/tiny.gin",
        "--gin.HIGH_RESOURCE_TASK='bible_translate_en_fr'",
        "--gin.MIXTURE_OR_TASK_NAME='bible_en_fr_tl'",
        "--gin.PRETRAIN_STEPS=4",
        "--gin.FINETUNE_STEPS=3",
        f"--gin.MODEL_DIR='{gcs_bucket}/a'",
    ]
    assert cli.main(argv) == 0
    assert f"{gcs_source} already holds a checkpoint; nothing to do" in capsys.readouterr().out

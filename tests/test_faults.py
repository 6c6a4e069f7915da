"""Fault injection on the tiny PTJF plan: kills at random steps, during an async save and at the
stage switch, SIGTERM, a full disk and corrupted checkpoints. After each, rerunning the same
command must end with the parameters of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import train
from ptjf.errors import CheckpointError, DataError
from ptjf.experiments.results import clean_records
from ptjf.training.metrics_io import TRAIN_METRICS_FILE, read_metrics

pytestmark = pytest.mark.fault

FILES = ["runs/ptjf.gin", "models/tiny.gin"]
BINDINGS = [
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "PRETRAIN_STEPS = 6",
    "FINETUNE_STEPS = 8",
    "WARMUP_STEPS = 2",
    "LEARNING_RATE = 3e-3",
    "BATCH_SIZE = 4",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}",
    "EVAL_PERIOD = 100",  # evals at each stage's start and end only
    "CheckpointConfig.period = 2",
    "CheckpointConfig.keep = 3",
    "train.max_eval_examples = 8",
    "train.train_eval_examples = 8",
    "train.log_every = 1",
    "train.tensorboard = False",
]
FINAL_STEP = 14


def final_params(model_dir: Path | str) -> dict[str, np.ndarray]:
    stage_dir = storage.join(model_dir, "joint")
    with ckpt.StageCheckpointer(stage_dir, read_only=True) as c:
        params, _ = c.restore_params(8)
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert np.array_equal(a[key], b[key]), f"{key} differs"


def trained_steps(model_dir: Path) -> int:
    """The furthest global step any attempt of the run has trained (logged every step)."""
    path = model_dir / TRAIN_METRICS_FILE
    if not path.exists():
        return 0
    steps = [json.loads(line)["global_step"] for line in path.read_text().splitlines() if line]
    return max(steps, default=0)


def command(model_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ptjf.commands.cli",
        "train",
        *(f"--gin_file={f}" for f in FILES),
        f"--gin.MODEL_DIR='{model_dir}'",
        *(f"--gin.{b.replace(' ', '')}" for b in BINDINGS),
        *extra,
    ]


def launch(model_dir: Path | str, fault: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("PTJF_FAULT", None)
    if fault:
        env["PTJF_FAULT"] = fault
    return subprocess.Popen(
        command(model_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_to_end(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def signal_after(model_dir: Path, proc: subprocess.Popen, step: int, sig: int) -> str:
    """Sends `sig` once the run has trained global step `step`."""
    deadline = time.monotonic() + 240
    while trained_steps(model_dir) < step:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach step {step} in 240 s")
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bible_vocab) -> Path:
    """The uninterrupted run (in-process, the same code path as `ptjf train`)."""
    model_dir = tmp_path_factory.mktemp("faults") / "reference"
    train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])
    return model_dir


def test_kills_at_random_steps_async_saves_switch_and_sigterm_resume_exactly(reference, tmp_path):
    rng = random.Random(7)
    model_dir = tmp_path / "run"
    # 1. SIGKILL at a random step of the pre-training.
    out = signal_after(model_dir, launch(model_dir), rng.randint(1, 3), signal.SIGKILL)
    assert "done at global step" not in out
    # 2. SIGKILL while the async write of pre-training step 4 is in flight: step 4 never
    #    becomes final, and the checkpoint before it is still there.
    code, out = run_to_end(launch(model_dir, "kill@save:4"))
    assert code == -signal.SIGKILL, out[-3000:]
    assert ckpt.finalized_steps(model_dir / "pretrain")[-1] == 2
    # 3. SIGKILL at the stage switch: pre-training finished, the joint stage not yet begun.
    code, out = run_to_end(launch(model_dir, "kill@stage_start:1"))
    assert code == -signal.SIGKILL, out[-3000:]
    assert ckpt.finalized_steps(model_dir / "pretrain")[-1] == 6
    assert not ckpt.finalized_steps(model_dir / "joint")
    # 4. SIGKILL at a random step of the joint stage.
    signal_after(model_dir, launch(model_dir), 6 + rng.randint(1, 4), signal.SIGKILL)
    # 5. SIGTERM: the step finishes, a checkpoint is saved at it, and the exit status is 0.
    before = trained_steps(model_dir)
    proc = launch(model_dir)
    out = signal_after(model_dir, proc, before + 1, signal.SIGTERM)
    assert proc.returncode == 0, out[-3000:]
    assert "preempted; saved global step" in out
    saved = int(out.split("saved global step ")[1].split()[0])
    assert 6 < saved < FINAL_STEP
    assert ckpt.finalized_steps(model_dir / "joint")[-1] == saved - 6
    # 6. The same command finishes the run, which ends where the uninterrupted one did.
    code, out = run_to_end(launch(model_dir))
    assert code == 0 and f"done at global step {FINAL_STEP}" in out, out[-3000:]
    assert_bitwise_equal(final_params(model_dir), final_params(reference))
    # Every resume continued the input streams from their saved positions: none replayed.
    assert "replaying" not in out
    assert (model_dir / "joint" / "8" / "input_state" / "shard-00000-of-00001.state").is_file()


def _stopped_after_joint_step_6(reference: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "run"
    shutil.copytree(reference, model_dir)
    shutil.rmtree(model_dir / "joint" / "8")
    return model_dir


@pytest.mark.parametrize(
    "damage",
    [
        "missing",
        # The damaged file's detection is tested cheaply in tests/test_input_resume.py; the
        # full run after it, like the missing one's, only in the full form.
        pytest.param(
            "damaged",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(
                    os.environ.get("PTJF_SLOW") != "1", reason="full form only (PTJF_SLOW=1)"
                ),
            ],
        ),
    ],
)
def test_a_step_without_a_usable_input_state_replays_with_a_warning(
    reference, tmp_path, damage, caplog
):
    """A checkpoint from before input states were saved, or whose state file was damaged:
    the stream is replayed to the step (said, with the count), and the run still ends exactly
    where the uninterrupted one did."""
    model_dir = _stopped_after_joint_step_6(reference, tmp_path)
    folder = model_dir / "joint" / "6" / "input_state"
    if damage == "missing":
        shutil.rmtree(folder)
    else:
        shard = folder / "shard-00000-of-00001.state"
        shard.write_bytes(shard.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger="ptjf"):
        summary = train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])
    assert summary.global_step == FINAL_STEP
    expected = "has no saved input state" if damage == "missing" else "is damaged"
    assert expected in caplog.text and "replaying" in caplog.text
    assert_bitwise_equal(final_params(model_dir), final_params(reference))


def test_a_resume_with_another_stream_is_refused_then_replays_on_request(reference, tmp_path):
    model_dir = _stopped_after_joint_step_6(reference, tmp_path)
    bindings = [f"MODEL_DIR = '{model_dir}'", *BINDINGS, "train.seed = 3"]
    with pytest.raises(DataError) as err:
        train.run(FILES, bindings)
    text = str(err.value)
    assert "joint step 6" in text and "seed: saved 1000, this run 1003" in text
    assert "resume_input" in text
    assert ckpt.finalized_steps(model_dir / "joint")[-1] == 6  # nothing lost
    summary = train.run(FILES, [*bindings, "train.resume_input = 'replay'"])
    assert summary.global_step == FINAL_STEP


def test_a_gs_run_killed_mid_save_resumes_to_the_local_run_bit_for_bit(
    reference, gcs_bucket, tmp_path, monkeypatch
):
    """MODEL_DIR in a bucket (a GCS API on 127.0.0.1): every file of the run goes there, a kill
    while a checkpoint is being written loses nothing final, and the rerun ends with the local
    run's parameters and eval records."""
    monkeypatch.chdir(tmp_path)  # a run that wrote to a local folder named "gs:" shows here
    model_dir = f"{gcs_bucket}/run"
    code, out = run_to_end(launch(model_dir, "kill@save:4"))
    assert code == -signal.SIGKILL, out[-3000:]
    assert ckpt.finalized_steps(f"{model_dir}/pretrain")[-1] == 2
    code, out = run_to_end(launch(model_dir))
    assert code == 0 and f"done at global step {FINAL_STEP}" in out, out[-3000:]
    assert_bitwise_equal(final_params(model_dir), final_params(reference))

    def comparable(records: list[dict]) -> list[dict]:
        # As every reader takes them (the last record per stage step), without wall-clock time
        # and the training-speed scalars, which differ between any two runs.
        return [
            {k: v for k, v in r.items() if k not in ("time", "train")}
            for r in clean_records(records)
        ]

    records = read_metrics(model_dir)
    assert comparable(records) == comparable(read_metrics(reference))
    assert "MODEL_DIR" in storage.read_text(f"{model_dir}/config.gin")
    assert not [n for n in storage.listdir(model_dir) if "probe" in n]  # writability checks
    assert os.listdir(tmp_path) == []


def _data_files(checkpoint_dir: Path) -> list[Path]:
    files = [p for p in (checkpoint_dir / "params").rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_newest_checkpoint_falls_back_to_the_previous(
    reference, tmp_path, damage, caplog
):
    model_dir = tmp_path / "run"
    shutil.copytree(reference, model_dir)
    shutil.rmtree(model_dir / "joint" / "8")  # the run stopped after joint step 6 ...
    target = _data_files(model_dir / "joint" / "6")[0]  # ... whose largest file is damaged
    data = bytearray(target.read_bytes())
    if damage == "flip":
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    else:
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="ptjf"):
        summary = train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])
    assert summary.global_step == FINAL_STEP
    assert (
        "joint/6 is corrupted" in caplog.text and "trying the checkpoint before it" in caplog.text
    )
    # Kept for inspection, out of the way of the step the run wrote again.
    assert [p.name.split("-")[0] for p in (model_dir / "joint" / "corrupted").iterdir()] == ["6"]
    assert ckpt.finalized_steps(model_dir / "joint") == [4, 6, 8]
    assert_bitwise_equal(final_params(model_dir), final_params(reference))


def test_disk_full_during_a_save_keeps_the_older_checkpoints(reference, tmp_path, monkeypatch):
    model_dir = tmp_path / "run"
    monkeypatch.setenv("PTJF_FAULT", "enospc@save_write:4")
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])
    assert "Older checkpoints were kept ([0, 2])" in str(err.value)
    assert ckpt.finalized_steps(model_dir / "pretrain") == [0, 2]
    monkeypatch.delenv("PTJF_FAULT")
    summary = train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])
    assert summary.global_step == FINAL_STEP
    assert_bitwise_equal(final_params(model_dir), final_params(reference))


def test_a_malformed_fault_spec_is_refused():
    from ptjf.errors import ConfigError
    from ptjf.runtime import faults

    with pytest.raises(ConfigError, match="expected ACTION@POINT"):
        faults.parse("explode@save")
    assert faults.parse("kill@save:4") == ("kill", "save", 4)
    assert faults.parse("kill@stage_start") == ("kill", "stage_start", None)

"""Two processes on localhost (gloo collectives over 127.0.0.1) train the tiny plan together and
match one process reading the same two input shards."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from localhost_processes import free_port, launch_train

from ptjf.commands import cli, train
from ptjf.training.metrics_io import TRAIN_METRICS_FILE, read_metrics

BINDINGS = [
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "PRETRAIN_STEPS = 3",
    "FINETUNE_STEPS = 3",
    "WARMUP_STEPS = 1",
    "LEARNING_RATE = 3e-3",
    "BATCH_SIZE = 8",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}",
    "EVAL_PERIOD = 3",
    "CheckpointConfig.period = 3",
    "train.max_eval_examples = 16",
    "train.train_eval_examples = 8",
    "train.log_every = 1",
    "train.tensorboard = False",
    # The stream in two shards whatever the number of hosts, so one process can check two.
    "train.input_shards = 2",
]
FILES = ["runs/ptjf.gin", "models/tiny.gin"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bible_vocab):
    root = tmp_path_factory.mktemp("two-process")
    port = free_port()
    procs = [launch_train(root / "multi", port, i, files=FILES, bindings=BINDINGS) for i in (0, 1)]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the two-process run did not finish within 400 s")
        outputs.append(out)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    train.run(FILES, [f"MODEL_DIR = '{root / 'single'}'", *BINDINGS])
    return root, outputs


def test_two_processes_match_one(runs):
    root, _ = runs
    multi = [r["loss"] for r in read_metrics(root / "multi" / TRAIN_METRICS_FILE)]
    single = [r["loss"] for r in read_metrics(root / "single" / TRAIN_METRICS_FILE)]
    assert len(multi) == len(single) == 6
    np.testing.assert_allclose(multi, single, rtol=2e-6, atol=2e-6)
    evals_multi, evals_single = read_metrics(root / "multi"), read_metrics(root / "single")
    # Process 0 alone writes the run's records: one per eval, not one per process.
    assert [r["global_step"] for r in evals_multi] == [0, 3, 3, 6]
    last_multi, last_single = evals_multi[-1], evals_single[-1]
    # Each process counted its own rows; the sums are the whole batches'.
    assert last_multi["examples_seen"] == last_single["examples_seen"]
    assert last_multi["tokens_seen"] == last_single["tokens_seen"]
    for task, scores in last_single["validation"].items():
        np.testing.assert_allclose(last_multi["validation"][task]["loss"], scores["loss"], 2e-6)


def test_both_processes_finish_and_one_checkpoint_is_written(runs):
    root, outputs = runs
    assert all("done at global step 6" in out for out in outputs)
    assert sorted(os.listdir(root / "multi" / "joint")) == ["0", "3"]


def test_incomplete_multiprocess_flags_are_refused(capsys):
    assert cli.main(["train", "--process_count=2", "--gin_file=runs/ptjf.gin"]) == 2
    err = capsys.readouterr().err
    assert "--coordinator_address HOST:PORT, --process_count N and --process_index I" in err

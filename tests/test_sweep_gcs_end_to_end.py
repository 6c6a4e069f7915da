"""A real two-point sweep in a bucket (a GCS API on 127.0.0.1): the shared pre-training runs
once, both PTJF points fork from it with `ptjf switch` gs:// → gs://, and `ptjf report` reads
the bucket and writes its report there."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import cli
from ptjf.experiments import runner
from ptjf.training.metrics_io import read_metrics

EXPERIMENT = """
import ptjf.experiments.sweep
include 'models/tiny.gin'
HIGH_RESOURCE_TASK = 'bible_translate_en_fr'
LOW_RESOURCE_TASK = 'bible_translate_en_tl_low'
MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'
WARMUP_STEPS = 1
LEARNING_RATE = 3e-3
BATCH_SIZE = 4
TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}
EVAL_PERIOD = 100
CheckpointConfig.period = 2
CheckpointConfig.keep = 3
train.max_eval_examples = 4
train.train_eval_examples = 4
train.tensorboard = False

Sweep.name = 'gcs'
Sweep.mixture = %MIXTURE_OR_TASK_NAME
Sweep.high_task = %HIGH_RESOURCE_TASK
Sweep.low_task = %LOW_RESOURCE_TASK
Sweep.methods = ['ptjf']
Sweep.rates = [0.3, 0.7]
Sweep.total_steps = 4
Sweep.pretrain_steps = [2]
Sweep.learning_rates = [%LEARNING_RATE]
"""
SHARED = "shared/pretrain-n2-lr0.003-s0"


def in_process(argv, cwd, log_path) -> int:
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):
        return cli.main(list(argv[1:]))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PTJF_SLOW") != "1",
    reason="full form only (PTJF_SLOW=1); the cheap form runs a sweep in a bucket with a launcher "
    "that returns at once (tests/test_sweep_gcs.py) and a real run in a bucket "
    "(tests/test_faults.py)",
)
def test_a_two_point_sweep_and_its_report_live_in_a_bucket(gcs_bucket, tmp_path, capsys):
    gin_file = tmp_path / "gcs_sweep.gin"
    gin_file.write_text(EXPERIMENT)
    sweep_dir = f"{gcs_bucket}/sweeps/gcs"
    out = io.StringIO()
    code = runner.run_sweep_command(
        [str(gin_file)], [], sweep_dir=sweep_dir, launcher=in_process, out=out
    )
    assert code == 0, out.getvalue()
    points = storage.listdir(f"{sweep_dir}/points")
    assert points == ["ptjf-r0.3-n2-lr0.003-s0", "ptjf-r0.7-n2-lr0.003-s0"]
    with ckpt.StageCheckpointer(f"{sweep_dir}/{SHARED}/pretrain", read_only=True) as c:
        pretrained, _ = c.restore_params(2)
    for point in points:
        directory = f"{sweep_dir}/points/{point}"
        assert storage.exists(f"{directory}/DONE")
        records = read_metrics(directory)
        assert [r["global_step"] for r in records if r["stage"] == "joint"][-1] == 4
        with ckpt.StageCheckpointer(f"{directory}/joint", read_only=True) as c:
            start, _ = c.restore_params(0)
        pairs = zip(_leaves(start), _leaves(pretrained), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)  # the fork starts bit for bit

    assert cli.main(["report", sweep_dir, f"--out={sweep_dir}/report", "--no_figures"]) == 0
    report = storage.read_text(f"{sweep_dir}/report/report.md")
    assert "ptjf" in report and "0.3" in report and "0.7" in report
    assert "results.csv" in storage.listdir(f"{sweep_dir}/report")
    assert not list(tmp_path.glob("gs:*"))


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]

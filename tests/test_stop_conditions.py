"""The switch point chosen from the data: `Stage.stop_when = @Plateau()`.

The decision rule by hand, the refusals before the first step, and a PTJF run whose
pre-training ends on its evals: the step is recorded in the checkpoint and the metrics, the
joint stage starts from it, and a run killed before the decision resumes to the same decision
and the same parameters, bit for bit."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import gin
import jax
import numpy as np
import pytest

from ptjf import stages
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import train
from ptjf.errors import ConfigError
from ptjf.experiments.results import clean_records
from ptjf.training import stop_conditions as sc
from ptjf.training.metrics_io import read_metrics
from ptjf.training.stop_conditions import Plateau
from tests.test_faults import assert_bitwise_equal

# --- the rule by hand -------------------------------------------------------------------------


def test_the_improvement_compares_the_last_k_evals_with_the_best_before():
    p = Plateau(task="t", patience=2, min_delta=0.1)
    history = [(0, 5.0), (100, 4.0), (200, 3.95), (300, 3.94)]
    # Before patience + 1 evals: no improvement to judge.
    assert p.decide(history[:2]) == {"step": 100, "value": 4.0, "improvement": None, "met": False}
    # At step 200: best before = 5.0, best of the last two = 3.95 → 1.05 ≥ 0.1.
    d = p.decide(history[:3])
    assert d["improvement"] == pytest.approx(1.05) and not d["met"]
    # At step 300: best before = 4.0, best of (3.95, 3.94) = 3.94 → 0.06 < 0.1: ends.
    d = p.decide(history)
    assert d["improvement"] == pytest.approx(0.06) and d["met"] and d["step"] == 300


def test_a_loss_that_rises_is_a_negative_improvement_and_ends_the_stage():
    p = Plateau(task="t", patience=1, min_delta=0.0)
    d = p.decide([(0, 3.0), (10, 3.2)])
    assert d["improvement"] == pytest.approx(-0.2) and d["met"]
    # min_delta = 0 and a strict gain: goes on.
    assert not p.decide([(0, 3.0), (10, 2.9)])["met"]


def test_higher_is_better_for_accuracy_and_bleu():
    p = Plateau(task="t", metric="accuracy", patience=1, min_delta=0.01)
    assert p.mode == "max"
    assert not p.decide([(0, 0.30), (10, 0.35)])["met"]
    d = p.decide([(0, 0.30), (10, 0.35), (20, 0.355)])
    assert d["improvement"] == pytest.approx(0.005) and d["met"]
    assert Plateau(task="t", split="bleu").mode == "max"


def test_min_steps_holds_the_stage_and_nan_never_counts_as_progress():
    p = Plateau(task="t", patience=1, min_delta=0.5, min_steps=50)
    assert not p.decide([(0, 3.0), (10, 3.0)])["met"]  # no gain, but before min_steps
    assert p.decide([(0, 3.0), (10, 3.0), (50, 3.0)])["met"]
    q = Plateau(task="t", patience=1, min_delta=0.5)
    d = q.decide([(0, 3.0), (10, math.nan)])
    assert d["improvement"] == -math.inf and d["met"]  # no finite loss lately: no progress
    d = q.decide([(0, math.nan), (10, 2.0)])
    assert d["improvement"] == math.inf and not d["met"]  # finite only lately: progress


def test_the_history_round_trips_through_checkpoint_metadata():
    history = [(0, 5.0), (100, math.nan), (200, 3.5)]
    saved = sc.saved_history(history)
    assert saved == [[0, 5.0], [100, None], [200, 3.5]]
    back = sc.restored_history({sc.HISTORY_KEY: saved}, start=100)
    assert back[0] == (0, 5.0) and back[1][0] == 100 and math.isnan(back[1][1])
    assert len(back) == 2  # evals after the checkpoint are redone on resume
    assert sc.ended_at({sc.END_KEY: {"step": 300, "reason": "r"}}) == 300
    assert sc.ended_at({}) is None


def test_the_watch_logs_each_decision_in_the_record():
    w = sc.Watch(Plateau(task="t", patience=1, min_delta=0.5))
    r0 = {"stage_step": 0, "validation": {"t": {"loss": 4.0}}}
    r1 = {"stage_step": 10, "validation": {"t": {"loss": 3.8}}}
    assert not w.observe(r0) and w.observe(r1)
    assert r1["stop_condition"]["watch"] == "validation/t/loss"
    assert r1[sc.END_KEY]["step"] == 10 and "improved by 0.2" in r1[sc.END_KEY]["reason"]
    assert w.metadata() == {sc.HISTORY_KEY: [[0, 4.0], [10, 3.8]], sc.END_KEY: w.ended}
    assert sc.Watch(None).observe(r0) is False and sc.Watch(None).metadata() == {}


# --- bad input, before the first step ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"split": "test"}, "Plateau.split='test'"),
        ({"metric": "bleu"}, "evals record 'loss' and 'accuracy'"),
        ({"patience": 0}, "Plateau.patience=0"),
        ({"min_delta": -1.0}, "Plateau.min_delta=-1.0"),
        ({"mode": "lower"}, "Plateau.mode='lower'"),
    ],
)
def test_a_malformed_condition_is_refused(kwargs, phrase):
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        Plateau(task="t", **kwargs)


def test_a_data_chosen_stage_without_a_maximum_is_refused():
    with pytest.raises(ConfigError, match="has no maximum"):
        stages.Stage(name="pretrain", mixture_or_task_name="t", stop_when=Plateau(task="t"))


def test_a_schedule_cannot_continue_from_a_data_chosen_stage():
    first = stages.Stage(name="a", mixture_or_task_name="t", steps=10, stop_when=Plateau("t"))
    second = stages.Stage(
        name="b", mixture_or_task_name="t", steps=5, reset_optimizer=False, reset_schedule=False
    )
    with pytest.raises(ConfigError, match="where the schedule would continue from"):
        stages.Plan(stages=[first, second])


def _check(condition: Plateau, **kw) -> None:
    args = {
        "stage": "pretrain",
        "steps": 100,
        "eval_tasks": ["hi", "lo"],
        "eval_period": 10,
        "eval_at_stage_start": True,
        "eval_bleu": False,
    } | kw
    sc.check(condition, **args)


def test_the_condition_is_checked_against_the_runs_evals():
    _check(Plateau(task="hi", patience=10))  # 11 evals: 0, 10, ..., 100
    with pytest.raises(ConfigError, match="is not evaluated in this run"):
        _check(Plateau(task="hy"))
    with pytest.raises(ConfigError, match=r"needs train\.eval_bleu = True"):
        _check(Plateau(task="hi", split="bleu"))
    with pytest.raises(ConfigError, match="lower the eval period or the patience"):
        _check(Plateau(task="hi", patience=11))
    with pytest.raises(ConfigError, match="has 2 eval"):
        _check(Plateau(task="hi", patience=2), eval_period=100)


# --- a PTJF run whose pre-training ends on its evals -------------------------------------------

FILES = ["runs/ptjf.gin", "models/tiny.gin"]
MAX_PRETRAIN = 12
BINDINGS = [
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    f"PRETRAIN_STEPS = {MAX_PRETRAIN}",
    "FINETUNE_STEPS = 4",
    "WARMUP_STEPS = 2",
    "LEARNING_RATE = 3e-3",
    "BATCH_SIZE = 4",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}",
    "EVAL_PERIOD = 2",
    "CheckpointConfig.period = 2",
    "CheckpointConfig.keep = 10",
    "train.max_eval_examples = 8",
    "train.train_eval_examples = 8",
    "train.log_every = 1",
    "train.tensorboard = False",
    # Any eval gain counts as too small: the stage ends at its third eval (step 4), which needs
    # the first two (steps 0 and 2): a resume from the step-2 checkpoint must restore them.
    "pretrain/Stage.stop_when = @Plateau()",
    "Plateau.task = 'bible_translate_en_fr'",
    "Plateau.patience = 2",
    "Plateau.min_delta = 1e9",
]
ENDS_AT = 4


@pytest.fixture(scope="module")
def ended(tmp_path_factory, bible_vocab) -> Path:
    model_dir = tmp_path_factory.mktemp("stop") / "reference"
    train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])
    gin.clear_config()
    return model_dir


def test_pretraining_ends_where_its_evals_say_and_the_joint_stage_starts_there(ended):
    pre = ckpt.finalized_steps(str(ended / "pretrain"))
    assert pre[-1] == ENDS_AT < MAX_PRETRAIN
    with ckpt.StageCheckpointer(str(ended / "pretrain"), read_only=True) as c:
        meta = c.read_metadata(ENDS_AT)
    assert meta[sc.END_KEY]["step"] == ENDS_AT
    assert [s for s, _ in meta[sc.HISTORY_KEY]] == [0, 2, 4]
    with ckpt.StageCheckpointer(str(ended / "joint"), read_only=True) as c:
        joint = c.read_metadata(0)
    assert joint["lineage"]["parent_step"] == ENDS_AT
    assert ckpt.finalized_steps(str(ended / "joint"))[-1] == 4

    records = clean_records(read_metrics(str(ended)))
    pre_evals = [r for r in records if r["stage"] == "pretrain"]
    assert [r["stage_step"] for r in pre_evals] == [0, 2, 4]
    assert [r["stop_condition"]["met"] for r in pre_evals] == [False, False, True]
    assert pre_evals[-1][sc.END_KEY]["step"] == ENDS_AT
    joint_evals = [r for r in records if r["stage"] == "joint"]
    # The run's numbering follows the step the data chose: the joint stage starts at 4.
    assert joint_evals[0]["global_step"] == ENDS_AT
    assert joint_evals[-1]["global_step"] == ENDS_AT + 4
    assert all("stop_condition" not in r for r in joint_evals)


def test_a_finished_run_reruns_as_complete(ended):
    before = sorted(p.name for p in (ended / "joint").iterdir())
    summary = train.run(FILES, [f"MODEL_DIR = '{ended}'", *BINDINGS])
    assert sorted(p.name for p in (ended / "joint").iterdir()) == before
    assert ckpt.finalized_steps(str(ended / "pretrain"))[-1] == ENDS_AT
    assert summary.global_step == ENDS_AT + 4
    gin.clear_config()
    # Up to the pre-training only: the run ends where its evals ended it, not at its maximum.
    last = train.run(FILES, [f"MODEL_DIR = '{ended}'", *BINDINGS, "train.last_stage = 'pretrain'"])
    assert last.global_step == ENDS_AT


@pytest.mark.fault
def test_a_run_killed_before_and_after_the_decision_resumes_to_the_same_run(ended, tmp_path):
    # Killed after the step-2 save (the decision at step 4 needs the evals at 0 and 2), then
    # at the switch (pre-training ended at 4, the joint stage not started): both resume.
    model_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "ptjf.commands.cli",
        "train",
        *(f"--gin_file={f}" for f in FILES),
        f"--gin.MODEL_DIR='{model_dir}'",
        *(f"--gin.{b.replace(' ', '')}" for b in BINDINGS),
    ]
    for fault in ("kill@save:2", "kill@stage_start:1", None):
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("PTJF_FAULT", None)
        if fault:
            env["PTJF_FAULT"] = fault
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == (-9 if fault else 0), proc.stdout[-2000:] + proc.stderr[-2000:]
        if fault == "kill@stage_start:1":
            assert ckpt.finalized_steps(str(model_dir / "pretrain"))[-1] == ENDS_AT
            assert not ckpt.finalized_steps(str(model_dir / "joint"))
    with ckpt.StageCheckpointer(str(model_dir / "pretrain"), read_only=True) as c:
        assert c.read_metadata(ENDS_AT)[sc.END_KEY]["step"] == ENDS_AT
    with ckpt.StageCheckpointer(str(model_dir / "joint"), read_only=True) as c:
        assert c.read_metadata(0)["lineage"]["parent_step"] == ENDS_AT
    assert_bitwise_equal(_joint_params(model_dir), _joint_params(ended))


def _joint_params(model_dir: Path) -> dict:
    with ckpt.StageCheckpointer(str(model_dir / "joint"), read_only=True) as c:
        params, _ = c.restore_params(4)
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def test_the_plateau_run_file_ends_pretraining_on_the_high_resource_loss():
    from ptjf import config as gin_config

    gin_config.parse_gin(
        ["runs/ptjf_plateau.gin", "experiments/bible_demo.gin"],
        ["MODEL_DIR = '/tmp/unused'", "PLATEAU_PATIENCE = 2"],
    )
    pretrain, joint = stages.Plan().stages
    assert pretrain.stop_when == Plateau(task="bible_translate_en_fr", min_delta=0.01, patience=2)
    assert pretrain.steps == 1000 and joint.stop_when is None and joint.steps == 500

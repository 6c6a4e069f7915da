"""A whole tiny PTJF plan on the embedded data: stages, switch, lineage, metrics, resume."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import cli, train
from ptjf.errors import CheckpointError, ConfigError
from ptjf.training.metrics_io import read_metrics

RUN = ["runs/ptjf.gin", "models/tiny.gin"]
TINY = [
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "PRETRAIN_STEPS = 4",
    "FINETUNE_STEPS = 4",
    "WARMUP_STEPS = 1",
    "LEARNING_RATE = 3e-3",
    "BATCH_SIZE = 4",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}",
    "EVAL_PERIOD = 2",
    "CheckpointConfig.period = 2",
    "CheckpointConfig.keep = None",
    "train.max_eval_examples = 8",
    "train.train_eval_examples = 8",
    "train.log_every = 1",
    "train.tensorboard = False",
]


def run_plan(model_dir, *extra: str, files=RUN):
    return train.run(files, [f"MODEL_DIR = '{model_dir}'", *TINY, *extra])


def restore(stage_dir, step):
    with ckpt.StageCheckpointer(stage_dir, read_only=True) as c:
        return c.restore_params(step)


def raw_opt_state(stage_dir, step):
    """The optimizer state as saved (no target tree needed)."""
    import orbax.checkpoint as ocp

    with ckpt.StageCheckpointer(stage_dir, read_only=True) as c:
        return c._restore_items(step, {"opt_state": ocp.args.StandardRestore(None)})["opt_state"]


TRACED: list[str] = []  # functions jax traced for compilation during the fixture's run


def _note_trace(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_trace_duration":
        TRACED.append(str(kwargs.get("fun_name", "")))


@pytest.fixture(scope="module")
def ptjf_run(tmp_path_factory, bible_vocab):
    model_dir = tmp_path_factory.mktemp("ptjf") / "run"
    jax.monitoring.register_event_duration_secs_listener(_note_trace)
    try:
        summary = run_plan(model_dir)
    finally:
        jax.monitoring.unregister_event_duration_listener(_note_trace)
    return model_dir, summary


def test_each_stage_compiles_its_train_step_once(ptjf_run):
    # Traced (then compiled, or read from the compilation cache) once per stage, ahead of
    # its first step; the jitted fallback for a batch that does not fit never ran.
    assert TRACED.count("train_step") == 2


def test_launch_to_first_step_is_timed_by_phase(ptjf_run):
    _, summary = ptjf_run
    phases = summary.startup_seconds
    assert list(phases) == [
        "configured",
        "state ready",
        "first batch",
        "step compiled",
        "first step started",
        "first step",
    ]
    seconds = list(phases.values())
    assert seconds[0] > 0 and seconds == sorted(seconds)


def test_plan_runs_both_stages_and_writes_metrics(ptjf_run):
    model_dir, summary = ptjf_run
    assert summary.global_step == 8
    records = read_metrics(model_dir)
    stages = [(r["stage"], r["stage_step"], r["global_step"]) for r in records]
    assert stages == [
        ("pretrain", 0, 0),
        ("pretrain", 2, 2),
        ("pretrain", 4, 4),
        ("joint", 0, 4),
        ("joint", 2, 6),
        ("joint", 4, 8),
    ]
    low = "bible_translate_en_tl_low"
    # The low-resource task is evaluated from step 0 but not trained on before the switch.
    assert all(low in r["validation"] and low in r["train_subset"] for r in records)
    assert [r["examples_seen"][low] for r in records[:4]] == [0, 0, 0, 0]
    assert records[-1]["examples_seen"][low] > 0
    assert (
        records[-1]["examples_seen"]["bible_translate_en_fr"]
        > records[2]["examples_seen"]["bible_translate_en_fr"]
    )
    for r in records:
        for split in ("validation", "train_subset"):
            scores = r[split]["bible_translate_en_fr"]
            assert (
                np.isfinite(scores["loss"])
                and 0 <= scores["accuracy"] <= 1
                and scores["tokens"] > 0
            )
    assert "train" in records[-1] and records[-1]["train"]["learning_rate"] >= 0
    assert (model_dir / "config.gin").read_text().count("Stage.name") >= 2


def test_switch_carries_params_only_and_records_lineage(ptjf_run):
    model_dir, _ = ptjf_run
    pre_params, _ = restore(model_dir / "pretrain", 4)
    joint_params, meta = restore(model_dir / "joint", 0)
    jax.tree.map(np.testing.assert_array_equal, joint_params, pre_params)
    opt_state = raw_opt_state(model_dir / "joint", 0)
    assert jax.tree.leaves(opt_state)
    assert all(float(np.abs(np.asarray(x)).sum()) == 0 for x in jax.tree.leaves(opt_state))
    assert any(
        float(np.abs(np.asarray(x)).sum()) > 0
        for x in jax.tree.leaves(raw_opt_state(model_dir / "pretrain", 4))
    )
    assert meta["step"] == 0
    assert meta["stage_name"] == "joint" and meta["stage_index"] == 1 and meta["global_step"] == 4
    assert (
        meta["lineage"]["parent_path"].endswith("pretrain") and meta["lineage"]["parent_step"] == 4
    )


def test_rerunning_a_finished_plan_trains_nothing(ptjf_run):
    model_dir, _ = ptjf_run
    before = len(read_metrics(model_dir))
    summary = run_plan(model_dir)
    assert summary.global_step == 8
    assert len(read_metrics(model_dir)) == before


def test_resume_after_a_stop_continues_from_the_checkpoint_exactly(ptjf_run, tmp_path):
    model_dir, _ = ptjf_run
    stopped = tmp_path / "stopped"
    shutil.copytree(model_dir, stopped)
    shutil.rmtree(stopped / "joint" / "4")  # as if stopped after the joint stage's step-2 save
    records = [
        r for r in read_metrics(stopped) if not (r["stage"] == "joint" and r["stage_step"] == 4)
    ]
    (stopped / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = run_plan(stopped)
    assert summary.global_step == 8
    resumed = read_metrics(stopped)
    assert [(r["stage"], r["stage_step"]) for r in resumed][-2:] == [("joint", 2), ("joint", 4)]
    a, _ = restore(model_dir / "joint", 4)
    b, _ = restore(stopped / "joint", 4)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # same batches, same dropout: same params
    assert resumed[-1]["examples_seen"] == read_metrics(model_dir)[-1]["examples_seen"]


def test_ptjf_switch_cli_writes_a_stage_start_checkpoint(ptjf_run, tmp_path, capsys):
    model_dir, _ = ptjf_run
    target = tmp_path / "run" / "joint"
    argv = [
        "switch",
        "--from",
        f"{model_dir}/pretrain/2",
        "--to",
        str(target),
        "--gin_file=runs/ptjf.gin",
        "--gin_file=models/tiny.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
        *(f"--gin.{b.replace(' = ', '=')}" for b in TINY),
    ]
    assert cli.main(argv) == 0
    assert "step 0" in capsys.readouterr().out
    params, meta = restore(target, 0)
    source, _ = restore(model_dir / "pretrain", 2)
    jax.tree.map(np.testing.assert_array_equal, params, source)
    assert meta["lineage"] == {"parent_path": str(model_dir / "pretrain"), "parent_step": 2}
    # No optimizer state is written: `ptjf train` builds the fresh one, as the in-process switch.
    assert meta["optimizer_state"] == "fresh" and not (target / "0" / "opt_state").exists()
    # Training with the same gin files starts the joint stage from that checkpoint, numbered
    # from the source's global step 2 (not from the plan's PRETRAIN_STEPS = 4).
    assert meta["global_step"] == 2
    summary = run_plan(tmp_path / "run")
    assert summary.global_step == 6
    records = read_metrics(tmp_path / "run")
    assert [(r["stage"], r["stage_step"], r["global_step"]) for r in records] == [
        ("joint", 0, 2),
        ("joint", 2, 4),
        ("joint", 4, 6),
    ]
    with ckpt.StageCheckpointer(target, read_only=True) as c:
        assert c.read_metadata(4)["global_step"] == 6


def test_switch_into_a_different_model_names_the_first_mismatch(ptjf_run, tmp_path, capsys):
    model_dir, _ = ptjf_run
    argv = [
        "switch",
        "--from",
        f"{model_dir}/pretrain",
        "--to",
        str(tmp_path / "joint"),
        "--gin_file=runs/ptjf.gin",
        "--gin_file=models/tiny.gin",
        "--gin.TransformerConfig.emb_dim=48",
        f"--gin.MODEL_DIR='{tmp_path}'",
        *(f"--gin.{b.replace(' = ', '=')}" for b in TINY),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ptjf switch: error:" in err and "shape" in err
    assert "(32," in err and "48" in err  # both shapes named
    assert not (tmp_path / "joint").exists() or not ckpt.finalized_steps(tmp_path / "joint")


def test_switch_refuses_a_missing_source(tmp_path):
    with pytest.raises(CheckpointError, match="No finished checkpoint"):
        from ptjf import stages
        from ptjf.commands import switch

        plan = stages.Plan(
            stages=[stages.Stage(name="a", mixture_or_task_name="bible_en_fr_tl", steps=1)]
        )
        switch.switch(str(tmp_path / "nothing"), str(tmp_path / "out"), plan)


def test_unwritable_model_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((ConfigError, CheckpointError), match="MODEL_DIR"):
        run_plan(blocker / "run")


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from ptjf.training import steps, trainer

    real = steps.make_train_step

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch, rng):
            new, metrics = step(state, batch, rng)
            bad = (state.step >= 2).astype(metrics["nonfinite"].dtype)
            return new, {**metrics, "nonfinite": bad}

        return wrapped

    monkeypatch.setattr(trainer.steps, "make_train_step", poisoned)
    with pytest.raises(
        trainer.TrainingError, match=r"NaN or infinite by stage step 3.*last good checkpoint"
    ):
        run_plan(tmp_path / "run", "CheckpointConfig.period = 2")
    assert ckpt.finalized_steps(tmp_path / "run" / "pretrain") == [0, 2]

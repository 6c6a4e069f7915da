"""A tiny real sweep: PTJF, scalarization and restart on the Bible tasks, then its report.

The points run in this process (the same `ptjf` commands a local sweep runs as child
processes) to keep the test fast; `test_local_launcher_runs_a_child_process` covers the child.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

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
TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}
EVAL_PERIOD = 2
CheckpointConfig.period = 2
CheckpointConfig.keep = 1
train.max_eval_examples = 8
train.train_eval_examples = 8
train.log_every = 1
train.tensorboard = False

Sweep.name = 'tiny'
Sweep.mixture = %MIXTURE_OR_TASK_NAME
Sweep.high_task = %HIGH_RESOURCE_TASK
Sweep.low_task = %LOW_RESOURCE_TASK
Sweep.methods = ['ptjf', 'scalarization', 'restart']
Sweep.rates = [0.3, 0.7]
Sweep.total_steps = 6
Sweep.pretrain_steps = [4]
Sweep.learning_rates = [%LEARNING_RATE]
"""


def in_process(argv, cwd, log_path) -> int:
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):
        return cli.main(list(argv[1:]))


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    gin_file = root / "tiny_sweep.gin"
    gin_file.write_text(EXPERIMENT)
    out = io.StringIO()
    code = runner.run_sweep_command(
        [str(gin_file)], [], sweep_dir=str(root / "s"), launcher=in_process, out=out
    )
    return root / "s", code, out.getvalue(), gin_file


def test_every_point_finishes_with_a_full_history(tiny_sweep):
    sweep_dir, code, text, _ = tiny_sweep
    assert code == 0, text
    assert "7 done, 0 failed, 0 blocked" in text  # 1 shared pre-training + 6 points
    points = sorted(p.name for p in (sweep_dir / "points").iterdir())
    assert points == [
        "ptjf-r0.3-n4-lr0.003-s0",
        "ptjf-r0.7-n4-lr0.003-s0",
        "restart-r0.3-n4-lr0.003-s0",
        "restart-r0.7-n4-lr0.003-s0",
        "scalarization-r0.3-lr0.003-s0",
        "scalarization-r0.7-lr0.003-s0",
    ]
    ptjf = read_metrics(sweep_dir / "points" / "ptjf-r0.3-n4-lr0.003-s0")
    # The shared pre-training's evals (copied at the fork), then the joint stage's own.
    assert [(r["stage"], r["global_step"]) for r in ptjf] == [
        ("pretrain", 0),
        ("pretrain", 2),
        ("pretrain", 4),
        ("joint", 4),
        ("joint", 6),
    ]
    assert ptjf[-1]["examples_seen"]["bible_translate_en_tl_low"] > 0
    assert ptjf[2]["examples_seen"]["bible_translate_en_tl_low"] == 0


def test_shared_pretraining_ran_once_and_points_fork_from_it(tiny_sweep):
    sweep_dir, *_ = tiny_sweep
    shared = sweep_dir / "shared" / "pretrain-n4-lr0.003-s0"
    assert ckpt.finalized_steps(shared / "pretrain") == [4]
    assert not (shared / "joint").exists()  # stopped after its first stage
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [n["kind"] for n in record["nodes"]].count("shared") == 1
    for r in ("0.3", "0.7"):
        with ckpt.StageCheckpointer(
            sweep_dir / "points" / f"ptjf-r{r}-n4-lr0.003-s0" / "joint", read_only=True
        ) as c:
            lineage = c.read_metadata()["lineage"]  # every checkpoint of the stage keeps it
        assert lineage == {"parent_path": str(shared / "pretrain"), "parent_step": 4}


def test_restart_starts_from_the_scalarization_run_at_n1(tiny_sweep):
    sweep_dir, *_ = tiny_sweep
    scal = sweep_dir / "points" / "scalarization-r0.3-lr0.003-s0" / "joint"
    restart = sweep_dir / "points" / "restart-r0.3-n4-lr0.003-s0" / "restart"
    assert ckpt.finalized_steps(scal) == [4, 6]  # step 4 kept for the fork despite keep=1
    with ckpt.StageCheckpointer(restart, read_only=True) as c:
        meta = c.read_metadata()
    assert meta["lineage"] == {"parent_path": str(scal), "parent_step": 4}
    assert meta["global_step"] == 6 and meta["stage_name"] == "restart"
    records = read_metrics(restart.parent)
    assert [(r["stage"], r["global_step"]) for r in records] == [
        ("joint", 0),
        ("joint", 2),
        ("joint", 4),
        ("restart", 4),
        ("restart", 6),
    ]


def test_rerun_skips_everything(tiny_sweep):
    sweep_dir, _, _, gin_file = tiny_sweep
    calls = []
    out = io.StringIO()
    code = runner.run_sweep_command(
        [str(gin_file)],
        [],
        sweep_dir=str(sweep_dir),
        launcher=lambda *a: calls.append(a) or 0,
        out=out,
    )
    assert code == 0 and calls == []
    assert "skipping 7 finished node(s)" in out.getvalue()


def test_sweep_cli_dry_run_and_emit(tiny_sweep, capsys):
    sweep_dir, _, _, gin_file = tiny_sweep
    assert (
        cli.main(["sweep", f"--gin_file={gin_file}", f"--sweep_dir={sweep_dir}", "--dry_run"]) == 0
    )
    out = capsys.readouterr().out
    assert "done     point  ptjf-r0.3-n4-lr0.003-s0 ← pretrain-n4-lr0.003-s0" in out
    assert "7 nodes: 1 shared pre-training(s), 6 points" in out
    emitted = sweep_dir.parent / "emitted"
    assert cli.main(["sweep", f"--gin_file={gin_file}", f"--sweep_dir={emitted}", "--emit"]) == 0
    script = capsys.readouterr().out
    assert script.count("\nptjf train ") == 7 and script.count("\nptjf switch ") == 4
    assert not (emitted / "shared" / "pretrain-n4-lr0.003-s0" / "pretrain").exists()


def test_unknown_method_from_gin_is_one_clear_message(tiny_sweep, capsys):
    _, _, _, gin_file = tiny_sweep
    argv = ["sweep", f"--gin_file={gin_file}", "--gin.Sweep.methods=['ptfj']", "--dry_run"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ptfj" in err and "ptjf" in err and "Traceback" not in err


def test_the_tiny_sweep_renders_its_report(tiny_sweep, capsys):
    sweep_dir, *_ = tiny_sweep
    out = sweep_dir.parent / "report"
    assert cli.main(["report", str(sweep_dir), f"--out={out}"]) == 0
    summary = capsys.readouterr().out
    for method in ("ptjf", "scalarization", "restart"):
        assert method in summary
    text = (out / "report.md").read_text()
    assert "## Pareto front per method" in text and "ptjf-r0.7-n4-lr0.003-s0" in text
    for figure in ("fronts.png", "fronts_by_rate.png", "curves.png"):
        data = (out / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    rows = (out / "points.csv").read_text().splitlines()
    assert len(rows) == 1 + 7  # header, 6 points and the shared pre-training

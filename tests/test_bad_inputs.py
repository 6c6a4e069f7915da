"""Bad inputs that no other test file covers: each gets one clear message (docs/errors.md).

Every test here is fast: errors are raised before any model is built or trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from fake_runs import write_sweep

from ptjf import stages as stg
from ptjf.checkpoints import checkpointer as ck
from ptjf.commands import cli
from ptjf.commands import switch as sw
from ptjf.data import batches as data
from ptjf.errors import CheckpointError, ConfigError, DataError, RatesError
from ptjf.experiments.results import load_runs
from ptjf.training import stage_state

SYNC = ck.CheckpointConfig(period=1, async_save=False)
LENGTHS = {"inputs": 8, "targets": 8}
MIXTURE = "bible_en_fr_tl"
TASKS = ("bible_translate_en_fr", "bible_translate_en_tl_low")
TRAIN = [
    "train",
    "--gin_file=runs/ptjf.gin",
    "--gin_file=models/tiny.gin",
    "--gin.HIGH_RESOURCE_TASK=bible_translate_en_fr",
    f"--gin.MIXTURE_OR_TASK_NAME={MIXTURE}",
    "--gin.PRETRAIN_STEPS=2",
    "--gin.FINETUNE_STEPS=2",
    "--gin.WARMUP_STEPS=1",
]


def _state(step: int = 0) -> dict:
    params = {"emb": jnp.arange(6.0).reshape(2, 3) + step, "b": jnp.ones((4,))}
    return {
        "step": jnp.asarray(step, jnp.int32),
        "params": params,
        "opt_state": optax.adam(1e-2).init(params),
    }


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _save(directory: Path, steps: tuple[int, ...]) -> None:
    with ck.StageCheckpointer(directory, SYNC) as c:
        for s in steps:
            assert c.save(s, _state(s), {}, force=True)
        c.wait()


# --- the command line: one message, exit status 2, nothing written ---------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [*TRAIN, "--gin.MIXTURE_OR_TASK_NAME=bible_en_fr_tx"],
            "Unknown task or mixture 'bible_en_fr_tx'. Closest registered: bible_en_fr_tl",
        ),
        (
            [*TRAIN, "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}"],
            "task_feature_lengths['inputs']=0: sequence lengths must be integers >= 2",
        ),
        (
            [*TRAIN, "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 1}"],
            "task_feature_lengths['targets']=1: sequence lengths must be integers >= 2",
        ),
        ([*TRAIN, "--gin.BATCH_SIZE=0"], "train.batch_size=0 must be an integer >= 1."),
        (
            [*TRAIN, "--gin.train.last_stage='pretrian'"],
            "train.last_stage='pretrian' is not a stage of the plan; its stages are "
            "['pretrain', 'joint']",
        ),
        (
            [*TRAIN, "--gin.partitioning.PjitPartitioner.num_partitions=2"],
            "The mesh does not fit the devices: num_partitions=2 does not divide the 1 device(s)",
        ),
        (
            [*TRAIN, "--gin.LEARNING_RATE=-1.0"],
            "ScheduleConfig.peak_lr = -1.0 is invalid: expected a learning rate > 0.",
        ),
    ],
)
def test_bad_train_settings_stop_before_anything_is_written(argv, message, tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert cli.main([*argv, f"--gin.MODEL_DIR={model_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptjf train: error: ")
    assert message in err and "Traceback" not in err
    assert not model_dir.exists()


def test_a_missing_model_dir_names_the_flag_to_pass(capsys):
    assert cli.main(TRAIN) == 2
    assert capsys.readouterr().err == (
        "ptjf train: error: Gin macro MODEL_DIR is required (bound to %gin.REQUIRED) but no "
        "value was given. Pass --gin.MODEL_DIR=VALUE (or bind it in a gin file).\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--gin.=3", "--gin_file=runs/ptjf.gin"],
            "Flag '--gin.=3' names no gin parameter",
        ),
        (
            ["eval", "--methods=ptjf", "--gin_file=runs/ptjf.gin"],
            "--methods selects points of a sweep; use it with --sweep_dir.",
        ),
        (["sweep"], "No --gin_file given: name an experiment file"),
        (
            ["rates", "--sizes", "a=1,b=2", "--method", "static"],
            "--method static needs --weights task=w,…",
        ),
        (
            ["rates", "--sizes", "a=1,b=2", "--method", "unimax", "--max-epochs", "2"],
            "Sampling method 'unimax' needs budget",
        ),
        (
            ["rates", "--sizes", "a=1,b=2", "--method", "temperature", "--tau", "0"],
            "Temperature tau is 0.0; expected > 0 (math.inf allowed).",
        ),
        (
            ["rates", "--sizes", "a=1,b=0"],
            "Size of task 'b' is 0.0 examples; sizes must be finite and > 0",
        ),
        (["report", "{tmp}/nowhere"], "nowhere is not a directory. Pass sweep directories"),
    ],
)
def test_bad_command_lines_are_one_clear_message(argv, message, tmp_path, capsys):
    command = argv[0]
    assert cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ptjf {command}: error: ")
    assert message in err and "Traceback" not in err


# --- rates ------------------------------------------------------------------------------------


def test_stage_rates_that_are_all_zero_or_name_other_tasks_are_refused():
    def config(rates):
        return data.DatasetConfig(MIXTURE, LENGTHS, batch_size=4, rates=rates)

    with pytest.raises(RatesError, match=r"All weights are zero .* give at least one task a"):
        data.effective_rates(config(dict.fromkeys(TASKS, 0.0)))
    with pytest.raises(
        RatesError, match=r"rates name \['bible_translate_en_xx'\], which are not tasks of"
    ):
        data.effective_rates(config({TASKS[0]: 1.0, "bible_translate_en_xx": 1.0}))
    assert data.effective_rates(config({TASKS[0]: 3.0})) == {TASKS[0]: 1.0, TASKS[1]: 0.0}


# --- hosts and meshes -------------------------------------------------------------------------


def test_input_shards_must_be_a_multiple_of_the_hosts_data_shards():
    config = data.DatasetConfig(MIXTURE, LENGTHS, batch_size=4)
    with pytest.raises(ConfigError, match=r"train\.input_shards=3 must be a multiple of the 2 "):
        data.host_train_batches(config, num_host_shards=2, input_shards=3)
    with pytest.raises(ConfigError, match=r"train\.input_shards=0 must be a multiple of the 1 "):
        data.host_train_batches(config, num_host_shards=1, input_shards=0)
    with pytest.raises(ConfigError, match=r"BATCH_SIZE=4 does not split into 3 input shards"):
        data.host_train_batches(config, num_host_shards=1, input_shards=3)


def test_a_later_stages_mistake_is_found_before_the_first_stage_trains(tmp_path, capsys):
    model_dir = tmp_path / "run"
    argv = [*TRAIN, "--gin.FINETUNE_WARMUP_STEPS=50", f"--gin.MODEL_DIR={model_dir}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "reaches its peak learning rate" in err
    assert "In call to configurable" not in err  # gin's trailer is left out
    assert not model_dir.exists()  # nothing was trained or written


def test_a_missing_vocabulary_file_is_refused_at_registration(tmp_path):
    import seqio
    from ptjf.tasks import register_translation_task

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("hello\tsalut\n", encoding="utf-8")
    missing = str(tmp_path / "missing.model")
    with pytest.raises(DataError, match=r"does not exist\. Pass an existing \.model file"):
        register_translation_task(
            "bad_vocab_task",
            source_language="en",
            target_language="fr",
            data=pairs,
            vocabulary=seqio.SentencePieceVocabulary(missing),
        )
    assert "bad_vocab_task" not in seqio.TaskRegistry.names()


def test_a_batch_that_does_not_split_over_the_data_axis_is_refused():
    # Two fake CPU devices need the XLA flag before jax is imported: a fresh interpreter.
    code = (
        "from ptjf.runtime.partitioning import Partitioner\n"
        "p = Partitioner()\n"
        "assert p.data_size == 2, p.data_size\n"
        "assert p.data_shard(4) == (0, 1)\n"
        "p.data_shard(3)\n"
    )
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert (
        "ptjf.errors.ConfigError: The batch size 3 does not split over the mesh's data axis of "
        "2 devices. Choose BATCH_SIZE as a multiple of 2"
    ) in proc.stderr


# --- checkpoints and the stage switch ---------------------------------------------------------


def _plan() -> stg.Plan:
    return stg.Plan(stages=[stg.Stage(name="joint", mixture_or_task_name=MIXTURE, steps=1)])


def test_switch_refuses_an_unknown_stage_and_a_target_that_holds_checkpoints(tmp_path):
    source, target = tmp_path / "src" / "pretrain", tmp_path / "dst" / "joint"
    _save(source, (2,))
    with pytest.raises(
        ConfigError, match=r"The plan has no stage 'jiont'; its stages are \['joint'"
    ):
        sw.switch(str(source), str(target), _plan(), stage="jiont")
    _save(target, (0,))
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \[0\]; switch into an "):
        sw.switch(str(source), str(target), _plan())
    assert sorted(p.name for p in target.iterdir()) == before  # nothing overwritten


def test_every_checkpoint_corrupted_stops_with_what_to_do(tmp_path):
    stage_dir = tmp_path / "joint"
    _save(stage_dir, (1, 2))
    for step in (1, 2):
        files = [p for p in (stage_dir / str(step) / "params").rglob("*") if p.is_file()]
        largest = max(files, key=lambda p: p.stat().st_size)
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        stage_state.restore_newest_good(str(stage_dir), [1, 2], SYNC, _abstract(_state()))
    message = str(err.value)
    assert f"No checkpoint in {stage_dir} reads back as saved (steps [1, 2]" in message
    assert "move the stage directory aside and rerun the same command" in message
    # Kept for inspection, never deleted.
    moved = sorted(p.name.split("-")[0] for p in (stage_dir / "corrupted").iterdir())
    assert moved == ["1", "2"]


def test_a_stage_with_an_unknown_init_from_is_refused():
    with pytest.raises(
        ConfigError, match=r"init_from='pretrain'; use 'previous', 'scratch' or a checkpoint path"
    ):
        stg.Stage(name="joint", mixture_or_task_name=MIXTURE, steps=1, init_from="pretrain")


# --- metrics and reports ----------------------------------------------------------------------


def test_report_over_a_truncated_metrics_line_says_how_many_it_skipped(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match=r"restart-r0\.8/metrics\.jsonl:4: skipping a broken"):
        status = cli.main(["report", sweep, "--out", str(out), "--no_figures"])
    assert status == 0
    assert "Skipped 1 broken metrics line(s); report.md names them." in capsys.readouterr().out
    assert "restart-r0.8/metrics.jsonl:4" in (out / "report.md").read_text()


def test_an_unreadable_point_json_names_the_file_and_the_fix(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"global_step": 0, "stage": "joint"}\n')
    (run / "point.json").write_text('{"name": "ptjf-r0.5", ')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as err:
            load_runs([run])
    message = str(err.value)
    assert message.startswith(f"Cannot read {run / 'point.json'}: ")
    assert "point.json is written by `ptjf sweep`; fix or delete it" in message


# --- DatasetConfig bindings the trainer would override ----------------------------------------


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ("--gin.DatasetConfig.seed=3", "DatasetConfig.seed = 3 is bound, but the trainer sets"),
        ("--gin.DatasetConfig.pack=False", "Remove it and set train.pack instead."),
        ("--gin.DatasetConfig.batch_size=64", "set BATCH_SIZE (train.batch_size) instead"),
        (
            "--gin.DatasetConfig.rates={'bible_translate_en_fr': 1.0}",
            "set Stage.rates (the run file's rate macros, e.g. MIXTURE_RATES) instead",
        ),
    ],
)
def test_dataset_config_bindings_the_trainer_overrides_are_refused(
    binding, message, tmp_path, capsys
):
    model_dir = tmp_path / "run"
    assert cli.main([*TRAIN, binding, f"--gin.MODEL_DIR={model_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptjf train: error: ")
    assert message in err and "Traceback" not in err
    assert not model_dir.exists()


def test_dataset_config_bindings_the_trainer_leaves_alone_are_accepted():
    import gin

    from ptjf.training.run_checks import check_dataset_bindings

    check_dataset_bindings()  # nothing bound
    gin.parse_config("DatasetConfig.shuffle = False\nDatasetConfig.module = 'ptjf.tasks'")
    check_dataset_bindings()  # split, shuffle and module are not set by the trainer


def test_switch_refuses_a_target_that_ptjf_train_would_not_read(tmp_path, capsys):
    # `ptjf train` with these gin files reads the joint stage from MODEL_DIR/joint only: a
    # stage start anywhere else is never read and the run would pre-train from scratch.
    source, run = tmp_path / "src" / "pretrain", tmp_path / "run"
    _save(source, (2,))
    switch = ["switch", f"--from={source}", *TRAIN[1:], f"--gin.MODEL_DIR={run}"]
    for wrong in (tmp_path / "other" / "joint", run / "pretrain", run / "joint" / "0"):
        assert cli.main([*switch, f"--to={wrong}"]) == 2
        err = capsys.readouterr().err
        assert f"--to '{wrong}' is not the directory `ptjf train` reads stage 'joint' from: " in err
        assert f"MODEL_DIR/joint = '{run / 'joint'}'" in err and f"--to={run / 'joint'}" in err
        assert not wrong.exists()
    assert not run.exists()  # nothing written anywhere
    # The same directory spelled differently is the one the trainer reads, local or gs://.
    plan = stg.Plan(stages=[stg.Stage(name="joint", mixture_or_task_name=MIXTURE, steps=1)])
    sw.check_target(f"{run}/./joint/", str(run), plan)
    sw.check_target("gs://b/run//joint/", "gs://b/run/", plan)
    with pytest.raises(ConfigError, match=r"MODEL_DIR/joint = 'gs://b/run/joint'"):
        sw.check_target("gs://b/other/joint", "gs://b/run", plan)

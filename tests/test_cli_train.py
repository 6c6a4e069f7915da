"""`ptjf train` turns bad configuration into one clear message (exit status 2), never a traceback."""

from __future__ import annotations

import pytest

from ptjf.commands import cli


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "No --gin_file given"),
        (["--gin_file=runs/ptjf_typo.gin"], "Gin file 'runs/ptjf_typo.gin' not found"),
        (
            [
                "--gin_file=runs/ptjf.gin",
                "--gin_file=models/tiny.gin",
                "--gin.TransformerConfig.emd_dim=3",
            ],
            "emb_dim",
        ),
        (["--gin_file=runs/ptjf.gin", "--gin_file=models/tiny.gin"], "MODEL_DIR"),
        (["--gin_file=runs/ptjf.gin", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_train_configuration_is_one_clear_message(argv, message, capsys):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptjf train: error: ")
    assert message in err and "Traceback" not in err


def test_malformed_gin_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'runs/ptjf.gin'\nMODEL_DIR = '/tmp/x'\nBATCH_SIZE = = 3\n")
    assert cli.main(["train", f"--gin_file={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3" in err


def test_bad_data_found_after_the_stage_start_save_keeps_that_checkpoint(
    tmp_path, capsys, monkeypatch
):
    # The stage-start checkpoint is written while the first batch is read; when reading then
    # fails, the run stops with its message only after that write is final.
    from ptjf.checkpoints import checkpointer as ck
    from ptjf.data import batches
    from ptjf.errors import DataError

    def unreadable(*args, **kwargs):
        raise DataError("the first batch could not be read")

    monkeypatch.setattr(batches, "host_train_batches", unreadable)
    model_dir = tmp_path / "run"
    argv = [
        "train",
        "--gin_file=runs/ptjf.gin",
        "--gin_file=models/tiny.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.HIGH_RESOURCE_TASK=bible_translate_en_fr",
        "--gin.MIXTURE_OR_TASK_NAME=bible_en_fr_tl",
        "--gin.PRETRAIN_STEPS=2",
        "--gin.FINETUNE_STEPS=2",
        "--gin.WARMUP_STEPS=1",
        "--gin.train.eval_at_stage_start=False",
    ]
    assert cli.main(argv) == 2
    assert "the first batch could not be read" in capsys.readouterr().err
    assert ck.finalized_steps(str(model_dir / "pretrain")) == [0]

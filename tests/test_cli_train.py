"""`ptjf train` turns bad configuration into one clear message (exit status 2), never a traceback."""

from __future__ import annotations

import pytest

from ptjf import cli


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

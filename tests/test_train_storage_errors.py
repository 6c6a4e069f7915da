"""`ptjf train` refuses a MODEL_DIR it cannot write before anything is built or written."""

from __future__ import annotations

import pytest

from ptjf.commands import train
from ptjf.errors import ConfigError

FILES = ["runs/ptjf.gin", "models/tiny.gin"]
BINDINGS = [
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "PRETRAIN_STEPS = 2",
    "FINETUNE_STEPS = 2",
    "WARMUP_STEPS = 1",
    "BATCH_SIZE = 4",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}",
]


def run(model_dir: str) -> None:
    train.run(FILES, [f"MODEL_DIR = '{model_dir}'", *BINDINGS])


@pytest.mark.parametrize(
    "model_dir, expected",
    [
        ("gs:/bucket/run", "did you mean 'gs://bucket/run'"),
        ("gcs://bucket/run", "did you mean 'gs://bucket/run'"),
    ],
)
def test_a_mistyped_scheme_stops_the_run_and_writes_nothing(
    model_dir, expected, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=expected):
        run(model_dir)
    assert list(tmp_path.iterdir()) == []  # no local folder named "gs:" or "gcs:"


def test_a_missing_bucket_stops_the_run_before_any_step(gcs_emulator, capsys):
    with pytest.raises(ConfigError) as err:
        run("gs://ptjf-no-such-bucket/run")
    message = str(err.value)
    assert "Cannot write MODEL_DIR at gs://ptjf-no-such-bucket/run" in message
    assert "does not exist" in message and "--gin.MODEL_DIR" in message
    assert "step" not in capsys.readouterr().out


def test_an_unwritable_local_model_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(ConfigError, match=r"Cannot write MODEL_DIR at .*file/run"):
        run(str(blocker / "run"))
    assert blocker.read_text() == "keep"

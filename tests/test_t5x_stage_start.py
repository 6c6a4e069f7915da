"""ptjf after T5X: a stage starts from a checkpoint T5X's own trainer wrote (tests/data/t5x),
through `ptjf switch --from` or a stage's `init_from`, with the task registered under a
vocabulary of the checkpoint's size; parameters only, fresh optimizer state, lineage kept."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from ptjf.tasks import registration

from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import cli, train
from ptjf.data import vocabularies
from ptjf.data.stored_vocabulary import StoredSentencePieceVocabulary
from ptjf.errors import CheckpointError
from ptjf.t5x import checkpoints as t5x_checkpoints
from ptjf.t5x import models as t5x_models

T5X = Path(__file__).parent / "data" / "t5x" / "t511_small_orbax" / "checkpoint_20"
ROWS = 32128  # the checkpoint's embedding rows: T5X's 32,100 ids padded to 128
PIECES = 60
WORDS = [a + b for a in ("ka", "lo", "mi", "su", "te", "ra", "no", "pe") for b in "aeiouxyz"]


def _sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> str:
    """A translation task whose vocabulary pads to the checkpoint's 32,128 rows: a
    SentencePiece model at a path (as a T5X user registers theirs) plus sentinel ids."""
    root = tmp_path_factory.mktemp("t5x_task")
    rng = random.Random(5)
    pairs = list(zip(_sentences(rng, 300), _sentences(rng, 300), strict=True))
    tsv = root / "pairs.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    spec = vocabularies.VocabularySpec(name="t5x_toy", vocab_size=PIECES, model_type="word")
    model = root / "toy.model"
    model.write_bytes(vocabularies.train_sentencepiece(spec, [s for p in pairs for s in p]))
    vocabulary = StoredSentencePieceVocabulary(str(model), extra_ids=32100 - PIECES)
    registration.register_translation_task(
        "t5x_toy_en_de",
        source_language="en",
        target_language="de",
        data=tsv,
        vocabulary=vocabulary,
        overwrite=True,
    )
    assert vocabularies.padded_vocab_size(vocabulary) == ROWS
    return "t5x_toy_en_de"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """`ptjf inspect`'s gin model file for the checkpoint."""
    path = tmp_path_factory.mktemp("t5x_model") / "t511_small.gin"
    path.write_text(t5x_models.model_gin_text(t5x_checkpoints.open_checkpoint(str(T5X))))
    return str(path)


def bindings(task: str, model_dir: str) -> list[str]:
    return [
        f"MODEL_DIR = '{model_dir}'",
        f"MIXTURE_OR_TASK_NAME = '{task}'",
        "TRAIN_STEPS = 2",
        "WARMUP_STEPS = 1",
        "BATCH_SIZE = 4",
        "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}",
        "EVAL_PERIOD = 100",
        "train.max_eval_examples = 4",
        "train.train_eval_examples = 4",
        "train.tensorboard = False",
    ]


def t5x_params() -> dict[str, np.ndarray]:
    restored = t5x_checkpoints.restore_params(t5x_checkpoints.open_checkpoint(str(T5X)))
    return {k: np.asarray(v) for k, v in t5x_checkpoints.flatten(restored).items()}


def params_at(stage_dir: str, step: int) -> dict[str, np.ndarray]:
    with ckpt.StageCheckpointer(stage_dir, read_only=True) as c:
        params, _ = c.restore_params(step)
    return {k: np.asarray(v) for k, v in t5x_checkpoints.flatten(params).items()}


def test_ptjf_switch_from_a_t5x_checkpoint_then_train(task, model_file, tmp_path, capsys):
    model_dir = tmp_path / "run"
    files = ["runs/scalarization.gin", model_file]
    argv = ["switch", f"--from={T5X}", f"--to={model_dir / 'joint'}"]
    argv += [f"--gin_file={f}" for f in files]
    argv += [f"--gin.{b.replace(' ', '')}" for b in bindings(task, str(model_dir))]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "step 20" in capsys.readouterr().out
    start = params_at(str(model_dir / "joint"), 0)
    expected = t5x_params()
    assert start.keys() == expected.keys()
    for name, value in expected.items():
        assert np.array_equal(start[name], value), name
    with ckpt.StageCheckpointer(model_dir / "joint", read_only=True) as c:
        meta = c.read_metadata(0)
    assert meta["lineage"] == {"parent_path": str(T5X), "parent_step": 20}
    assert "t5x-orbax" in meta["switched_by"]

    summary = train.run(files, bindings(task, str(model_dir)))
    # The stage continues the T5X run's step count (as T5X counts a fine-tune): 20 + 2.
    assert summary.global_step == 22
    after = params_at(str(model_dir / "joint"), 2)
    assert not np.array_equal(
        after["encoder/layers_0/mlp/wo/kernel"], start["encoder/layers_0/mlp/wo/kernel"]
    )


def test_a_first_stage_starts_from_a_t5x_checkpoint_in_a_bucket(task, model_file, gcs_bucket):
    source = f"{gcs_bucket}/t5x_run/checkpoint_20"
    storage.copy_tree(str(T5X), source)
    model_dir = f"{gcs_bucket}/ptjf_run"
    summary = train.run(
        ["runs/scalarization.gin", model_file],
        [*bindings(task, model_dir), f"joint/Stage.init_from = '{source}'"],
    )
    assert summary.global_step == 22  # as `ptjf switch` from it: T5X's step 20, then 2 more
    stage_dir = f"{model_dir}/joint"
    start = params_at(stage_dir, 0)
    assert all(np.array_equal(start[k], v) for k, v in t5x_params().items())
    with ckpt.StageCheckpointer(stage_dir, read_only=True) as c:
        meta = c.read_metadata(0)
    assert meta["lineage"] == {"parent_path": source, "parent_step": 20}


def test_a_vocabulary_of_another_size_is_refused_naming_both_sizes(model_file, tmp_path):
    """The embedded Bible task's vocabulary pads to far fewer rows than T5X's 32,128."""
    model_dir = tmp_path / "run"
    with pytest.raises(
        CheckpointError,
        match=r"embedding of 32128 rows.*gives \d+: the tasks use another vocabulary",
    ):
        train.run(
            ["runs/scalarization.gin", model_file],
            [
                *bindings("bible_translate_en_fr", str(model_dir)),
                f"joint/Stage.init_from = '{T5X}'",
            ],
        )
    assert not ckpt.finalized_steps(str(model_dir / "joint"))


def test_switch_from_a_t5x_checkpoint_of_another_architecture_names_the_parameter(task, tmp_path):
    from ptjf import config as gin_config
    from ptjf import stages
    from ptjf.commands import switch

    gin_config.parse_gin(
        ["runs/scalarization.gin", "models/tiny.gin"],
        [*bindings(task, str(tmp_path)), "TransformerConfig.share_relpos_bias = True"],
    )
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the model: \S+ is \(.*\) in the "
        r"checkpoint but \(.*\) in the model",
    ):
        switch.switch(str(T5X), str(tmp_path / "joint"), stages.Plan())
    assert not ckpt.finalized_steps(str(tmp_path / "joint"))


def test_a_stage_init_from_must_be_a_path_and_keep_no_optimizer_state():
    from ptjf.errors import ConfigError
    from ptjf.stages import Stage

    with pytest.raises(ConfigError, match="or a checkpoint path"):
        Stage(name="joint", mixture_or_task_name="x", steps=1, init_from="t5x")
    with pytest.raises(ConfigError, match="did you mean 'gs://b/checkpoint_1'"):
        Stage(name="joint", mixture_or_task_name="x", steps=1, init_from="gcs://b/checkpoint_1")
    with pytest.raises(ConfigError, match="gives parameters only"):
        Stage(
            name="joint",
            mixture_or_task_name="x",
            steps=1,
            init_from="gs://b/checkpoint_1",
            reset_optimizer=False,
            reset_schedule=False,
        )


def test_ptjf_inspect_prints_the_model_file_and_refuses_a_non_checkpoint(tmp_path, capsys):
    assert cli.main(["inspect", str(T5X)]) == 0
    out = capsys.readouterr().out
    assert "TransformerConfig.emb_dim = 16\n" in out
    assert "TransformerConfig.num_encoder_layers = 2\n" in out
    assert "TransformerConfig.logits_via_embedding = False\n" in out
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert "is not a T5X checkpoint" in capsys.readouterr().err

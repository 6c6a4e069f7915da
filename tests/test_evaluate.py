"""`ptjf eval`: a finished run's checkpoint scored after the run (losses and BLEU), one run or
a whole sweep, and the report that picks the scores up."""

from __future__ import annotations

import json
import shutil

import ptjf.tasks as T
import pytest

from ptjf.commands import cli
from ptjf.commands.evaluate import evaluate_checkpoint, evaluate_sweep, point_train_command
from ptjf.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from ptjf.experiments import report
from ptjf.experiments.results import clean_records
from ptjf.training.metrics_io import read_metrics

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
HI, LO = "toy_eval_hi", "toy_eval_lo"
RUN_FILES = ["runs/ptjf.gin", "models/tiny.gin"]


def _rows(n: int, offset: int) -> list[tuple[str, str, str]]:
    out = []
    for i in range(offset, offset + n):
        words = [WORDS[(3 * i + 7 * j) % len(WORDS)] for j in range(2 + i % 4)]
        upper = " ".join(w.upper() for w in reversed(words))
        out.append((" ".join(words), upper, " ".join(w + "en" for w in words)))
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Two tiny translation tasks (en→fr high-resource, en→de low-resource) and their mixture."""
    d = tmp_path_factory.mktemp("toy_eval")
    splits = {"train": _rows(60, 0), "validation": _rows(6, 500)}
    for name, lang, column in ((HI, "fr", 1), (LO, "de", 2)):
        files = {}
        for split, rows in splits.items():
            files[split] = d / f"{name}.{split}.tsv"
            files[split].write_text("".join(f"{r[0]}\t{r[column]}\n" for r in rows), "utf-8")
        T.register_translation_task(
            name,
            source_language="en",
            target_language=lang,
            data=files,
            problem="toy_eval",
            vocab_size=60,
            overwrite=True,
        )
    T.register_mixture("toy_eval_mix", [HI, LO], weights={HI: 0.7, LO: 0.3}, overwrite=True)


def _bindings(model_dir) -> list[str]:
    return [
        f"MODEL_DIR = '{model_dir}'",
        f"HIGH_RESOURCE_TASK = '{HI}'",
        "MIXTURE_OR_TASK_NAME = 'toy_eval_mix'",
        "PRETRAIN_STEPS = 2",
        "FINETUNE_STEPS = 2",
        "WARMUP_STEPS = 1",
        "BATCH_SIZE = 4",
        "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 12}",
        "EVAL_PERIOD = 2",
        "CheckpointConfig.period = 2",
        "train.max_eval_examples = 4",
        "train.train_eval_examples = 4",
        "train.bleu_examples = 3",
        "train.log_every = 1",
        "train.tensorboard = False",
    ]


def _flags(model_dir) -> list[str]:
    """The run's gin files and bindings as `ptjf train` flags."""
    files = [f"--gin_file={f}" for f in RUN_FILES]
    return files + [
        "--gin." + "=".join(part.strip() for part in b.split("=", 1)) for b in _bindings(model_dir)
    ]


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """A PTJF run of 2 + 2 steps, trained without BLEU, as a sweep point would be."""
    from ptjf.commands import train

    model_dir = tmp_path_factory.mktemp("run") / "point"
    train.run(RUN_FILES, _bindings(model_dir))
    return model_dir


def test_eval_appends_a_posthoc_record_with_the_trainers_losses_and_bleu(trained, tmp_path, capsys):
    model_dir = tmp_path / "point"
    shutil.copytree(trained, model_dir)
    before = read_metrics(model_dir)
    assert [(r["stage"], r["stage_step"]) for r in before] == [
        ("pretrain", 0),
        ("pretrain", 2),
        ("joint", 0),
        ("joint", 2),
    ]
    assert not any("bleu" in r for r in before)

    assert cli.main(["eval", *_flags(model_dir)]) == 0
    records = read_metrics(model_dir)
    assert len(records) == len(before) + 1
    final, posthoc = before[-1], records[-1]
    assert posthoc["posthoc"] is True
    for key in ("stage", "stage_index", "stage_step", "global_step", "examples_seen"):
        assert posthoc[key] == final[key]
    assert (posthoc["stage"], posthoc["global_step"]) == ("joint", 4)
    # Same parameters, same batches: exactly the trainer's numbers.
    assert posthoc["validation"] == final["validation"]
    assert posthoc["train_subset"] == final["train_subset"]
    assert posthoc["tokens_seen"] == final["tokens_seen"]
    assert posthoc["train"] == final["train"]  # the step's training scalars are kept
    assert set(posthoc["bleu"]) == {HI, LO}
    assert all(0.0 <= b <= 100.0 for b in posthoc["bleu"].values())
    # Readers keep the last record per (stage, stage_step): the post-hoc one.
    assert clean_records(records)[-1] == posthoc

    printed = capsys.readouterr().out
    assert "ptjf eval: stage joint step 2 (global step 4)" in printed
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.strip()}
    assert lines[LO][1] == f"{final['validation'][LO]['loss']:.4f}"
    assert lines[LO][-1] == f"{posthoc['bleu'][LO]:.2f}"


def test_an_earlier_checkpoint_without_bleu_and_without_writing(trained):
    before = (trained / "metrics.jsonl").read_text()
    record = evaluate_checkpoint(
        RUN_FILES,
        _bindings(trained),
        checkpoint=str(trained / "pretrain" / "2"),
        bleu=False,
        write=False,
    )
    trainers = next(
        r for r in read_metrics(trained) if r["stage"] == "pretrain" and r["stage_step"] == 2
    )
    assert (record["stage"], record["stage_index"], record["global_step"]) == ("pretrain", 0, 2)
    assert record["validation"] == trainers["validation"]
    assert record["examples_seen"] == trainers["examples_seen"]
    assert record["examples_seen"][LO] == 0  # pre-training sees the high-resource task only
    assert "bleu" not in record
    assert (trained / "metrics.jsonl").read_text() == before


def test_the_runs_config_gin_alone_configures_the_eval(trained):
    record = evaluate_checkpoint([str(trained / "config.gin")], [], bleu=False, write=False)
    final = read_metrics(trained)[-1]
    assert (record["stage"], record["stage_step"]) == ("joint", 2)
    assert record["validation"] == final["validation"]


def test_missing_checkpoints_name_the_steps_that_exist(trained, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"step 7 .*steps that exist: 0, 2"):
        evaluate_checkpoint(
            RUN_FILES, _bindings(trained), checkpoint=str(trained / "joint" / "7"), write=False
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint of stage 'joint'.*: none"):
        evaluate_checkpoint(RUN_FILES, _bindings(empty), write=False)
    argv = ["eval", *_flags(trained), f"--checkpoint={trained / 'joint' / '7'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ptjf eval: error: No finalised checkpoint for step 7" in err
    assert "steps that exist: 0, 2" in err


def test_bad_arguments_are_clear_errors(trained):
    with pytest.raises(ConfigError, match="No --gin_file given"):
        evaluate_checkpoint([], _bindings(trained), write=False)
    with pytest.raises(ConfigError, match=r"bleu_examples=0 must be an integer >= 1"):
        evaluate_checkpoint(RUN_FILES, _bindings(trained), bleu_examples=0, write=False)


# --- a sweep ----------------------------------------------------------------------------------


def _train_argv(model_dir) -> list[str]:
    return ["ptjf", "train", *_flags(model_dir)]


def _node(name, kind, directory, *commands) -> dict:
    return {"name": name, "kind": kind, "directory": str(directory), "commands": list(commands)}


@pytest.fixture
def sweep(trained, tmp_path):
    """A sweep.json whose finished point is (a copy of) the tiny run; another point unfinished."""
    root = tmp_path / "sweep"
    done = root / "points" / "ptjf-r0.3"
    shutil.copytree(trained, done)
    info = {"name": "ptjf-r0.3", "kind": "point", "method": "ptjf", "low_rate": 0.3}
    info |= {"tasks": [HI, LO], "high_tasks": [HI], "low_tasks": [LO], "pretrain_steps": 2}
    (done / "point.json").write_text(json.dumps(info))
    (done / "DONE").write_text("{}")
    running = root / "points" / "scalarization-r0.3"
    running.mkdir(parents=True)
    switch = ["ptjf", "switch", "--from=x", "--to=y"]
    nodes = [
        _node("pretrain-n2", "shared", root / "shared" / "x", ["ptjf", "train", "--gin_file=no"]),
        _node("ptjf-r0.3", "point", done, switch, _train_argv(done)),
        _node("scalarization-r0.3", "point", running, _train_argv(running)),
    ]
    (root / "sweep.json").write_text(json.dumps({"sweep": {"name": "t"}, "nodes": nodes}))
    return root


def test_point_train_command_is_the_nodes_last_train_command(sweep):
    nodes = json.loads((sweep / "sweep.json").read_text())["nodes"]
    files, bindings = point_train_command(nodes[1])
    assert files == RUN_FILES
    assert bindings[0] == f"MODEL_DIR = '{sweep / 'points' / 'ptjf-r0.3'}'"
    assert len(bindings) == len(_bindings(sweep))


def test_sweep_scores_finished_points_once_and_resumes(sweep, capsys):
    point = sweep / "points" / "ptjf-r0.3"
    assert cli.main(["eval", f"--sweep_dir={sweep}"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] ptjf-r0.3: BLEU" in out and "[2/2] scalarization-r0.3: unfinished" in out
    assert "ptjf eval: 1 scored, 0 already had BLEU, 1 unfinished, 0 failed" in out
    records = read_metrics(point)
    assert records[-1]["posthoc"] is True and set(records[-1]["bleu"]) == {HI, LO}

    # Rerunning skips the scored point; the shared pre-training is never scored.
    status = evaluate_sweep(str(sweep), methods=["ptjf"])
    assert status == {"ptjf-r0.3": "has bleu"}
    assert len(read_metrics(point)) == len(records)

    # The report picks the BLEU up: its table and the BLEU fronts.
    summary = report.write_report([sweep], sweep / "report")
    md = (sweep / "report" / "report.md").read_text()
    table = md.split("## Best BLEU per method")[1].split("##")[0]
    bleu = records[-1]["bleu"]
    row = f"| {LO} | ptjf | ptjf-r0.3 | 0.3 | 2 | {bleu[LO]:.2f} | 4 | {bleu[HI]:.2f} |"
    assert row in table
    assert "Best low-resource BLEU per method:" in summary
    png = (sweep / "report" / "fronts_bleu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_sweep_errors(sweep, tmp_path, capsys):
    with pytest.raises(DataError, match=r"No sweep.json in .*not a sweep directory"):
        evaluate_sweep(str(tmp_path / "nowhere"))
    with pytest.raises(UnknownNameError, match=r"Unknown method 'ptfj'\. Closest registered: ptjf"):
        evaluate_sweep(str(sweep), methods=["ptfj"])
    assert cli.main(["eval", f"--sweep_dir={tmp_path}"]) == 2
    assert "ptjf eval: error: No sweep.json in" in capsys.readouterr().err
    assert cli.main(["eval", f"--sweep_dir={sweep}", "--no_bleu"]) == 2
    assert "drop --no_bleu" in capsys.readouterr().err

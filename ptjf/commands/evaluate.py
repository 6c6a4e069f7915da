"""`ptjf eval`: score a run's checkpoint after the run — losses and corpus BLEU.

Sweeps usually train with EVAL_BLEU = False (beam search at every eval costs far more than the
loss evals), yet the paper's BLEU figures (App. A.5) need the BLEU of each point's final model.
`evaluate_checkpoint` parses the run's own gin files and bindings as `ptjf train` does, builds
the trainer's evaluators (`evaluation.build_evaluators`: the same batches and examples), restores
the checkpoint's parameters only, and appends one record to MODEL_DIR/metrics.jsonl shaped like
the trainer's, plus `"posthoc": true`. Readers keep the last record per (stage, stage_step), so
it replaces the trainer's record at that step: its losses are the same (same parameters, same
batches), the trainer's training scalars are carried over, and it adds "bleu".

`evaluate_sweep` does this for every finished point of a sweep (`SWEEP/sweep.json`), rerunning
the gin files and bindings of each point's `ptjf train` command, and skips points whose last
record already has BLEU, so rerunning it resumes.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import gin

from ptjf import stages as stg
from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.errors import CheckpointError, ConfigError, DataError, PtjfError, UnknownNameError
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import stage_state

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # what `ptjf sweep` writes (ptjf.experiments.sweep.SWEEP_FILE)
DONE_FILE = "DONE"
POINT_FILE = "point.json"


# --- one checkpoint ---------------------------------------------------------------------------


def trainer_settings() -> dict[str, Any]:
    """The arguments gin gives the trainer's `train()`: its bindings over its defaults."""
    from ptjf.training import trainer

    defaults = {
        name: p.default
        for name, p in inspect.signature(trainer.train).parameters.items()
        if p.default is not inspect.Parameter.empty and p.default is not gin.REQUIRED
    }
    settings = {**defaults, **gin.get_bindings(trainer.train)}
    required = ("model_dir", "plan", "task_feature_lengths", "batch_size")
    missing = [k for k in required if settings.get(k, gin.REQUIRED) is gin.REQUIRED]
    if missing:
        raise ConfigError(
            f"The gin files do not bind {', '.join(f'train.{k}' for k in missing)}: pass the "
            "run file and bindings the run was trained with (a sweep point's are its `ptjf "
            "train` command in SWEEP/sweep.json; a run's whole config is MODEL_DIR/config.gin)."
        )
    return settings


def _checkpoint_location(
    model_dir: str, plan: stg.Plan, checkpoint: str | None, last_stage: str | None
) -> tuple[str, int | None]:
    """(stage directory, step or None = latest) of `checkpoint`, or of the run's last stage."""
    if checkpoint is not None:
        return ckpt.parse_checkpoint_path(os.fspath(checkpoint))
    names = [s.name for s in plan.stages]
    stage = last_stage if last_stage in names else names[-1]
    stage_dir = storage.join(model_dir, stage)
    if not ckpt.finalized_steps(stage_dir):
        have = {n: ckpt.finalized_steps(storage.join(model_dir, n)) for n in names}
        listed = "; ".join(f"{n}: {s}" for n, s in have.items() if s) or "none"
        raise CheckpointError(
            f"{model_dir} has no checkpoint of stage {stage!r}, the run's last stage (has it "
            f"finished?). Checkpoints that exist: {listed}. Pass --checkpoint=DIR/STEP to "
            "score another one."
        )
    return stage_dir, None


def _bleu_languages(eval_tasks: list[str], bleu_examples: object, alpha: object) -> dict[str, str]:
    from ptjf.training import run_checks
    from ptjf.training.bleu import translation_target_languages

    if bleu_examples is not None and (
        isinstance(bleu_examples, bool) or not isinstance(bleu_examples, int) or bleu_examples < 1
    ):
        raise ConfigError(
            f"bleu_examples={bleu_examples!r} must be an integer >= 1, or None for the run's "
            "train.bleu_examples (else as many as train.max_eval_examples)."
        )
    if not translation_target_languages(eval_tasks):
        raise ConfigError(
            f"No eval task is a translation task (eval tasks: {eval_tasks}); BLEU scores "
            "translations only. Pass --no_bleu (bleu=False) to score the losses alone."
        )
    return run_checks.bleu_tasks(True, eval_tasks, bleu_examples, alpha)


def _train_scalars(model_dir: str, record: Mapping[str, Any]) -> dict | None:
    """The training scalars of the trainer's record at the same step, if it wrote one."""
    from ptjf.training.metrics_io import has_metrics, read_metrics

    if not has_metrics(model_dir):
        return None
    key = (record["stage_index"], record["stage"], record["stage_step"])
    for r in reversed(read_metrics(model_dir)):
        if (r.get("stage_index"), r.get("stage"), r.get("stage_step")) == key and r.get("train"):
            return r["train"]
    return None


def evaluate_checkpoint(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    *,
    checkpoint: str | None = None,
    bleu: bool = True,
    bleu_examples: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Scores a checkpoint of the run that `gin_files` + `gin_bindings` configure.

    checkpoint: `DIR/STEP`, or a stage directory (its latest step); default the latest
        checkpoint of the run's last stage (`train.last_stage` when bound, else the plan's).
    bleu: also corpus BLEU of every translation eval task, decoded as the trainer decodes
        (train.beam_size and train.bleu_alpha: 4 and 0.6 unless bound).
    bleu_examples: validation examples BLEU decodes (None: train.bleu_examples, else as many
        as train.max_eval_examples).
    write: append the record to MODEL_DIR/metrics.jsonl.
    Returns the record (the trainer's eval record fields, "bleu" when scored, "posthoc": True).
    """

    from ptjf import config as gin_config
    from ptjf.data import batches as data
    from ptjf.runtime import compilation_cache
    from ptjf.training import evaluation, trainer
    from ptjf.training.metrics_io import MetricsWriter

    if not gin_files:
        raise ConfigError(
            "No --gin_file given: pass the run's run file, model file and bindings, as given "
            "to `ptjf train` (e.g. --gin_file=runs/ptjf.gin --gin_file=models/tiny.gin)."
        )
    compilation_cache.enable()
    gin_config.parse_gin(gin_files, gin_bindings)
    settings = trainer_settings()
    plan, model_dir = settings["plan"], os.fspath(settings["model_dir"])
    lengths = data.check_lengths(settings["task_feature_lengths"])
    eval_tasks = stg.plan_eval_tasks(plan)
    if bleu_examples is None:
        bleu_examples = settings["bleu_examples"]
    languages = _bleu_languages(eval_tasks, bleu_examples, settings["bleu_alpha"]) if bleu else {}

    stage_dir, step = _checkpoint_location(model_dir, plan, checkpoint, settings.get("last_stage"))
    config = trainer.model_config(plan)
    partitioner = Partitioner()
    with ckpt.StageCheckpointer(stage_dir, settings["checkpoint"], read_only=True) as c:
        params, meta = stage_state.restore_params(c, step, partitioner, config)
    evaluator, bleu_evaluator = evaluation.build_evaluators(
        plan,
        config,
        lengths,
        batch_size=settings["eval_batch_size"] or settings["batch_size"],
        max_eval_examples=settings["max_eval_examples"],
        train_eval_examples=settings["train_eval_examples"],
        bleu_languages=languages,
        bleu_examples=bleu_examples,
        beam_size=settings["beam_size"],
        bleu_alpha=settings["bleu_alpha"],
        partitioner=partitioner,
    )
    log.info("scoring %s step %s", stage_dir, meta.get("step"))
    record: dict[str, Any] = {
        "stage": meta["stage_name"],
        "stage_index": meta["stage_index"],
        "stage_step": meta["step"],
        "global_step": meta["global_step"],
        "time": time.time(),
        "examples_seen": dict(meta.get("examples_seen") or {}),
        "tokens_seen": dict(meta.get("tokens_seen") or {}),
        **evaluator.evaluate(params),
    }
    if bleu_evaluator is not None:
        record["bleu"] = bleu_evaluator.evaluate(params)
    train_scalars = _train_scalars(model_dir, record)
    if train_scalars:
        record["train"] = train_scalars
    record["posthoc"] = True
    if write:
        with MetricsWriter(model_dir, tensorboard=False) as writer:
            writer.write_eval(record)
    return record


# --- a sweep ----------------------------------------------------------------------------------


def _read_sweep(sweep_dir: str) -> list[dict]:
    path = storage.join(sweep_dir, SWEEP_FILE)
    if not storage.isfile(path):
        raise DataError(
            f"No {SWEEP_FILE} in {sweep_dir}: it is not a sweep directory. Pass the directory "
            "`ptjf sweep` ran in (its --sweep_dir or Sweep.sweep_dir), which holds sweep.json, "
            "shared/ and points/."
        )
    try:
        nodes = json.loads(storage.read_text(path)).get("nodes")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise DataError(f"Cannot read {path}: {e}. Rerun `ptjf sweep` to rewrite it.") from e
    if not isinstance(nodes, list):
        raise DataError(f"{path} has no list of nodes; rerun `ptjf sweep` to rewrite it.")
    return nodes


def point_train_command(node: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(gin files, gin bindings) of a sweep node's last `ptjf train` command."""
    from ptjf import config as gin_config

    commands = [list(c) for c in node.get("commands") or () if list(c)[:2] == ["ptjf", "train"]]
    if not commands:
        raise DataError(
            f"Sweep node {node.get('name')!r} has no `ptjf train` command in sweep.json; "
            "rerun `ptjf sweep` to rewrite it."
        )
    files, bindings, rest = gin_config.flags_to_gin(commands[-1][2:])
    if rest:
        raise DataError(f"Sweep node {node.get('name')!r}: unexpected arguments {rest}.")
    return files, bindings


def _method(node: Mapping[str, Any]) -> str:
    """The point's method (its point.json; else its name's first word, as sweeps name points)."""
    path = storage.join(str(node.get("directory", "")), POINT_FILE)
    try:
        return str(json.loads(storage.read_text(path))["method"])
    except (OSError, ValueError, KeyError, TypeError):  # ValueError: also a bad path
        return str(node.get("name", "")).split("-")[0]


def _has_bleu(directory: str) -> bool:
    from ptjf.training.metrics_io import has_metrics, read_metrics

    if not has_metrics(directory):
        return False
    records = read_metrics(directory)
    return bool(records and records[-1].get("bleu"))


def evaluate_sweep(
    sweep_dir: str,
    *,
    bleu_examples: int | None = None,
    methods: Sequence[str] | None = None,
    out: IO[str] | None = None,
) -> dict[str, str]:
    """Scores the final checkpoint of every finished point (BLEU too); returns {point: status}.

    Status: "scored", "has bleu" (skipped: its last record has BLEU), "unfinished" (no DONE
    file), or "failed: <why>" (the other points still run). Shared pre-trainings are no
    point's final model and are skipped. `methods` keeps those methods' points only. Gin files
    are found as `ptjf sweep` found them: run this where the sweep ran when its experiment file
    was given by a path relative to that directory.
    """
    from ptjf.experiments.results import METHOD_ORDER

    out = out or sys.stdout
    nodes = [n for n in _read_sweep(storage.check_uri(sweep_dir)) if n.get("kind") != "shared"]
    if methods is not None:
        present = {_method(n) for n in nodes}
        for m in methods:
            if m not in present:
                raise UnknownNameError(
                    "method",
                    m,
                    sorted(present | set(METHOD_ORDER)),
                    hint=f"The sweep's points use {sorted(present)}; --methods takes a "
                    "comma-separated list of those.",
                )
        nodes = [n for n in nodes if _method(n) in methods]
    status: dict[str, str] = {}
    for i, node in enumerate(nodes, start=1):
        name, directory = str(node.get("name")), str(node.get("directory", ""))
        if not storage.exists(storage.join(directory, DONE_FILE)):
            status[name] = "unfinished"
        elif _has_bleu(directory):
            status[name] = "has bleu"
        else:
            try:
                files, bindings = point_train_command(node)
                record = evaluate_checkpoint(files, bindings, bleu_examples=bleu_examples)
            except (PtjfError, UnknownNameError) as e:
                status[name] = f"failed: {e}"
            else:
                status[name] = "scored"
                scores = ", ".join(f"{t} {b:.2f}" for t, b in record.get("bleu", {}).items())
                print(f"[{i}/{len(nodes)}] {name}: BLEU {scores}", file=out, flush=True)
                continue
        print(f"[{i}/{len(nodes)}] {name}: {status[name]}", file=out, flush=True)
    return status

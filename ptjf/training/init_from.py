"""Parameters a stage starts from when they come from outside the run: a T5X checkpoint (orbax
or legacy layout) or another ptjf run's checkpoint, local or `gs://`.

This is the stage switch applied to a checkpoint a user already owns: the parameters only,
restored straight onto this run's mesh (never whole on one host), and a fresh optimizer state
and schedule built by the stage. `ptjf switch --from=PATH` and a stage's `init_from=PATH` both
come here. The vocabulary is checked first and on its own: a model's embedding rows are the
plan's vocabulary padded to a multiple of 128, so a mismatch there means the tasks were
registered with another vocabulary than the checkpoint's, which is what the message says.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.errors import CheckpointError
from ptjf.models import TransformerConfig
from ptjf.runtime.partitioning import Partitioner

_T5X_STEP_DIR = re.compile(r"checkpoint_\d+$")
EMBEDDING = "token_embedder/embedding"


def is_path(init_from: str) -> bool:
    """True when a stage's `init_from` names a checkpoint rather than 'previous' / 'scratch'."""
    return init_from not in ("previous", "scratch")


def is_t5x_checkpoint(path: str) -> bool:
    """T5X names its checkpoints `checkpoint_<step>`; ptjf's are `<stage>/<step>`."""
    return bool(_T5X_STEP_DIR.search(storage.basename(path)))


def check_vocabulary_rows(rows: int, config: TransformerConfig, source: str) -> None:
    """The checkpoint's embedding rows must be the model's (the plan's padded vocabulary)."""
    if rows != config.vocab_size:
        raise CheckpointError(
            f"{source} has an embedding of {rows} rows, but the plan's vocabulary padded to a "
            f"multiple of 128 gives {config.vocab_size}: the tasks use another vocabulary than "
            "the checkpoint was trained with. Register the tasks with the checkpoint's own "
            "SentencePiece model (vocabulary='gs://…/sentencepiece.model', or any "
            "seqio.Vocabulary; docs/t5x.md)."
        )


def params_loader(
    path: str,
    partitioner: Partitioner,
    config: TransformerConfig,
    checkpoint: ckpt.CheckpointConfig | None = None,
) -> tuple[Callable[[], Any], tuple[str, int], dict[str, Any]]:
    """(load, parent, source metadata) for the parameters at `path`.

    Everything that can be checked without reading an array is checked here (the layout, a
    finished checkpoint, the vocabulary, every parameter's shape); `load()` then reads the
    parameters onto `partitioner`'s shardings. `parent` is (checkpoint path, step), recorded
    as the new stage's lineage.
    """
    from ptjf.training.state_layout import param_shardings, sharded_params_target

    path = storage.check_uri(path).rstrip("/")
    if is_t5x_checkpoint(path):
        from ptjf.t5x import checkpoints as t5x_checkpoints
        from ptjf.t5x import models as t5x_models

        t5x = t5x_checkpoints.open_checkpoint(path)
        embedding = t5x.params.get(EMBEDDING)
        if embedding is not None:
            check_vocabulary_rows(embedding.shape[0], config, f"T5X checkpoint {path}")
        t5x_models.check_model_fit(t5x, config)
        shardings = param_shardings(partitioner, config)
        return (
            lambda: t5x_checkpoints.restore_params(t5x, shardings),
            (path, t5x.step),
            {"source_format": f"t5x-{t5x.layout}"},
        )
    stage_dir, step = ckpt.parse_checkpoint_path(path)
    steps = ckpt.finalized_steps(stage_dir)
    if not steps:
        raise CheckpointError(
            f"No finished checkpoint at {path!r}: expected a T5X checkpoint "
            "(.../checkpoint_<step>) or a ptjf stage directory (MODEL_DIR/<stage>[/<step>])."
        )
    step = steps[-1] if step is None else step
    target = sharded_params_target(partitioner, config)
    with ckpt.StageCheckpointer(stage_dir, checkpoint, read_only=True) as c:
        c.check_params_fit(step, target)
        meta = c.read_metadata(step)

    def load() -> Any:
        with ckpt.StageCheckpointer(stage_dir, checkpoint, read_only=True) as c:
            return c.restore_params(step, target_params=target)[0]

    return load, (stage_dir, step), meta

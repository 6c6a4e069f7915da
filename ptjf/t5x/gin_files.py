"""Functions T5X's gin files call to run T5X's trainer on ptjf's data and exported checkpoints.

`gin_configs/t5x/*.gin` are gin files for T5X's `t5x/train.py`, not for ptjf: they import this
module with gin's dynamic registration (`from ptjf import t5x_gin`) and call

* `mixture_vocabulary(name)`: the vocabulary of a ptjf-registered task or mixture, to bind as
  T5X's `VOCABULARY` (T5X's model and the task must share it);
* `model_vocab_size(name)`: that vocabulary's size padded to a multiple of 128, ptjf's and
  T5X's embedding rows (`network.T5Config.vocab_size`);
* `t5_config(checkpoint)`: T5X's `network.T5Config` of a checkpoint (an export's, or any T5X
  checkpoint of T5X's minimal T5), from its parameter shapes and the `config.gin` beside it,
  so the model always matches the checkpoint it fine-tunes.

Importing this module imports neither T5X nor ptjf's training code: T5X is imported by
`t5_config` alone, and only where T5X runs.
"""

from __future__ import annotations

from typing import Any

from ptjf.errors import CheckpointError


def mixture_vocabulary(mixture_or_task_name: str) -> Any:
    """The (targets) vocabulary of a ptjf-registered task or mixture (a `seqio.Vocabulary`)."""
    from ptjf import tasks

    task = tasks.get_task_or_mixture(mixture_or_task_name)
    return task.output_features["targets"].vocabulary


def model_vocab_size(mixture_or_task_name: str) -> int:
    """The embedding rows of a model of that task or mixture: its vocabulary padded to 128."""
    from ptjf.data.vocabularies import padded_vocab_size

    return padded_vocab_size(mixture_vocabulary(mixture_or_task_name))


def t5_config(
    checkpoint: str,
    *,
    mixture_or_task_name: str | None = None,
    dropout_rate: float | None = None,
    dtype: str | None = None,
    float32_attention_logits: bool | None = None,
    t5_config_cls: Any = None,
) -> Any:
    """T5X's `network.T5Config` whose parameters are exactly `checkpoint`'s.

    checkpoint: a T5X checkpoint directory (`ptjf export`'s OUT_DIR/checkpoint_<step>). The
    sizes come from its parameter shapes; activations, compute dtype, dropout and
    `float32_attention_logits` from the `config.gin` beside it (an export writes one), else
    T5X's defaults (`ptjf.t5x.models.infer_config`). The keyword arguments override the last
    three (e.g. a fine-tuning dropout). With `mixture_or_task_name`, the task's padded
    vocabulary must have as many rows as the checkpoint's embedding (CheckpointError if not).
    `t5_config_cls` defaults to `t5x.examples.t5.network.T5Config`.
    """
    from ptjf.t5x import checkpoints as t5x_checkpoints
    from ptjf.t5x import models as t5x_models

    opened = t5x_checkpoints.open_checkpoint(checkpoint)
    config = t5x_models.infer_config(opened)
    if not config.share_relpos_bias:
        raise CheckpointError(
            f"{checkpoint} has one relative position table per layer; T5X's minimal T5 "
            "(t5x.examples.t5.network) has one per stack and cannot run it."
        )
    if mixture_or_task_name is not None:
        rows = model_vocab_size(mixture_or_task_name)
        if rows != config.vocab_size:
            raise CheckpointError(
                f"{mixture_or_task_name}'s vocabulary padded to a multiple of 128 has {rows} "
                f"rows, but {checkpoint}'s embedding has {config.vocab_size}: the task uses "
                "another vocabulary than the model was trained with. Use a task registered "
                "with the checkpoint's vocabulary."
            )
    fields = {
        "vocab_size": config.vocab_size,
        "dtype": dtype if dtype is not None else config.dtype,
        "emb_dim": config.emb_dim,
        "num_heads": config.num_heads,
        "num_encoder_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "head_dim": config.head_dim,
        "mlp_dim": config.mlp_dim,
        "mlp_activations": tuple(config.mlp_activations),
        "dropout_rate": dropout_rate if dropout_rate is not None else config.dropout_rate,
        "logits_via_embedding": config.logits_via_embedding,
        "float32_attention_logits": (
            float32_attention_logits
            if float32_attention_logits is not None
            else config.float32_attention_logits
        ),
    }
    if t5_config_cls is None:
        from t5x.examples.t5 import network  # only where T5X is installed

        t5_config_cls = network.T5Config
    return t5_config_cls(**fields)


__all__ = ["mixture_vocabulary", "model_vocab_size", "t5_config"]

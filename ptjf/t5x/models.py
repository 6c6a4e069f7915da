"""Which ptjf model and optimizer state a T5X checkpoint is: fit check, config, gin model file.

T5X's minimal T5 (`t5x.examples.t5.network`) names its parameters as ptjf does, so a T5X
checkpoint's parameter tree *is* a ptjf parameter tree when the `TransformerConfig` matches.
This module says whether it does, from the checkpoint's listing alone (no array is read):

* `check_model_fit(checkpoint, config)`: CheckpointError naming the first parameter whose
  shape differs, or that exists on one side only, with both shapes and the config field
  behind it (vocabulary, d_model, heads × head_dim, MLP width and gating, layer counts, tied
  or untied logits, one relative position table per stack or per layer).
* `infer_config(checkpoint)`: the `TransformerConfig` of the checkpoint, with T5X's numerics
  (`ptjf.models.config.T5X_NUMERICS`). Shapes give the sizes; what a checkpoint does not store
  (activation names, compute dtype, dropout, `float32_attention_logits`) comes from the
  `config.gin` T5X wrote into the run directory when there is one, else from T5X's defaults.
* `model_gin_text(checkpoint)`: that config as a gin model file (what `ptjf inspect` prints).
* `load_params(checkpoint, config, shardings)`: the fit check, then the parameters read
  straight into their shardings (`ptjf.t5x.checkpoints.restore_params`).
* `optax_adafactor_state(t5x_state, template)`: T5X Adafactor's state in the structure of
  ptjf's Adafactor (optax's), for resuming a T5X run's optimizer.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from etils import epath

from ptjf.errors import CheckpointError, ConfigError
from ptjf.models import init_params
from ptjf.models.config import KNOWN_ACTIVATIONS, T5X_NUMERICS, TransformerConfig, count_params
from ptjf.t5x.checkpoints import T5XCheckpoint, flatten, restore_params

RUN_CONFIG_FILE = "config.gin"  # what T5X writes into MODEL_DIR
# Fixed in T5X's minimal T5 (its T5Config has no field for it).
T5X_MAX_DISTANCE = 128
# T5X's T5Config defaults, for fields a checkpoint does not store and no config.gin gives.
_T5X_DEFAULTS = {"dtype": "float32", "dropout_rate": 0.1, "float32_attention_logits": False}
# flax.linen activation names T5X accepts that ptjf spells differently.
_ACTIVATION_ALIASES = {"swish": "silu"}
# The gin model file's field order (that of gin_configs/models/*.gin).
GIN_FIELDS = (
    "emb_dim",
    "num_heads",
    "head_dim",
    "mlp_dim",
    "num_encoder_layers",
    "num_decoder_layers",
    "mlp_activations",
    "dropout_rate",
    "logits_via_embedding",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "share_relpos_bias",
    "dtype",
    "float32_attention_logits",
    "float32_attention_softmax",
    "norm_scale_in_float32",
)
_EMBEDDING = "token_embedder/embedding"
_LOGITS = "decoder/logits_dense/kernel"
_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/")


# ----------------------------------------------------------------------------------------------
# Fit check
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _expected(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    abstract = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    return {name: tuple(leaf.shape) for name, leaf in flatten(abstract).items()}


def expected_param_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The parameter paths and shapes of `EncoderDecoder(config)` (traced, nothing allocated)."""
    return dict(_expected(config))


def _order(path: str) -> tuple:
    """Reading order: embedding, encoder, decoder; in a stack relpos, layers by number, rest."""
    parts = path.split("/")
    stack = {"token_embedder": 0, "encoder": 1, "decoder": 2}.get(parts[0], 3)
    match = _LAYER.match(path)
    if match:
        within = 1 + int(match.group(2))
    elif len(parts) > 1 and parts[1] == "relpos_bias":
        within = 0
    else:
        within = 1 << 30
    return (stack, within, path)


def _axis_fields(path: str) -> tuple[str, ...]:
    """The TransformerConfig field behind each axis of the parameter at `path`."""
    joined = "num_heads × head_dim"
    if path == _EMBEDDING:
        return ("vocab_size", "emb_dim")
    if path == _LOGITS:
        return ("emb_dim", "vocab_size")
    if path.endswith("/scale"):
        return ("emb_dim",)
    if path.endswith("/rel_embedding"):
        return ("num_heads", "relative_attention_num_buckets")
    if re.search(r"/(query|key|value)/kernel$", path):
        return ("emb_dim", joined)
    if path.endswith("/out/kernel"):
        return (joined, "emb_dim")
    if re.search(r"/mlp/wi(_\d+)?/kernel$", path):
        return ("emb_dim", "mlp_dim")
    if path.endswith("/mlp/wo/kernel"):
        return ("mlp_dim", "emb_dim")
    return ()


def _layer_count(paths: Any, stack: str) -> int:
    found = {int(m.group(2)) for p in paths if (m := _LAYER.match(p)) and m.group(1) == stack}
    return max(found) + 1 if found else 0


def _wi_count(paths: Any) -> int:
    names = {m.group(1) for p in paths if (m := re.search(r"/mlp/(wi(?:_\d+)?)/kernel$", p))}
    return len(names)


def _hint(path: str, stored: Any, expected: Any, config: TransformerConfig) -> str:
    """Why a parameter is on one side only, or which config fields its shape differs in."""
    params_here, model_here = stored is not None, expected is not None
    if params_here and model_here:
        fields = _axis_fields(path)
        diff = [f for f, a, b in zip(fields, stored, expected, strict=False) if a != b]
        return f"different {' and '.join(diff)}" if diff else "different shape"
    side = "checkpoint" if params_here else "model"
    if path == _LOGITS:
        return (
            "the checkpoint has an untied output layer (logits_via_embedding=False)"
            if params_here
            else "the checkpoint ties the output layer to the embedding (logits_via_embedding=True)"
        )
    if "/relpos_bias/" in path:
        per_layer = _LAYER.match(path) is not None
        checkpoint_per_layer = per_layer == params_here
        if checkpoint_per_layer:
            return (
                "the checkpoint has one relative position table per layer (share_relpos_bias=False)"
            )
        return "the checkpoint has one relative position table per stack (share_relpos_bias=True)"
    if re.search(r"/mlp/wi(_\d+)?/kernel$", path):
        return (
            f"the model's mlp_activations={config.mlp_activations!r} need "
            f"{config.num_mlp_inputs} input projection(s) (wi, or wi_0 …), the checkpoint's MLP "
            "has a different number"
        )
    match = _LAYER.match(path)
    if match:
        stack = match.group(1)
        field = f"num_{stack}_layers"
        return f"{field}={getattr(config, field)} in the model; the {side} has more {stack} layers"
    return f"only the {side} has it"


def check_model_fit(checkpoint: T5XCheckpoint, config: TransformerConfig) -> None:
    """CheckpointError unless the checkpoint's parameters are exactly `config`'s (paths and
    shapes); the first difference in reading order is named with both shapes."""
    stored = {name: info.shape for name, info in checkpoint.params.items()}
    expected = _expected(config)
    differing = [
        path
        for path in sorted(set(stored) | set(expected), key=_order)
        if stored.get(path) != expected.get(path)
    ]
    if not differing:
        return
    first = differing[0]
    got, want = stored.get(first), expected.get(first)
    more = f" ({len(differing) - 1} more parameters differ)" if len(differing) > 1 else ""
    raise CheckpointError(
        f"T5X checkpoint {checkpoint.path} does not fit the model: {first} is "
        f"{_shape_text(got)} in the checkpoint but {_shape_text(want)} in the model "
        f"({_hint(first, got, want, config)}){more}. Use the model file that "
        f"`ptjf inspect {checkpoint.path}` prints (ptjf.t5x.models.model_gin_text)."
    )


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else str(tuple(shape))


def load_params(
    checkpoint: T5XCheckpoint, config: TransformerConfig, shardings: Any = None
) -> dict[str, Any]:
    """`check_model_fit`, then `restore_params` onto `shardings` (None: one local device)."""
    check_model_fit(checkpoint, config)
    return restore_params(checkpoint, shardings)


# ----------------------------------------------------------------------------------------------
# The config of a checkpoint, and its gin model file
# ----------------------------------------------------------------------------------------------


def read_run_config(path: str | os.PathLike, configurable: str = "T5Config") -> dict[str, Any]:
    """The `T5Config` bindings of a T5X operative config (`network.T5Config.<field> = value`),
    with `%MACRO` values resolved; values that are not Python literals are kept as text.

    `configurable` reads another configurable's bindings the same way, e.g. "TransformerConfig"
    from the `config.gin` a ptjf run writes into its MODEL_DIR."""
    text = epath.Path(os.fspath(path)).read_text()
    lines = text.replace("\\\n", " ").splitlines()
    binding = re.compile(
        rf"^(?:[\w./]*/)?(?:[\w.]*\.)?{re.escape(configurable)}\.(\w+)\s*=\s*(.+)$"
    )
    macros, fields = {}, {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if (match := re.match(r"^([A-Za-z_]\w*)\s*=\s*(.+)$", line)) is not None:
            macros[match.group(1)] = match.group(2).strip()
        elif match := binding.match(line):
            fields[match.group(1)] = match.group(2).strip()
    resolved = {}
    for name, raw in fields.items():
        seen = set()
        while raw.startswith("%") and raw[1:] in macros and raw not in seen:
            seen.add(raw)
            raw = macros[raw[1:]]
        try:
            resolved[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            resolved[name] = raw
    return resolved


def _run_config_path(checkpoint: T5XCheckpoint, run_config: Any) -> epath.Path | None:
    if run_config is None:
        return None
    if run_config == "auto":
        candidate = epath.Path(checkpoint.run_dir) / RUN_CONFIG_FILE
        return candidate if candidate.exists() else None
    return epath.Path(os.fspath(run_config))


def _dtype_name(value: Any) -> str:
    text = str(value)
    for name in ("bfloat16", "float16", "float32"):
        if name in text:
            return name
    raise CheckpointError(f"T5X run config: dtype {value!r} has no ptjf equivalent.")


def _activations(value: Any, source: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    mapped = tuple(_ACTIVATION_ALIASES.get(n, n) for n in names)
    unknown = [n for n in mapped if n not in KNOWN_ACTIVATIONS]
    if unknown:
        raise CheckpointError(
            f"{source}: mlp_activations={names!r} has {unknown}, which ptjf does not implement "
            f"(it has {KNOWN_ACTIVATIONS})."
        )
    return mapped


def _need(checkpoint: T5XCheckpoint, path: str) -> tuple[int, ...]:
    info = checkpoint.params.get(path)
    if info is None:
        raise CheckpointError(
            f"T5X checkpoint {checkpoint.path} has no {path}: it is not an encoder–decoder of "
            "T5X's minimal T5 (t5x.examples.t5.network), the architecture ptjf implements."
        )
    return info.shape


def _infer(checkpoint: T5XCheckpoint, run_config: Any) -> tuple[TransformerConfig, dict[str, Any]]:
    params = checkpoint.params
    vocab, emb = _need(checkpoint, _EMBEDDING)
    shared = "encoder/relpos_bias/rel_embedding" in params
    relpos = "encoder/relpos_bias" if shared else "encoder/layers_0/relpos_bias"
    heads, buckets = _need(checkpoint, f"{relpos}/rel_embedding")
    joined = _need(checkpoint, "encoder/layers_0/attention/query/kernel")[1]
    if joined % heads:
        raise CheckpointError(
            f"T5X checkpoint {checkpoint.path}: the attention width {joined} is not a multiple "
            f"of the {heads} heads of its relative position table."
        )
    wi = _wi_count(p for p in params if p.startswith("encoder/layers_0/"))
    mlp_name = "wi" if wi == 1 else "wi_0"
    mlp_dim = _need(checkpoint, f"encoder/layers_0/mlp/{mlp_name}/kernel")[1]

    path = _run_config_path(checkpoint, run_config)
    run = read_run_config(path) if path is not None else {}
    source = f"T5X run config {path}"
    # Sources of what the shapes do not give: notes for the gin file's header.
    notes = {"run": [], "assumed": []}
    if "mlp_activations" in run:
        activations = _activations(run["mlp_activations"], source)
        if len(activations) != wi:
            raise CheckpointError(
                f"{source} says mlp_activations={run['mlp_activations']!r}, but checkpoint "
                f"{checkpoint.path} has {wi} MLP input projection(s): the config belongs to "
                "another model. Pass the run's own config.gin, or none (run_config=None)."
            )
        notes["run"].append("mlp_activations")
    else:
        # A checkpoint stores no activation names: T5.1.1/mT5 gate a GELU, T5 1.0 uses ReLU.
        activations = ("gelu", "linear") if wi == 2 else ("relu",) * wi
        notes["assumed"].append("mlp_activations")
    given = dict(_T5X_DEFAULTS)
    for name, convert in (
        ("dtype", _dtype_name),
        ("dropout_rate", float),
        ("float32_attention_logits", bool),
    ):
        if name in run:
            given[name] = convert(run[name])
            notes["run"].append(name)
        else:
            notes["assumed"].append(name)
    try:
        config = TransformerConfig(
            vocab_size=vocab,
            emb_dim=emb,
            num_heads=heads,
            head_dim=joined // heads,
            mlp_dim=mlp_dim,
            num_encoder_layers=_layer_count(params, "encoder"),
            num_decoder_layers=_layer_count(params, "decoder"),
            mlp_activations=activations,
            logits_via_embedding=_LOGITS not in params,
            relative_attention_num_buckets=buckets,
            relative_attention_max_distance=T5X_MAX_DISTANCE,
            **{**T5X_NUMERICS, "share_relpos_bias": shared, **given},
        )
    except ConfigError as e:
        raise CheckpointError(f"T5X checkpoint {checkpoint.path}: {e}") from e
    check_model_fit(checkpoint, config)  # e.g. a layer missing a parameter
    notes["run_config"] = path
    return config, notes


def infer_config(checkpoint: T5XCheckpoint, *, run_config: Any = "auto") -> TransformerConfig:
    """The `TransformerConfig` (T5X numerics) whose parameters are exactly the checkpoint's.

    run_config: "auto" reads `config.gin` from the run directory above the checkpoint when it
    is there; a path reads that file; None reads none (T5X's defaults: float32 compute,
    dropout 0.1, gated GELU for a gated MLP, else ReLU). The max relative distance is T5X's
    fixed 128.
    """
    return _infer(checkpoint, run_config)[0]


def _gin_value(value: Any) -> str:
    if isinstance(value, tuple):
        inner = ", ".join(_gin_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def model_gin_text(
    checkpoint: T5XCheckpoint,
    config: TransformerConfig | None = None,
    *,
    run_config: Any = "auto",
) -> str:
    """A gin model file (the format of gin_configs/models/*.gin) for the checkpoint's model.

    `config` defaults to `infer_config(checkpoint, run_config=run_config)`; a given config is
    checked against the checkpoint first. The vocabulary size stays out of the bindings (ptjf
    takes it from the data) and is stated in the header.
    """
    notes: dict[str, Any] = {}
    if config is None:
        config, notes = _infer(checkpoint, run_config)
    else:
        check_model_fit(checkpoint, config)
    step = f", step {checkpoint.step}" if checkpoint.step is not None else ""
    t5x = all(getattr(config, k) == v for k, v in T5X_NUMERICS.items() if k != "share_relpos_bias")
    header = [
        f"# Model of the T5X checkpoint {checkpoint.path} ({checkpoint.layout} layout{step}),",
        "# from its parameter shapes (ptjf.t5x.models.model_gin_text). "
        f"{count_params(config):,} parameters.",
    ]
    if notes.get("run"):
        header.append(f"# From the T5X run's {notes['run_config']}: {', '.join(notes['run'])}.")
    if notes.get("assumed"):
        header.append(
            f"# Not stored in a checkpoint, T5X's defaults: {', '.join(notes['assumed'])}."
        )
    header += (
        [
            "# Numerics: T5X's (ptjf.models.config.T5X_NUMERICS): attention logits and softmax",
            "# in the compute dtype unless float32_attention_logits, RMSNorm output cast to the",
            "# compute dtype before its scale.",
        ]
        if t5x
        else ["# Numerics: not all T5X's (see ptjf.models.config.T5X_NUMERICS)."]
    )
    header += [
        f"# The checkpoint's vocabulary has {config.vocab_size} rows: the run's vocabulary "
        "must have as many",
        f"# (TransformerConfig.vocab_size = {config.vocab_size}) to load it.",
    ]
    bindings = [
        f"TransformerConfig.{name} = {_gin_value(getattr(config, name))}" for name in GIN_FIELDS
    ]
    return "\n".join([*header, "", *bindings]) + "\n"


# ----------------------------------------------------------------------------------------------
# Optimizer state
# ----------------------------------------------------------------------------------------------

_OPTAX_STATES = (optax.FactoredState, optax.ScaleByScheduleState, optax.EmaState)


def optax_adafactor_state(t5x_state: Mapping[str, Any], template: Any) -> Any:
    """T5X Adafactor's state (`restore_optimizer_state`) as ptjf's Adafactor state.

    `template` is ptjf's state for the same parameters: `make_optimizer(config, schedule)
    .init(params)` or its `jax.eval_shape`, with an `OptimizerConfig(name='adafactor')` whose
    `factored`, `min_dim_size_to_factor` and `momentum` are the T5X run's (`factored`,
    `min_dim_size_to_factor`, `beta1`). Both factor a rank-2 parameter over the same axes
    (v_row: the largest axis reduced, v_col: the second largest), so each array moves as it
    is: T5X's v_row, v_col, v fill optax's `FactoredState`, its m the momentum's `EmaState`,
    and its step every count (the factored state's, the schedule's, the momentum's). Returns
    host numpy arrays in the template's structure; CheckpointError when a shape differs (the
    two optimizers did not factor the same parameters).
    """
    step = np.asarray(t5x_state["step"])
    slots = flatten(t5x_state["param_states"])

    def take(slot: str, path: Any, leaf: Any) -> np.ndarray:
        param = "/".join(str(getattr(k, "key", k)) for k in path)
        value = slots.get(f"{param}/{slot}")
        if value is None:
            raise CheckpointError(
                f"The T5X optimizer state has no {slot} for {param}: it is not T5X "
                "Adafactor's state of these parameters."
            )
        if tuple(value.shape) != tuple(leaf.shape):
            raise CheckpointError(
                f"T5X Adafactor's {slot} of {param} has shape {tuple(value.shape)} but ptjf's "
                f"Adafactor expects {tuple(leaf.shape)}: the two do not factor (or keep "
                "momentum for) the same parameters. Set OptimizerConfig.factored, "
                ".min_dim_size_to_factor and .momentum to the T5X run's Adafactor settings "
                "(factored, min_dim_size_to_factor, beta1 in its config.gin)."
            )
        return np.asarray(value, dtype=leaf.dtype)

    def slot_tree(slot: str, tree: Any) -> Any:
        return jax.tree_util.tree_map_with_path(functools.partial(take, slot), tree)

    def count(leaf: Any) -> np.ndarray:
        return np.asarray(step, dtype=leaf.dtype)

    def fill(node: Any) -> Any:
        if isinstance(node, optax.FactoredState):
            return node._replace(
                count=count(node.count),
                v_row=slot_tree("v_row", node.v_row),
                v_col=slot_tree("v_col", node.v_col),
                v=slot_tree("v", node.v),
            )
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=count(node.count))
        if isinstance(node, optax.EmaState):
            return node._replace(count=count(node.count), ema=slot_tree("m", node.ema))
        return node

    found = [
        leaf
        for leaf in jax.tree.leaves(template, is_leaf=lambda x: isinstance(x, _OPTAX_STATES))
        if isinstance(leaf, optax.FactoredState)
    ]
    if not found:
        raise CheckpointError(
            "The template is not an Adafactor state (no optax FactoredState): build it with "
            "OptimizerConfig(name='adafactor'); T5X's Adafactor state maps only onto that."
        )
    return jax.tree.map(fill, template, is_leaf=lambda x: isinstance(x, _OPTAX_STATES))


__all__ = [
    "GIN_FIELDS",
    "check_model_fit",
    "expected_param_shapes",
    "infer_config",
    "load_params",
    "model_gin_text",
    "optax_adafactor_state",
    "read_run_config",
]

"""`TransformerConfig`: the hyperparameters of the encoder–decoder model, and its presets.

The config is a frozen dataclass registered with gin as `TransformerConfig`, so model files in
`gin_configs/models/` read like T5X's (`TransformerConfig.emb_dim = 512`). The vocabulary size
comes from the data, so no preset fixes it: the trainer calls `TransformerConfig(vocab_size=n)`
inside the gin scope (gin fills every other field), or `preset(name, vocab_size)` from Python.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import gin

from ptjf.errors import ConfigError, UnknownNameError

# Names understood by `ptjf.models.layers.activation`; 'linear' is the identity (the second,
# ungated branch of a gated MLP such as mT5's ('gelu', 'linear')).
KNOWN_ACTIVATIONS = ("relu", "gelu", "silu", "linear")
KNOWN_DTYPES = ("float32", "bfloat16", "float16")
# Gradient checkpointing of each encoder and decoder layer (T5X's `remat_policy` names); what
# the backward pass keeps from the forward pass, and what it pays for the memory saved:
#   none     keeps every activation: most memory, no recomputation.
#   full     keeps only each layer's inputs and recomputes the whole layer: least activation
#            memory, about one extra forward pass.
#   minimal  keeps only the projections' outputs (matmuls without batch dimensions: QKV/out,
#            MLP), so attention's [batch, heads, q, k] scores are recomputed (T5X's 'minimal').
#   dots     keeps every matmul output (jax `checkpoint_dots`), attention's q·k scores and
#            weights·v included, and recomputes the cheap elementwise work (norms,
#            activations, softmax, dropout): more memory than 'minimal' at long lengths.
REMAT_POLICIES = ("none", "full", "minimal", "dots")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a pre-LayerNorm T5.1.1-style encoder–decoder Transformer."""

    vocab_size: int
    """Rows of the shared token embedding (and of the output layer); set from the data."""
    emb_dim: int = 512
    """Model width d_model (T5X `emb_dim`)."""
    num_heads: int = 8
    head_dim: int = 64
    """Width of one attention head (T5X `head_dim`, mesh-TF `d_kv`); QKV dim = heads × this."""
    mlp_dim: int = 2048
    """Hidden width of the feed-forward block (d_ff)."""
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    mlp_activations: tuple[str, ...] = ("relu",)
    """One entry per input projection, multiplied together: ('relu',) is the Transformer's
    ReLU MLP, ('gelu', 'linear') is T5.1.1/mT5's gated GELU."""
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    """True ties the output layer to the token embedding (logits scaled by 1/sqrt(emb_dim))."""
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    share_relpos_bias: bool = False
    """False gives every layer its own relative position table: the paper's mT5 variant
    (appendix B). True is T5X's minimal T5, one table per stack."""
    dtype: str = "float32"
    """Activation / compute dtype ('bfloat16' for bf16 compute); parameters are always float32
    and logits are always returned in float32."""
    float32_attention_logits: bool = True
    """Compute q·k (and add its mask and bias) in float32 even when `dtype` is bfloat16."""
    float32_attention_softmax: bool = True
    """Take the attention softmax in float32 even when the logits are in `dtype` (ptjf). False
    takes it in the logits' dtype, as T5X does: with `float32_attention_logits=False` and
    bfloat16 compute, q·k, its biases and the softmax are then all bfloat16."""
    norm_scale_in_float32: bool = True
    """RMSNorm multiplies x / rms(x) by its scale in float32 and then casts to `dtype` (ptjf).
    False casts x / rms(x) to `dtype` first and multiplies by the scale cast to `dtype` (T5X's
    LayerNorm). The two differ only when `dtype` is not float32."""
    remat_policy: str = "none"
    """What each layer's backward pass recomputes instead of storing (see `REMAT_POLICIES`);
    the parameter tree is the same for every policy, so checkpoints move between them."""

    def __post_init__(self) -> None:
        # gin and YAML-ish callers pass lists; a tuple keeps the config hashable (jit static arg).
        if isinstance(self.mlp_activations, list):
            object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        _validate(self)
        # numpy integers (e.g. a vocabulary size computed with numpy) become plain ints so
        # equal configs compare and hash equal.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, f.name, int(value))

    @property
    def num_mlp_inputs(self) -> int:
        return len(self.mlp_activations)


def _validate(cfg: TransformerConfig) -> None:
    for name in (
        "vocab_size",
        "emb_dim",
        "num_heads",
        "head_dim",
        "mlp_dim",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
    ):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(
                f"TransformerConfig.{name} must be a positive integer, got {value!r}. "
                f"Set it in the model gin file or when building the config."
            )
    for name in ("num_encoder_layers", "num_decoder_layers"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(
                f"TransformerConfig.{name} must be an integer >= 1, got {value!r}; "
                f"an encoder–decoder model needs at least one layer in each stack."
            )
    if cfg.relative_attention_num_buckets < 4 or cfg.relative_attention_num_buckets % 2:
        raise ConfigError(
            "TransformerConfig.relative_attention_num_buckets must be an even integer >= 4 "
            f"(half the buckets per direction in the encoder), got "
            f"{cfg.relative_attention_num_buckets}. T5 uses 32."
        )
    if cfg.relative_attention_max_distance < cfg.relative_attention_num_buckets // 2:
        raise ConfigError(
            "TransformerConfig.relative_attention_max_distance must be at least half of "
            f"relative_attention_num_buckets ({cfg.relative_attention_num_buckets // 2}), got "
            f"{cfg.relative_attention_max_distance}. T5 uses 128."
        )
    acts = cfg.mlp_activations
    if not isinstance(acts, tuple) or not acts:
        raise ConfigError(
            f"TransformerConfig.mlp_activations must be a non-empty tuple of names, got "
            f"{acts!r}; e.g. ('relu',) or ('gelu', 'linear')."
        )
    unknown = [a for a in acts if a not in KNOWN_ACTIVATIONS]
    if unknown:
        raise ConfigError(
            f"TransformerConfig.mlp_activations has unknown name(s) {unknown} in {acts!r}; "
            f"expected names from {KNOWN_ACTIVATIONS}."
        )
    if not 0.0 <= cfg.dropout_rate < 1.0:
        raise ConfigError(
            f"TransformerConfig.dropout_rate must be in [0, 1), got {cfg.dropout_rate!r}."
        )
    if cfg.dtype not in KNOWN_DTYPES:
        raise ConfigError(
            f"TransformerConfig.dtype must be one of {KNOWN_DTYPES}, got {cfg.dtype!r}. "
            f"Use 'bfloat16' for bf16 compute; parameters stay float32 either way."
        )
    if not isinstance(cfg.remat_policy, str) or cfg.remat_policy not in REMAT_POLICIES:
        raise ConfigError(
            f"TransformerConfig.remat_policy must be one of {REMAT_POLICIES}, got "
            f"{cfg.remat_policy!r}. 'none' stores every activation; 'full' saves the most "
            f"memory by recomputing each layer in the backward pass."
        )


# In-place registration (not `external_configurable`, which would build a subclass) so a
# gin-built config compares equal to a Python-built one. Explicit arguments win over gin
# bindings, so `dataclasses.replace` is unaffected by whatever gin has parsed.
TransformerConfig = gin.configurable("TransformerConfig", module="ptjf.models")(TransformerConfig)


def with_vocab_size(config: TransformerConfig, vocab_size: int) -> TransformerConfig:
    """The same architecture with the data's vocabulary size (validated)."""
    return dataclasses.replace(config, vocab_size=vocab_size)


# The numerics of T5X's minimal T5 (`t5x.examples.t5.network`), under which ptjf's forward pass
# reproduces T5X's on T5X's checkpoints: one relative position table per stack, attention
# logits and softmax in the compute dtype (T5X's `float32_attention_logits` defaults to False;
# a T5X run may set it True), RMSNorm's output cast to the compute dtype before its scale.
# The rest is the same in both: tied logits in float32 divided by sqrt(emb_dim), untied logits
# in float32, GELU's tanh approximation, relative position buckets (computed exactly), and the
# token embedding lookup (a gather here, a one-hot matmul in T5X: the same values wherever that
# matmul runs at full precision, as on CPU).
T5X_NUMERICS: dict[str, Any] = {
    "share_relpos_bias": True,
    "float32_attention_logits": False,
    "float32_attention_softmax": False,
    "norm_scale_in_float32": False,
}


def with_t5x_numerics(config: TransformerConfig) -> TransformerConfig:
    """The same architecture under T5X's conventions (`T5X_NUMERICS`)."""
    return dataclasses.replace(config, **T5X_NUMERICS)


def _defaults() -> dict[str, Any]:
    return {
        f.name: f.default
        for f in dataclasses.fields(TransformerConfig)
        if f.default is not dataclasses.MISSING
    }


# Every field is spelled out, as in the gin files, so a preset never depends on the defaults
# above (nor on gin bindings active when it is built). Every preset uses ptjf's numerics
# (float32 attention logits and softmax, RMSNorm scale in float32; relative position tables
# per layer), not T5X's (`T5X_NUMERICS`).
_NMT = {
    # Paper Table 3: d_model 512, d_ff 2048, 8 heads, QKV dim 512 (= 8 × 64), dropout 0.1,
    # ReLU feed-forward [Vaswani et al.]. The paper does not say whether embeddings are tied;
    # Vaswani et al. tie them, so ptjf does too.
    "emb_dim": 512,
    "num_heads": 8,
    "head_dim": 64,
    "mlp_dim": 2048,
    "mlp_activations": ("relu",),
    "dropout_rate": 0.1,
    "logits_via_embedding": True,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "share_relpos_bias": False,
    "dtype": "float32",
    "float32_attention_logits": True,
    "float32_attention_softmax": True,
    "norm_scale_in_float32": True,
    "remat_policy": "none",
}
_MT5 = {
    # mT5 (Xue et al. 2021) = T5.1.1 recipe: gated GELU, untied logits, no dropout in
    # pre-training, bf16 activations; per-layer relative position tables (paper appendix B).
    "mlp_activations": ("gelu", "linear"),
    "dropout_rate": 0.0,
    "logits_via_embedding": False,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "share_relpos_bias": False,
    "dtype": "bfloat16",
    "float32_attention_logits": True,
    "float32_attention_softmax": True,
    "norm_scale_in_float32": True,
    "head_dim": 64,
    "remat_policy": "none",
}


def _mt5(emb: int, mlp: int, heads: int, layers: int) -> dict[str, Any]:
    return {
        **_MT5,
        "emb_dim": emb,
        "mlp_dim": mlp,
        "num_heads": heads,
        "num_encoder_layers": layers,
        "num_decoder_layers": layers,
    }


_PRESET_FIELDS: dict[str, dict[str, Any]] = {
    "tiny": {
        "emb_dim": 32,
        "num_heads": 2,
        "head_dim": 16,
        "mlp_dim": 64,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "mlp_activations": ("gelu", "linear"),
        "dropout_rate": 0.1,
        "logits_via_embedding": False,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "share_relpos_bias": False,
        "dtype": "float32",
        "float32_attention_logits": True,
        "float32_attention_softmax": True,
        "norm_scale_in_float32": True,
        "remat_policy": "none",
    },
    "nmt_3layer": {**_NMT, "num_encoder_layers": 3, "num_decoder_layers": 3},
    "nmt_6layer": {**_NMT, "num_encoder_layers": 6, "num_decoder_layers": 6},
    # Sizes of the released mT5 checkpoints (T5X `t5x/examples/t5/mt5/*.gin`).
    "mt5_small": _mt5(emb=512, mlp=1024, heads=6, layers=8),
    "mt5_base": _mt5(emb=768, mlp=2048, heads=12, layers=12),
    "mt5_large": _mt5(emb=1024, mlp=2816, heads=16, layers=24),
    "mt5_xl": _mt5(emb=2048, mlp=5120, heads=32, layers=24),
    "mt5_xxl": _mt5(emb=4096, mlp=10240, heads=64, layers=24),
}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESET_FIELDS)


def preset(name: str, vocab_size: int) -> TransformerConfig:
    """The named architecture (same as `gin_configs/models/<name>.gin`) with `vocab_size`."""
    if name not in _PRESET_FIELDS:
        raise UnknownNameError(
            "model preset",
            name,
            PRESET_NAMES,
            hint="Presets mirror the files in gin_configs/models/.",
        )
    fields = {**_defaults(), **_PRESET_FIELDS[name], "vocab_size": vocab_size}
    return TransformerConfig(**fields)


def count_params(config: TransformerConfig) -> int:
    """Analytic number of parameters of `EncoderDecoder(config)` (all float32 scalars)."""
    d, v = config.emb_dim, config.vocab_size
    qkv = config.num_heads * config.head_dim
    attention = 4 * d * qkv  # query, key, value (d → qkv) and out (qkv → d)
    mlp = config.num_mlp_inputs * d * config.mlp_dim + config.mlp_dim * d
    relpos = config.num_heads * config.relative_attention_num_buckets
    per_layer_relpos = 0 if config.share_relpos_bias else relpos
    per_stack_relpos = relpos if config.share_relpos_bias else 0

    encoder_layer = 2 * d + attention + mlp + per_layer_relpos
    decoder_layer = 3 * d + 2 * attention + mlp + per_layer_relpos
    encoder = config.num_encoder_layers * encoder_layer + d + per_stack_relpos
    decoder = config.num_decoder_layers * decoder_layer + d + per_stack_relpos
    logits = 0 if config.logits_via_embedding else d * v
    return v * d + encoder + decoder + logits

"""Activation bytes of one microbatch's backward pass, for `ptjf.models.memory`'s estimate.

The tensors JAX's autodiff saves from the forward pass under each remat policy, block by
block, sized and sharded over the mesh (`activation_bytes` lists them). Kept apart from the
parameters and optimizer state because it is most of the arithmetic and changes with the
model's layers, not with the optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ptjf.errors import ConfigError, UnknownNameError
from ptjf.models.config import REMAT_POLICIES, TransformerConfig
from ptjf.models.memory_layout import MeshShape, mesh_spec, parameter_layout, shard_elements
from ptjf.runtime import partitioning

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_BYTES = 4  # the model returns float32 logits whatever its dtype
BOOL_BYTES = 1

_EMBED = ("batch", "length", "embed")
_ROW = ("batch", "length", None)  # [b, L, 1]: a norm's statistics, token ids
_HEADS = ("batch", "length", "heads", "kv")
_JOINED = ("batch", "length", "joined_kv")
_MLP = ("batch", "length", "mlp")
_SCORES = ("batch", "heads", "length", None)  # [b, heads, q_length, k_length or 1]
_MASK = ("batch", None, "length", None)  # [b, 1, q_length, k_length]
_VOCAB = ("batch", "length", "vocab")

# What the derivative of each activation keeps (JAX's rules): (its input, how many further
# intermediates, a boolean mask). ReLU keeps where x > 0; SiLU x and two intermediates; the
# tanh form of GELU x and four (x³ term, tanh, 1 − tanh², the cdf).
_ACTIVATION_RESIDUALS = {
    "relu": (False, 0, True),
    "silu": (True, 2, False),
    "gelu": (True, 4, False),
    "linear": (False, 0, False),
}


@dataclasses.dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    itemsize: int


class _Layers:
    """The tensors one microbatch keeps, by block, for `config` at b rows."""

    def __init__(self, config: TransformerConfig, b: int) -> None:
        self.cfg, self.b = config, b
        self.a = DTYPE_BYTES[config.dtype]

    def t(self, name: str, shape: tuple[int, ...], axes, itemsize: int | None = None) -> _Tensor:
        return _Tensor(name, shape, axes, self.a if itemsize is None else itemsize)

    def norm(self, name: str, length: int, output: bool = True) -> list[_Tensor]:
        """RMSNorm, computed in float32: its input, square, normalised value and inverse root
        mean square; its output when the next matmul reads it as it is."""
        b, d = self.b, self.cfg.emb_dim
        tensors = [
            *(self.t(f"{name}.{n}", (b, length, d), _EMBED, 4) for n in ("x", "x2", "y")),
            *(self.t(f"{name}.{n}", (b, length, 1), _ROW, 4) for n in ("rsqrt", "scale")),
        ]
        return tensors + ([self.t(f"{name}.out", (b, length, d), _EMBED)] if output else [])

    def attention(self, name: str, lq: int, lk: int) -> list[_Tensor]:
        cfg, b, a = self.cfg, self.b, self.a
        h, k = cfg.num_heads, cfg.head_dim
        s = 4 if cfg.float32_attention_logits else a
        tensors = [
            self.t(f"{name}.query", (b, lq, h, k), _HEADS, s),
            self.t(f"{name}.key", (b, lk, h, k), _HEADS, s),
            self.t(f"{name}.value", (b, lk, h, k), _HEADS),
            self.t(f"{name}.exp", (b, h, lq, lk), _SCORES, 4),
            self.t(f"{name}.sum", (b, h, lq, 1), _SCORES, 4),
            # The weights A·V reads: after dropout when there is dropout.
            self.t(f"{name}.weights", (b, h, lq, lk), _SCORES),
            self.t(f"{name}.context", (b, lq, h * k), _JOINED),
        ]
        return tensors

    def mlp(self, length: int) -> list[_Tensor]:
        cfg, shape = self.cfg, (self.b, length, self.cfg.mlp_dim)
        gated = cfg.num_mlp_inputs > 1
        tensors = []
        for i, act in enumerate(cfg.mlp_activations):
            keeps_input, intermediates, mask = _ACTIVATION_RESIDUALS[act]
            if keeps_input:
                tensors.append(self.t(f"mlp.wi_{i}", shape, _MLP))
            tensors += [self.t(f"mlp.{act}_{i}.{j}", shape, _MLP) for j in range(intermediates)]
            if mask:
                tensors.append(self.t(f"mlp.{act}_{i}.mask", shape, _MLP, BOOL_BYTES))
            # A gated MLP multiplies the branches: the product's gradient reads each one.
            if gated:
                tensors.append(self.t(f"mlp.{act}_{i}.out", shape, _MLP))
        # What `wo` reads: the dropped-out hidden layer, the product, or the one branch.
        if cfg.dropout_rate > 0:
            tensors.append(self.t("mlp.dropped", shape, _MLP))
        elif gated:
            tensors.append(self.t("mlp.product", shape, _MLP))
        else:
            tensors.append(self.t(f"mlp.{cfg.mlp_activations[0]}.out", shape, _MLP))
        return tensors

    def layer(self, stack: str, le: int, ld: int, policy: str) -> list[_Tensor]:
        cfg, b, d = self.cfg, self.b, self.cfg.emb_dim
        length = le if stack == "encoder" else ld
        layer_input = [self.t("layer_input", (b, length, d), _EMBED)]
        if policy == "full":
            return layer_input
        blocks = (
            [("attention", le, le)]
            if stack == "encoder"
            else [("self_attention", ld, ld), ("cross_attention", ld, le)]
        )
        if policy == "none":
            tensors = []
            for name, lq, lk in blocks:
                tensors += self.norm(f"{name}.norm", lq) + self.attention(name, lq, lk)
            return tensors + self.norm("mlp.norm", length) + self.mlp(length)
        # Matmul outputs: the projections, and with 'dots' the attention's two batched
        # matmuls (q·k logits, weights·v) too.
        h, qkv, f = cfg.num_heads, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
        s = 4 if cfg.float32_attention_logits else self.a
        tensors = list(layer_input)
        for name, lq, lk in blocks:
            tensors += [
                self.t(f"{name}.query", (b, lq, qkv), _JOINED),
                self.t(f"{name}.key", (b, lk, qkv), _JOINED),
                self.t(f"{name}.value", (b, lk, qkv), _JOINED),
                self.t(f"{name}.out", (b, lq, d), _EMBED),
            ]
            if policy == "dots":
                tensors += [
                    self.t(f"{name}.logits", (b, h, lq, lk), _SCORES, s),
                    self.t(f"{name}.context", (b, lq, qkv), _JOINED),
                ]
        return tensors + [
            self.t(f"mlp.wi_{i}", (b, length, f), _MLP) for i in range(cfg.num_mlp_inputs)
        ]

    def stacks(self, le: int, ld: int, policy: str) -> list[_Tensor]:
        """Outside the layers: token ids, the final norms (and dropouts), the logits, and the
        attention masks that rematerialised layers take as inputs."""
        cfg, b, d = self.cfg, self.b, self.cfg.emb_dim
        dropout = cfg.dropout_rate > 0
        masks = [
            self.t(f"{name}.mask", (b, 1, lq, lk), _MASK, BOOL_BYTES)
            for name, lq, lk in (("encoder", le, le), ("decoder", ld, ld), ("cross", ld, le))
        ]
        return (masks if policy != "none" else []) + [
            self.t("encoder.ids", (b, le, 1), _ROW, 4),
            self.t("decoder.ids", (b, ld, 1), _ROW, 4),
            # The cross-attentions read the encoder's output (after dropout, if any).
            *self.norm("encoder_norm", le, output=not dropout),
            *([self.t("encoder.dropped", (b, le, d), _EMBED)] if dropout else []),
            # The logits are computed in float32 from a float32 copy of the decoder's output.
            *self.norm("decoder_norm", ld, output=False),
            self.t("logits.input", (b, ld, d), _EMBED, 4),
            self.t("logits", (b, ld, cfg.vocab_size), _VOCAB, LOGITS_BYTES),
        ]

    def weight_copies(self) -> list[_Tensor]:
        """Each layer's kernels cast to the compute dtype for its matmuls."""
        return [
            _Tensor(path, p.shape, p.axes, self.a)
            for path, p in parameter_layout(self.cfg).items()
            if "/layers_" in path and path.endswith("/kernel")
        ]


@dataclasses.dataclass(frozen=True)
class ActivationEstimate:
    """Bytes one device holds for the backward pass of one microbatch."""

    encoder_layer: int
    decoder_layer: int
    stacks: int
    """Token ids, final norms, the stacks' outputs, the float32 logits (and, with remat, the
    attention masks), once per model."""
    weight_copies: int
    """The layers' kernels in the compute dtype, kept without remat when it is not float32."""
    transient: int
    """The peak on top of the residuals: the logits' gradient, or a rematerialised layer."""
    num_encoder_layers: int
    num_decoder_layers: int

    @property
    def residuals(self) -> int:
        """What the forward pass leaves for the backward pass."""
        return (
            self.num_encoder_layers * self.encoder_layer
            + self.num_decoder_layers * self.decoder_layer
            + self.stacks
            + self.weight_copies
        )

    @property
    def total(self) -> int:
        return self.residuals + self.transient


def check_remat_policy(policy: str) -> str:
    if policy not in REMAT_POLICIES:
        raise UnknownNameError(
            "remat policy",
            policy,
            REMAT_POLICIES,
            hint="Set TransformerConfig.remat_policy to one of them.",
        )
    return policy


def activation_bytes(
    config: TransformerConfig,
    *,
    batch_size: int,
    input_length: int,
    target_length: int,
    mesh: MeshShape,
    rules: partitioning.LogicalRules,
    remat_policy: str = "none",
) -> ActivationEstimate:
    """Activation bytes one device holds for a microbatch of `batch_size` rows (global).

    The residuals are the values JAX's autodiff saves for the backward pass (what
    `jax.ad_checkpoint.print_saved_residuals` lists), less broadcast constants that XLA never
    materialises. With b rows, Lq / Lk query / key positions, d = emb_dim, H heads of width k,
    f = mlp_dim and a = the bytes of `config.dtype`:

    * `remat_policy='none'`, per layer:
      - every RMSNorm (computed in float32): its input, square and normalised value
        [b, L, d] in float32, its output [b, L, d] in a, two [b, L, 1] float32 statistics;
      - every attention (an encoder layer has one, a decoder layer a causal self-attention
        and a cross-attention with Lk = the encoder's length): query and key [b, L, H, k] in
        float32 when `float32_attention_logits` (else a), value and context in a; the
        softmax's exponentials [b, H, Lq, Lk] in float32 with their sum [b, H, Lq, 1], and
        the weights A·V reads [b, H, Lq, Lk] in a (after dropout, when there is dropout);
      - the MLP [b, L, f] in a: what each activation's derivative keeps (ReLU a boolean mask;
        SiLU its input and 2 intermediates; GELU its input and 4), every branch's output
        when gated (the product reads both), and what `wo` reads (the dropped-out hidden
        layer, else the product, else the one branch's output);
      - and the layer's kernels cast to a for the matmuls, when a is not float32.
    * 'full' (nothing saveable): each layer's input [b, L, d] in a.
    * 'minimal' (matmul outputs without batch dimensions: the projections,
      not the attention scores): each layer's input, the query, key and value projections
      [b, L, H·k] and the `out` projection [b, Lq, d] of every attention, and the MLP's `wi`
      outputs [b, L, f], all in a.
    * 'dots' (every matmul output): as 'minimal', plus every attention's
      q·k logits [b, H, Lq, Lk] (in float32 with `float32_attention_logits`) and its
      weights·v product [b, Lq, H·k] in a.
    * With remat, the attention masks [b, 1, Lq, Lk] (booleans, one per kind of attention)
      are kept as the layers' inputs.

    Once per model, whatever the policy: the token ids (int32), both final norms' float32
    values (as above), the encoder's output [b, Le, d] in a (after dropout, if any) that the
    cross-attentions read, the decoder's output in float32 that the logits projection reads,
    and the float32 logits [b, Ld, vocab]. On top of these residuals (`transient`): the
    logits' gradient at the start of the backward pass or, with remat, the larger of an
    encoder and a decoder layer's 'none' set while that layer is recomputed, whichever is
    larger.

    Each tensor is split over the mesh as its logical axes say (`batch` over data; `heads`,
    `joined_kv`, `mlp`, `vocab` over model; `embed` over model with
    `activation_partitioning_dims=2`), axes the mesh does not divide evenly left whole.
    Left out: relative-position buckets, the loss's per-token values [b, Ld] and a tied
    embedding's transpose.
    """
    policy = check_remat_policy(remat_policy)
    if config.dtype not in DTYPE_BYTES:
        raise ConfigError(f"No byte size for dtype {config.dtype!r}; expected {DTYPE_BYTES}.")
    if batch_size % mesh.data:
        raise ConfigError(
            f"The (micro)batch of {batch_size} rows does not split over the data axis of "
            f"{mesh.data} devices; choose a batch size and num_microbatches so that "
            f"batch_size / num_microbatches is a multiple of {mesh.data}."
        )
    le, ld = input_length, target_length
    blocks = _Layers(config, batch_size)

    def size(tensors: Sequence[_Tensor]) -> int:
        return sum(
            t.itemsize * shard_elements(t.shape, mesh_spec(t.axes, rules), mesh) for t in tensors
        )

    def layers(p: str) -> tuple[int, int]:
        return size(blocks.layer("encoder", le, ld, p)), size(blocks.layer("decoder", le, ld, p))

    encoder_layer, decoder_layer = layers(policy)
    stacks = blocks.stacks(le, ld, policy)
    logits_gradient = size(stacks[-1:])
    recomputed = 0 if policy == "none" else max(layers("none"))
    copies = policy == "none" and blocks.a != 4
    return ActivationEstimate(
        encoder_layer=encoder_layer,
        decoder_layer=decoder_layer,
        stacks=size(stacks),
        weight_copies=size(blocks.weight_copies()) if copies else 0,
        transient=max(logits_gradient, recomputed),
        num_encoder_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
    )

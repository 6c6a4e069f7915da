"""Analytic matmul FLOPs of a training step of the encoder–decoder Transformer.

Model FLOPs utilisation (MFU, PaLM: Chowdhery et al. 2022, App. B) divides the FLOPs the model
*needs* per step by the step time and the hardware's peak; it must not depend on how the step is
compiled (rematerialisation, fusion), so the count is analytic, not XLA's.

What is counted (a matmul of [m, k] by [k, n] costs 2·m·k·n FLOPs, a multiply and an add):

* attention projections: query and out on the query tokens, key and value on the key tokens,
  each `d_model × (heads · head_dim)`;
* attention scores `Q·Kᵀ` and the weighted sum `A·V`: `2 · L_q · L_k · heads · head_dim` each,
  per example. The full `L × L` square is counted in causal self-attention too, because the
  model computes it (masking happens after the matmul);
* cross-attention: queries from the decoder, keys and values from the encoder output, so the
  key/value projections run over the encoder's tokens and `L_k` is the encoder length;
* MLP: one input projection per entry of `mlp_activations` (two for a gated MLP) and the output
  projection;
* the output logits projection `d_model × vocab` over the decoder tokens (tied or not: tied
  logits multiply by the embedding's transpose, the same matmul).

Not counted: the token embeddings (a gather), norms, softmax, activations, dropout, the relative
position bias (a gather), the loss and the optimizer update. They are elementwise, O(tokens ·
d_model) against the matmuls' O(tokens · d_model²), which is why they are left out by
convention (and why XLA's own count, which includes them, comes out slightly higher).

Backward = 2 × forward: each matmul needs one matmul for the gradient of each operand, both the
same size as the forward one. A training step therefore costs `3 × forward`
(`FORWARD_BACKWARD_FACTOR`). The gradient of the first layer's input is counted too (the
embedding is trained), as the 6·N·D rule of thumb (Kaplan et al. 2020) does; that rule is this
count without the attention `L²` terms and with the embedding gather counted as a matmul.
"""

from __future__ import annotations

from ptjf.errors import ConfigError
from ptjf.models.config import TransformerConfig

FORWARD_BACKWARD_FACTOR = 3
"""Forward (1) plus backward (2: gradients with respect to both operands of every matmul)."""


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of multiplying an [m, k] matrix by a [k, n] one (one multiply + one add each)."""
    return 2 * m * k * n


def attention_flops(
    config: TransformerConfig, batch_size: int, query_length: int, key_length: int
) -> int:
    """Forward FLOPs of one attention block: projections, `Q·Kᵀ` and `A·V`.

    Self-attention has `key_length == query_length`; cross-attention has the encoder's length.
    """
    joined = config.num_heads * config.head_dim
    query_tokens = batch_size * query_length
    key_tokens = batch_size * key_length
    projections = (
        2 * matmul_flops(query_tokens, config.emb_dim, joined)  # query, out
        + 2 * matmul_flops(key_tokens, config.emb_dim, joined)  # key, value
    )
    per_head = matmul_flops(query_length, config.head_dim, key_length)
    scores_and_values = 2 * batch_size * config.num_heads * per_head
    return projections + scores_and_values


def mlp_flops(config: TransformerConfig, tokens: int) -> int:
    """Forward FLOPs of one feed-forward block over `tokens` tokens (gated: 2 inputs)."""
    inputs = config.num_mlp_inputs * matmul_flops(tokens, config.emb_dim, config.mlp_dim)
    return inputs + matmul_flops(tokens, config.mlp_dim, config.emb_dim)


def logits_flops(config: TransformerConfig, tokens: int) -> int:
    """Forward FLOPs of the output projection onto the vocabulary."""
    return matmul_flops(tokens, config.emb_dim, config.vocab_size)


def forward_flops_breakdown(
    config: TransformerConfig, batch_size: int, input_length: int, target_length: int
) -> dict[str, int]:
    """Forward matmul FLOPs of one batch, by component (summed over the layers)."""
    for name, value in (
        ("batch_size", batch_size),
        ("input_length", input_length),
        ("target_length", target_length),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{name} = {value!r} is invalid: expected a positive integer (the "
                "per-step batch size and the padded encoder / decoder lengths)."
            )
    encoder_tokens = batch_size * input_length
    decoder_tokens = batch_size * target_length
    enc, dec = config.num_encoder_layers, config.num_decoder_layers
    return {
        "encoder_self_attention": enc
        * attention_flops(config, batch_size, input_length, input_length),
        "encoder_mlp": enc * mlp_flops(config, encoder_tokens),
        "decoder_self_attention": dec
        * attention_flops(config, batch_size, target_length, target_length),
        "decoder_cross_attention": dec
        * attention_flops(config, batch_size, target_length, input_length),
        "decoder_mlp": dec * mlp_flops(config, decoder_tokens),
        "logits": logits_flops(config, decoder_tokens),
    }


def model_flops_per_step(
    config: TransformerConfig, batch_size: int, input_length: int, target_length: int
) -> float:
    """Forward + backward matmul FLOPs of one training step on a [batch, length] batch."""
    forward = sum(forward_flops_breakdown(config, batch_size, input_length, target_length).values())
    return float(FORWARD_BACKWARD_FACTOR * forward)

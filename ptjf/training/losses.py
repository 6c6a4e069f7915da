"""Token-level losses and metrics for sequence-to-sequence training (pure jax).

Conventions, and why:

* **Label smoothing** follows T5X: the smoothed target puts `1 - ls` on the true class and
  `ls / (V - 1)` on each of the other `V - 1` classes (not `ls / V` on every class, as some
  libraries do). The paper's NMT runs use ls = 0.1 (App. A, Table 3).
* **The entropy of the smoothed target is subtracted**, so the loss is the KL divergence from the
  smoothed target to the model: a perfect prediction of the smoothed target scores 0 whatever
  `ls` is. Without this, a run with ls = 0.1 and V = 64k reports a floor of ≈ 1.4 nats and
  losses from different `ls` values cannot be put on one plot. The gradient is unchanged (the
  entropy is a constant). Evaluation reports the plain, un-smoothed cross entropy separately
  (`TokenLosses.cross_entropy`), which is what the paper's validation curves show.
* **z-loss** (PaLM, T5X): `z_loss · log(Z)²` per token, where `Z = Σ exp(logits)`. It keeps the
  softmax normaliser near 1 so bf16 logits stay well-conditioned; 0 disables it. The training
  objective includes it; it is also reported on its own.
* **Normalisation** by the number of real target tokens (Σ weights), as in the paper's mC4 runs
  (App. B: "the number of real target tokens as the effective loss normalization"), rather than a
  fixed loss-normalising factor. Functions here return *sums* so that gradient accumulation and
  multi-host evaluation add sums first and divide once (`normalized_loss`).

Weights are SeqIO's `decoder_loss_weights`: 1.0 on real target tokens and 0.0 on padding.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class TokenLosses(NamedTuple):
    """Per-token losses, unweighted, each [..., length]."""

    loss: Array  # smoothed CE minus the target's entropy, plus z-loss: what is minimised
    z_loss: Array  # the z-loss part of `loss` alone
    cross_entropy: Array  # plain -log p(target), independent of label smoothing and z-loss


def smoothed_target_entropy(label_smoothing: float, vocab_size: int) -> float:
    """Entropy (nats) of the T5X smoothed target distribution; 0 when `label_smoothing` is 0."""
    if label_smoothing == 0.0:
        return 0.0
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab_size - 1)
    # Python floats: a trace-time constant, computed in double precision.
    entropy = -(vocab_size - 1) * low * math.log(low)
    if confidence > 0.0:
        entropy -= confidence * math.log(confidence)
    return entropy


def _target_logit(logits: Array, targets: Array) -> Array:
    """logits[..., target], as a masked sum rather than a gather.

    The gradient of a gather is a scatter into a zeroed [.., V] buffer; this one's gradient is
    `g` where the vocabulary id is the target, recomputed from the ids (nothing [.., V] is kept
    for it), which XLA fuses into the softmax's gradient: one elementwise pass over the logits.
    """
    return _masked_pick(logits.shape[-1], logits, targets.astype(jnp.int32))


def _is_target(vocab_size: int, targets: Array) -> Array:
    shape = (*targets.shape, vocab_size)
    return jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) == targets[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_pick(vocab_size: int, logits: Array, targets: Array) -> Array:
    return jnp.sum(jnp.where(_is_target(vocab_size, targets), logits, 0.0), axis=-1)


def _masked_pick_fwd(vocab_size: int, logits: Array, targets: Array) -> tuple[Array, tuple]:
    return _masked_pick(vocab_size, logits, targets), (targets, jnp.zeros((), logits.dtype))


def _masked_pick_bwd(vocab_size: int, residuals: tuple, g: Array) -> tuple[Array, None]:
    targets, like = residuals
    grad = jnp.where(_is_target(vocab_size, targets), g[..., None], 0.0)
    return grad.astype(like.dtype), None


_masked_pick.defvjp(_masked_pick_fwd, _masked_pick_bwd)


def token_losses(
    logits: Array, targets: Array, label_smoothing: float = 0.0, z_loss: float = 0.0
) -> TokenLosses:
    """Per-token losses for `logits` [..., V] against integer `targets` [...]."""
    logits = logits.astype(jnp.float32)
    vocab_size = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = _target_logit(logits, targets)
    cross_entropy = log_z - target_logit
    if label_smoothing:
        low = label_smoothing / (vocab_size - 1)
        confidence = 1.0 - label_smoothing
        # Σ_c q_c·logit_c without materialising a [.., V] one-hot: the smoothed target is `low`
        # everywhere plus (confidence - low) on the true class.
        expected_logit = low * jnp.sum(logits, axis=-1) + (confidence - low) * target_logit
        smoothed = log_z - expected_logit - smoothed_target_entropy(label_smoothing, vocab_size)
    else:
        smoothed = cross_entropy
    z_term = z_loss * jnp.square(log_z) if z_loss else jnp.zeros_like(log_z)
    return TokenLosses(loss=smoothed + z_term, z_loss=z_term, cross_entropy=cross_entropy)


def cross_entropy_with_label_smoothing(
    logits: Array,
    targets: Array,
    weights: Array,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[Array, Array, Array]:
    """Weighted sums `(loss_sum, z_loss_sum, weight_sum)` over all tokens.

    `loss_sum` is the training objective (smoothed CE minus the target entropy, plus z-loss);
    `z_loss_sum` is its z-loss part; `weight_sum` is the number of real target tokens.
    """
    per_token = token_losses(logits, targets, label_smoothing, z_loss)
    weights = weights.astype(jnp.float32)
    return (
        jnp.sum(per_token.loss * weights),
        jnp.sum(per_token.z_loss * weights),
        jnp.sum(weights),
    )


def normalized_loss(loss_sum: Array, weight_sum: Array) -> Array:
    """`loss_sum / weight_sum`, and 0 (not NaN, with a zero gradient) when there are no tokens.

    An all-padding batch or microbatch must not poison the step with 0/0.
    """
    has_tokens = weight_sum > 0
    safe_denominator = jnp.where(has_tokens, weight_sum, 1.0)
    return jnp.where(has_tokens, loss_sum / safe_denominator, 0.0)


def correct_predictions(logits: Array, targets: Array) -> Array:
    """1.0 where the target's logit is the largest, else 0.0 (unweighted, per token).

    The same as argmax(logits) == target except on exact ties, which count as correct here.
    Comparing with the maximum instead of taking an argmax spares a pass over the [.., V]
    logits: XLA shares the maximum with the softmax normaliser, and the target's logit with the
    cross entropy.
    """
    logits = logits.astype(jnp.float32)
    return (_target_logit(logits, targets) >= jnp.max(logits, axis=-1)).astype(jnp.float32)


def token_accuracy(logits: Array, targets: Array, weights: Array) -> Array:
    """Fraction of real target tokens predicted correctly by argmax; 0 when there are none."""
    weights = weights.astype(jnp.float32)
    correct = jnp.sum(correct_predictions(logits, targets) * weights)
    return normalized_loss(correct, jnp.sum(weights))


def per_task_sums(
    token_values: Array, weights: Array, task_ids: Array, num_tasks: int
) -> tuple[Array, Array]:
    """Weighted per-task sums `(value_sums[num_tasks], token_counts[num_tasks])`.

    `token_values` and `weights` are [b, l]; `task_ids` is [b] (one task per row, broadcast over
    the row) or [b, l] (one task per token, for rows packed from several tasks). Ids outside
    `[0, num_tasks)` (e.g. -1 on the rows that pad an eval batch) count towards no task.
    """
    weights = weights.astype(jnp.float32)
    if task_ids.ndim == 1:
        task_ids = jnp.broadcast_to(task_ids[:, None], weights.shape)
    task_ids = task_ids.astype(jnp.int32)
    in_range = (task_ids >= 0) & (task_ids < num_tasks)
    weights = jnp.where(in_range, weights, 0.0)
    # Out-of-range ids go to an extra bucket that is dropped, rather than relying on scatter's
    # out-of-bounds behaviour.
    ids = jnp.where(in_range, task_ids, num_tasks).reshape(-1)
    num_segments = num_tasks + 1
    value_sums = jax.ops.segment_sum(
        (token_values.astype(jnp.float32) * weights).reshape(-1), ids, num_segments
    )
    token_counts = jax.ops.segment_sum(weights.reshape(-1), ids, num_segments)
    return value_sums[:num_tasks], token_counts[:num_tasks]

"""Losses against an independent float64 numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjf.training import losses

V = 7


def _np_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _np_smoothed_ce(logits, targets, ls):
    """Explicit smoothed distribution q, KL(q || p) = Σ q log q - Σ q log p."""
    logits = logits.astype(np.float64)
    q = np.full(logits.shape, ls / (V - 1))
    np.put_along_axis(q, targets[..., None], 1.0 - ls, axis=-1)
    log_p = _np_log_softmax(logits)
    q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return (q_log_q - q * log_p).sum(-1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, V)).astype(np.float32) * 2.0
    targets = rng.integers(0, V, size=(3, 5))
    weights = np.ones((3, 5), np.float32)
    weights[0, 3:] = 0.0
    weights[2, 1:] = 0.0
    return logits, targets, weights


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
def test_smoothed_loss_matches_numpy(data, ls):
    logits, targets, weights = data
    loss_sum, z_sum, weight_sum = losses.cross_entropy_with_label_smoothing(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), label_smoothing=ls
    )
    expected = (_np_smoothed_ce(logits, targets, ls) * weights).sum()
    np.testing.assert_allclose(loss_sum, expected, rtol=1e-5)
    assert float(z_sum) == 0.0
    assert float(weight_sum) == weights.sum() == 9.0


def test_no_smoothing_is_plain_softmax_cross_entropy(data):
    logits, targets, _ = data
    per_token = losses.token_losses(jnp.asarray(logits), jnp.asarray(targets))
    expected = -np.take_along_axis(
        _np_log_softmax(logits.astype(np.float64)), targets[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(per_token.loss, expected, rtol=1e-5)
    np.testing.assert_allclose(per_token.cross_entropy, expected, rtol=1e-5)


def test_cross_entropy_field_ignores_smoothing_and_z_loss(data):
    logits, targets, _ = data
    plain = losses.token_losses(jnp.asarray(logits), jnp.asarray(targets))
    smoothed = losses.token_losses(jnp.asarray(logits), jnp.asarray(targets), 0.1, 1e-2)
    np.testing.assert_allclose(smoothed.cross_entropy, plain.cross_entropy, rtol=1e-6)
    assert not np.allclose(smoothed.loss, plain.loss)


def test_perfect_prediction_of_smoothed_target_gives_zero_loss():
    ls = 0.1
    targets = np.array([[0, 3, 6]])
    # log-probabilities equal to the smoothed target's: softmax(log q) = q exactly.
    q = np.full((1, 3, V), ls / (V - 1))
    np.put_along_axis(q, targets[..., None], 1.0 - ls, axis=-1)
    per_token = losses.token_losses(jnp.asarray(np.log(q), jnp.float32), jnp.asarray(targets), ls)
    np.testing.assert_allclose(per_token.loss, 0.0, atol=2e-6)
    # ...whereas the plain cross entropy of that prediction is -log(0.9).
    np.testing.assert_allclose(per_token.cross_entropy, -np.log(0.9), rtol=1e-5)


def test_target_entropy_constant():
    ls = 0.1
    low = ls / (V - 1)
    expected = -(0.9 * np.log(0.9) + (V - 1) * low * np.log(low))
    assert losses.smoothed_target_entropy(ls, V) == pytest.approx(expected, rel=1e-12)
    assert losses.smoothed_target_entropy(0.0, V) == 0.0


def test_padding_has_no_effect(data):
    logits, targets, weights = data
    base = losses.cross_entropy_with_label_smoothing(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), 0.1, 1e-3
    )
    garbage_logits = np.where(weights[..., None] > 0, logits, 1e4).astype(np.float32)
    garbage_targets = np.where(weights > 0, targets, 5)
    other = losses.cross_entropy_with_label_smoothing(
        jnp.asarray(garbage_logits), jnp.asarray(garbage_targets), jnp.asarray(weights), 0.1, 1e-3
    )
    for a, b in zip(base, other, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_z_loss_value(data):
    logits, targets, weights = data
    coefficient = 1e-2
    loss_sum, z_sum, _ = losses.cross_entropy_with_label_smoothing(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), 0.0, coefficient
    )
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    expected_z = (coefficient * log_z**2 * weights).sum()
    np.testing.assert_allclose(z_sum, expected_z, rtol=1e-5)
    ce = (
        -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[
            ..., 0
        ]
        * weights
    ).sum()
    np.testing.assert_allclose(loss_sum, ce + expected_z, rtol=1e-5)


def test_normalized_loss_divides_by_tokens_and_guards_zero():
    assert float(losses.normalized_loss(jnp.float32(6.0), jnp.float32(4.0))) == 1.5
    assert float(losses.normalized_loss(jnp.float32(0.0), jnp.float32(0.0))) == 0.0
    grad = jax.grad(lambda x: losses.normalized_loss(x * 3.0, jnp.float32(0.0)))(1.0)
    assert float(grad) == 0.0


def test_token_accuracy_is_weighted(data):
    logits, targets, weights = data
    targets = targets.copy()
    argmax = logits.argmax(-1)
    targets[0, :2] = argmax[0, :2]  # two weighted hits at least
    targets[0, 3:] = argmax[0, 3:]  # hits on padding must not count
    hits = (argmax == targets) * weights
    accuracy = losses.token_accuracy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    )
    np.testing.assert_allclose(accuracy, hits.sum() / weights.sum(), rtol=1e-6)
    assert (
        float(
            losses.token_accuracy(
                jnp.asarray(logits), jnp.asarray(targets), jnp.zeros_like(weights)
            )
        )
        == 0.0
    )


def test_per_task_sums_row_and_token_ids():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    weights = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], np.float32)
    # Rows: task 2, task 0, padding row (-1).
    sums, counts = losses.per_task_sums(
        jnp.asarray(values), jnp.asarray(weights), jnp.array([2, 0, -1]), 3
    )
    np.testing.assert_array_equal(sums, [4 + 5 + 6 + 7, 0, 0 + 1])
    np.testing.assert_array_equal(counts, [4, 0, 2])
    # Per-token ids: row 1 packs task 1 then task 0; id 3 is out of range and ignored.
    token_ids = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [3, 3, 3, 3]])
    sums, counts = losses.per_task_sums(
        jnp.asarray(values), jnp.asarray(weights), jnp.asarray(token_ids), 2
    )
    np.testing.assert_array_equal(sums, [0 + 1 + 6 + 7, 4 + 5])
    np.testing.assert_array_equal(counts, [4, 2])

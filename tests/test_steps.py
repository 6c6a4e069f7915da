"""Train and eval steps with a tiny stand-in model (embedding → dropout → dense)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjf.errors import ConfigError, DataError
from ptjf.training import losses, schedules
from ptjf.training.steps import make_eval_step, make_train_step
from ptjf.training.train_state import TrainState, create_train_state

V, B, L = 16, 4, 6


class TinyModel(nn.Module):
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, tokens, enable_dropout: bool):
        x = nn.Embed(V, 16)(tokens)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not enable_dropout)
        return nn.Dense(V)(x)


def make_apply_fn(model):
    def apply_fn(params, batch, *, enable_dropout, rngs):
        return model.apply(
            {"params": params}, batch["decoder_input_tokens"], enable_dropout, rngs=rngs
        )

    return apply_fn


def init_params(model, seed=0):
    return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, L), jnp.int32), False)["params"]


def make_batch(seed=0):
    """Targets are a fixed function of the input token; rows have different padding."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, V, size=(B, L))
    targets = (inputs * 5 + 3) % V
    lengths = np.array([6, 1, 5, 3])  # halves {0, 1} and {2, 3} hold 7 and 8 tokens
    weights = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    return {
        "decoder_input_tokens": jnp.asarray(inputs * (weights > 0), jnp.int32),
        "decoder_target_tokens": jnp.asarray(targets * (weights > 0), jnp.int32),
        "decoder_loss_weights": jnp.asarray(weights),
    }


DROPOUT_MODEL = TinyModel(dropout_rate=0.1)
PLAIN_MODEL = TinyModel(dropout_rate=0.0)
SCHEDULE = schedules.warmup_cosine(0.05, warmup_steps=3, total_steps=30)
RNG = jax.random.PRNGKey(42)


@pytest.fixture(scope="module")
def adam_step():
    tx = optax.adam(SCHEDULE)
    step = make_train_step(
        make_apply_fn(DROPOUT_MODEL), tx, label_smoothing=0.1, z_loss=1e-4, schedule=SCHEDULE
    )
    return tx, jax.jit(step, donate_argnums=(0,))


def test_loss_falls_and_learning_rate_follows_schedule(adam_step):
    tx, step = adam_step
    state = create_train_state(init_params(DROPOUT_MODEL), tx)
    batch = make_batch()
    history = []
    for i in range(30):
        state, metrics = step(state, batch, RNG)
        assert isinstance(metrics["loss"], jax.Array)
        history.append(jax.device_get(metrics))
        assert history[-1]["learning_rate"] == pytest.approx(float(SCHEDULE(i)), rel=1e-6)
    assert int(state.step) == 30
    assert history[0]["learning_rate"] == 0.0  # the stage's first update is warmup step 0
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert all(h["nonfinite"] == 0 and h["token_count"] == 15.0 for h in history)
    assert history[-1]["accuracy"] > history[0]["accuracy"]
    assert 0.0 < history[-1]["z_loss"] < 1e-2


def test_dropout_key_depends_on_step(adam_step):
    """Same params, batch and base key: a different stage step draws a different dropout mask."""
    tx, step = adam_step
    params = init_params(DROPOUT_MODEL)
    batch = make_batch()
    losses_by_step = []
    for stage_step in (5, 5, 6):
        # Fresh copies: the jitted step donates its state.
        state = create_train_state(jax.tree.map(jnp.copy, params), tx)
        state = state.replace(step=jnp.int32(stage_step))
        _, metrics = step(state, batch, RNG)
        losses_by_step.append(float(metrics["loss"]))
    assert losses_by_step[0] == losses_by_step[1]
    assert losses_by_step[0] != losses_by_step[2]


@pytest.fixture(scope="module")
def sgd_steps():
    tx = optax.sgd(1.0)
    apply_fn = make_apply_fn(PLAIN_MODEL)
    kwargs = {"label_smoothing": 0.1, "z_loss": 1e-3}
    return tx, {
        k: jax.jit(make_train_step(apply_fn, tx, num_microbatches=k, **kwargs)) for k in (1, 2)
    }


def _reference_grads(params, batch):
    """The full-batch gradient of the token-normalised objective, computed directly."""

    def objective(p):
        logits = make_apply_fn(PLAIN_MODEL)(p, batch, enable_dropout=False, rngs=None)
        loss_sum, _, weight_sum = losses.cross_entropy_with_label_smoothing(
            logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], 0.1, 1e-3
        )
        return loss_sum / weight_sum

    return jax.value_and_grad(objective)(params)


def test_microbatching_matches_full_batch(sgd_steps):
    tx, steps = sgd_steps
    params = init_params(PLAIN_MODEL, seed=1)
    batch = make_batch(seed=3)
    weights = np.asarray(batch["decoder_loss_weights"])
    # Unequal token counts per slice: averaging per-slice means would give a different answer.
    assert weights[:2].sum() != weights[2:].sum()
    ref_loss, ref_grads = _reference_grads(params, batch)
    results = {}
    for k, step in steps.items():
        state = create_train_state(params, tx)
        new_state, metrics = step(state, batch, RNG)
        results[k] = (new_state, jax.device_get(metrics))
        np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-5)
        assert metrics["token_count"] == weights.sum()
        for new, old, g in zip(
            jax.tree.leaves(new_state.params),
            jax.tree.leaves(params),
            jax.tree.leaves(ref_grads),
            strict=True,
        ):
            np.testing.assert_allclose(new, old - g, rtol=1e-5, atol=1e-6)
    for name in ("loss", "grad_norm", "accuracy", "cross_entropy", "z_loss"):
        np.testing.assert_allclose(results[1][1][name], results[2][1][name], rtol=1e-5)
    np.testing.assert_allclose(results[1][1]["grad_norm"], optax.global_norm(ref_grads), rtol=1e-5)


def test_microbatches_must_divide_batch(sgd_steps):
    _, steps = sgd_steps
    state = create_train_state(init_params(PLAIN_MODEL), optax.sgd(1.0))
    odd = {k: v[:3] for k, v in make_batch().items()}
    with pytest.raises(ConfigError, match="num_microbatches = 2 does not divide the batch size 3"):
        jax.eval_shape(steps[2], state, odd, RNG)


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_invalid_num_microbatches(value):
    with pytest.raises(ConfigError, match="num_microbatches"):
        make_train_step(make_apply_fn(PLAIN_MODEL), optax.sgd(1.0), num_microbatches=value)


def test_invalid_label_smoothing():
    with pytest.raises(ConfigError, match=r"label_smoothing = 1\.0"):
        make_train_step(make_apply_fn(PLAIN_MODEL), optax.sgd(1.0), label_smoothing=1.0)


def _poisoned_apply(params, batch, *, enable_dropout, rngs):
    """Adds `poison` to every logit, and a term with a finite value but a NaN gradient when
    `sqrt_offset` is 0 (d/db sqrt(b² + 0) at b = 0, the zero-initialised bias)."""
    logits = make_apply_fn(PLAIN_MODEL)(params, batch, enable_dropout=enable_dropout, rngs=rngs)
    bias = params["Dense_0"]["bias"][0]
    trap = 0.0 * jnp.sqrt(bias * bias + batch["sqrt_offset"][0])
    return logits + batch["poison"][:, None, None] + trap


@pytest.fixture(scope="module")
def poisoned_step():
    tx = optax.adam(1e-2)
    return tx, jax.jit(make_train_step(_poisoned_apply, tx))


@pytest.mark.parametrize(
    ("poison", "sqrt_offset", "nonfinite"),
    [(np.nan, 1.0, 1), (np.inf, 1.0, 1), (0.0, 0.0, 1), (0.0, 1.0, 0)],
    ids=["nan-loss", "inf-loss", "nan-grad-finite-loss", "finite"],
)
def test_nonfinite_step_keeps_params_and_sets_flag(poisoned_step, poison, sqrt_offset, nonfinite):
    tx, step = poisoned_step
    params = init_params(PLAIN_MODEL)
    batch = dict(
        make_batch(),
        poison=jnp.full((B,), poison, jnp.float32),
        sqrt_offset=jnp.full((B,), sqrt_offset, jnp.float32),
    )
    state = create_train_state(params, tx)
    new_state, metrics = step(state, batch, RNG)
    assert int(metrics["nonfinite"]) == nonfinite
    assert int(new_state.step) == 1
    same = [
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params), strict=True)
    ]
    opt_same = [
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(new_state.opt_state), jax.tree.leaves(state.opt_state), strict=True
        )
    ]
    if nonfinite:
        assert all(same) and all(opt_same)
        if poison == 0.0:
            assert np.isfinite(metrics["loss"])  # only the gradient was bad
    else:
        assert not all(same) and not all(opt_same)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(new_state.params))


def test_train_state_is_a_pytree_of_arrays_only():
    state = create_train_state(init_params(PLAIN_MODEL), optax.adam(1e-3))
    leaves = jax.tree.leaves(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert state.step.dtype == jnp.int32 and state.step.shape == ()
    restored = jax.tree.unflatten(jax.tree.structure(state), leaves)
    assert isinstance(restored, TrainState)


# --- eval -------------------------------------------------------------------------------------

NUM_TASKS = 3


@pytest.fixture(scope="module")
def eval_setup():
    # Dropout 0.5 in the model: results equal the dropout-free model's only if eval turns it off.
    params = init_params(TinyModel(dropout_rate=0.5), seed=5)
    step = jax.jit(make_eval_step(make_apply_fn(TinyModel(dropout_rate=0.5)), num_tasks=NUM_TASKS))
    return params, step


def _numpy_eval(params, batch, token_task_ids, starts):
    logits = np.asarray(
        make_apply_fn(PLAIN_MODEL)(params, batch, enable_dropout=False, rngs=None), np.float64
    )
    targets = np.asarray(batch["decoder_target_tokens"])
    weights = np.asarray(batch["decoder_loss_weights"])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    correct = (logits.argmax(-1) == targets).astype(np.float64)
    expected = {
        k: np.zeros(NUM_TASKS) for k in ("loss_sum", "token_count", "correct", "example_count")
    }
    for (r, c), task in np.ndenumerate(token_task_ids):
        if 0 <= task < NUM_TASKS:
            expected["loss_sum"][task] += ce[r, c] * weights[r, c]
            expected["token_count"][task] += weights[r, c]
            expected["correct"][task] += correct[r, c] * weights[r, c]
            expected["example_count"][task] += starts[r, c]
    return expected


def test_eval_per_task_sums_unpacked(eval_setup):
    params, step = eval_setup
    batch = dict(make_batch(seed=7), task_ids=jnp.array([1, 0, 1, -1], jnp.int32))
    result = jax.device_get(step(params, batch))
    token_ids = np.repeat(np.array([1, 0, 1, -1])[:, None], L, axis=1)
    starts = np.zeros((B, L))
    starts[:, 0] = 1.0
    expected = _numpy_eval(params, batch, token_ids, starts)
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-5, err_msg=key)
    np.testing.assert_array_equal(result["token_count"], [1, 11, 0])
    np.testing.assert_array_equal(result["example_count"], [1, 2, 0])


def test_eval_per_task_sums_packed(eval_setup):
    params, step = eval_setup
    batch = make_batch(seed=8)
    weights = np.ones((B, L), np.float32)
    weights[0, 5:] = 0.0
    segments = np.array(
        [[1, 1, 2, 2, 2, 0], [1, 2, 3, 3, 3, 3], [1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2]]
    )
    task_ids = np.array([[0, 0, 2, 2, 2, -1], [1, 1, 0, 0, 0, 0], [2] * L, [0, 0, 0, 1, 1, 1]])
    batch = dict(
        batch,
        decoder_loss_weights=jnp.asarray(weights),
        decoder_segment_ids=jnp.asarray(segments),
        task_ids=jnp.asarray(task_ids),
    )
    result = jax.device_get(step(params, batch))
    starts = np.zeros((B, L))
    for r, c in [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (3, 0), (3, 3)]:
        starts[r, c] = 1.0
    expected = _numpy_eval(params, batch, task_ids, starts)
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-5, err_msg=key)
    np.testing.assert_array_equal(result["example_count"], [3, 3, 2])
    np.testing.assert_array_equal(result["token_count"], [9, 5, 9])


def test_eval_without_task_ids():
    step = make_eval_step(make_apply_fn(PLAIN_MODEL), num_tasks=2)
    params = init_params(PLAIN_MODEL)
    with pytest.raises(DataError, match="task_ids"):
        jax.eval_shape(step, params, make_batch())
    single = make_eval_step(make_apply_fn(PLAIN_MODEL), num_tasks=1)
    shapes = jax.eval_shape(single, params, make_batch())
    assert shapes["loss_sum"].shape == (1,)

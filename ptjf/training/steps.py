"""Train and eval step functions, model-agnostic and ready for `jax.jit`.

Both take a generic `apply_fn(params, batch, *, enable_dropout, rngs) -> logits [b, l, vocab]`
and a SeqIO `EncDecFeatureConverter` batch carrying `decoder_target_tokens` and
`decoder_loss_weights` (1.0 on real target tokens, 0.0 on padding); the whole batch is passed to
`apply_fn`, which picks the features it needs.

Train step (`make_train_step`), decisions:

* **Normalisation by real target tokens** (paper App. B). With `num_microbatches = k` the batch is
  cut into k equal strided slices (rows i, i+k, …); the *sums* of loss and token counts are
  accumulated and the summed gradient is divided once by the total number of target tokens, so
  accumulation gives the full-batch gradient, not an average of per-slice averages.
* **Dropout randomness**: `fold_in(fold_in(dropout_rng, state.step), microbatch_index)`, so the
  trainer can pass the same base key every step and still get fresh masks per step and slice.
* **No host sync**: metrics are device scalars. `nonfinite` (int32, 0 or 1) flags a non-finite
  loss or gradient norm so the trainer can poll it every N steps and stop the stage.
* **Non-finite steps are skipped**: params and optimizer state are kept as they were, so one bad
  batch cannot corrupt the model. `step` still advances: it counts the batches the stage has
  consumed, keeping it in line with the data iterator, the dropout keys and checkpoints. The
  optimizer's internal count (which drives optax's schedule) does not advance on a skipped step,
  so after k skips the applied learning rate lags `schedule(step)` by k steps (the logged one
  lags with it); the trainer stops the stage on `nonfinite`, so this never compounds in practice.
* Metrics: `loss` (the objective: smoothed CE minus its entropy, plus z-loss; see `losses`),
  `z_loss`, `cross_entropy` (un-smoothed), `accuracy`, `token_count`, `grad_norm` (before any
  clipping the optimizer does), `learning_rate` (when a schedule is given) and `nonfinite`; all
  per real target token. `learning_rate` is the one this update applies: `schedule` evaluated
  at the optimizer state's own count, the count optax's `scale_by_schedule` feeds it
  (`schedule_count`), not at the stage-local `step`. The two differ in a stage that carries the
  previous stage's optimizer state (`Stage.reset_optimizer=False`): its step restarts at 0 while
  the carried count goes on.

Eval step (`make_eval_step`): dropout off, un-smoothed cross entropy, per-task sums (so hosts and
batches are added before dividing). Tasks are identified by a `task_ids` feature: [b] (one task
per row) or [b, l] (one task per token, for rows packed from several tasks); ids outside
`[0, num_tasks)` (e.g. -1 on the rows padding the last eval batch) count nowhere. With
`num_tasks == 1` the feature may be left out. Examples are counted as target segments: one per
row with any real target token, or one per distinct non-zero `decoder_segment_ids` run when the
batch is packed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

from ptjf.errors import ConfigError, DataError
from ptjf.training import losses
from ptjf.training.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


class ApplyFn(Protocol):
    def __call__(
        self, params: Any, batch: Batch, *, enable_dropout: bool, rngs: dict | None
    ) -> jax.Array: ...


TrainStep = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]
EvalStep = Callable[[Any, Batch], Metrics]


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """Reshape every feature [b, ...] to [k, b / k, ...]: microbatch i is rows i, i+k, i+2k, ….

    Strided rather than contiguous slices, so that on a mesh every microbatch takes the same
    number of rows from every data shard (a contiguous slice would sit on a few devices)."""
    sizes = {name: value.shape[0] for name, value in batch.items()}
    batch_size = next(iter(sizes.values()))
    if any(size != batch_size for size in sizes.values()):
        raise DataError(f"Batch features disagree on the batch size: {sizes}. Expected one size.")
    if batch_size % num_microbatches:
        raise ConfigError(
            f"num_microbatches = {num_microbatches} does not divide the batch size {batch_size}. "
            "Choose a number of microbatches that divides the per-step batch."
        )
    size = batch_size // num_microbatches
    return {
        name: value.reshape((size, num_microbatches, *value.shape[1:])).swapaxes(0, 1)
        for name, value in batch.items()
    }


def schedule_count(opt_state: Any, default: jax.Array) -> jax.Array:
    """The step count optax's `scale_by_schedule` keeps in `opt_state`: the argument the
    optimizer's learning-rate schedule is evaluated at (checkpointed and carried with the
    optimizer state). `default` when the optimizer has no schedule state (a constant rate)."""
    is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    for leaf in jax.tree.leaves(opt_state, is_leaf=is_schedule_state):
        if is_schedule_state(leaf):
            return leaf.count
    return default


def make_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    num_microbatches: int = 1,
    schedule: optax.Schedule | None = None,
) -> TrainStep:
    """`train_step(state, batch, dropout_rng) -> (new_state, metrics)`; see the module notes.

    `schedule` is only used to report `learning_rate`; `tx` already applies it, at the count in
    the optimizer state, where it is evaluated for the report too.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(
            f"label_smoothing = {label_smoothing!r} is invalid: expected a value in [0, 1). "
            "The paper's NMT runs use 0.1; 0 disables smoothing."
        )
    if z_loss < 0.0:
        raise ConfigError(f"z_loss = {z_loss!r} is invalid: expected a weight >= 0 (0 disables).")
    if (
        isinstance(num_microbatches, bool)
        or not isinstance(num_microbatches, int)
        or (num_microbatches < 1)
    ):
        raise ConfigError(
            f"num_microbatches = {num_microbatches!r} is invalid: expected an integer >= 1 "
            "(1 = no gradient accumulation)."
        )

    def sums_fn(params, batch: Batch, rng: jax.Array):
        logits = apply_fn(params, batch, enable_dropout=True, rngs={"dropout": rng})
        targets = batch["decoder_target_tokens"]
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        per_token = losses.token_losses(logits, targets, label_smoothing, z_loss)
        aux = {
            "z_loss": jnp.sum(per_token.z_loss * weights),
            "cross_entropy": jnp.sum(per_token.cross_entropy * weights),
            "correct": jnp.sum(losses.correct_predictions(logits, targets) * weights),
            "token_count": jnp.sum(weights),
        }
        return jnp.sum(per_token.loss * weights), aux

    grad_fn = jax.value_and_grad(sums_fn, has_aux=True)

    def accumulate(params, batch: Batch, step_rng: jax.Array):
        """Summed loss, sums and summed gradient over the microbatches."""
        if num_microbatches == 1:
            (loss_sum, sums), grads = grad_fn(params, batch, jax.random.fold_in(step_rng, 0))
            return loss_sum, sums, grads
        micro = _split_microbatches(batch, num_microbatches)

        def body(carry, xs):
            micro_batch, index = xs
            (loss_sum, sums), grads = grad_fn(
                params, micro_batch, jax.random.fold_in(step_rng, index)
            )
            return jax.tree.map(jnp.add, carry, (loss_sum, sums, grads)), None

        zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), step_rng)
        (loss_zero, sums_zero), grads_zero = jax.tree.map(
            lambda x: jnp.zeros(x.shape, x.dtype), zeros
        )
        init = (loss_zero, sums_zero, grads_zero)
        xs = (micro, jnp.arange(num_microbatches))
        (loss_sum, sums, grads), _ = jax.lax.scan(body, init, xs)
        return loss_sum, sums, grads

    def train_step(state: TrainState, batch: Batch, dropout_rng: jax.Array):
        step_rng = jax.random.fold_in(dropout_rng, state.step)
        loss_sum, sums, grads = accumulate(state.params, batch, step_rng)
        tokens = sums["token_count"]
        inverse_tokens = losses.normalized_loss(jnp.ones((), jnp.float32), tokens)
        grads = jax.tree.map(lambda g: g * inverse_tokens.astype(g.dtype), grads)
        loss = losses.normalized_loss(loss_sum, tokens)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        # A branch rather than a per-leaf select: XLA can then update the donated parameters
        # and optimizer state in place instead of keeping both versions alive.
        new_state = jax.lax.cond(
            finite,
            lambda s: s.apply_gradients(grads, tx),
            lambda s: s.replace(step=s.step + 1),
            state,
        )
        metrics = {
            "loss": loss,
            "z_loss": losses.normalized_loss(sums["z_loss"], tokens),
            "cross_entropy": losses.normalized_loss(sums["cross_entropy"], tokens),
            "accuracy": losses.normalized_loss(sums["correct"], tokens),
            "token_count": tokens,
            "grad_norm": grad_norm,
            "nonfinite": jnp.logical_not(finite).astype(jnp.int32),
        }
        if schedule is not None:
            count = schedule_count(state.opt_state, default=state.step)
            metrics["learning_rate"] = jnp.asarray(schedule(count), jnp.float32)
        return new_state, metrics

    return train_step


def _segment_starts(batch: Batch, weights: jax.Array) -> jax.Array:
    """1.0 on the first real target token of each example (segment), else 0.0; [b, l]."""
    real = weights > 0
    if "decoder_segment_ids" in batch:
        segments = batch["decoder_segment_ids"]
        previous = jnp.pad(segments[:, :-1], ((0, 0), (1, 0)))
        starts = (segments > 0) & (segments != previous)
    else:
        starts = jnp.cumsum(real, axis=1) == 1
    return (starts & real).astype(jnp.float32)


def make_eval_step(apply_fn: ApplyFn, *, num_tasks: int) -> EvalStep:
    """`eval_step(params, batch) -> per-task sums`, each of shape [num_tasks].

    Keys: `loss_sum` (un-smoothed cross entropy), `token_count`, `correct` (argmax hits),
    `example_count`. Divide summed `loss_sum` by summed `token_count` for the per-task loss.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ConfigError(f"num_tasks = {num_tasks!r} is invalid: expected an integer >= 1.")

    def eval_step(params, batch: Batch) -> Metrics:
        logits = apply_fn(params, batch, enable_dropout=False, rngs=None)
        targets = batch["decoder_target_tokens"]
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        if "task_ids" in batch:
            task_ids = batch["task_ids"]
        elif num_tasks == 1:
            task_ids = jnp.zeros(targets.shape[:1], jnp.int32)
        else:
            raise DataError(
                f"The eval batch has no 'task_ids' feature but num_tasks = {num_tasks}. Expected "
                "an integer 'task_ids' of shape [batch] or [batch, length]; add it when building "
                "the eval dataset."
            )
        cross_entropy = losses.token_losses(logits, targets).cross_entropy
        loss_sum, token_count = losses.per_task_sums(cross_entropy, weights, task_ids, num_tasks)
        correct, _ = losses.per_task_sums(
            losses.correct_predictions(logits, targets), weights, task_ids, num_tasks
        )
        starts = _segment_starts(batch, weights)
        example_count, _ = losses.per_task_sums(jnp.ones_like(starts), starts, task_ids, num_tasks)
        return {
            "loss_sum": loss_sum,
            "token_count": token_count,
            "correct": correct,
            "example_count": example_count,
        }

    return eval_step

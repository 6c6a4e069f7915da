"""The training state: the stage-local step, the parameters and the optimizer state.

`TrainState` holds only arrays. The optimizer (`optax.GradientTransformation`) is kept outside
and passed in where it is used, because it is a stage's configuration, not its state:

* orbax saves and restores the state's pytree as it is, with no optimizer object to exclude;
* the stage switch is `create_train_state(carried_params, next_stage_tx)`, which gives a fresh
  optimizer state (zero moments, count 0) and `step = 0`, the paper's reset (Sec. 3);
* an abstract target for restoring is `jax.eval_shape(create_train_state, params, tx)`.

`step` is the stage-local step (int32 scalar), the same count the stage's schedule sees.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """`step` (int32 scalar, counted from 0 in each stage), `params` and `opt_state`."""

    step: jax.Array
    params: optax.Params
    opt_state: optax.OptState

    def apply_gradients(self, grads: optax.Updates, tx: optax.GradientTransformation) -> TrainState:
        """One optimizer update with `tx`; `step` advances by one."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
        )


def create_train_state(params: optax.Params, tx: optax.GradientTransformation) -> TrainState:
    """A state at step 0 with a fresh optimizer state for `params`."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

"""Learning-rate schedules that count a stage's own steps.

Every schedule takes the **stage-local** step (0 on the stage's first update), so the second
stage of a plan warms up again from scratch: resetting the schedule at the switch is the point of
the paper (Sec. 3: learning is "extremely slow for tasks that are newly introduced when the
learning rate has already decayed"). Unlike T5X, no schedule needs the previous stage's length.

Warmups count from 0: `lr(step) = peak · step / warmup_steps`, so a stage's first update uses a
learning rate of exactly 0 and the peak is reached at `step == warmup_steps`. This matches
`optax.linear_schedule` and T5X's linear warmup, so a schedule imported from a T5X config draws
the same curve; it costs one zero-size update per stage, during which Adam/Adafactor still collect
the first second-moment statistics of the new mixture before any parameter moves.

Schedules (all jnp-traceable `optax.Schedule`s returning float32):

* `constant(lr)`.
* `warmup_cosine(peak_lr, warmup_steps, total_steps, end_lr=0)`: the paper's NMT schedule in every
  stage (App. A: linear warmup, then cosine decay to 0 at the end of the stage).
* `constant_then_rsqrt(peak_lr=0.01, constant_steps=10_000)`: the paper's mC4 pre-training
  schedule (App. B), `lr = peak · sqrt(constant_steps / max(step, constant_steps))`. T5X writes
  it as `base / sqrt(max(step, warmup_steps))`; the two are equal with
  `base = peak · sqrt(constant_steps)` (T5X's mT5 default base 1.0 with 10k steps gives 0.01).
* `warmup_rsqrt(peak_lr, warmup_steps)`: the paper's mC4 fine-tuning schedule (App. B):
  linear warmup to `peak`, then `peak · sqrt(warmup_steps / step)`; continuous at the peak.

`ScheduleConfig` (gin name `ScheduleConfig`) selects one of them by name; `make_schedule` builds
it for a stage of `total_steps` steps.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import gin
import jax.numpy as jnp
import optax

from ptjf.errors import ConfigError, UnknownNameError


def _as_float(step) -> jnp.ndarray:
    return jnp.asarray(step, dtype=jnp.float32)


def _linear_warmup(step: jnp.ndarray, peak_lr: float, warmup_steps: int) -> jnp.ndarray:
    if warmup_steps == 0:
        return jnp.full_like(step, peak_lr)
    return peak_lr * jnp.minimum(step, warmup_steps) / warmup_steps


def constant(lr: float) -> optax.Schedule:
    """`lr` at every step."""

    def schedule(step):
        return jnp.full_like(_as_float(step), lr)

    return schedule


def warmup_cosine(
    peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0
) -> optax.Schedule:
    """Linear warmup 0 → `peak_lr` over `warmup_steps`, cosine decay to `end_lr` at `total_steps`.

    Constant `end_lr` from `total_steps` on.
    """
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = _as_float(step)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, _linear_warmup(step, peak_lr, warmup_steps), cosine)

    return schedule


def constant_then_rsqrt(peak_lr: float = 0.01, constant_steps: int = 10_000) -> optax.Schedule:
    """`peak_lr` for `constant_steps` steps, then `peak_lr · sqrt(constant_steps / step)`."""

    def schedule(step):
        step = _as_float(step)
        return peak_lr * jnp.sqrt(constant_steps / jnp.maximum(step, constant_steps))

    return schedule


def warmup_rsqrt(peak_lr: float, warmup_steps: int) -> optax.Schedule:
    """Linear warmup 0 → `peak_lr` over `warmup_steps`, then `peak_lr · sqrt(warmup_steps/step)`."""

    def schedule(step):
        step = _as_float(step)
        decay = peak_lr * jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
        return jnp.where(step < warmup_steps, _linear_warmup(step, peak_lr, warmup_steps), decay)

    return schedule


SCHEDULE_NAMES = ("constant", "warmup_cosine", "constant_then_rsqrt", "warmup_rsqrt")


def _check(ok: bool, field: str, value, expected: str, fix: str) -> None:
    if not ok:
        raise ConfigError(
            f"ScheduleConfig.{field} = {value!r} is invalid: expected {expected}. {fix}"
        )


@gin.configurable("ScheduleConfig")
@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """A stage's learning-rate schedule, by name (one of `SCHEDULE_NAMES`).

    Fields a schedule does not use are ignored: `warmup_steps` by `constant` and
    `constant_then_rsqrt`, `constant_steps` by all but `constant_then_rsqrt`, `end_lr` by all but
    `warmup_cosine`. decay_steps: the cosine's horizon when it is not the stage's own length —
    the restart baseline's first stage is the first N1 steps of an N-step scalarization run, so
    its cosine spans N steps (`decay_steps = N`) and is cut at N1.
    """

    name: str
    peak_lr: float
    warmup_steps: int = 0
    constant_steps: int = 10_000
    end_lr: float = 0.0
    decay_steps: int | None = None

    def __post_init__(self):
        if self.name not in SCHEDULE_NAMES:
            raise UnknownNameError(
                "learning-rate schedule",
                self.name,
                SCHEDULE_NAMES,
                hint="Set ScheduleConfig.name to one of the registered schedules.",
            )
        _check(
            self.peak_lr > 0,
            "peak_lr",
            self.peak_lr,
            "a learning rate > 0",
            "Set it to the schedule's peak learning rate, e.g. 5e-4 (Adam) or 0.01 (Adafactor).",
        )
        _check(
            self.warmup_steps >= 0,
            "warmup_steps",
            self.warmup_steps,
            "an integer >= 0",
            "Use 0 for no warmup.",
        )
        _check(
            0 <= self.end_lr <= self.peak_lr,
            "end_lr",
            self.end_lr,
            f"a learning rate in [0, peak_lr={self.peak_lr}]",
            "The paper decays to 0.",
        )
        if self.decay_steps is not None:
            _check(
                isinstance(self.decay_steps, int)
                and not isinstance(self.decay_steps, bool)
                and self.decay_steps >= 1,
                "decay_steps",
                self.decay_steps,
                "None (the stage's own steps) or an integer >= 1",
                "Set it to the length of the run whose schedule the stage follows.",
            )
        if self.name == "warmup_rsqrt":
            _check(
                self.warmup_steps >= 1,
                "warmup_steps",
                self.warmup_steps,
                "an integer >= 1 for 'warmup_rsqrt' (the decay is relative to the warmup)",
                "The paper's fine-tuning stage uses 10_000.",
            )
        if self.name == "constant_then_rsqrt":
            _check(
                self.constant_steps >= 1,
                "constant_steps",
                self.constant_steps,
                "an integer >= 1 for 'constant_then_rsqrt'",
                "The paper's mC4 pre-training uses 10_000.",
            )


def make_schedule(config: ScheduleConfig, total_steps: int) -> optax.Schedule:
    """The schedule `config` names, for a stage of `total_steps` steps (counted from 0)."""
    if (
        isinstance(total_steps, bool)
        or not isinstance(total_steps, numbers.Integral)
        or total_steps < 1
    ):
        raise ConfigError(
            f"total_steps = {total_steps!r} is invalid: expected the stage's number of training "
            "steps, an integer >= 1. Check the stage's `num_steps`."
        )
    if config.decay_steps is not None:
        total_steps = config.decay_steps
    if config.name in ("warmup_cosine", "warmup_rsqrt") and config.warmup_steps > total_steps:
        raise ConfigError(
            f"ScheduleConfig.warmup_steps = {config.warmup_steps} is invalid for a stage of "
            f"{total_steps} steps: expected warmup_steps <= total_steps, or the stage never "
            "reaches its peak learning rate. Shorten the warmup or lengthen the stage."
        )
    if config.name == "constant":
        return constant(config.peak_lr)
    if config.name == "warmup_cosine":
        return warmup_cosine(config.peak_lr, config.warmup_steps, total_steps, config.end_lr)
    if config.name == "constant_then_rsqrt":
        return constant_then_rsqrt(config.peak_lr, config.constant_steps)
    return warmup_rsqrt(config.peak_lr, config.warmup_steps)

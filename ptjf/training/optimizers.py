"""Optimizers for a stage, built from a gin-configurable `OptimizerConfig`.

A stage builds its optimizer afresh from its config and schedule; `tx.init(params)` then gives the
reset optimizer state the paper calls for at the switch (zero moments, step count 0, so the
schedule restarts too). Nothing here remembers a previous stage.

Optimizers (all from optax, composed, not re-implemented):

* `adam`: `optax.adam(schedule, b1, b2, eps)` — the paper's NMT runs (App. A).
* `adamw`: `optax.adamw`; optax multiplies the decoupled weight decay by the learning rate
  (`p -= lr · (adam_update + weight_decay · p)`).
* `adafactor`: `optax.adafactor`, whose options cover both flavours ptjf needs:
    - T5's default: `factored=True, momentum=None, decay_rate=0.8, clipping_threshold=1.0,
      multiply_by_parameter_scale=True` (the field defaults here);
    - the paper's mC4 runs (App. B, "Adafactor with momentum, second moment not factorized"):
      `factored=False, momentum=0.9` (`paper_mc4_adafactor()`). 0.9 is the conventional first
      moment decay; the paper does not state its value.
  Adafactor's momentum is an EMA of the already learning-rate-scaled update (as in T5X), without
  bias correction. `decay_rate` is the exponent of the second-moment decay
  `1 - (t + 1)^-decay_rate`, with `t` the optimizer's own step count, which a fresh state
  restarts at 0: no decay offset is needed for a fine-tuning stage. `weight_decay` maps to
  optax's `weight_decay_rate`, which is *not* scaled by the learning rate.

`eps=None` selects each optimizer's conventional epsilon (1e-8 for Adam, 1e-30 for Adafactor's
ε1). `grad_clip_norm` clips the gradient's global norm before any of them.
"""

from __future__ import annotations

import dataclasses

import gin
import optax

from ptjf.errors import ConfigError, UnknownNameError

OPTIMIZER_NAMES = ("adam", "adamw", "adafactor")
_DEFAULT_EPS = {"adam": 1e-8, "adamw": 1e-8, "adafactor": 1e-30}
# Options that only one family of optimizers reads: set for the other, they would be ignored.
_ADAM_ONLY = ("b1", "b2")
_ADAFACTOR_ONLY = (
    "factored",
    "momentum",
    "decay_rate",
    "clipping_threshold",
    "multiply_by_parameter_scale",
    "min_dim_size_to_factor",
)


def _check(ok: bool, field: str, value, expected: str, fix: str = "") -> None:
    if not ok:
        message = f"OptimizerConfig.{field} = {value!r} is invalid: expected {expected}."
        raise ConfigError(message + (f" {fix}" if fix else ""))


@gin.configurable("OptimizerConfig")
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """A stage's optimizer. Adam fields: `b1`, `b2`, `eps`, `weight_decay` (adamw only).

    Adafactor fields: `factored`, `momentum`, `decay_rate`, `clipping_threshold`,
    `multiply_by_parameter_scale`, `min_dim_size_to_factor`, `eps`, `weight_decay`.
    An option of one family set away from its default while `name` selects the other is
    refused (ConfigError): the optimizer in use would ignore it.
    """

    name: str = "adam"
    b1: float = 0.9
    b2: float = 0.999
    eps: float | None = None
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None
    factored: bool = True
    momentum: float | None = None
    decay_rate: float = 0.8
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = True
    min_dim_size_to_factor: int = 128

    def __post_init__(self):
        if self.name not in OPTIMIZER_NAMES:
            raise UnknownNameError(
                "optimizer",
                self.name,
                OPTIMIZER_NAMES,
                hint="Set OptimizerConfig.name to one of the registered optimizers.",
            )
        self._check_options_of_other_optimizer()
        _check(0.0 <= self.b1 < 1.0, "b1", self.b1, "a decay rate in [0, 1)", "Adam uses 0.9.")
        _check(0.0 <= self.b2 < 1.0, "b2", self.b2, "a decay rate in [0, 1)", "Adam uses 0.999.")
        _check(
            self.eps is None or self.eps >= 0.0,
            "eps",
            self.eps,
            "a value >= 0, or None for the optimizer's default",
        )
        _check(self.weight_decay >= 0.0, "weight_decay", self.weight_decay, "a value >= 0")
        if self.name == "adam":
            _check(
                self.weight_decay == 0.0,
                "weight_decay",
                self.weight_decay,
                "0 for 'adam'",
                "Use name='adamw' for decoupled weight decay.",
            )
        _check(
            self.grad_clip_norm is None or self.grad_clip_norm > 0.0,
            "grad_clip_norm",
            self.grad_clip_norm,
            "a norm > 0, or None for no clipping",
        )
        _check(
            self.momentum is None or 0.0 <= self.momentum < 1.0,
            "momentum",
            self.momentum,
            "a decay rate in [0, 1), or None for no momentum",
            "The paper's mC4 runs use 0.9.",
        )
        _check(
            self.decay_rate > 0.0, "decay_rate", self.decay_rate, "an exponent > 0", "T5 uses 0.8."
        )
        _check(
            self.clipping_threshold is None or self.clipping_threshold >= 1.0,
            "clipping_threshold",
            self.clipping_threshold,
            "a threshold >= 1 (Adafactor update clipping), or None to disable it",
            "T5 uses 1.0.",
        )
        _check(
            self.min_dim_size_to_factor >= 1,
            "min_dim_size_to_factor",
            self.min_dim_size_to_factor,
            "an integer >= 1",
            "T5 uses 128.",
        )

    def _check_options_of_other_optimizer(self) -> None:
        """Refuses an option of the other optimizer family set away from its default: the
        optimizer in use would ignore it without a word (e.g. `momentum` with Adam)."""
        if self.name == "adafactor":
            foreign, owner, fix = _ADAM_ONLY, "Adam ('adam', 'adamw')", "Adafactor"
        else:
            foreign, owner, fix = _ADAFACTOR_ONLY, "Adafactor ('adafactor')", "Adam"
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for field in foreign:
            value = getattr(self, field)
            if value != defaults[field]:
                raise ConfigError(
                    f"OptimizerConfig.{field} = {value!r} is an option of {owner}, but the "
                    f"optimizer in use is OptimizerConfig.name = {self.name!r}, which ignores it. "
                    f"Remove the {field} setting, or set OptimizerConfig.name to the optimizer "
                    f"it belongs to (it has no effect on {fix})."
                )

    @property
    def resolved_eps(self) -> float:
        return _DEFAULT_EPS[self.name] if self.eps is None else self.eps


def t5_adafactor() -> OptimizerConfig:
    """T5's Adafactor: factored second moment, no momentum, decay 0.8, parameter scaling."""
    return OptimizerConfig(
        name="adafactor",
        factored=True,
        momentum=None,
        decay_rate=0.8,
        clipping_threshold=1.0,
        multiply_by_parameter_scale=True,
        min_dim_size_to_factor=128,
    )


def paper_mc4_adafactor(momentum: float = 0.9) -> OptimizerConfig:
    """The paper's mC4 Adafactor (App. B): with momentum, second moment not factored."""
    return dataclasses.replace(t5_adafactor(), factored=False, momentum=momentum)


def make_optimizer(
    config: OptimizerConfig, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer `config` names, stepping with `schedule` (which counts the stage's steps)."""
    eps = config.resolved_eps
    if config.name == "adam":
        tx = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=eps)
    elif config.name == "adamw":
        tx = optax.adamw(
            schedule, b1=config.b1, b2=config.b2, eps=eps, weight_decay=config.weight_decay
        )
    else:
        tx = optax.adafactor(
            learning_rate=schedule,
            min_dim_size_to_factor=config.min_dim_size_to_factor,
            decay_rate=config.decay_rate,
            multiply_by_parameter_scale=config.multiply_by_parameter_scale,
            clipping_threshold=config.clipping_threshold,
            momentum=config.momentum,
            weight_decay_rate=config.weight_decay or None,
            eps=eps,
            factored=config.factored,
        )
    if config.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx

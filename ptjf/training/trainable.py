"""Which parameters a stage trains: `Stage.trainable` patterns, and an optimizer that keeps
state for those parameters only.

A pattern is a Python regular expression matched in full (`re.fullmatch`, as T5X matches
parameter names) against a parameter's '/'-joined path in the model's tree, e.g.
`encoder/layers_0/attention/query/kernel`, `token_embedder/embedding` or
`decoder/logits_dense/kernel`. A parameter trains when any pattern matches it; the others are
frozen. `None` (the default) trains everything.

`freeze(tx, patterns)` wraps a stage's optimizer with `optax.partition`: the trained
parameters get `tx` (gradient clipping included, so the clipped global norm is the trained
parameters' alone), the frozen ones a transformation that keeps no state and updates by
exactly -0.0. Adding -0.0 leaves every float bit-identical (a +0.0 would turn -0.0 into
+0.0), so a frozen parameter comes out of every step as it went in: no update, no weight
decay. The frozen parameters' optimizer state is `optax.MaskedNode()`, a pytree node without
leaves: Adam's moments and Adafactor's factors exist for trained parameters only, and so do
their bytes in memory, in checkpoints and in `ptjf.models.memory`'s estimate.

Bad patterns are `ConfigError`s before the first step (`check`): a pattern that is not a
regular expression, one that matches no parameter (the message names the closest paths), or
patterns that leave nothing to train.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ptjf.checkpoints.fit import key_name
from ptjf.errors import ConfigError

TRAIN, FREEZE = "train", "freeze"


def param_paths(params: Any) -> list[str]:
    """Every parameter's '/'-joined path (arrays or `jax.ShapeDtypeStruct`s alike)."""
    return [
        "/".join(key_name(k) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


def compile_patterns(patterns: Sequence[str], owner: str = "Stage.trainable") -> list[re.Pattern]:
    """The patterns compiled; ConfigError naming the first that is not a regular expression."""
    if isinstance(patterns, str):
        raise ConfigError(
            f"{owner} = {patterns!r} is a string; give a list of patterns, e.g. "
            f'{owner} = ["{patterns}"].'
        )
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(
                f"{owner} holds {pattern!r}, which is not a string: give regular expressions "
                "over parameter paths, e.g. 'decoder/.*'."
            )
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ConfigError(
                f"{owner} pattern {pattern!r} is not a valid regular expression ({e}). Fix it; "
                "to match a path literally, escape special characters (re.escape)."
            ) from e
    return compiled


def trained_paths(paths: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """The paths that train under `patterns` (all of them for None)."""
    if patterns is None:
        return list(paths)
    compiled = compile_patterns(patterns)
    return [p for p in paths if any(c.fullmatch(p) for c in compiled)]


def trained_share(sizes: Mapping[str, int], patterns: Sequence[str] | None) -> float:
    """The share of the parameters' elements that train under `patterns` (checked first)."""
    check(list(sizes), patterns)
    trained = trained_paths(list(sizes), patterns)
    return sum(sizes[p] for p in trained) / sum(sizes.values())


def check(paths: Sequence[str], patterns: Sequence[str] | None, stage: str = "") -> None:
    """Refuses patterns that match no parameter, or that leave no parameter to train."""
    if patterns is None:
        return
    owner = f"Stage {stage!r}: Stage.trainable" if stage else "Stage.trainable"
    compiled = compile_patterns(patterns, owner)
    for pattern, regex in zip(patterns, compiled, strict=True):
        if not any(regex.fullmatch(p) for p in paths):
            close = difflib.get_close_matches(pattern, _candidates(paths), n=3, cutoff=0.3)
            hint = f" Closest parameter paths: {', '.join(close)}." if close else ""
            raise ConfigError(
                f"{owner} pattern {pattern!r} matches no parameter of the model (patterns "
                "match whole '/'-joined paths, such as 'decoder/.*' or "
                f"'encoder/layers_0/attention/query/kernel').{hint} Fix the pattern, or "
                "remove it."
            )
    if not trained_paths(paths, patterns):
        raise ConfigError(
            f"{owner} = {list(patterns)!r} trains no parameter: every parameter would be "
            "frozen and the stage would change nothing. Name the parameters to train (e.g. "
            "['decoder/.*']), or set it to None to train everything."
        )


def _candidates(paths: Sequence[str]) -> list[str]:
    """What a pattern may have meant: every path, and every module above one as 'module/.*'."""
    modules = {p.rsplit("/", k)[0] + "/.*" for p in paths for k in range(1, p.count("/") + 1)}
    return sorted(set(paths) | modules)


def labels(params: Any, patterns: Sequence[str], stage: str = "") -> Any:
    """`params`' tree with TRAIN or FREEZE at every leaf; checks the patterns first."""
    check(param_paths(params), patterns, stage)
    compiled = compile_patterns(patterns)

    def label(path: Any, _: Any) -> str:
        name = "/".join(key_name(k) for k in path)
        return TRAIN if any(c.fullmatch(name) for c in compiled) else FREEZE

    return jax.tree_util.tree_map_with_path(label, params)


def _frozen() -> optax.GradientTransformation:
    """No state; every update is -0.0, which leaves any float parameter bit-identical."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def freeze(
    tx: optax.GradientTransformation, patterns: Sequence[str] | None, stage: str = ""
) -> optax.GradientTransformation:
    """`tx` for the parameters `patterns` match, nothing (and no state) for the rest.

    None returns `tx` itself, so a stage without `trainable` keeps the state layout it always
    had (and its checkpoints restore as before).
    """
    if patterns is None:
        return tx
    patterns = tuple(patterns)
    compile_patterns(patterns)
    return optax.partition(
        {TRAIN: tx, FREEZE: _frozen()}, lambda params: labels(params, patterns, stage)
    )

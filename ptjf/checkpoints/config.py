"""How a stage checkpoints (`CheckpointConfig`, gin) and how a checkpoint path is named.

Configuration only, so that gin files, the CLI and the sweep can name checkpoints without the
checkpointer itself (`ptjf.checkpoints.checkpointer`, which re-exports both).
"""

from __future__ import annotations

import dataclasses
import os

import gin

from ptjf.errors import ConfigError


@gin.configurable("CheckpointConfig")
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When a stage saves and how many of its checkpoints it keeps.

    period: save every `period` stage-local steps; 0 saves only at the end of the stage (the
        trainer's `force=True` save). keep: newest checkpoints kept per stage, None keeps all
        (T5X's default). async_save: write in a background thread so training continues.
        keep_steps: stage steps that are always saved and never collected — the points other
        runs fork from (a sweep's restart baseline restarts a scalarization run at N1).
    """

    period: int = 1000
    keep: int | None = None
    async_save: bool = True
    keep_steps: tuple[int, ...] = ()

    def __post_init__(self):
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 0:
            raise ConfigError(
                f"CheckpointConfig.period={self.period!r} is invalid: expected an integer >= 0 "
                "(steps between saves; 0 = only at the end of the stage). "
                "Set e.g. --gin.CheckpointConfig.period=1000."
            )
        if self.keep is not None and (
            isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1
        ):
            raise ConfigError(
                f"CheckpointConfig.keep={self.keep!r} is invalid: expected an integer >= 1 or "
                "None (keep all). Set e.g. --gin.CheckpointConfig.keep=2."
            )
        steps = tuple(self.keep_steps or ())
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
            raise ConfigError(
                f"CheckpointConfig.keep_steps={self.keep_steps!r} is invalid: expected stage "
                "steps, integers >= 0, e.g. (1000,)."
            )
        object.__setattr__(self, "keep_steps", tuple(sorted(set(steps))))


def parse_checkpoint_path(path: str) -> tuple[str, int | None]:
    """Split `DIR` or `DIR/STEP` into (stage directory, step or None).

    A trailing component made only of digits is orbax's default step-directory name, so stage
    names must not be plain integers. Works on `gs://` paths (no path normalisation).
    """
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise ConfigError(
            f"Checkpoint path {path!r} is empty: expected a stage directory "
            "(MODEL_DIR/<stage>) or a step directory (MODEL_DIR/<stage>/<step>)."
        )
    text = str(path).rstrip("/")
    head, sep, last = text.rpartition("/")
    if sep and head and last.isdigit():
        return head, int(last)
    return text, None

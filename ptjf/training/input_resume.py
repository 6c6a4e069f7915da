"""Where a stage's input stream starts: restored from the checkpoint's saved positions, or, as
the logged fallback, replayed; and what the next checkpoint saves of it.

train.resume_input:
  "restore" (default): a step saved with an input state continues from it (cost independent of
      the step). A saved stream that differs from this run's (another mixture, rates, seed,
      lengths, packing, batch, input shards or vocabulary) is refused, naming the differences.
      A step saved without one (by an older ptjf, or from a stream tf.data cannot checkpoint)
      or whose state is damaged is replayed, with a warning that says so and estimates the time.
  "replay": ignore saved positions; start this run's stream and skip the batches of the steps
      already trained (for a deliberate change of the stream's settings on resume).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ptjf.checkpoints import input_positions as checkpoint_input
from ptjf.data import input_state
from ptjf.data.input_state import HostStream
from ptjf.errors import ConfigError, CorruptCheckpointError, DataError

log = logging.getLogger("ptjf.commands.train")


def check_mode(mode: str) -> str:
    if mode not in input_state.RESUME_MODES:
        raise ConfigError(
            f"train.resume_input={mode!r}: expected one of {list(input_state.RESUME_MODES)} "
            "('restore' continues from the checkpoint's saved input positions; 'replay' skips "
            "the trained batches of this run's stream)."
        )
    return mode


class StageInput:
    """One stage's input stream on this host: opened at a step, its positions captured.

    open_stream(start_batch, states) builds the host's stream (`data.host_train_batches`);
    descriptor: `input_state.describe` of this run's stream; shards: this host's input shards
    out of num_shards.
    """

    def __init__(
        self,
        stage_dir: str,
        open_stream: Callable[[int, Mapping[int, bytes] | None], HostStream],
        descriptor: Mapping[str, Any],
        shards: Sequence[int],
        mode: str = "restore",
    ):
        self.stage_dir = stage_dir
        self._open = open_stream
        self.descriptor = dict(descriptor)
        self.shards = list(shards)
        self.mode = check_mode(mode)
        self._unsavable: str | None = None

    def open(self, step: int) -> HostStream:
        """The stream positioned after `step` batches (the stage's step `step` checkpoint)."""
        if step == 0:
            return self._open(0, None)
        where = f"{self.stage_dir} step {step}"
        if self.mode == "replay":
            log.warning("train.resume_input='replay': %s: replaying %d batches.", where, step)
            return self._open(step, None)
        try:
            saved = checkpoint_input.read_saved(self.stage_dir, step, self.shards)
        except CorruptCheckpointError as e:
            log.warning("%s; replaying the input stream's %d batches instead.", e, step)
            return self._open(step, None)
        if saved is None:
            log.warning(
                "%s has no saved input state (written by an older ptjf or from a stream tf.data "
                "cannot checkpoint): replaying %d batches to reach it.",
                where,
                step,
            )
            return self._open(step, None)
        descriptor, states = saved
        input_state.check_matches(descriptor, self.descriptor, where)
        return self._open(step, states)

    def capture(self, stream: HostStream) -> checkpoint_input.InputStateSave | None:
        """The positions a checkpoint saves now; None (logged once) when tf.data cannot save
        this stream, so that checkpoints go on without it and a resume replays."""
        if self._unsavable is not None:
            return None
        try:
            states = stream.save()
        except DataError as e:
            self._unsavable = str(e)
            log.warning("%s Checkpoints are saved without the input position.", e)
            return None
        return checkpoint_input.InputStateSave(
            descriptor=self.descriptor,
            states=states,
            num_shards=int(self.descriptor["input_shards"]),
        )

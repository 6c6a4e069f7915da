"""The input streams' positions as an item of every checkpoint (`input_state/`).

Inside a checkpoint step, `input_state/` holds `stream.json` (what stream the positions belong
to: `ptjf.data.input_state.describe`, written by process 0) and one file per input shard
(`shard-00003-of-00008.state`: tf.data's iterator state behind its SHA-256), written by the
process that reads that shard. Being an orbax item, it is finalized with the arrays: a step is
either complete with its input positions or not a checkpoint at all, on local disk and gs://.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from ptjf import storage
from ptjf.data import input_state
from ptjf.errors import CheckpointError, CorruptCheckpointError

ITEM = "input_state"
DESCRIPTOR = "stream.json"


@dataclasses.dataclass
class InputStateSave(ocp.args.CheckpointArgs):
    """descriptor: the stream's settings (same on every process); states: this process's
    input shards' iterator states; num_shards: the stream's number of input shards."""

    descriptor: Mapping[str, Any]
    states: Mapping[int, bytes]
    num_shards: int


@dataclasses.dataclass
class InputStateRestore(ocp.args.CheckpointArgs):
    shards: Sequence[int]


def write(directory: epath.Path | str, args: InputStateSave, primary: bool) -> None:
    """Writes `args` into an input-state folder (each shard file atomically)."""
    directory = str(directory)
    if primary:
        storage.write_text(storage.join(directory, DESCRIPTOR), json.dumps(dict(args.descriptor)))
    for shard, payload in args.states.items():
        name = input_state.shard_file(shard, args.num_shards)
        storage.write_bytes(storage.join(directory, name), input_state.encode(payload))


def read(directory: epath.Path | str, shards: Sequence[int]) -> tuple[dict, dict[int, bytes]]:
    """(descriptor, {shard: state}) of an input-state folder; CheckpointError if incomplete."""
    directory = str(directory)
    try:
        descriptor = json.loads(storage.read_text(storage.join(directory, DESCRIPTOR)))
    except FileNotFoundError:
        raise CheckpointError(
            f"{directory} has no {DESCRIPTOR}: the input state is incomplete."
        ) from None
    num_shards = int(descriptor["input_shards"])
    states = {}
    for shard in shards:
        path = storage.join(directory, input_state.shard_file(shard, num_shards))
        try:
            states[shard] = input_state.decode(storage.read_bytes(path), path)
        except FileNotFoundError:
            raise CheckpointError(
                f"{directory} has no state for input shard {shard} of {num_shards} ({path})."
            ) from None
    return descriptor, states


def read_saved(stage_dir: str, step: int, shards: Sequence[int]) -> tuple[dict, dict] | None:
    """(stream descriptor, {input shard: state}) saved with `step` of `stage_dir`, or None if
    that step has no input state (saved without one, or by an older ptjf). Reads the files
    directly, so it may run on another thread while the stage's checkpointer saves."""
    location = storage.join(stage_dir, str(step))
    folder = storage.join(location, ITEM)
    if not storage.isdir(folder):
        return None
    try:
        return read(folder, shards)
    except CheckpointError as e:
        raise CorruptCheckpointError(f"Checkpoint {location} is corrupted: {e}") from e


class InputStateHandler(ocp.AsyncCheckpointHandler):
    """Writes the positions in the background with the arrays; each process its own shards."""

    async def async_save(self, directory: epath.Path, args: InputStateSave) -> list:
        primary = jax.process_index() == 0

        async def save() -> None:
            write(directory, args, primary)

        return [ocp.future.CommitFutureAwaitingContractedSignals(save(), name="ptjf_input")]

    def save(self, directory: epath.Path, args: InputStateSave) -> None:
        write(directory, args, jax.process_index() == 0)

    def restore(self, directory: epath.Path, args: InputStateRestore) -> dict:
        descriptor, states = read(directory, args.shards)
        return {"descriptor": descriptor, "states": states}


ocp.args.register_with_handler(InputStateHandler, for_save=True)(InputStateSave)
ocp.args.register_with_handler(InputStateHandler, for_restore=True)(InputStateRestore)

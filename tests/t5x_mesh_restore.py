"""Restores T5X's fixture checkpoints onto a mesh of 8 fake CPU devices; writes what tests check.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/t5x_mesh_restore.py OUT_DIR

The flag must be set before jax is imported, so tests/test_t5x_import.py runs this in a
subprocess. For the orbax and the legacy layout it restores the parameters onto a (data 4,
model 2) mesh with 2-D parameter partitioning (every kernel split over both axes), runs the
forward pass there, and writes OUT_DIR/results.json: each parameter's PartitionSpec, its
per-device shard shapes, whether the gathered values equal a one-device restore bit for bit,
and the largest logit difference from T5X's outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from ptjf.models import EncoderDecoder, init_params, param_logical_axes
from ptjf.runtime.partitioning import Partitioner, standard_logical_axis_rules
from ptjf.t5x import checkpoints as t5x_checkpoints
from ptjf.t5x import models as t5x_models

DATA = Path(__file__).parent / "data" / "t5x"
LAYOUTS = {"orbax": "t511_small_orbax", "legacy": "legacy_format"}


def main(out_dir: str) -> None:
    outputs = np.load(DATA / "t511_small_orbax" / "outputs.npz")
    weights = outputs["decoder_loss_weights"].astype(bool)
    partitioner = Partitioner(
        num_partitions=2,
        logical_axis_rules=standard_logical_axis_rules(parameter_partitioning_dims=2),
    )
    results: dict = {"device_count": jax.device_count(), "mesh": dict(partitioner.mesh.shape)}
    for layout, folder in LAYOUTS.items():
        checkpoint = t5x_checkpoints.open_checkpoint(DATA / folder / "checkpoint_20")
        config = t5x_models.infer_config(checkpoint)
        model = EncoderDecoder(config)
        abstract = jax.eval_shape(lambda key, c=config: init_params(c, key), jax.random.key(0))
        shardings = partitioner.param_shardings(param_logical_axes(model), abstract)
        params = t5x_models.load_params(checkpoint, config, shardings)
        reference = t5x_checkpoints.flatten(t5x_checkpoints.restore_params(checkpoint))
        flat = t5x_checkpoints.flatten(params)
        forward = partitioner.jit(
            lambda p, m=model: m.apply(
                {"params": p},
                outputs["encoder_input_tokens"],
                outputs["decoder_input_tokens"],
                outputs["decoder_target_tokens"],
                enable_dropout=False,
            )
        )
        logits = np.asarray(forward(params))
        results[layout] = {
            "specs": {name: str(array.sharding.spec) for name, array in flat.items()},
            "shard_shapes": {
                name: sorted({tuple(s.data.shape) for s in array.addressable_shards})
                for name, array in flat.items()
            },
            "bit_identical": all(
                np.array_equal(np.asarray(flat[name]), np.asarray(reference[name]))
                for name in reference
            ),
            "logits_max_diff": float(np.abs(logits - outputs["logits"])[weights].max()),
        }
    Path(out_dir, "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

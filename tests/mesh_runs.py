"""Runs the tiny PTJF plan on several meshes of fake CPU devices and writes what tests check.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_runs.py OUT_DIR

The flag must be set before jax is imported, so tests run this in a subprocess. Results go to
OUT_DIR/results.json: per mesh, the training losses and final eval losses, the parameters'
and optimizer state's shardings; and checks of a checkpoint written on the (4, 2) mesh restored
onto (8, 1) and one device, for resume and for `ptjf switch`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np

from ptjf import config as gin_config
from ptjf import stages as stg
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import switch
from ptjf.runtime.partitioning import Partitioner, standard_logical_axis_rules
from ptjf.training import stage_state, state_layout, trainer
from ptjf.training.metrics_io import TRAIN_METRICS_FILE, read_metrics

# One stage (one compilation per mesh) keeps the 8 runs short; the stage switch across meshes is
# checked with `ptjf switch` into the PTJF plan's joint stage.
RUN = ["runs/scalarization.gin", "models/tiny.gin"]
PTJF_RUN = ["runs/ptjf.gin", "models/tiny.gin"]
BINDINGS = [
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "TRAIN_STEPS = 6",
    "PRETRAIN_STEPS = 3",
    "FINETUNE_STEPS = 3",
    "WARMUP_STEPS = 1",
    "LEARNING_RATE = 3e-3",
    "BATCH_SIZE = 8",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 24}",
    "EVAL_PERIOD = 3",
    "CheckpointConfig.period = 3",
    "CheckpointConfig.keep = None",
    "train.max_eval_examples = 16",
    "train.train_eval_examples = 8",
    "train.log_every = 1",
    "train.tensorboard = False",
    "TransformerConfig.dropout_rate = 0.0",
]
# name: (num_partitions, devices, parameter_partitioning_dims, extra gin bindings); "fsdp" also
# splits parameters' and optimizer state's `embed` axis over `data` (T5X's 2-D partitioning).
# Runs are without dropout unless named so: microbatches then draw no masks, so gradient
# accumulation and rematerialisation on a mesh must change no number.
DROPOUT = ("TransformerConfig.dropout_rate = 0.1",)
MESHES: dict[str, tuple[int, int, int, tuple[str, ...]]] = {
    "1": (1, 1, 1, ()),
    "8x1": (1, 8, 1, ()),
    "4x2": (2, 8, 1, ()),
    "2x4": (4, 8, 1, ()),
    "4x2-fsdp": (2, 8, 2, ()),
    "4x2-micro-remat": (
        2,
        8,
        1,
        ("train.num_microbatches = 2", "TransformerConfig.remat_policy = 'full'"),
    ),
}
# PTJF_SLOW=1 (the full form) adds: dropout on a mesh draws the one-device masks, and bf16
# activations on a mesh stay within bf16's precision of float32.
SLOW_MESHES: dict[str, tuple[int, int, int, tuple[str, ...]]] = {
    "1-dropout": (1, 1, 1, DROPOUT),
    "2x4-dropout": (4, 8, 1, DROPOUT),
    "4x2-bf16": (
        2,
        8,
        1,
        (
            "TransformerConfig.dtype = 'bfloat16'",
            "train.num_microbatches = 2",
            "TransformerConfig.remat_policy = 'minimal'",
        ),
    ),
}
if os.environ.get("PTJF_SLOW") == "1":
    MESHES.update(SLOW_MESHES)


def parse(model_dir: str, *extra: str, files: list[str] = RUN) -> None:
    gin_config.parse_gin(files, [f"MODEL_DIR = '{model_dir}'", *BINDINGS, *extra])


def partitioner(name: str) -> Partitioner:
    num_partitions, devices, dims, _ = MESHES[name]
    return Partitioner(
        num_partitions=num_partitions,
        logical_axis_rules=standard_logical_axis_rules(parameter_partitioning_dims=dims),
        devices=jax.devices()[:devices],
    )


def specs(tree) -> dict[str, str]:
    return {
        jax.tree_util.keystr(path): str(leaf.sharding.spec)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def main(out: str) -> None:
    results: dict = {"device_count": jax.device_count(), "meshes": {}}
    for name in MESHES:
        model_dir = os.path.join(out, name)
        parse(model_dir, *MESHES[name][3])
        part = partitioner(name)
        trainer.train(partitioner=part)
        train_records = read_metrics(os.path.join(model_dir, TRAIN_METRICS_FILE))
        evals = read_metrics(model_dir)
        plan = stg.Plan()
        config = trainer.model_config(plan)
        tx, _ = stg.make_tx(plan, 0)
        target = part.with_shardings(
            jax.eval_shape(
                lambda p, tx=tx: stg.switch_state(p, tx), state_layout.abstract_params(config)
            ),
            state_layout.state_shardings(part, config, tx),
        )
        with ckpt.StageCheckpointer(os.path.join(model_dir, "joint"), read_only=True) as c:
            state, _ = c.restore(6, target_state=target)
        results["meshes"][name] = {
            "mesh": dict(part.mesh.shape),
            "train_loss": [r["loss"] for r in train_records],
            "eval": {t: v["loss"] for t, v in evals[-1]["validation"].items()},
            "param_specs": specs(state.params),
            "param_dtypes": sorted({str(leaf.dtype) for leaf in jax.tree.leaves(state.params)}),
            "opt_specs": specs(state.opt_state),
            "device_counts": {
                k: len(leaf.sharding.device_set)
                for k, leaf in zip(specs(state.params), jax.tree.leaves(state.params), strict=True)
            },
        }
        np.savez(
            os.path.join(out, f"{name}-params.npz"),
            **{
                k: np.asarray(v)
                for k, v in zip(specs(state.params), jax.tree.leaves(state.params), strict=True)
            },
        )

    # Restore the (4, 2) run's final checkpoint onto other meshes: the same values, new layout.
    source = os.path.join(out, "4x2", "joint")
    saved = np.load(os.path.join(out, "4x2-params.npz"))
    parse(os.path.join(out, "4x2"))
    plan = stg.Plan()
    config = trainer.model_config(plan)
    restored = {}
    for name in ("8x1", "1"):
        part = partitioner(name)
        with ckpt.StageCheckpointer(source, read_only=True) as c:
            params, _ = stage_state.restore_params(c, 6, part, config)
        same = all(
            np.array_equal(np.asarray(v), saved[k])
            for k, v in zip(specs(params), jax.tree.leaves(params), strict=True)
        )
        restored[name] = {
            "equal": same,
            "mesh": dict(part.mesh.shape),
            "devices": sorted({len(v.sharding.device_set) for v in jax.tree.leaves(params)}),
        }
    # Resume on another mesh: the (4, 2) run cut back to its step-3 checkpoint continues on
    # (8, 1) and must take the same steps 4..6.
    resume_dir = os.path.join(out, "resume")
    shutil.copytree(os.path.join(out, "4x2"), resume_dir)
    shutil.rmtree(os.path.join(resume_dir, "joint", "6"))
    os.remove(os.path.join(resume_dir, TRAIN_METRICS_FILE))
    parse(resume_dir)
    trainer.train(partitioner=partitioner("8x1"))
    restored["resume_train_loss"] = [
        r["loss"] for r in read_metrics(os.path.join(resume_dir, TRAIN_METRICS_FILE))
    ]
    # `ptjf switch` from the (4, 2) checkpoint into the PTJF plan's joint stage, on one device.
    parse(os.path.join(out, "switched"), files=PTJF_RUN)
    target_dir = os.path.join(out, "switched", "joint")
    switch.switch(
        source + "/3", target_dir, stg.Plan(), stage="joint", partitioner=partitioner("1")
    )
    with ckpt.StageCheckpointer(target_dir, read_only=True) as c:
        switched, meta = stage_state.restore_params(c, 0, partitioner("1"), config)
    with ckpt.StageCheckpointer(source, read_only=True) as c:
        at3, _ = stage_state.restore_params(c, 3, partitioner("1"), config)
    restored["switch"] = {
        "equal": all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(switched), jax.tree.leaves(at3), strict=True)
        ),
        "parent_step": meta["lineage"]["parent_step"],
    }
    results["restore"] = restored
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

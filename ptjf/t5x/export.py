"""Writing a ptjf checkpoint as a T5X checkpoint, for T5X's own trainer (`ptjf export`).

`export_checkpoint(source, out_dir)` reads one step of a ptjf stage (`MODEL_DIR/<stage>` for
its newest step, or `MODEL_DIR/<stage>/<step>`) and writes `out_dir/checkpoint_<step>/` in
T5X's orbax layout, the layout `t5x.train` writes and restores by default:

    out_dir/config.gin                       the model as T5X's `network.T5Config` bindings
                                             (only when out_dir has no config.gin yet)
    out_dir/checkpoint_<step>/state/         one orbax PyTree item (OCDBT), holding
        {'target': params,                       every parameter, float32
         'state': {'step': int32 scalar,
                   'param_states': {<param path>: {'m', 'v', 'v_row', 'v_col'}}}}
    out_dir/checkpoint_<step>/_CHECKPOINT_METADATA, commit_success.txt

It is written by orbax's own `CheckpointManager` (step prefix `checkpoint`), as T5X's
checkpoint manager writes it: on local disk into a temporary directory renamed into place when
complete, on `gs://` in place with `commit_success.txt` written last. Either way nothing
half-written looks finished, to T5X or to `ptjf.t5x.checkpoints.open_checkpoint`. An existing
`checkpoint_<step>` is never overwritten: the export refuses before writing anything.

The optimizer state is T5X Adafactor's, in one of two forms:

* `optimizer_state="fresh"` (step 0): zero statistics laid out exactly as T5X's Adafactor
  lays them out for these parameters (`fresh_param_states`), so that T5X's trainer, with the
  same `factored`, `min_dim_size_to_factor` and momentum (`beta1`) settings, starts a new
  phase with its own warmup. Unused slots are float32 zeros of shape (1,), as T5X keeps them.
* `optimizer_state="carry"` (the source's stage step): the run's own Adafactor statistics
  (ptjf's Adafactor is optax's), moved into T5X's slots (`t5x_adafactor_state`, the inverse of
  `ptjf.t5x.models.optax_adafactor_state`). Adam and AdamW keep per-parameter first and second
  moments with bias correction, which T5X's Adafactor has no slot for: they are refused.

Only what T5X's minimal T5 (`t5x.examples.t5.network`) can hold is exported: its parameter
names are ptjf's, with one relative position table per stack (`share_relpos_bias=True`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from ptjf import storage
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.errors import CheckpointError, ConfigError
from ptjf.models.config import TransformerConfig
from ptjf.t5x import checkpoints as tc
from ptjf.t5x.adafactor import (
    SLOTS,
    STATE_CLASSES,
    UNUSED,
    fresh_param_states,
    optimizer_kind,
    optimizer_states,
    state_field,
    t5x_adafactor_state,
    t5x_slot_shapes,
)
from ptjf.t5x.checkpoints import ArrayInfo, T5XCheckpoint, flatten

log = logging.getLogger(__name__)

FRESH, CARRY = "fresh", "carry"
OPTIMIZER_STATES = (FRESH, CARRY)
STEP_PREFIX = "checkpoint"  # T5X's step directories: checkpoint_<step>
RUN_CONFIG_FILE = "config.gin"
# ptjf's model fields a checkpoint's shapes do not give, read from the run's config.gin.
_RUN_FIELDS = ("mlp_activations", "dtype", "dropout_rate", "float32_attention_logits")


# ----------------------------------------------------------------------------------------------
# Reading the source
# ----------------------------------------------------------------------------------------------


def _item_tree(stage_dir: str, step: int, item: str) -> Any:
    path = storage.path(storage.join(stage_dir, str(step), item))
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(path)
    except Exception as e:
        raise CheckpointError(
            f"ptjf checkpoint {stage_dir}/{step}: the metadata of its {item!r} item cannot be "
            f"read ({type(e).__name__}: {e})."
        ) from e
    return getattr(metadata, "tree", metadata)


def _abstract(meta_tree: Any, sharding: Any) -> Any:
    """A restore target from an item's metadata: arrays as ShapeDtypeStructs on `sharding`,
    optax's states rebuilt from their field names (so a restore reads them back in the saved
    leaf order, which the saved fingerprint depends on)."""

    def convert(node: Any) -> Any:
        if node is None:
            return optax.EmptyState()
        if isinstance(node, Mapping):
            children = {key: convert(value) for key, value in node.items()}
            cls = STATE_CLASSES.get(frozenset(children))
            return cls(**children) if cls is not None else children
        if isinstance(node, list | tuple):
            return tuple(convert(value) for value in node)
        return jax.ShapeDtypeStruct(tuple(node.shape), np.dtype(node.dtype), sharding=sharding)

    return convert(meta_tree)


def _listing(params_meta: Any) -> dict[str, ArrayInfo]:
    return {
        name: ArrayInfo(tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name)
        for name, leaf in flatten(dict(params_meta)).items()
    }


def _run_fields(stage_dir: str, num_mlp_inputs: int) -> dict[str, Any]:
    """The model fields that shapes do not give, from the ptjf run's MODEL_DIR/config.gin."""
    from ptjf.t5x import models as t5x_models

    path = storage.join(storage.dirname(stage_dir), RUN_CONFIG_FILE)
    if not storage.isfile(path):
        return {}
    fields = t5x_models.read_run_config(path, configurable="TransformerConfig")
    found = {name: fields[name] for name in _RUN_FIELDS if name in fields}
    if "mlp_activations" in found:
        activations = found["mlp_activations"]
        activations = (activations,) if isinstance(activations, str) else tuple(activations)
        if len(activations) != num_mlp_inputs:
            log.warning(
                "%s says mlp_activations=%r, but the checkpoint's MLP has %d input projection(s); "
                "not using it.",
                path,
                activations,
                num_mlp_inputs,
            )
            del found["mlp_activations"]
        else:
            found["mlp_activations"] = activations
    if "dtype" in found:
        found["dtype"] = str(found["dtype"])
    return found


def _t5x_config(listing: Mapping[str, ArrayInfo], location: str) -> TransformerConfig:
    """The checkpoint's model as T5X's minimal T5 runs it; CheckpointError if it cannot."""
    from ptjf.t5x import models as t5x_models

    as_t5x = T5XCheckpoint(path=location, layout="ptjf", params=listing, optimizer={})
    try:
        config = t5x_models.infer_config(as_t5x, run_config=None)
    except CheckpointError as e:
        raise CheckpointError(
            f"ptjf checkpoint {location} cannot be exported to T5X: its parameters are not "
            f"those of T5X's minimal T5 (t5x.examples.t5.network). {e}"
        ) from e
    if not config.share_relpos_bias:
        raise CheckpointError(
            f"ptjf checkpoint {location} cannot be exported to T5X: its model has one relative "
            "position table per layer (TransformerConfig.share_relpos_bias=False, "
            "encoder/layers_0/relpos_bias/…), and T5X's minimal T5 (t5x.examples.t5.network) "
            "has one per stack. Only a model trained with share_relpos_bias=True (every model "
            "started from a T5X checkpoint) can be exported."
        )
    return config


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def t5x_model_gin_text(config: TransformerConfig, *, source: str, known: tuple[str, ...]) -> str:
    """`config` as the `network.T5Config` bindings T5X's run config holds (T5X gin syntax)."""
    fields = {
        "vocab_size": config.vocab_size,
        "emb_dim": config.emb_dim,
        "num_heads": config.num_heads,
        "head_dim": config.head_dim,
        "mlp_dim": config.mlp_dim,
        "num_encoder_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "logits_via_embedding": config.logits_via_embedding,
    }
    fields.update({name: getattr(config, name) for name in known})
    unknown = [name for name in _RUN_FIELDS if name not in known]
    header = [
        f"# The model of a checkpoint exported by `ptjf export` from {source}, as T5X's",
        "# network.T5Config bindings (t5x.examples.t5.network); the sizes are the parameters'.",
    ]
    if unknown:
        header.append(
            f"# Not known (no TransformerConfig binding in the run's config.gin): "
            f"{', '.join(unknown)}; T5X's defaults or the run's gin files decide them."
        )
    header += [
        "# T5X's network has no setting for ptjf's float32_attention_softmax and",
        "# norm_scale_in_float32: T5X computes both in the compute dtype.",
        "# T5X replaces this file with its own config.gin when it trains in this directory.",
    ]
    lines = [
        *header,
        "from __gin__ import dynamic_registration",
        "from t5x.examples.t5 import network",
        "",
        *(f"network.T5Config.{name} = {value!r}" for name, value in fields.items()),
    ]
    return "\n".join(lines) + "\n"


def _refuse_existing(dest: str) -> None:
    if storage.exists(dest):
        finished = storage.exists(storage.join(dest, tc.COMMIT_MARKER))
        state = "a finished checkpoint" if finished else "an unfinished one (no commit marker)"
        raise CheckpointError(
            f"{dest} already exists ({state}); an export never overwrites a checkpoint. Export "
            "to another directory or another step (--step), or delete it first."
        )


def _save_t5x(out_dir: str, step: int, tree: Any, custom_metadata: dict[str, Any]) -> None:
    """Writes `tree` as the PyTree item `state` of step `step`, as T5X's manager does."""
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=False)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(tc.ORBAX_ITEM, ocp.args.PyTreeSave, handler)
    options = ocp.CheckpointManagerOptions(
        step_prefix=STEP_PREFIX,
        create=True,
        # out_dir may be a T5X run's directory: its files are none of this export's business.
        cleanup_tmp_directories=False,
        save_root_metadata=False,
        enable_async_checkpointing=False,
    )
    manager = ocp.CheckpointManager(
        storage.path(out_dir), options=options, handler_registry=registry
    )
    try:
        manager.save(
            step,
            args=ocp.args.Composite(**{tc.ORBAX_ITEM: ocp.args.PyTreeSave(tree)}),
            custom_metadata=custom_metadata,
            force=True,
        )
        manager.wait_until_finished()
    except OSError as e:
        raise CheckpointError(
            f"Writing {out_dir}/{STEP_PREFIX}_{step} failed: {storage.describe_error(e, out_dir)} "
            "Nothing finished was written there; fix the cause and rerun the export."
        ) from e
    finally:
        manager.close()


def _check_carried_layout(
    param_states: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    factored: bool,
    min_dim_size_to_factor: int,
    momentum: bool,
    location: str,
) -> None:
    """The carried state must be what T5X's Adafactor, with these settings, would keep."""
    carried = flatten(param_states)
    # A stage with `Stage.trainable` keeps no state for its frozen parameters.
    stateless = [n for n in flatten(params) if np.size(carried.get(f"{n}/v", ())) == 0]
    if stateless:
        raise CheckpointError(
            f"ptjf checkpoint {location}: its optimizer state has no statistics for "
            f"{len(stateless)} parameters (e.g. {stateless[0]}), frozen by the stage's "
            "Stage.trainable; T5X's Adafactor keeps a state for every parameter. Export with "
            "optimizer_state='fresh'."
        )
    for name, leaf in flatten(params).items():
        want = t5x_slot_shapes(
            tuple(leaf.shape),
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
            momentum=momentum,
        )
        got = {slot: tuple(carried[f"{name}/{slot}"].shape) for slot in SLOTS}
        if got != want:
            raise CheckpointError(
                f"ptjf checkpoint {location}: its Adafactor keeps {name} as "
                f"{_layout_text(got)}, but T5X's Adafactor with factored={factored}, "
                f"min_dim_size_to_factor={min_dim_size_to_factor}, momentum={momentum} keeps "
                f"{_layout_text(want)}. Pass the run's own OptimizerConfig settings (factored, "
                "min_dim_size_to_factor, momentum) to the export, and give T5X's "
                "adafactor.Adafactor the same (factored, min_dim_size_to_factor, beta1)."
            )


def _layout_text(slots: Mapping[str, tuple[int, ...]]) -> str:
    if slots["v"] == UNUSED and slots["v_row"] != UNUSED:
        text = f"v_row {slots['v_row']}, v_col {slots['v_col']} (factored)"
    else:
        text = f"v {slots['v']} (not factored)"
    return text + (f", m {slots['m']}" if slots["m"] != UNUSED else ", no m")


def _export_device() -> Any:
    """Where the export holds the arrays: the host's CPU device (host memory is the larger),
    else this process's first device when JAX runs without its CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


def _to_device(tree: Any) -> Any:
    """Host arrays as jax.Arrays on the export's device (T5X saves jax.Arrays)."""
    device = _export_device()
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), device), tree)


# ----------------------------------------------------------------------------------------------
# The export
# ----------------------------------------------------------------------------------------------


def _check_args(optimizer_state: str, min_dim_size_to_factor: int, step: int | None) -> None:
    if optimizer_state not in OPTIMIZER_STATES:
        raise ConfigError(
            f"optimizer_state={optimizer_state!r} is invalid: expected 'fresh' (a new T5X "
            "Adafactor state at step 0) or 'carry' (the run's own Adafactor state)."
        )
    if (
        isinstance(min_dim_size_to_factor, bool)
        or not isinstance(min_dim_size_to_factor, int | np.integer)
        or min_dim_size_to_factor < 1
    ):
        raise ConfigError(
            f"min_dim_size_to_factor={min_dim_size_to_factor!r} is invalid: expected an "
            "integer >= 1 (T5X's default is 128)."
        )
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0
    ):
        raise ConfigError(f"step={step!r} is invalid: expected an integer >= 0, or None.")


def export_checkpoint(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    optimizer_state: str = FRESH,
    min_dim_size_to_factor: int = 128,
    factored: bool = True,
    momentum: bool = False,
    step: int | None = None,
) -> str:
    """Writes the ptjf checkpoint `source` as T5X checkpoint `out_dir/checkpoint_<step>`.

    source: `MODEL_DIR/<stage>` (its newest step) or `MODEL_DIR/<stage>/<step>`, local or
        gs://. out_dir: a directory, local or gs:// (created if needed; it may be a T5X
        MODEL_DIR already holding other checkpoints).
    optimizer_state: "fresh" writes T5X Adafactor's state at step 0 as T5X lays it out with
        `factored`, `min_dim_size_to_factor` and `momentum` (T5X's `beta1` set); "carry"
        writes the run's own Adafactor state at the source's stage step, and checks that T5X
        with those three settings keeps the same layout.
    step: the exported step (the directory name and T5X's `state/step`), instead of 0
        (fresh) or the source's stage step (carry).

    Returns the written checkpoint directory. Writes `out_dir/config.gin` (the model as T5X's
    `network.T5Config` bindings) first when out_dir has none. CheckpointError when the source
    is missing or not exportable, when `checkpoint_<step>` exists (nothing is written then),
    or for an optimizer state T5X cannot represent.
    """
    _check_args(optimizer_state, min_dim_size_to_factor, step)
    source_text = storage.absolute(os.fspath(source)).rstrip("/")
    out = storage.absolute(os.fspath(out_dir)).rstrip("/")
    _, wanted = ckpt.parse_checkpoint_path(source_text)
    mode = "latest" if wanted is None else "specific"
    stage_dir, source_step = ckpt.RestoreConfig(path=source_text, mode=mode).resolve()
    location = f"{stage_dir}/{source_step}"
    if step is None:
        step = 0 if optimizer_state == FRESH else source_step
    step = int(step)
    dest = storage.join(out, f"{STEP_PREFIX}_{step}")
    _refuse_existing(dest)

    device = jax.sharding.SingleDeviceSharding(_export_device())
    params_meta = _item_tree(stage_dir, source_step, ckpt.PARAMS)
    listing = _listing(params_meta)
    reader = ckpt.StageCheckpointer(stage_dir, read_only=True)
    try:
        if optimizer_state == CARRY:
            if reader.starts_fresh(source_step):
                raise CheckpointError(
                    f"ptjf checkpoint {location} is a stage start written by `ptjf switch`: it "
                    "holds no optimizer state to carry. Export it with optimizer_state='fresh'."
                )
            opt_meta = _item_tree(stage_dir, source_step, ckpt.OPT_STATE)
            kind = optimizer_kind(opt_meta)
            if kind == "adam":
                raise CheckpointError(
                    f"ptjf checkpoint {location} was trained with Adam (or AdamW), whose state, "
                    "per-parameter first and second moments with a bias-correction count, has "
                    "no counterpart in T5X's Adafactor (factored second-moment statistics, no "
                    "bias correction): it cannot be carried into T5X. Export with "
                    "optimizer_state='fresh'; T5X's trainer then builds its own Adafactor "
                    "state and warms up with its own schedule."
                )
            if kind != "adafactor":
                raise CheckpointError(
                    f"ptjf checkpoint {location}: its optimizer state is not ptjf's Adafactor, "
                    "the only one T5X's Adafactor can continue. Export with "
                    "optimizer_state='fresh'."
                )
        config = _t5x_config(listing, location)
        if optimizer_state == CARRY:
            target = {
                ckpt.STEP: jax.ShapeDtypeStruct((), np.int32, sharding=device),
                ckpt.PARAMS: _abstract(params_meta, device),
                ckpt.OPT_STATE: _abstract(opt_meta, device),
            }
            restored, _ = reader.restore(source_step, target_state=target)
            params = restored[ckpt.PARAMS]
            counts = {
                int(np.asarray(state_field(node, "count")))
                for _, node in optimizer_states(restored[ckpt.OPT_STATE])
            }
            if counts != {step}:
                log.warning(
                    "The run's optimizer counted %s update(s); T5X continues from step %d, "
                    "which also drives its second-moment decay and its learning-rate schedule.",
                    sorted(counts),
                    step,
                )
            state = t5x_adafactor_state(restored[ckpt.OPT_STATE], step)
            _check_carried_layout(
                state["param_states"],
                params,
                factored=factored,
                min_dim_size_to_factor=min_dim_size_to_factor,
                momentum=momentum,
                location=location,
            )
        else:
            params, _ = reader.restore_params(
                source_step, target_params=_abstract(params_meta, device)
            )
            state = {
                "step": np.asarray(step, np.int32),
                "param_states": fresh_param_states(
                    params,
                    factored=factored,
                    min_dim_size_to_factor=min_dim_size_to_factor,
                    momentum=momentum,
                ),
            }
    finally:
        reader.close()

    known = _run_fields(stage_dir, config.num_mlp_inputs)
    config = dataclasses.replace(config, **known)
    config_path = storage.join(out, RUN_CONFIG_FILE)
    storage.makedirs(out)
    if not storage.exists(config_path):
        text = t5x_model_gin_text(config, source=location, known=tuple(known))
        storage.write_text(config_path, text)
    # T5X saves its parameters in float32 (SaveCheckpointConfig.dtype); bfloat16 widens exactly.
    target_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    tree = {tc.PARAMS: _to_device(target_params), tc.OPT_STATE: _to_device(state)}
    custom = {
        "ptjf_export": {
            "source": location,
            "optimizer_state": optimizer_state,
            "factored": bool(factored),
            "min_dim_size_to_factor": int(min_dim_size_to_factor),
            "momentum": bool(momentum),
        }
    }
    _save_t5x(out, step, tree, custom)
    log.info("Exported %s to %s (T5X %s layout, step %d).", location, dest, tc.ORBAX, step)
    return dest


# ----------------------------------------------------------------------------------------------
# Command line: `ptjf export SOURCE OUT_DIR`
# ----------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    """`ptjf export`: writes the checkpoint and prints one line saying what was written."""
    dest = export_checkpoint(
        args.source,
        args.out_dir,
        optimizer_state=args.optimizer_state,
        min_dim_size_to_factor=args.min_dim_size_to_factor,
        factored=not args.no_factored,
        momentum=args.momentum,
        step=args.step,
    )
    what = (
        "a fresh T5X Adafactor state"
        if args.optimizer_state == FRESH
        else "the run's Adafactor state"
    )
    print(f"Wrote T5X checkpoint {dest} (orbax layout, parameters and {what}) from {args.source}.")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `ptjf export SOURCE OUT_DIR [...]` to the CLI's subparsers."""
    p = sub.add_parser(
        "export",
        help="write a ptjf checkpoint as a T5X checkpoint: ptjf export SOURCE OUT_DIR",
        description="Writes MODEL_DIR/<stage>[/<step>] as OUT_DIR/checkpoint_<step> in T5X's "
        "orbax layout (parameters as `target`, T5X Adafactor's state as `state`), for T5X's "
        "train.py (gin_configs/t5x/finetune_from_ptjf.gin). Never overwrites a checkpoint.",
    )
    p.add_argument("source", help="a ptjf stage directory MODEL_DIR/<stage>, or .../<stage>/<step>")
    p.add_argument("out_dir", help="where checkpoint_<step> goes (local or gs://)")
    p.add_argument(
        "--optimizer_state",
        choices=OPTIMIZER_STATES,
        default=FRESH,
        help="fresh: a new T5X Adafactor state at step 0 (default); carry: the run's own "
        "Adafactor state at its step (Adam cannot be carried)",
    )
    p.add_argument(
        "--min_dim_size_to_factor",
        type=int,
        default=128,
        help="T5X Adafactor's min_dim_size_to_factor, as in its gin config (default 128)",
    )
    p.add_argument(
        "--momentum",
        action="store_true",
        help="T5X's Adafactor keeps momentum (adafactor.Adafactor.beta1 set)",
    )
    p.add_argument(
        "--no_factored",
        action="store_true",
        help="T5X's Adafactor does not factor (adafactor.Adafactor.factored = False)",
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="the exported step (default: 0 for fresh, the source's step for carry)",
    )
    p.set_defaults(fn=run_export)
    return p


__all__ = [
    "CARRY",
    "FRESH",
    "add_export_parser",
    "export_checkpoint",
    "run_export",
    "t5x_model_gin_text",
]

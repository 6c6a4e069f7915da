"""Exporting ptjf checkpoints to T5X: the tree T5X's trainer restores, fresh and carried
Adafactor states, refusals, gs://, and the gin files for T5X's train.py.

The ptjf checkpoints exported here hold the parameters of T5X's own fixtures
(tests/data/t5x/, written by T5X's trainer), so every exported tree can be compared with what
T5X itself wrote for the same model: `model-info.txt` and the fixtures' orbax items.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath

from ptjf.checkpoints import checkpointer as ck
from ptjf.errors import CheckpointError, ConfigError
from ptjf.models import EncoderDecoder, init_params, preset
from ptjf.t5x import adafactor as ta
from ptjf.t5x import checkpoints as tc
from ptjf.t5x import export as te
from ptjf.t5x import gin_files as t5x_gin
from ptjf.t5x import models as tm
from ptjf.training.evaluation import make_apply_fn
from ptjf.training.optimizers import OptimizerConfig, make_optimizer, t5_adafactor
from ptjf.training.steps import make_train_step
from ptjf.training.train_state import TrainState

HERE = Path(__file__).parent
DATA = HERE / "data" / "t5x"
ROOT = HERE.parent
F32, BF16 = "t511_small_orbax", "t5_tied_bf16_orbax"
# The fixtures' Adafactor (README): min_dim_size_to_factor 16 in the T5.1.1 run, 128 in the
# tied run.
MIN_DIM = {F32: 16, BF16: 128}
SYNC = ck.CheckpointConfig(period=1, async_save=False)


@functools.cache
def opened(fixture: str) -> tc.T5XCheckpoint:
    return tc.open_checkpoint(DATA / fixture / "checkpoint_20")


@functools.cache
def config_of(fixture: str):
    return tm.infer_config(opened(fixture))


@functools.cache
def params_of(fixture: str):
    return tm.load_params(opened(fixture), config_of(fixture))


def adafactor(fixture: str) -> optax.GradientTransformation:
    config = dataclasses.replace(t5_adafactor(), min_dim_size_to_factor=MIN_DIM[fixture])
    return make_optimizer(config, optax.constant_schedule(1e-3))


def model_info_rows(fixture: str) -> dict[str, tuple[int, ...]]:
    """T5X's model-info.txt: 'Variable NAME size N shape (axis=n, …) partition spec …'."""
    rows = {}
    for line in (DATA / fixture / "model-info.txt").read_text().splitlines():
        match = re.match(r"^Variable (\S+)\s+size \d+\s+shape \(([^)]*)\)", line)
        if match:
            dims = [d.split("=")[-1] for d in match.group(2).split(",") if d.strip()]
            rows[match.group(1)] = tuple(int(d) for d in dims)
    return rows


def save_stage(model_dir: Path, step: int, params, opt_state, stage: str = "joint") -> str:
    """A ptjf stage checkpoint MODEL_DIR/<stage>/<step>, as the trainer writes it."""
    stage_dir = model_dir / stage
    state = {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}
    meta = ck.checkpoint_metadata(stage_index=0, stage_name=stage, global_step=step)
    with ck.StageCheckpointer(stage_dir, SYNC) as writer:
        assert writer.save(step, state, meta, force=True)
    return str(stage_dir)


def fixture_stage(fixture: str, model_dir: Path, step: int = 7) -> str:
    params = params_of(fixture)
    return save_stage(model_dir, step, params, adafactor(fixture).init(params))


def flat_numpy(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in tc.flatten(tree).items()}


def assert_bitwise_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()


def files_under(path: Path) -> dict[str, int]:
    return {
        str(p.relative_to(path)): p.stat().st_mtime_ns
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------
# Fresh state: T5X's tree, names, shapes and dtypes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", [F32, BF16])
def test_fresh_export_has_the_tree_t5x_wrote_for_the_same_model(fixture, tmp_path):
    stage = fixture_stage(fixture, tmp_path / "run")
    dest = te.export_checkpoint(stage, tmp_path / "t5x", min_dim_size_to_factor=MIN_DIM[fixture])
    assert dest == str(tmp_path / "t5x" / "checkpoint_0")
    exported = tc.open_checkpoint(dest)
    assert (exported.layout, exported.step) == (tc.ORBAX, 0)
    rows = model_info_rows(fixture)
    # Every parameter and every optimizer-state array, as T5X's model-info.txt lists them.
    assert {k: v.shape for k, v in exported.params.items()} == {
        k: v for k, v in rows.items() if not k.startswith("param_states/") and k != "step"
    }
    assert {k: v.shape for k, v in exported.optimizer.items()} == {
        k: v for k, v in rows.items() if k.startswith("param_states/") or k == "step"
    }
    # Shapes and dtypes equal the fixture's own listing (float32 slots, int32 step).
    assert exported.params == opened(fixture).params
    assert exported.optimizer == opened(fixture).optimizer
    assert exported.optimizer["step"] == tc.ArrayInfo((), "int32")
    state = tc.restore_optimizer_state(exported)
    assert state["step"].dtype == np.int32 and int(state["step"]) == 0
    assert all(not v.any() for v in flat_numpy(state["param_states"]).values())
    # The parameters, bit for bit.
    assert_bitwise_equal(tc.restore_params(exported), params_of(fixture))


def test_layout_rule_is_t5xs_and_optaxs(tmp_path):
    """T5X and optax factor by the same rule: rank >= 2, second-largest dim >= the minimum;
    v_row drops the largest axis, v_col the second largest; on a tie the later axis counts as
    the larger."""
    assert ta.t5x_factored_dims((16, 16), min_dim_size_to_factor=16) == (0, 1)
    assert ta.t5x_factored_dims((40, 16), min_dim_size_to_factor=16) == (1, 0)
    assert ta.t5x_factored_dims((16, 40), min_dim_size_to_factor=16) == (0, 1)
    assert ta.t5x_factored_dims((8, 40), min_dim_size_to_factor=16) is None
    assert ta.t5x_factored_dims((40,), min_dim_size_to_factor=1) is None
    assert ta.t5x_factored_dims((40, 16), factored=False, min_dim_size_to_factor=1) is None
    shapes = {"square": (16, 16), "tall": (40, 16), "wide": (16, 40), "thin": (8, 40), "v": (40,)}
    params = {name: jnp.zeros(shape) for name, shape in shapes.items()}
    for factored in (True, False):
        config = dataclasses.replace(
            t5_adafactor(), min_dim_size_to_factor=16, momentum=0.9, factored=factored
        )
        optax_state = make_optimizer(config, optax.constant_schedule(1.0)).init(params)
        ours = ta.fresh_param_states(
            params, factored=factored, min_dim_size_to_factor=16, momentum=True
        )
        factored_state, ema = optax_state[0], optax_state[4]
        for name in shapes:
            got = {slot: ours[name][slot].shape for slot in ta.SLOTS}
            want = {
                "v_row": factored_state.v_row[name].shape,
                "v_col": factored_state.v_col[name].shape,
                "v": factored_state.v[name].shape,
                "m": ema.ema[name].shape,
            }
            assert got == want, (name, factored)
    assert ours["tall"]["v"].shape == (40, 16)  # factored=False keeps the full second moment


# ----------------------------------------------------------------------------------------------
# Carried state: import → one ptjf step → export → import, bit for bit
# ----------------------------------------------------------------------------------------------


def test_carried_adafactor_state_round_trips_after_a_ptjf_step(tmp_path):
    config, params = config_of(F32), params_of(F32)
    tx = adafactor(F32)
    template = jax.eval_shape(tx.init, params)
    imported = tm.optax_adafactor_state(tc.restore_optimizer_state(opened(F32)), template)
    state = TrainState(
        step=jnp.asarray(20, jnp.int32),
        params=jax.tree.map(jnp.copy, params),
        opt_state=jax.tree.map(jnp.asarray, imported),
    )
    with np.load(DATA / F32 / "outputs.npz") as data:
        batch = {
            k: jnp.asarray(data[k])
            for k in (
                "encoder_input_tokens",
                "decoder_input_tokens",
                "decoder_target_tokens",
                "decoder_loss_weights",
            )
        }
    step_fn = jax.jit(make_train_step(make_apply_fn(EncoderDecoder(config)), tx))
    trained, metrics = step_fn(state, batch, jax.random.PRNGKey(0))
    assert int(trained.step) == 21 and int(metrics["nonfinite"]) == 0
    assert int(trained.opt_state[0].count) == 21
    moved = tc.flatten(trained.params)["encoder/layers_0/mlp/wo/kernel"]
    assert not np.array_equal(moved, tc.flatten(params)["encoder/layers_0/mlp/wo/kernel"])
    stage = save_stage(tmp_path / "run", 21, trained.params, trained.opt_state)
    out = tmp_path / "t5x"

    # T5X's default (min_dim_size_to_factor=128) would not factor what this run factored.
    with pytest.raises(CheckpointError, match="min_dim_size_to_factor") as error:
        te.export_checkpoint(stage, out, optimizer_state="carry")
    assert (
        "keeps decoder/layers_0/encoder_decoder_attention/key/kernel as v_row (16,), v_col (16,) "
        "(factored), no m, but T5X's Adafactor with factored=True, min_dim_size_to_factor=128, "
        "momentum=False keeps v (16, 16) (not factored), no m"
    ) in str(error.value)
    assert not out.exists()

    dest = te.export_checkpoint(stage, out, optimizer_state="carry", min_dim_size_to_factor=16)
    assert dest == str(out / "checkpoint_21")
    exported = tc.open_checkpoint(dest)
    assert exported.optimizer == opened(F32).optimizer  # T5X's own layout for this model
    assert_bitwise_equal(tc.restore_params(exported), trained.params)
    t5x_state = tc.restore_optimizer_state(exported)
    assert t5x_state["step"].dtype == np.int32 and int(t5x_state["step"]) == 21
    back = tm.optax_adafactor_state(t5x_state, template)
    assert_bitwise_equal(back, jax.device_get(trained.opt_state))


def test_carry_refuses_adam_and_writes_nothing(tmp_path):
    params = params_of(BF16)
    tx = make_optimizer(OptimizerConfig(name="adam"), optax.constant_schedule(1e-3))
    stage = save_stage(tmp_path / "run", 5, params, tx.init(params))
    out = tmp_path / "t5x"
    with pytest.raises(CheckpointError) as error:
        te.export_checkpoint(stage, out, optimizer_state="carry")
    message = str(error.value)
    assert "trained with Adam" in message and "no counterpart in T5X's Adafactor" in message
    assert "optimizer_state='fresh'" in message
    assert not out.exists()
    # The parameters themselves export, with a fresh state.
    assert te.export_checkpoint(stage, out) == str(out / "checkpoint_0")


def test_per_layer_relative_position_tables_are_refused(tmp_path):
    config = preset("tiny", 128)
    assert not config.share_relpos_bias
    params = init_params(config, jax.random.PRNGKey(0))
    stage = save_stage(tmp_path / "run", 3, params, adafactor(BF16).init(params))
    with pytest.raises(CheckpointError, match=r"share_relpos_bias=False"):
        te.export_checkpoint(stage, tmp_path / "t5x")
    assert not (tmp_path / "t5x").exists()


def test_an_existing_checkpoint_is_never_overwritten(tmp_path):
    stage = fixture_stage(BF16, tmp_path / "run")
    out = tmp_path / "t5x"
    te.export_checkpoint(stage, out)
    before = files_under(out)
    with pytest.raises(CheckpointError, match=r"checkpoint_0 already exists \(a finished"):
        te.export_checkpoint(stage, out)
    assert files_under(out) == before
    # A half-written one (no commit marker) is not replaced either.
    (out / "checkpoint_7").mkdir()
    with pytest.raises(CheckpointError, match=r"checkpoint_7 already exists \(an unfinished"):
        te.export_checkpoint(stage, out, step=7)
    assert list((out / "checkpoint_7").iterdir()) == []
    # Another step goes beside it; nothing unfinished is left behind.
    te.export_checkpoint(f"{stage}/7", out, step=8)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint_0",
        "checkpoint_7",
        "checkpoint_8",
        "config.gin",
    ]


def test_bad_arguments_are_config_errors(tmp_path):
    stage = fixture_stage(BF16, tmp_path / "run")
    with pytest.raises(ConfigError, match="optimizer_state='adam' is invalid"):
        te.export_checkpoint(stage, tmp_path / "t5x", optimizer_state="adam")
    with pytest.raises(ConfigError, match="min_dim_size_to_factor=0 is invalid"):
        te.export_checkpoint(stage, tmp_path / "t5x", min_dim_size_to_factor=0)
    with pytest.raises(CheckpointError, match="No finalised checkpoint for step 9"):
        te.export_checkpoint(f"{stage}/9", tmp_path / "t5x")
    assert not (tmp_path / "t5x").exists()


# ----------------------------------------------------------------------------------------------
# What T5X's orbax manager and plain orbax read
# ----------------------------------------------------------------------------------------------


def test_plain_orbax_restores_the_same_tree_as_t5xs_checkpoint(tmp_path):
    stage = fixture_stage(BF16, tmp_path / "run")
    dest = Path(te.export_checkpoint(stage, tmp_path / "t5x"))
    fixture = DATA / BF16 / "checkpoint_20"
    restored = {
        name: ocp.PyTreeCheckpointer().restore(epath.Path(path.resolve()) / "state")
        for name, path in (("ours", dest), ("t5x", fixture))
    }

    def signature(tree):
        return {k: (type(v).__name__, v.shape, v.dtype) for k, v in tc.flatten(tree).items()}

    assert set(restored["ours"]) == {"target", "state"}
    assert signature(restored["ours"]) == signature(restored["t5x"])
    assert_bitwise_equal(restored["ours"]["target"], restored["t5x"]["target"])
    # The files T5X's orbax checkpoint manager reads to find and restore the step.
    for path in (dest, fixture):
        assert (path / "commit_success.txt").is_file()
        assert (path / "state" / "commit_success.txt").is_file()
    ours = json.loads((dest / "_CHECKPOINT_METADATA").read_text())
    theirs = json.loads((fixture / "_CHECKPOINT_METADATA").read_text())
    assert ours["item_handlers"]["state"] == theirs["item_handlers"]["state"]
    assert ours["custom_metadata"]["ptjf_export"]["optimizer_state"] == "fresh"
    tree_meta = {
        k: v
        for k, v in json.loads((dest / "state" / "_METADATA").read_text()).items()
        if k in ("use_ocdbt", "use_zarr3")
    }
    assert tree_meta == {"use_ocdbt": True, "use_zarr3": False}
    # An orbax checkpoint manager with T5X's step prefix finds the step in both directories
    # and restores the `state` item onto given shardings, as T5X's manager does.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), restored["t5x"]
    )
    args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), item)
    for path, step in ((dest, 0), (fixture, 20)):
        manager = ocp.CheckpointManager(
            epath.Path(path.parent.resolve()),
            options=ocp.CheckpointManagerOptions(step_prefix="checkpoint", read_only=True),
            item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        )
        assert manager.all_steps() == [step]
        state = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeRestore(item=item, restore_args=args)),
        )["state"]
        manager.close()
        assert_bitwise_equal(state["target"], params_of(BF16))
        assert int(state["state"]["step"]) == step


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_export_to_a_gcs_bucket_opens_with_open_checkpoint(tmp_path, gcs_bucket):
    from etils.epath import gpath

    gpath._is_tf_installed.cache_clear()  # as in test_t5x_import: decide gs:// via gcsfs
    stage = fixture_stage(BF16, tmp_path / "run")
    out = f"{gcs_bucket}/exports"
    dest = te.export_checkpoint(stage, out, optimizer_state="fresh")
    assert dest == f"{out}/checkpoint_0"
    exported = tc.open_checkpoint(dest)
    assert exported.layout == tc.ORBAX
    assert (exported.params, exported.optimizer) == (opened(BF16).params, opened(BF16).optimizer)
    assert_bitwise_equal(tc.restore_params(exported), params_of(BF16))
    assert tm.infer_config(exported).logits_via_embedding  # config.gin read from gs:// too
    with pytest.raises(CheckpointError, match="already exists"):
        te.export_checkpoint(stage, out)


# ----------------------------------------------------------------------------------------------
# The model beside the checkpoint: config.gin and t5x_gin.t5_config
# ----------------------------------------------------------------------------------------------


def test_config_gin_carries_the_runs_model_fields(tmp_path):
    stage = fixture_stage(F32, tmp_path / "run")
    (tmp_path / "run" / "config.gin").write_text(
        "DROPOUT = 0.0\n"
        "TransformerConfig.mlp_activations = ('gelu', 'linear')\n"
        "TransformerConfig.dropout_rate = %DROPOUT\n"
        "TransformerConfig.dtype = 'float32'\n"
        "TransformerConfig.float32_attention_logits = False\n"
    )
    dest = te.export_checkpoint(stage, tmp_path / "t5x", min_dim_size_to_factor=16)
    exported = tc.open_checkpoint(dest)
    assert tm.infer_config(exported) == config_of(F32)  # the T5X run's model, field for field
    text = (tmp_path / "t5x" / "config.gin").read_text()
    assert "network.T5Config.mlp_activations = ('gelu', 'linear')" in text
    assert "Not known" not in text
    fields = t5x_gin.t5_config(dest, dropout_rate=0.1, t5_config_cls=dict)
    assert fields == {
        "vocab_size": 32128,
        "dtype": "float32",
        "emb_dim": 16,
        "num_heads": 2,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "head_dim": 8,
        "mlp_dim": 32,
        "mlp_activations": ("gelu", "linear"),
        "dropout_rate": 0.1,
        "logits_via_embedding": False,
        "float32_attention_logits": False,
    }
    # An existing config.gin (a T5X run's) is left as it is.
    (tmp_path / "t5x" / "config.gin").write_text("# T5X's\n")
    te.export_checkpoint(stage, tmp_path / "t5x", step=1, min_dim_size_to_factor=16)
    assert (tmp_path / "t5x" / "config.gin").read_text() == "# T5X's\n"


def test_gin_helpers_give_the_tasks_vocabulary_and_check_it_against_the_model(
    tmp_path, bible_vocab
):
    from ptjf.data.vocabularies import padded_vocab_size

    assert t5x_gin.mixture_vocabulary("bible_en_fr_tl") == bible_vocab
    assert t5x_gin.model_vocab_size("bible_en_fr_tl") == padded_vocab_size(bible_vocab) == 4224
    dest = te.export_checkpoint(fixture_stage(BF16, tmp_path / "run"), tmp_path / "t5x")
    with pytest.raises(CheckpointError, match=r"4224 rows, but .* has 32128"):
        t5x_gin.t5_config(dest, mixture_or_task_name="bible_en_fr_tl", t5_config_cls=dict)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def test_cli_export_prints_one_line(tmp_path, capsys):
    stage = fixture_stage(BF16, tmp_path / "run")
    parser = argparse.ArgumentParser(prog="ptjf")
    te.add_export_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "t5x"
    args = parser.parse_args(["export", stage, str(out), "--min_dim_size_to_factor", "128"])
    assert args.fn(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert f"Wrote T5X checkpoint {out / 'checkpoint_0'}" in lines[0] and stage in lines[0]
    args = parser.parse_args(["export", stage, str(out), "--optimizer_state", "carry"])
    assert (args.optimizer_state, args.step, args.momentum, args.no_factored) == (
        "carry",
        None,
        False,
        False,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["export", stage, str(out), "--optimizer_state", "adam"])


# ----------------------------------------------------------------------------------------------
# gin_configs/t5x: T5X's names only (never parsed with ptjf's gin: T5X's configurables are
# not registered here)
# ----------------------------------------------------------------------------------------------

T5X_GIN = sorted((ROOT / "gin_configs" / "t5x").glob("*.gin"))
# T5X names the fixtures' operative configs do not bind (they restored no checkpoint);
# docs/t5x.md explains each.
DOCUMENTED = {
    "INITIAL_CHECKPOINT_PATH",
    "gin.REQUIRED",
    "utils.RestoreCheckpointConfig.mode",
    "utils.RestoreCheckpointConfig.dtype",
    "utils.RestoreCheckpointConfig.assignment_map",
    "utils.RestoreCheckpointConfig.fallback_to_scratch",
}


def gin_names(text: str) -> dict[str, set[str]]:
    """Imports, macros, bindings (`module.Configurable.param`, scope dropped) and references
    (`@module.Configurable`, `%MACRO`) of a gin file."""
    names: dict[str, set[str]] = {k: set() for k in ("imports", "macros", "bindings", "refs")}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("import ", "from ")):
            names["imports"].add(" ".join(line.split()))
            continue
        name, _, value = line.partition("=")
        name = name.strip().split("/")[-1]
        names["macros" if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) else "bindings"].add(name)
        names["refs"] |= {m.split("/")[-1] for m in re.findall(r"@([\w./]+)", value)}
        names["macros"] |= set(re.findall(r"%([\w.]+)", value))
    return names


def test_t5x_gin_files_use_only_t5x_names_the_fixtures_or_docs_have():
    assert [p.name for p in T5X_GIN] == ["finetune_from_ptjf.gin", "ptjf_tasks_train.gin"]
    known: dict[str, set[str]] = {k: set() for k in ("imports", "macros", "bindings", "refs")}
    for fixture in (F32, BF16, "legacy_format"):
        for kind, found in gin_names((DATA / fixture / "config.gin").read_text()).items():
            known[kind] |= found
    docs = (ROOT / "docs" / "t5x.md").read_text()
    for path in T5X_GIN:
        names = gin_names(path.read_text())
        for kind in ("macros", "bindings", "refs"):
            for name in names[kind]:
                if name.startswith("t5x_gin."):  # ptjf's own: a real function and argument
                    _, function, *param = name.split(".")
                    signature = inspect.signature(getattr(t5x_gin, function))
                    assert not param or param[0] in signature.parameters, (path.name, name)
                    continue
                assert name in known[kind] or name in DOCUMENTED, (path.name, kind, name)
        for statement in names["imports"]:
            assert statement in known["imports"] or statement == "from ptjf import t5x_gin", (
                path.name,
                statement,
            )
    for name in DOCUMENTED:
        assert name in docs, name
    for path in T5X_GIN:
        assert f"gin_configs/t5x/{path.name}" in docs


def test_gin_files_reference_an_existing_ptjf_mixture_and_module():
    import ptjf.tasks  # noqa: F401  (registers the mixtures; builds no vocabulary)
    import seqio

    for path in T5X_GIN:
        text = path.read_text()
        mixture = re.search(r"^MIXTURE_OR_TASK_NAME = '(\w+)'", text, re.M).group(1)
        assert mixture in seqio.MixtureRegistry.names(), mixture
        assert "MIXTURE_OR_TASK_MODULE = 'ptjf.tasks'" in text
    assert os.path.isdir(ROOT / "tasks")  # installed as ptjf.tasks (setup.py package_dir)

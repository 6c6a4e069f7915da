"""Importing T5X checkpoints: layouts, listings, fit checks, numerics against T5X's own outputs.

The fixtures in tests/data/t5x/ were written by T5X's trainer (see its README.md): a T5.1.1-style
float32 model in T5X's orbax layout and in its legacy layout (bit-identical arrays), and a
T5-style tied model with bfloat16 activations. `outputs.npz` holds T5X's logits, log-probs and
decodes of fixed inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjf.errors import CheckpointError, CorruptCheckpointError
from ptjf.models import (
    EncoderDecoder,
    TransformerConfig,
    beam_search,
    greedy_decode,
    preset,
    relative_position_bucket,
    with_t5x_numerics,
)
from ptjf.models.layers import log_bucket_thresholds
from ptjf.t5x import checkpoints as tc
from ptjf.t5x import models as tm
from ptjf.training.optimizers import make_optimizer, t5_adafactor

HERE = Path(__file__).parent
DATA = HERE / "data" / "t5x"
F32, BF16, LEGACY = "t511_small_orbax", "t5_tied_bf16_orbax", "legacy_format"
FIXTURES = (F32, BF16, LEGACY)
# The legacy run is the f32 run in the other layout: T5X's outputs of the f32 folder apply.
OUTPUTS = {F32: F32, LEGACY: F32, BF16: BF16}
LAYOUT = {F32: tc.ORBAX, BF16: tc.ORBAX, LEGACY: tc.LEGACY}
VOCAB = 32128
# float32: T5X's logits and log-probs to 1e-5. bfloat16 under XLA's default excess precision
# (a fusion may skip bf16 roundings that T5X's unjitted reference run made): the order of the
# float32-vs-bfloat16 difference on these fixtures, 0.032 (logits) and 0.013 (log-probs).
F32_TOL = 1e-5
BF16_LOGITS_TOL, BF16_LOG_PROBS_TOL = 0.05, 0.02
EXACT_BF16 = {"xla_allow_excess_precision": False}  # every op rounds to bfloat16, as in T5X's run


def ckpt_dir(fixture: str) -> Path:
    return DATA / fixture / "checkpoint_20"


@functools.cache
def opened(fixture: str) -> tc.T5XCheckpoint:
    return tc.open_checkpoint(ckpt_dir(fixture))


@functools.cache
def config_of(fixture: str) -> TransformerConfig:
    return tm.infer_config(opened(fixture))


@functools.cache
def params_of(fixture: str):
    return tm.load_params(opened(fixture), config_of(fixture))


@functools.cache
def outputs(fixture: str) -> dict[str, np.ndarray]:
    with np.load(DATA / OUTPUTS[fixture] / "outputs.npz") as data:
        return dict(data)


def _apply(model: EncoderDecoder, params, enc, dec_in, dec_target):
    return model.apply({"params": params}, enc, dec_in, dec_target, enable_dropout=False)


_forward = jax.jit(_apply, static_argnums=0)
_forward_exact_bf16 = jax.jit(_apply, static_argnums=0, compiler_options=EXACT_BF16)


def logits_of(config: TransformerConfig, fixture: str, *, exact_bf16: bool = False) -> np.ndarray:
    out = outputs(fixture)
    forward = _forward_exact_bf16 if exact_bf16 else _forward
    logits = forward(
        EncoderDecoder(config),
        params_of(fixture),
        out["encoder_input_tokens"],
        out["decoder_input_tokens"],
        out["decoder_target_tokens"],
    )
    return np.asarray(logits)


def target_log_probs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
    return np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def writable_copy(fixture: str, tmp_path: Path) -> Path:
    """A copy of the fixture's folder (checkpoint_20, config.gin) that a test may damage."""
    dest = tmp_path / fixture
    shutil.copytree(DATA / fixture, dest)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    return dest


def model_info_rows(fixture: str) -> dict[str, tuple[int, ...]]:
    """T5X's model-info.txt: 'Variable NAME size N shape (axis=n, …) partition spec …' rows."""
    rows = {}
    for line in (DATA / fixture / "model-info.txt").read_text().splitlines():
        match = re.match(r"^Variable (\S+)\s+size \d+\s+shape \(([^)]*)\)", line)
        if match:
            dims = [d.split("=")[-1] for d in match.group(2).split(",") if d.strip()]
            rows[match.group(1)] = tuple(int(d) for d in dims)
    return rows


# ----------------------------------------------------------------------------------------------
# Layouts and listings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES)
def test_layout_is_recognised_and_listing_equals_t5x_model_info(fixture):
    checkpoint = opened(fixture)
    assert checkpoint.layout == LAYOUT[fixture]
    assert checkpoint.step == 20
    rows = model_info_rows(fixture)
    params = {k: v for k, v in rows.items() if not k.startswith("param_states/") and k != "step"}
    optimizer = {k: v for k, v in rows.items() if k not in params}
    assert {k: v.shape for k, v in checkpoint.params.items()} == params
    assert {k: v.shape for k, v in checkpoint.optimizer.items()} == optimizer
    assert {v.dtype for v in checkpoint.params.values()} == {"float32"}
    assert checkpoint.optimizer["step"] == tc.ArrayInfo((), "int32")
    # T5X's counts (README): 52 + 208 + 1 arrays untied, 26 + 104 + 1 tied.
    assert len(checkpoint.params) + len(checkpoint.optimizer) == (131 if fixture == BF16 else 261)


# Orbax leaves its failed reads' coroutines unawaited; pytest reports them as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fixture", [F32, LEGACY])
def test_listing_reads_no_array_data(fixture, tmp_path):
    """The biggest arrays' data files are deleted: the listing and fit check still work, and
    only restoring fails, with CorruptCheckpointError."""
    folder = writable_copy(fixture, tmp_path) / "checkpoint_20"
    if fixture == LEGACY:
        chunks = [p for p in folder.glob("target.*/*") if not p.name.startswith(".")]
    else:
        chunks = list((folder / "state" / "ocdbt.process_0" / "d").iterdir())
    for chunk in sorted(chunks, key=lambda p: p.stat().st_size)[-2:]:  # embedding, logits
        chunk.unlink()
    checkpoint = tc.open_checkpoint(folder)
    assert checkpoint.params == opened(fixture).params
    tm.check_model_fit(checkpoint, config_of(fixture))
    with pytest.raises(CorruptCheckpointError, match=r"cannot be read|failed"):
        tc.restore_params(checkpoint)
    gc.collect()  # here, under this test's filter, not in a later test


def test_legacy_and_orbax_arrays_are_bit_identical():
    orbax, legacy = opened(F32), opened(LEGACY)
    assert (orbax.params, orbax.optimizer) == (legacy.params, legacy.optimizer)
    for a, b in (
        (params_of(F32), params_of(LEGACY)),
        (tc.restore_optimizer_state(orbax), tc.restore_optimizer_state(legacy)),
    ):
        flat_a, flat_b = tc.flatten(a), tc.flatten(b)
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            x, y = np.asarray(flat_a[name]), np.asarray(flat_b[name])
            assert x.dtype == y.dtype and np.array_equal(x, y), name


# ----------------------------------------------------------------------------------------------
# Bad checkpoints
# ----------------------------------------------------------------------------------------------


def test_orbax_checkpoint_without_commit_marker_is_unfinished(tmp_path):
    folder = writable_copy(BF16, tmp_path) / "checkpoint_20"
    (folder / "commit_success.txt").unlink()
    with pytest.raises(CheckpointError, match="unfinished") as error:
        tc.open_checkpoint(folder)
    assert "it has no commit_success.txt" in str(error.value)
    # An orbax writer that renamed the directory atomically wrote no marker: opt-in.
    assert tc.open_checkpoint(folder, require_commit_marker=False).params == opened(BF16).params


def test_legacy_checkpoint_without_its_msgpack_file_is_unfinished(tmp_path):
    folder = writable_copy(LEGACY, tmp_path) / "checkpoint_20"
    (folder / "checkpoint").unlink()
    with pytest.raises(CheckpointError, match="unfinished") as error:
        tc.open_checkpoint(folder)
    assert "but not the msgpack file 'checkpoint'" in str(error.value)


def test_legacy_checkpoint_missing_an_array_folder_is_unfinished(tmp_path):
    folder = writable_copy(LEGACY, tmp_path) / "checkpoint_20"
    shutil.rmtree(folder / "target.decoder.layers_1.mlp.wo.kernel")
    with pytest.raises(CheckpointError, match=r"unfinished.*target\.decoder\.layers_1\.mlp\.wo"):
        tc.open_checkpoint(folder)


@pytest.mark.parametrize(
    ("name", "fixture"),
    [
        ("checkpoint_20.orbax-checkpoint-tmp-1796283887", BF16),
        ("checkpoint_20.tmp-1796283", LEGACY),
    ],
)
def test_temporary_directory_is_unfinished(tmp_path, name, fixture):
    folder = tmp_path / name
    shutil.copytree(ckpt_dir(fixture), folder)
    with pytest.raises(CheckpointError, match=r"unfinished: its name .* temporary"):
        tc.open_checkpoint(folder)


def test_orbax_checkpoint_without_tree_metadata_is_unfinished(tmp_path):
    folder = writable_copy(BF16, tmp_path) / "checkpoint_20"
    (folder / "state" / "_METADATA").unlink()
    with pytest.raises(CheckpointError, match=r"unfinished: state/_METADATA is missing"):
        tc.open_checkpoint(folder)


def test_unknown_layout_missing_path_and_model_dir_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a T5X checkpoint: it holds nothing"):
        tc.open_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"not a T5X checkpoint: it holds notes\.txt"):
        tc.open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        tc.open_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"model directory.*checkpoint_20"):
        tc.open_checkpoint(DATA / F32)


# ----------------------------------------------------------------------------------------------
# Fit check and inferred config
# ----------------------------------------------------------------------------------------------


def test_inferred_configs_are_t5xs():
    f32, bf16 = config_of(F32), config_of(BF16)
    assert (f32.emb_dim, f32.num_heads, f32.head_dim, f32.mlp_dim) == (16, 2, 8, 32)
    assert (f32.num_encoder_layers, f32.num_decoder_layers, f32.vocab_size) == (2, 2, VOCAB)
    assert f32.mlp_activations == ("gelu", "linear") and not f32.logits_via_embedding
    assert (f32.dtype, f32.dropout_rate) == ("float32", 0.0)  # config.gin: %DROPOUT_RATE = 0.0
    assert bf16.mlp_activations == ("relu",) and bf16.logits_via_embedding
    assert (bf16.dtype, bf16.num_encoder_layers) == ("bfloat16", 1)
    for config in (f32, bf16):
        assert config.share_relpos_bias and not config.float32_attention_logits
        assert not config.float32_attention_softmax and not config.norm_scale_in_float32
    assert config_of(LEGACY) == f32
    ptjf_numerics = dataclasses.replace(
        f32,
        share_relpos_bias=False,
        float32_attention_logits=True,
        float32_attention_softmax=True,
        norm_scale_in_float32=True,
    )
    assert with_t5x_numerics(ptjf_numerics) == f32


def test_without_a_run_config_t5x_defaults_fill_what_shapes_do_not_say(tmp_path):
    gated = tm.infer_config(opened(F32), run_config=None)
    assert gated.mlp_activations == ("gelu", "linear")
    assert (gated.dtype, gated.dropout_rate) == ("float32", 0.1)
    assert tm.infer_config(opened(BF16), run_config=None).mlp_activations == ("relu",)
    other = tmp_path / "config.gin"
    other.write_text("network.T5Config.mlp_activations = ('relu',)\n")
    with pytest.raises(CheckpointError) as error:
        tm.infer_config(opened(F32), run_config=other)
    assert "the config belongs to another model" in str(error.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"vocab_size": 32000},
            r"token_embedder/embedding is \(32128, 16\) in the checkpoint but \(32000, 16\) in "
            r"the model \(different vocab_size\)",
        ),
        (
            {"emb_dim": 32},
            r"token_embedder/embedding is \(32128, 16\) .* but \(32128, 32\) .*different emb_dim",
        ),
        (
            {"head_dim": 16},
            r"encoder/layers_0/attention/key/kernel is \(16, 16\) .* but \(16, 32\) in the model "
            r"\(different num_heads × head_dim\)",
        ),
        (
            {"num_heads": 4, "head_dim": 4},
            r"encoder/relpos_bias/rel_embedding is \(2, 32\) .* \(4, 32\) .*different num_heads",
        ),
        ({"mlp_dim": 64}, r"mlp/wi_0/kernel is \(16, 32\) .* \(16, 64\) .*different mlp_dim"),
        (
            {"mlp_activations": ("relu",)},
            r"encoder/layers_0/mlp/wi/kernel is absent in the checkpoint but \(16, 32\) in the "
            r"model \(the model's mlp_activations=\('relu',\) need 1 input projection",
        ),
        (
            {"num_encoder_layers": 3},
            r"encoder/layers_2/\S+ is absent in the checkpoint .*num_encoder_layers=3",
        ),
        (
            {"num_decoder_layers": 1},
            r"decoder/layers_1/\S+ is \(\d+,( \d+)?\) in the checkpoint but absent in the model "
            r"\(num_decoder_layers=1 in the model; the checkpoint has more decoder layers\)",
        ),
        (
            {"logits_via_embedding": True},
            r"decoder/logits_dense/kernel is \(16, 32128\) in the checkpoint but absent in the "
            r"model \(the checkpoint has an untied output layer",
        ),
        (
            {"share_relpos_bias": False},
            r"encoder/relpos_bias/rel_embedding is \(2, 32\) in the checkpoint but absent in the "
            r"model \(the checkpoint has one relative position table per stack",
        ),
        (
            {"relative_attention_num_buckets": 64},
            r"rel_embedding is \(2, 32\) .* \(2, 64\) .*different relative_attention_num_buckets",
        ),
    ],
)
def test_another_architecture_names_the_first_mismatch_with_both_shapes(changes, message):
    config = dataclasses.replace(config_of(F32), **changes)
    with pytest.raises(CheckpointError, match=message):
        tm.load_params(opened(F32), config)


def test_tied_checkpoint_into_untied_model_and_a_ptjf_preset_are_refused():
    untied = dataclasses.replace(config_of(BF16), logits_via_embedding=False)
    with pytest.raises(CheckpointError, match=r"logits_dense/kernel is absent in the checkpoint"):
        tm.check_model_fit(opened(BF16), untied)
    with pytest.raises(CheckpointError) as error:
        tm.check_model_fit(opened(F32), preset("tiny", VOCAB))
    message = "token_embedder/embedding is (32128, 16) in the checkpoint but (32128, 32) in the model (different emb_dim)"
    assert message in str(error.value)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_inspect_gin_text_parses_and_builds_the_checkpoints_model(fixture):
    text = tm.model_gin_text(opened(fixture))
    assert text.startswith("#") and f"{VOCAB} rows" in text
    gin.parse_config(text)
    config = TransformerConfig(vocab_size=VOCAB)
    assert config == config_of(fixture)
    shapes = tm.expected_param_shapes(config)
    assert shapes == {name: info.shape for name, info in opened(fixture).params.items()}


# ----------------------------------------------------------------------------------------------
# Numerics against T5X's outputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", [F32, LEGACY])
def test_float32_logits_and_log_probs_equal_t5xs(fixture):
    out = outputs(fixture)
    logits = logits_of(config_of(fixture), fixture)
    # Every position, padded targets included: the masking is T5X's.
    np.testing.assert_allclose(logits, out["logits"], rtol=0, atol=F32_TOL)
    log_probs = target_log_probs(logits, out["decoder_target_tokens"])
    np.testing.assert_allclose(log_probs, out["target_log_probs"], rtol=0, atol=F32_TOL)
    scores = (log_probs * out["decoder_loss_weights"]).sum(-1)
    np.testing.assert_allclose(scores, out["score_batch"], rtol=0, atol=2e-5)


def test_float32_greedy_and_beam_search_decode_as_t5x():
    out, config = outputs(F32), config_of(F32)
    model, params, enc = EncoderDecoder(config), params_of(F32), out["encoder_input_tokens"]
    greedy = np.asarray(greedy_decode(model, params, enc, 7))
    np.testing.assert_array_equal(greedy, out["greedy_predictions"])
    shifted = np.pad(greedy[:, :-1], ((0, 0), (1, 0)))
    logits = np.asarray(_forward(model, params, enc, shifted, greedy))
    scores = target_log_probs(logits, greedy).sum(-1)
    np.testing.assert_allclose(scores, out["greedy_scores"], rtol=0, atol=1e-4)
    tokens, penalised = beam_search(model, params, enc, 7, beam_size=4, alpha=0.6)
    np.testing.assert_array_equal(np.asarray(tokens), out["beam4_predictions"])
    # No beam reached EOS: T5X returns the raw log-probability, ptjf the length-penalised one.
    raw = np.asarray(penalised) * ((5 + 7) / 6) ** 0.6
    np.testing.assert_allclose(raw, out["beam4_scores"], rtol=0, atol=1e-4)


def test_bfloat16_model_is_within_bfloat16_tolerance_of_t5x():
    out = outputs(BF16)
    logits = logits_of(config_of(BF16), BF16)
    weights = out["decoder_loss_weights"].astype(bool)
    assert np.abs(logits - out["logits"])[weights].max() <= BF16_LOGITS_TOL
    log_probs = target_log_probs(logits, out["decoder_target_tokens"])
    assert np.abs(log_probs - out["target_log_probs"])[weights].max() <= BF16_LOG_PROBS_TOL
    greedy = greedy_decode(
        EncoderDecoder(config_of(BF16)), params_of(BF16), out["encoder_input_tokens"], 7
    )
    np.testing.assert_array_equal(np.asarray(greedy), out["greedy_predictions"])


def test_bfloat16_model_rounding_like_t5x_reproduces_it_to_float32_precision():
    """With every op rounded to bfloat16 (no excess precision) ptjf's T5X numerics give
    T5X's logits to float32 precision."""
    logits = logits_of(config_of(BF16), BF16, exact_bf16=True)
    np.testing.assert_allclose(logits, outputs(BF16)["logits"], rtol=0, atol=F32_TOL)


@pytest.mark.parametrize(
    "ptjf_convention",
    [
        {"float32_attention_logits": True},
        {"float32_attention_softmax": True},
        {"norm_scale_in_float32": True},
    ],
)
def test_each_t5x_numerics_option_is_needed_in_bfloat16(ptjf_convention):
    config = dataclasses.replace(config_of(BF16), **ptjf_convention)
    logits = logits_of(config, BF16, exact_bf16=True)
    assert np.abs(logits - outputs(BF16)["logits"]).max() > 5e-3


def test_bfloat16_checkpoint_with_float32_activations_equals_t5xs():
    out = outputs(BF16)
    logits = logits_of(dataclasses.replace(config_of(BF16), dtype="float32"), BF16)
    log_probs = target_log_probs(logits, out["decoder_target_tokens"])
    np.testing.assert_allclose(
        log_probs, out["target_log_probs_float32_activations"], rtol=0, atol=F32_TOL
    )


# ----------------------------------------------------------------------------------------------
# Relative position buckets, exactly
# ----------------------------------------------------------------------------------------------


def exact_bucket(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's bucket with the log scale decided in exact rational arithmetic: the largest k with
    (n / max_exact)^span >= (max_distance / max_exact)^k, i.e. k <= span·log(n/me)/log(md/me)."""
    n, offset = -relative, 0
    if bidirectional:
        num_buckets //= 2
        offset = num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return offset + n
    span, k = num_buckets - max_exact, 0
    ratio, base = Fraction(n, max_exact) ** span, Fraction(max_distance, max_exact)
    while k + 1 < span and ratio >= base ** (k + 1):
        k += 1
    return offset + max_exact + k


def float_bucket(
    relative: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> tuple[int, bool]:
    """T5's float formula in float64, and whether its log-scale value is within 1e-9 of an
    integer (a boundary, where rounding decides)."""
    n, offset = -relative, 0
    if bidirectional:
        num_buckets //= 2
        offset = num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return offset + n, False
    x = math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    bucket = offset + min(max_exact + math.floor(x), num_buckets - 1)
    return bucket, abs(x - round(x)) < 1e-9


@pytest.mark.parametrize(
    ("num_buckets", "max_distance"), [(32, 128), (8, 128), (64, 256), (32, 32), (16, 100)]
)
def test_relative_position_buckets_equal_the_exact_rational_definition(num_buckets, max_distance):
    relative = np.arange(-3 * max_distance, 3 * max_distance + 1, dtype=np.int32)
    bucket = jax.jit(
        relative_position_bucket, static_argnames=("bidirectional", "num_buckets", "max_distance")
    )
    for bidirectional in (True, False):
        got = bucket(
            relative,
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
        want = [exact_bucket(int(r), bidirectional, num_buckets, max_distance) for r in relative]
        np.testing.assert_array_equal(np.asarray(got), want)
        # Away from boundaries the exact definition is T5's float formula.
        for r, b in zip(relative.tolist(), want, strict=True):
            by_float, on_boundary = float_bucket(r, bidirectional, num_buckets, max_distance)
            assert on_boundary or b == by_float, r


def test_distances_on_bucket_boundaries_16_32_64():
    # T5's encoder: 16 buckets per direction, exact below 8, log-spaced to 128: log(n/8)/log(16)·8
    # is exactly 2, 4 and 6 at n = 16, 32, 64, where a float log may round either way.
    assert log_bucket_thresholds(16, 8, 128) == (12, 16, 23, 32, 46, 64, 91)
    for n, bucket in ((15, 9), (16, 10), (31, 11), (32, 12), (63, 13), (64, 14), (128, 15)):
        assert exact_bucket(-n, True, 32, 128) == bucket
        assert int(relative_position_bucket(jnp.array(-n), bidirectional=True)) == bucket
        assert int(relative_position_bucket(jnp.array(n), bidirectional=True)) == 16 + bucket
    # T5's decoder: 32 buckets, exact below 16, log-spaced to 128: log(n/16)/log(8)·16.
    assert log_bucket_thresholds(32, 16, 128)[-1] == 113  # 16 · 8^(15/16) = 112.4
    for n, bucket in ((16, 16), (32, 21), (64, 26), (128, 31)):
        assert int(relative_position_bucket(jnp.array(-n), bidirectional=False)) == bucket


# ----------------------------------------------------------------------------------------------
# Optimizer state
# ----------------------------------------------------------------------------------------------


def test_t5x_adafactor_state_maps_onto_ptjfs_adafactor():
    state = tc.restore_optimizer_state(opened(F32))
    assert int(state["step"]) == 20 and state["step"].dtype == np.int32
    embedding = state["param_states"]["token_embedder"]["embedding"]
    assert embedding["v_row"].shape == (16,) and embedding["v_col"].shape == (VOCAB,)
    assert not embedding["m"].any() and embedding["m"].shape == (1,)
    params = params_of(F32)
    # The T5X run's Adafactor: T5's settings with min_dim_size_to_factor=16.
    tx = make_optimizer(
        dataclasses.replace(t5_adafactor(), min_dim_size_to_factor=16),
        optax.constant_schedule(0.01),
    )
    mapped = tm.optax_adafactor_state(state, jax.eval_shape(tx.init, params))
    assert jax.tree.structure(mapped) == jax.tree.structure(tx.init(params))
    factored = mapped[0]
    assert int(factored.count) == 20 and int(mapped[2].count) == 20
    np.testing.assert_array_equal(factored.v_col["token_embedder"]["embedding"], embedding["v_col"])
    scale = state["param_states"]["encoder"]["encoder_norm"]["scale"]
    np.testing.assert_array_equal(factored.v["encoder"]["encoder_norm"]["scale"], scale["v"])
    tx.update(jax.tree.map(jnp.ones_like, params), mapped, params)  # a usable optax state
    # T5X factored what ptjf's default (min_dim_size_to_factor=128) would not.
    default = make_optimizer(t5_adafactor(), optax.constant_schedule(0.01))
    with pytest.raises(CheckpointError, match="min_dim_size_to_factor") as error:
        tm.optax_adafactor_state(state, jax.eval_shape(default.init, params))
    assert "the two do not factor (or keep momentum for) the same parameters" in str(error.value)
    # The bf16 run used T5X's default (nothing factored at width 16): ptjf's default fits.
    tied = tc.restore_optimizer_state(opened(BF16))
    mapped = tm.optax_adafactor_state(tied, jax.eval_shape(default.init, params_of(BF16)))
    assert mapped[0].v["token_embedder"]["embedding"].shape == (VOCAB, 16)


# ----------------------------------------------------------------------------------------------
# Sharded restore on 8 fake devices, and gs://
# ----------------------------------------------------------------------------------------------


def test_restore_onto_a_mesh_of_eight_devices(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "t5x_mesh_restore.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["device_count"] == 8 and results["mesh"] == {"data": 4, "model": 2}
    for layout in ("orbax", "legacy"):
        got = results[layout]
        assert got["bit_identical"]
        assert got["logits_max_diff"] <= F32_TOL
        # 2-D partitioning: (vocab, embed) over (model, data), each device holds 1/8.
        assert got["specs"]["token_embedder/embedding"] == "P('model', 'data')"
        assert got["shard_shapes"]["token_embedder/embedding"] == [[VOCAB // 2, 4]]
        assert got["shard_shapes"]["decoder/logits_dense/kernel"] == [[4, VOCAB // 2]]
        assert got["shard_shapes"]["encoder/layers_1/mlp/wo/kernel"] == [[16, 4]]


@pytest.mark.parametrize("fixture", [LEGACY, BF16])
def test_checkpoint_on_gcs_reads_like_local(fixture, gcs_bucket):
    import gcsfs
    from etils.epath import gpath

    # epath decides once per process whether gs:// goes through TensorFlow; an earlier test's
    # path may have decided before the emulator fixture set EPATH_USE_TF=false.
    gpath._is_tf_installed.cache_clear()
    gcsfs.GCSFileSystem().put(str(DATA / fixture), f"{gcs_bucket}/run", recursive=True)
    checkpoint = tc.open_checkpoint(f"{gcs_bucket}/run/checkpoint_20")
    assert checkpoint.layout == LAYOUT[fixture]
    assert (checkpoint.params, checkpoint.optimizer) == (
        opened(fixture).params,
        opened(fixture).optimizer,
    )
    assert tm.infer_config(checkpoint) == config_of(fixture)  # config.gin read from gs:// too
    remote = tc.flatten(tm.load_params(checkpoint, config_of(fixture)))
    local = tc.flatten(params_of(fixture))
    assert all(np.array_equal(remote[k], local[k]) for k in local)
    assert int(tc.restore_optimizer_state(checkpoint)["step"]) == 20

"""The tiny PTJF plan on 8 fake CPU devices: every mesh trains like one device, parameters are
laid out as the rules say, and checkpoints restore onto other meshes (tests/mesh_runs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
MESHES = ("8x1", "4x2", "2x4", "4x2-fsdp")


@pytest.fixture(scope="module")
def results(tmp_path_factory, bible_vocab):
    out = tmp_path_factory.mktemp("meshes")
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "mesh_runs.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def test_the_subprocess_saw_eight_devices(results):
    assert results["device_count"] == 8
    assert results["meshes"]["4x2"]["mesh"] == {"data": 4, "model": 2}
    assert results["meshes"]["2x4"]["mesh"] == {"data": 2, "model": 4}
    assert results["meshes"]["8x1"]["mesh"] == {"data": 8, "model": 1}


@pytest.mark.parametrize("mesh", MESHES)
def test_every_mesh_trains_like_one_device(results, mesh):
    one = results["meshes"]["1"]
    got = results["meshes"][mesh]
    assert len(got["train_loss"]) == len(one["train_loss"]) == 6
    np.testing.assert_allclose(got["train_loss"], one["train_loss"], rtol=2e-6, atol=2e-6)
    assert got["eval"].keys() == one["eval"].keys()
    for task, loss in one["eval"].items():
        np.testing.assert_allclose(got["eval"][task], loss, rtol=2e-6)


def test_parameters_are_sharded_as_the_rules_say(results):
    specs = results["meshes"]["4x2"]["param_specs"]
    layer = "['decoder']['layers_0']"
    assert specs[f"{layer}['mlp']['wi_0']['kernel']"] == "P(None, 'model')"  # (embed, mlp)
    assert specs[f"{layer}['mlp']['wo']['kernel']"] == "P('model', None)"  # (mlp, embed)
    for proj in ("query", "key", "value"):  # (embed, joined_kv)
        assert specs[f"{layer}['self_attention']['{proj}']['kernel']"] == "P(None, 'model')"
    assert specs[f"{layer}['self_attention']['out']['kernel']"] == "P('model', None)"
    assert specs["['token_embedder']['embedding']"] == "P('model', None)"  # (vocab, embed)
    assert specs["['decoder']['logits_dense']['kernel']"] == "P(None, 'model')"  # (embed, vocab)
    assert specs["['decoder']['decoder_norm']['scale']"] == "P(None,)"
    # 2 heads split over 2 devices; on a model axis of 4 they don't divide and stay whole.
    assert specs[f"{layer}['relpos_bias']['rel_embedding']"] == "P('model', None)"
    wide = results["meshes"]["2x4"]["param_specs"]
    assert wide[f"{layer}['relpos_bias']['rel_embedding']"] == "P(None, None)"
    assert set(results["meshes"]["4x2"]["device_counts"].values()) == {8}
    assert set(results["meshes"]["1"]["device_counts"].values()) == {1}


def test_optimizer_state_follows_its_parameters(results):
    opt = results["meshes"]["4x2"]["opt_specs"]
    kernel = "['encoder']['layers_0']['mlp']['wo']['kernel']"
    assert opt[f"[0].mu{kernel}"] == opt[f"[0].nu{kernel}"] == "P('model', None)"
    assert opt["[0].count"] == "P()"


def test_2d_parameter_partitioning_splits_embed_over_data(results):
    specs = results["meshes"]["4x2-fsdp"]["param_specs"]
    opt = results["meshes"]["4x2-fsdp"]["opt_specs"]
    kernel = "['encoder']['layers_0']['mlp']['wi_0']['kernel']"
    assert specs[kernel] == "P('data', 'model')"
    assert opt[f"[0].mu{kernel}"] == "P('data', 'model')"
    assert specs["['token_embedder']['embedding']"] == "P('model', 'data')"
    assert specs["['encoder']['encoder_norm']['scale']"] == "P('data',)"


def test_checkpoint_from_4x2_restores_on_8x1_and_one_device(results):
    restored = results["restore"]
    assert restored["8x1"] == {"equal": True, "mesh": {"data": 8, "model": 1}, "devices": [8]}
    assert restored["1"] == {"equal": True, "mesh": {"data": 1, "model": 1}, "devices": [1]}


def test_switch_and_resume_across_meshes(results):
    restored = results["restore"]
    # `ptjf switch` read the (4, 2) parameters onto one device, unchanged.
    assert restored["switch"] == {"equal": True, "parent_step": 3}
    # A joint stage switched on (2, 4) from the (4, 2) pre-training and trained on (8, 1)
    # follows the (4, 2) run's own joint stage.
    np.testing.assert_allclose(
        restored["resume_train_loss"],
        results["meshes"]["4x2"]["train_loss"][3:],
        rtol=2e-6,
        atol=2e-6,
    )


def test_microbatches_and_remat_on_a_mesh_change_no_number(results):
    plain = results["meshes"]["1"]
    got = results["meshes"]["4x2-micro-remat"]
    np.testing.assert_allclose(got["train_loss"], plain["train_loss"], rtol=2e-6, atol=2e-6)


SLOW = pytest.mark.skipif(
    os.environ.get("PTJF_SLOW") != "1",
    reason="full form only (PTJF_SLOW=1); the cheap form checks dropout and bf16 on one device "
    "(tests/test_models.py, tests/test_remat.py)",
)


@pytest.mark.slow
@SLOW
def test_dropout_on_a_mesh_draws_the_one_device_masks(results):
    one, mesh = results["meshes"]["1-dropout"], results["meshes"]["2x4-dropout"]
    np.testing.assert_allclose(mesh["train_loss"], one["train_loss"], rtol=2e-6, atol=2e-6)
    assert not np.allclose(one["train_loss"], results["meshes"]["1"]["train_loss"])


@pytest.mark.slow
@SLOW
def test_bf16_activations_on_a_mesh_keep_float32_parameters(results):
    plain = results["meshes"]["1"]
    bf16 = results["meshes"]["4x2-bf16"]
    assert bf16["param_dtypes"] == plain["param_dtypes"] == ["float32"]
    # bfloat16 keeps 8 bits of mantissa: losses agree to about 1%, not to float32 precision.
    np.testing.assert_allclose(bf16["train_loss"], plain["train_loss"], rtol=2e-2)
    assert not np.allclose(bf16["train_loss"], plain["train_loss"], rtol=1e-6, atol=0)

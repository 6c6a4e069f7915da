"""ptjf.models.memory: hand-computed bytes on a tiny model, mT5-XXL's size, and the shardings of
8 fake CPU devices agreeing with the arithmetic to the byte."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from ptjf.errors import ConfigError, UnknownNameError
from ptjf.models import EncoderDecoder, TransformerConfig, memory, param_logical_axes
from ptjf.models.config import count_params, preset
from ptjf.training import state_layout
from ptjf.training.optimizers import OptimizerConfig, paper_mc4_adafactor, t5_adafactor

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
RULES_1D = memory.logical_axis_rules(1)
RULES_2D = memory.logical_axis_rules(2)
ONE = memory.MeshShape(1, 1)
TWO_BY_TWO = memory.MeshShape(data=2, model=2)

# Tiny preset, vocabulary 100: d = 32, 2 heads × 16 (joined 32), mlp 64 gated, 2 + 2 layers.
# attention 4·32·32 = 4096; mlp 2·32·64 + 64·32 = 6144; relpos 2·32 = 64
# encoder layer 2·32 + 4096 + 6144 + 64 = 10368; decoder layer 3·32 + 8192 + 6144 + 64 = 14496
# embedding 3200, logits 3200, final norms 2·32: 3200 + 2·10368 + 32 + 2·14496 + 32 + 3200
TINY = preset("tiny", 100)
TINY_PARAMS = 56_192
TINY_NORM_ELEMENTS = 12 * 32  # 2 per encoder layer, 3 per decoder layer, 2 final norms
TINY_RELPOS_ELEMENTS = 4 * 64
TINY_LEAVES = 2 * 10 + 1 + 2 * 15 + 1 + 2  # leaves per encoder/decoder layer, norms, emb/logits


def _nbytes(params: int) -> int:
    return 4 * params


# --- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"share_relpos_bias": True, "logits_via_embedding": True, "mlp_activations": ("relu",)},
        {"num_encoder_layers": 1, "num_decoder_layers": 3, "num_heads": 3, "head_dim": 8},
    ],
)
def test_parameter_layout_is_the_models_own(changes):
    config = dataclasses.replace(TINY, **changes)
    layout = memory.parameter_layout(config)
    shapes = jax.tree_util.tree_flatten_with_path(state_layout.abstract_params(config))[0]
    axes = jax.tree_util.tree_flatten_with_path(
        param_logical_axes(EncoderDecoder(config)), is_leaf=lambda x: isinstance(x, P)
    )[0]

    def name(path) -> str:
        return "/".join(k.key for k in path)

    assert {name(p): tuple(leaf.shape) for p, leaf in shapes} == {
        k: v.shape for k, v in layout.items()
    }
    assert {name(p): tuple(spec) for p, spec in axes} == {k: v.axes for k, v in layout.items()}
    assert sum(p.size for p in layout.values()) == count_params(config)


def test_tiny_parameters_by_hand():
    assert count_params(TINY) == TINY_PARAMS
    assert memory.parameter_bytes(TINY, ONE, RULES_1D) == _nbytes(TINY_PARAMS)
    # 1-D on data 2 × model 2: everything but the norms has an axis split over model (vocab,
    # joined_kv, mlp, heads); data holds replicas.
    halved = (TINY_PARAMS - TINY_NORM_ELEMENTS) // 2 + TINY_NORM_ELEMENTS
    assert memory.parameter_bytes(TINY, TWO_BY_TWO, RULES_1D) == _nbytes(halved) == 113_152
    # 2-D: every matrix also splits embed over data (1/4); relpos tables only over model and
    # norms only over data (1/2).
    matrices = TINY_PARAMS - TINY_NORM_ELEMENTS - TINY_RELPOS_ELEMENTS
    quartered = matrices // 4 + TINY_RELPOS_ELEMENTS // 2 + TINY_NORM_ELEMENTS // 2
    assert memory.parameter_bytes(TINY, TWO_BY_TWO, RULES_2D) == _nbytes(quartered) == 56_832


def test_an_axis_the_mesh_does_not_divide_stays_whole():
    assert memory.shard_elements((100, 32), P("model", None), memory.MeshShape(1, 3)) == 3200
    assert memory.shard_elements((102, 32), P("model", "data"), memory.MeshShape(2, 3)) == 544
    assert memory.shard_elements((8,), P(("data", "model")), memory.MeshShape(2, 2)) == 2


# --- optimizer state -----------------------------------------------------------------------


def test_tiny_optimizer_state_by_hand():
    params = _nbytes(TINY_PARAMS)
    # Adam: mu and nu, plus the counts of scale_by_adam and the schedule (int32 each).
    assert memory.optimizer_state_bytes(TINY, OptimizerConfig(), ONE, RULES_1D) == 2 * params + 8
    # The paper's Adafactor: full v and momentum; optax keeps a (1,) placeholder for v_row and
    # v_col of every parameter; counts of the factored rms, the schedule and the momentum.
    placeholders = 2 * TINY_LEAVES * 4
    paper = memory.optimizer_state_bytes(TINY, paper_mc4_adafactor(), ONE, RULES_1D)
    assert paper == 2 * params + placeholders + 12
    # T5's Adafactor: every tiny dimension is below min_dim_size_to_factor=128, so nothing is
    # factored: one full v, no momentum.
    t5 = memory.optimizer_state_bytes(TINY, t5_adafactor(), ONE, RULES_1D)
    assert t5 == params + placeholders + 8


def test_factored_adafactor_keeps_row_and_column_factors():
    # With min_dim_size_to_factor=16 every matrix of the tiny model is factored (relpos tables,
    # 2 × 32, are not): v_row + v_col hold the sum of its two dimensions, v a placeholder.
    # embedding and logits (100, 32): 132 each; attention kernels (32, 32): 64; mlp (32, 64): 96.
    factors = 2 * 132 + 2 * (4 * 64 + 3 * 96) + 2 * (8 * 64 + 3 * 96)
    factored_leaves = 2 + 2 * 7 + 2 * 11
    full = TINY_RELPOS_ELEMENTS + TINY_NORM_ELEMENTS
    other_leaves = TINY_LEAVES - factored_leaves
    elements = factors + factored_leaves + full + 2 * other_leaves
    optimizer = dataclasses.replace(t5_adafactor(), min_dim_size_to_factor=16)
    assert memory.optimizer_state_bytes(TINY, optimizer, ONE, RULES_1D) == 4 * elements + 8
    assert memory.describe_optimizer(optimizer) == "adafactor: row+column factors"


# --- activations ---------------------------------------------------------------------------

SMALL = dict(batch_size=4, input_length=8, target_length=6)


def test_tiny_activations_by_hand_for_each_remat_policy():
    # 4 rows, inputs 8, targets 6, float32, dropout 0.1, gated GELU. Elements, no remat:
    # a norm over L positions: x, x², x·rsqrt [4, L, 32] + rsqrt, scale [4, L, 1] + output
    def norm(length: int, output: bool = True) -> int:
        return 3 * 4 * length * 32 + 2 * 4 * length + (4 * length * 32 if output else 0)

    # an attention: q [4, Lq, 2, 16], k, v [4, Lk, 2, 16], exp and (dropped) weights
    # [4, 2, Lq, Lk], the softmax sum [4, 2, Lq, 1], context [4, Lq, 32]
    def attention(lq: int, lk: int) -> int:
        return 128 * lq + 2 * 128 * lk + 2 * 8 * lq * lk + 8 * lq + 128 * lq

    # the MLP [4, L, 64]: wi_0 + 4 GELU intermediates + GELU output, wi_1, the dropped product
    def mlp(length: int) -> int:
        return 8 * 4 * length * 64

    enc = 2 * norm(8) + attention(8, 8) + mlp(8)
    dec = 3 * norm(6) + attention(6, 6) + attention(6, 8) + mlp(6)
    # ids; encoder_norm + its dropped output; decoder_norm + the logits' float32 input; logits
    stacks = (32 + 24) + norm(8, False) + 1024 + norm(6, False) + 768 + 4 * 6 * 100

    def run(policy: str) -> memory.ActivationEstimate:
        return memory.activation_bytes(TINY, mesh=ONE, rules=RULES_1D, remat_policy=policy, **SMALL)

    none = run("none")
    assert (none.encoder_layer, none.decoder_layer) == (4 * enc, 4 * dec) == (119_552, 118_976)
    assert (none.stacks, none.weight_copies) == (4 * stacks, 0) == (38_944, 0)
    assert none.transient == 4 * 4 * 6 * 100  # the logits' gradient
    assert none.total == 2 * 4 * enc + 2 * 4 * dec + 4 * stacks + 9600 == 525_600

    # With remat the attention masks [4, 1, Lq, Lk] (bool) are kept as the layers' inputs.
    remat_stacks = 38_944 + (4 * 8 * 8 + 4 * 6 * 6 + 4 * 6 * 8)

    full = run("full")  # layer inputs only; the larger layer is recomputed in its backward
    assert (full.encoder_layer, full.decoder_layer) == (4 * 1024, 4 * 768)
    assert (full.stacks, full.transient) == (remat_stacks, 119_552) == (39_536, 119_552)
    assert full.total == 2 * 4096 + 2 * 3072 + 39_536 + 119_552

    # input + q, k, v + attention `out` + wi_0, wi_1 (self and cross attention in the decoder)
    dots_enc = 1024 + 3 * 1024 + 1024 + 2 * 2048
    dots_dec = 768 + (3 * 768 + 768) + (768 + 2 * 1024 + 768) + 2 * 1536
    dots = run("minimal")
    assert (dots.encoder_layer, dots.decoder_layer) == (4 * dots_enc, 4 * dots_dec)
    assert dots.total == 2 * 36_864 + 2 * 41_984 + 39_536 + 119_552

    # 'dots' also keeps each attention's q·k logits [4, 2, Lq, Lk] and weights·v [4, Lq, 32]
    minimal = run("dots")
    extra_enc = 4 * 2 * 8 * 8 + 1024
    extra_dec = (4 * 2 * 6 * 6 + 768) + (4 * 2 * 6 * 8 + 768)
    assert minimal.encoder_layer == 4 * (dots_enc + extra_enc) == 43_008
    assert minimal.decoder_layer == 4 * (dots_dec + extra_dec) == 50_816


def test_bf16_keeps_float32_norms_logits_and_softmax_and_bf16_weight_copies():
    config = dataclasses.replace(TINY, dtype="bfloat16", dropout_rate=0.0)
    got = memory.activation_bytes(config, mesh=ONE, rules=RULES_1D, **SMALL)
    norm = 4 * (3 * 1024 + 64) + 2 * 1024  # float32 internals, bf16 output
    # q, k and the softmax's exp and sum in float32; v, weights, context in bf16
    attention = 4 * (2 * 1024 + 512 + 64) + 2 * (1024 + 512 + 1024)
    mlp = 2 * 8 * 2048  # no dropout: the product takes the dropped product's place
    assert got.encoder_layer == 2 * norm + attention + mlp == 77_568
    # Every layer's kernels in bf16: 4 attention and 3 MLP kernels per encoder layer, 8 and 3
    # per decoder layer (32 × 32 and 32 × 64 / 64 × 32).
    kernels = 2 * (4 * 1024 + 3 * 2048) + 2 * (8 * 1024 + 3 * 2048)
    assert got.weight_copies == 2 * kernels == 98_304
    assert (
        memory.activation_bytes(
            config, mesh=ONE, rules=RULES_1D, remat_policy="full", **SMALL
        ).weight_copies
        == 0
    )  # recomputed with the layer


_DTYPES = {"f32": 4, "bf16": 2, "i32": 4, "bool": 1}


def _jax_residuals(config, batch: int, le: int, ld: int) -> tuple[int, int]:
    """(activation bytes, kernel-copy bytes) JAX saves for ptjf's training loss, as printed
    by `print_saved_residuals`, less broadcasts and transposes XLA never materialises."""
    import jax.numpy as jnp
    from jax.ad_checkpoint import print_saved_residuals

    from ptjf.training import losses

    model = EncoderDecoder(config)
    params = state_layout.abstract_params(config)
    enc, dec = jnp.ones((batch, le), jnp.int32), jnp.ones((batch, ld), jnp.int32)

    def loss(p):
        rngs = {"dropout": jax.random.key(0)}
        logits = model.apply({"params": p}, enc, dec, dec, enable_dropout=True, rngs=rngs)
        return jnp.sum(losses.token_losses(logits, dec, 0.1, 1e-4).loss)

    out = io.StringIO()
    with redirect_stdout(out):
        print_saved_residuals(loss, params)
    activations = kernels = 0
    for line in out.getvalue().splitlines():
        m = re.match(r"(\w+)\[([\d,]*)\] (.*)", line)
        if not m or "from the argument" in m[3] or re.search("broadcast_in_dim|transpose", m[3]):
            continue
        shape = tuple(int(n) for n in m[2].split(",") if n)
        size = _DTYPES[m[1]] * math.prod(shape)
        if len(shape) >= 3 and shape[0] == batch and shape != (batch, ld, 1, 1):
            activations += size  # (left out: the loss's per-token values [b, Ld] and ids)
        elif len(shape) == 2 and shape[0] != batch:
            kernels += size
    return activations, kernels


@pytest.mark.parametrize("policy", memory.REMAT_POLICIES)
@pytest.mark.parametrize(
    "changes",
    [
        {"dtype": "bfloat16", "dropout_rate": 0.0},
        {"mlp_activations": ("relu",)},
        {"mlp_activations": ("silu",), "dtype": "bfloat16", "float32_attention_logits": False},
        {"mlp_activations": ("relu", "linear"), "dtype": "bfloat16", "logits_via_embedding": True},
    ],
)
def test_activations_are_what_jax_saves(changes, policy):
    config = dataclasses.replace(
        TINY,
        vocab_size=11,
        emb_dim=8,
        num_heads=2,
        head_dim=6,
        mlp_dim=10,
        remat_policy=policy,
        **changes,
    )
    got = memory.activation_bytes(
        config,
        batch_size=3,
        input_length=5,
        target_length=7,
        mesh=ONE,
        rules=RULES_1D,
        remat_policy=policy,
    )
    expected = (got.residuals - got.weight_copies, got.weight_copies)
    assert _jax_residuals(config, 3, 5, 7) == expected


def test_activations_split_over_the_mesh_as_the_rules_say():
    got = memory.activation_bytes(TINY, mesh=TWO_BY_TWO, rules=RULES_1D, **SMALL)
    # 2 rows per device (data); heads, mlp and vocab halved (model); embed whole (1-D):
    # norm 3·2·8·32 + 2·2·8 + 2·8·32; attention q, k, v 3·256, exp, weights 2·128, sum 16,
    # context 256; mlp 8 · 2·8·32
    norm = 3 * 512 + 32 + 512
    attention = 3 * 256 + 2 * 128 + 16 + 256
    assert got.encoder_layer == 4 * (2 * norm + attention + 8 * 512) == 38_208
    assert got.transient == 4 * 4 * 6 * 100 // 4  # logits: rows over data, vocab over model
    act_2d = memory.logical_axis_rules(1, activation_partitioning_dims=2)
    split = memory.activation_bytes(TINY, mesh=TWO_BY_TWO, rules=act_2d, **SMALL)
    # embed over model too: ids 2·8 + 2·6; encoder norm 3·256 + 32, its dropped output 256;
    # decoder norm 3·192 + 24, the logits' input 192; logits 2·6·50
    assert split.stacks == 4 * (28 + 800 + 256 + 600 + 192 + 600) == 9904


# --- the whole step ------------------------------------------------------------------------


def test_estimate_adds_up_and_renders_a_table():
    est = memory.estimate(
        TINY,
        batch_size=8,
        input_length=8,
        target_length=6,
        num_devices=4,
        num_partitions=2,
        parameter_partitioning_dims=2,
        optimizer=OptimizerConfig(),
        remat_policy="full",
        num_microbatches=2,
    )
    assert est.mesh == TWO_BY_TWO
    assert est.parameters == 56_832
    assert est.gradients == 2 * 56_832  # the microbatch scan carries the running sum
    assert est.optimizer_state == memory.optimizer_state_bytes(
        TINY, OptimizerConfig(), TWO_BY_TWO, RULES_2D
    )
    # 8 rows in 2 microbatches: the activations of one microbatch of 4 rows
    assert est.activations == memory.activation_bytes(
        TINY,
        batch_size=4,
        input_length=8,
        target_length=6,
        mesh=TWO_BY_TWO,
        rules=RULES_2D,
        remat_policy="full",
    )
    assert est.total == sum(value for _, value in est.rows()[:-1])
    lines = est.table().splitlines()
    assert lines[0].startswith("per device, mesh data=2 x model=2 (4 devices)")
    assert lines[0].endswith("GiB")
    assert lines[1].startswith("parameters (float32, 2-D)")
    assert lines[2].startswith("gradients (float32, + accumulator)")
    assert lines[3].startswith("optimizer state (adam: 2 moments)")
    assert lines[4].startswith("activations (float32, remat full, 2 rows x 8/6)")
    assert re.fullmatch(r"total\s+0\.00", lines[5])


def test_remat_policy_defaults_to_the_configs_own():
    kwargs = dict(batch_size=4, input_length=8, target_length=6)
    assert "remat none" in memory.estimate(TINY, **kwargs).labels["activations"]
    full = memory.estimate(dataclasses.replace(TINY, remat_policy="full"), **kwargs)
    assert "remat full" in full.labels["activations"]
    assert full.activations == memory.estimate(TINY, remat_policy="full", **kwargs).activations
    assert memory.REMAT_POLICIES == ("none", "full", "minimal", "dots")


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"num_devices": 6, "num_partitions": 4}, ConfigError, "does not divide num_devices=6"),
        ({"num_microbatches": 3}, ConfigError, "divide batch_size=8"),
        ({"num_devices": 16}, ConfigError, "does not split over the data axis of 16"),
        ({"remat_policy": "everything"}, UnknownNameError, "everything"),
        ({"parameter_partitioning_dims": 3}, ConfigError, "expected 1 or 2"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(kwargs, error, message):
    with pytest.raises(error, match=message):
        memory.estimate(TINY, batch_size=8, input_length=8, target_length=6, **kwargs)


# --- mT5-XXL -------------------------------------------------------------------------------


def test_mt5_xxl_is_13b_parameters_52gb_in_float32():
    config = preset("mt5_xxl", 250_112)  # the released mT5 vocabulary, padded to 128
    params = count_params(config)
    assert params == 12_921_151_488
    whole = memory.parameter_bytes(config, ONE, RULES_1D)
    assert whole == 4 * params and round(whole / 1e9) == 52
    # 8 × 8 with 2-D partitioning: matrices 1/64, relpos tables (heads) and norms (embed) 1/8.
    layout = memory.parameter_layout(config)
    norms = sum(p.size for p in layout.values() if p.axes == ("embed",))
    relpos = sum(p.size for p in layout.values() if p.axes == ("heads", "relpos_buckets"))
    expected = 4 * ((params - norms - relpos) // 64 + norms // 8 + relpos // 8)
    assert memory.parameter_bytes(config, memory.MeshShape(8, 8), RULES_2D) == expected
    # The paper's Adafactor keeps two float32 copies of the parameters (plus placeholders).
    state = memory.optimizer_state_bytes(config, paper_mc4_adafactor(), ONE, RULES_1D)
    assert state == 2 * whole + 2 * 4 * len(layout) + 12


# --- against real shardings on 8 fake CPU devices ------------------------------------------

_FAKE_DEVICES = """
import json, sys
import jax, numpy as np, optax
from ptjf import stages
from ptjf.models.config import TransformerConfig
from ptjf.runtime.partitioning import Partitioner, standard_logical_axis_rules
from ptjf.training import state_layout
from ptjf.training.optimizers import OptimizerConfig, make_optimizer

config = TransformerConfig(**json.loads(sys.argv[1]))
out = {}
for key, (num_partitions, dims, optimizer) in json.loads(sys.argv[2]).items():
    rules = standard_logical_axis_rules(activation_partitioning_dims=1,
                                        parameter_partitioning_dims=dims)
    part = Partitioner(num_partitions=num_partitions, logical_axis_rules=rules)
    tx = make_optimizer(OptimizerConfig(**optimizer), optax.constant_schedule(1.0))
    shardings = state_layout.state_shardings(part, config, tx)
    abstract = jax.eval_shape(lambda p: stages.switch_state(p, tx),
                              state_layout.abstract_params(config))
    def nbytes(tree, sh):
        sizes = jax.tree.map(
            lambda a, s: int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize, tree, sh)
        return sum(jax.tree.leaves(sizes))
    out[key] = [nbytes(abstract.params, shardings.params),
                nbytes(abstract.opt_state, shardings.opt_state)]
print(json.dumps({"devices": jax.device_count(), "bytes": out}))
"""

# Uneven on purpose: vocab 130 splits over 2 but not 4 or 8, 4 heads not over 8; joined_kv 64
# makes the attention kernels square (the factored statistics' ambiguous case).
_CHECK_CONFIG = dict(
    vocab_size=130,
    emb_dim=64,
    num_heads=4,
    head_dim=16,
    mlp_dim=96,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_activations=["gelu", "linear"],
)
_OPTIMIZERS = {
    "adam": {},
    "paper": {"name": "adafactor", "factored": False, "momentum": 0.9},
    "t5": {"name": "adafactor", "min_dim_size_to_factor": 16},
}
_MESHES = {"4x2-1d": (2, 1), "2x4-2d": (4, 2), "1x8-2d": (8, 2)}


def test_arithmetic_matches_the_partitioners_shardings_on_8_fake_devices():
    cases = {
        f"{mesh}/{opt}": (m, dims, _OPTIMIZERS[opt])
        for mesh, (m, dims) in _MESHES.items()
        for opt in _OPTIMIZERS
    }
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _FAKE_DEVICES, json.dumps(_CHECK_CONFIG), json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    config = TransformerConfig(**{**_CHECK_CONFIG, "mlp_activations": ("gelu", "linear")})
    for key, (m, dims, optimizer) in cases.items():
        mesh = memory.MeshShape.for_devices(8, m)
        rules = memory.logical_axis_rules(dims)
        expected = [
            memory.parameter_bytes(config, mesh, rules),
            memory.optimizer_state_bytes(config, OptimizerConfig(**optimizer), mesh, rules),
        ]
        assert result["bytes"][key] == expected, key


# --- docs/scaling.md -----------------------------------------------------------------------


def test_scaling_doc_tables_are_what_its_snippet_prints():
    text = DOC.read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```\n", text, flags=re.S)
    assert snippet, "docs/scaling.md has no python block"
    printed = re.search(r"```python\n.*?```\n\nprints\n\n```text\n(.*?)```", text, flags=re.S)
    assert printed, "docs/scaling.md shows no output after its python block"
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(snippet[1], str(DOC), "exec"), {})
    assert out.getvalue() == printed[1]

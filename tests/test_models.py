"""Tests for ptjf.models: tree layout, masks, packing, dropout, relative buckets, decoding, presets.

Everything runs the `tiny` preset; jitted functions are module-level and shared so each
(model, shapes) pair compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjf.errors import ConfigError, DataError, UnknownNameError
from ptjf.models import (
    PRESET_NAMES,
    EncoderDecoder,
    TransformerConfig,
    count_params,
    greedy_decode,
    init_decoder_cache,
    init_params,
    param_logical_axes,
    preset,
    relative_position_bucket,
    with_vocab_size,
)

VOCAB = 64
CFG = preset("tiny", VOCAB)
MODEL = EncoderDecoder(CFG)
GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs" / "models"


@functools.cache
def params():
    return init_params(CFG, jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def forward(model, params, batch):
    return model.apply({"params": params}, **batch, enable_dropout=False)


@functools.partial(jax.jit, static_argnums=0)
def forward_dropout(model, params, batch, rng):
    return model.apply({"params": params}, **batch, enable_dropout=True, rngs={"dropout": rng})


def shapes_of(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    boxed = jax.eval_shape(
        lambda: EncoderDecoder(config).init(
            jax.random.key(0), *(jnp.ones((1, 2), jnp.int32),) * 3, enable_dropout=False
        )
    )
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed)["params"])[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def batch_of(enc, dec_in, dec_target, **packing):
    batch = {
        "encoder_input_tokens": jnp.asarray(enc, jnp.int32),
        "decoder_input_tokens": jnp.asarray(dec_in, jnp.int32),
        "decoder_target_tokens": jnp.asarray(dec_target, jnp.int32),
    }
    batch.update({k: jnp.asarray(v, jnp.int32) for k, v in packing.items()})
    return batch


def shift_right(targets: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


# A fixed unpacked batch: encoder length 10, decoder length 8, with padding.
ENC = np.array([[11, 12, 13, 1, 0, 0, 0, 0, 0, 0], [14, 15, 16, 17, 18, 19, 20, 2, 3, 1]])
TGT = np.array([[21, 22, 1, 0, 0, 0, 0, 0], [23, 24, 25, 26, 27, 28, 29, 1]])
BATCH = batch_of(ENC, shift_right(TGT), TGT)


# ----------------------------------------------------------------------------------------------
# Parameter tree, logical axes, parameter count
# ----------------------------------------------------------------------------------------------


def _expected_tiny_tree() -> dict[str, tuple[int, ...]]:
    d, qkv, m, v, h, nb = 32, 32, 64, VOCAB, 2, 32
    attn = {f"{p}/kernel": (d, qkv) for p in ("query", "key", "value")} | {"out/kernel": (qkv, d)}
    mlp = {"mlp/wi_0/kernel": (d, m), "mlp/wi_1/kernel": (d, m), "mlp/wo/kernel": (m, d)}
    tree = {
        "token_embedder/embedding": (v, d),
        "encoder/encoder_norm/scale": (d,),
        "decoder/decoder_norm/scale": (d,),
        "decoder/logits_dense/kernel": (d, v),
    }
    for i in range(2):
        e = f"encoder/layers_{i}/"
        tree |= {
            e + "pre_attention_layer_norm/scale": (d,),
            e + "pre_mlp_layer_norm/scale": (d,),
            e + "relpos_bias/rel_embedding": (h, nb),
        }
        tree |= {e + "attention/" + k: s for k, s in attn.items()}
        tree |= {e + k: s for k, s in mlp.items()}
        dd = f"decoder/layers_{i}/"
        for norm in ("pre_self_attention", "pre_cross_attention", "pre_mlp"):
            tree[dd + f"{norm}_layer_norm/scale"] = (d,)
        tree[dd + "relpos_bias/rel_embedding"] = (h, nb)
        for block in ("self_attention", "encoder_decoder_attention"):
            tree |= {dd + f"{block}/" + k: s for k, s in attn.items()}
        tree |= {dd + k: s for k, s in mlp.items()}
    return tree


def test_tiny_param_tree_paths_and_shapes_are_exact():
    assert shapes_of(CFG) == _expected_tiny_tree()
    real = jax.tree_util.tree_flatten_with_path(params())[0]
    assert {"/".join(k.key for k in p): x.shape for p, x in real} == _expected_tiny_tree()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params()))


def test_tied_shared_and_relu_variants_change_the_tree_as_documented():
    tied = shapes_of(dataclasses.replace(CFG, logits_via_embedding=True))
    assert set(_expected_tiny_tree()) - set(tied) == {"decoder/logits_dense/kernel"}

    shared = shapes_of(dataclasses.replace(CFG, share_relpos_bias=True))
    relpos = sorted(k for k in shared if "relpos" in k)
    assert relpos == ["decoder/relpos_bias/rel_embedding", "encoder/relpos_bias/rel_embedding"]

    relu = shapes_of(dataclasses.replace(CFG, mlp_activations=("relu",)))
    assert relu["encoder/layers_0/mlp/wi/kernel"] == (32, 64)
    assert not any("wi_" in k for k in relu)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"logits_via_embedding": True},
        {"share_relpos_bias": True},
        {"mlp_activations": ("relu",), "num_encoder_layers": 3, "head_dim": 8},
    ],
)
def test_count_params_equals_initialised_tree(changes):
    config = dataclasses.replace(CFG, **changes)
    assert count_params(config) == sum(math.prod(s) for s in shapes_of(config).values())


def test_count_params_of_mt5_small_by_hand():
    # mT5-small, 250112 vocab: 2×(250112×512) embeddings + 8 encoder layers
    # (2 norms, 4×512×384 attention, 3×512×1024 MLP, 6×32 relpos) + 8 decoder layers.
    config = preset("mt5_small", 250112)
    d, v = 512, 250112
    enc_layer = 2 * d + 4 * d * 384 + 3 * d * 1024 + 6 * 32
    dec_layer = 3 * d + 8 * d * 384 + 3 * d * 1024 + 6 * 32
    assert count_params(config) == 2 * v * d + 8 * (enc_layer + dec_layer) + 2 * d
    # The published mT5-small count, 300,176,768, has one relpos table per stack; ptjf has
    # one per layer: 7 extra (6 × 32) tables in each of the two stacks.
    assert count_params(config) == 300_176_768 + 2 * 7 * 6 * 32


LOGICAL_NAMES = {"vocab", "embed", "mlp", "heads", "kv", "joined_kv", "relpos_buckets"}


def test_every_parameter_has_logical_axes_of_its_rank():
    axes = param_logical_axes(MODEL, CFG)
    flat_axes = {
        "/".join(k.key for k in p): s
        for p, s in jax.tree_util.tree_flatten_with_path(
            axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
        )[0]
    }
    shapes = shapes_of(CFG)
    assert set(flat_axes) == set(shapes)
    for path, spec in flat_axes.items():
        assert len(spec) == len(shapes[path]), path
        assert set(spec) <= LOGICAL_NAMES, (path, spec)
    expected = {
        "token_embedder/embedding": ("vocab", "embed"),
        "encoder/layers_0/attention/query/kernel": ("embed", "joined_kv"),
        "decoder/layers_1/encoder_decoder_attention/out/kernel": ("joined_kv", "embed"),
        "encoder/layers_1/mlp/wi_1/kernel": ("embed", "mlp"),
        "decoder/layers_0/mlp/wo/kernel": ("mlp", "embed"),
        "encoder/encoder_norm/scale": ("embed",),
        "decoder/logits_dense/kernel": ("embed", "vocab"),
        "decoder/layers_1/relpos_bias/rel_embedding": ("heads", "relpos_buckets"),
    }
    for path, names in expected.items():
        assert tuple(flat_axes[path]) == names, path


def test_logical_constraints_work_under_a_mesh_with_rules():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    rules = [
        ("batch", "data"),
        ("heads", "model"),
        ("mlp", "model"),
        ("vocab", "model"),
        ("joined_kv", "model"),
        ("embed", None),
        ("length", None),
        ("kv", None),
    ]
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sharded = jax.jit(lambda p, b: MODEL.apply({"params": p}, **b, enable_dropout=False))(
            params(), BATCH
        )
    np.testing.assert_allclose(sharded, forward(MODEL, params(), BATCH), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Masks and packing
# ----------------------------------------------------------------------------------------------


def test_forward_returns_float32_logits_of_the_right_shape():
    logits = forward(MODEL, params(), BATCH)
    assert logits.shape == (2, 8, VOCAB) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_extra_padding_does_not_change_logits_of_real_positions():
    # Row 0 of BATCH is a 4-token input / 3-token target padded to 10 / 8.
    alone = forward(MODEL, params(), batch_of(ENC[:1, :4], shift_right(TGT[:1, :3]), TGT[:1, :3]))
    padded = forward(MODEL, params(), BATCH)
    np.testing.assert_allclose(padded[0, :3], alone[0], atol=1e-5)


def test_tokens_outside_every_segment_are_masked():
    seg_enc = (ENC > 0).astype(np.int32)
    seg_dec = (TGT > 0).astype(np.int32)
    base = forward(
        MODEL,
        params(),
        batch_of(
            ENC, shift_right(TGT), TGT, encoder_segment_ids=seg_enc, decoder_segment_ids=seg_dec
        ),
    )
    noisy_enc = np.where(seg_enc == 0, 50, ENC)
    noisy = forward(
        MODEL,
        params(),
        batch_of(
            noisy_enc,
            shift_right(TGT),
            TGT,
            encoder_segment_ids=seg_enc,
            decoder_segment_ids=seg_dec,
        ),
    )
    np.testing.assert_allclose(noisy[0, :3], base[0, :3], atol=1e-5)
    np.testing.assert_allclose(noisy[1], base[1], atol=1e-5)  # row 1 has no padding
    # Without the segment mask the same tokens would be real and change the output.
    unmasked = forward(MODEL, params(), batch_of(noisy_enc, shift_right(TGT), TGT))
    assert np.abs(unmasked[0, :3] - base[0, :3]).max() > 1e-3


def test_decoder_is_causal():
    dec_in = shift_right(TGT)
    changed = dec_in.copy()
    changed[:, 4] = 40
    a = forward(MODEL, params(), batch_of(ENC, dec_in, TGT))
    b = forward(MODEL, params(), batch_of(ENC, changed, TGT))
    # Row 1 is all real tokens; row 0's targets end at position 3 (later queries are padding).
    np.testing.assert_allclose(a[1, :4], b[1, :4], atol=1e-6)
    np.testing.assert_allclose(a[0, :3], b[0, :3], atol=1e-6)
    assert np.abs(a[1, 4:] - b[1, 4:]).max() > 1e-3


def test_packed_row_gives_the_same_logits_as_each_example_alone():
    enc_a, tgt_a = [11, 12, 13, 1], [21, 22, 1]
    enc_b, tgt_b = [14, 15, 16, 17, 1], [23, 24, 25, 1]

    def pad(x, n):
        return list(x) + [0] * (n - len(x))

    def pack(first, second, n):
        return pad(first + second, n)

    rows = [((enc_a, tgt_a), (enc_b, tgt_b)), ((enc_b, tgt_b), (enc_a, tgt_a))]
    packed = {k: [] for k in ("enc", "tgt", "dec_in", "seg_e", "seg_d", "pos_e", "pos_d")}
    for (e1, t1), (e2, t2) in rows:
        packed["enc"].append(pack(e1, e2, 10))
        packed["tgt"].append(pack(t1, t2, 8))
        packed["dec_in"].append(pack([0, *t1[:-1]], [0, *t2[:-1]], 8))
        packed["seg_e"].append(pack([1] * len(e1), [2] * len(e2), 10))
        packed["seg_d"].append(pack([1] * len(t1), [2] * len(t2), 8))
        packed["pos_e"].append(pack(list(range(len(e1))), list(range(len(e2))), 10))
        packed["pos_d"].append(pack(list(range(len(t1))), list(range(len(t2))), 8))
    p = forward(
        MODEL,
        params(),
        batch_of(
            packed["enc"],
            packed["dec_in"],
            packed["tgt"],
            encoder_segment_ids=packed["seg_e"],
            decoder_segment_ids=packed["seg_d"],
            encoder_positions=packed["pos_e"],
            decoder_positions=packed["pos_d"],
        ),
    )
    tgt = np.array([pad(tgt_a, 8), pad(tgt_b, 8)])
    alone = forward(
        MODEL, params(), batch_of([pad(enc_a, 10), pad(enc_b, 10)], shift_right(tgt), tgt)
    )
    np.testing.assert_allclose(p[0, :3], alone[0, :3], atol=1e-5)
    np.testing.assert_allclose(p[0, 3:7], alone[1, :4], atol=1e-5)
    np.testing.assert_allclose(p[1, :4], alone[1, :4], atol=1e-5)
    np.testing.assert_allclose(p[1, 4:7], alone[0, :3], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Dropout, tied logits, relative position buckets
# ----------------------------------------------------------------------------------------------


def test_dropout_depends_on_the_rng_only_when_enabled():
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a = forward_dropout(MODEL, params(), BATCH, k1)
    again = forward_dropout(MODEL, params(), BATCH, k1)
    b = forward_dropout(MODEL, params(), BATCH, k2)
    clean = forward(MODEL, params(), BATCH)
    np.testing.assert_array_equal(a, again)
    assert np.abs(a - b).max() > 1e-3
    assert np.abs(a - clean).max() > 1e-3
    np.testing.assert_array_equal(clean, forward(MODEL, params(), BATCH))


def test_tied_logits_are_the_embedding_scaled_by_inverse_sqrt_emb_dim():
    tied_model = EncoderDecoder(dataclasses.replace(CFG, logits_via_embedding=True))
    untied = jax.tree.map(lambda x: x, params())
    tied = {
        **untied,
        "decoder": {k: v for k, v in untied["decoder"].items() if k != "logits_dense"},
    }
    untied["decoder"]["logits_dense"] = {
        "kernel": untied["token_embedder"]["embedding"].T / math.sqrt(CFG.emb_dim)
    }
    np.testing.assert_allclose(
        forward(tied_model, tied, BATCH), forward(MODEL, untied, BATCH), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("relative", "bidirectional", "num_buckets", "bucket"),
    [
        # Encoder, 32 buckets: 16 per direction, exact below 8, log-spaced up to 128.
        (0, True, 32, 0),
        (-1, True, 32, 1),
        (1, True, 32, 17),
        (-7, True, 32, 7),
        (-8, True, 32, 8),  # 8 + floor(log(1)/log(16)·8)
        (-12, True, 32, 9),  # 8 + floor(log(1.5)/log(16)·8) = 8 + floor(1.17)
        (-32, True, 32, 12),  # 8 + floor(log(4)/log(16)·8) = 8 + 4
        (20, True, 32, 26),  # 16 + 8 + floor(log(2.5)/log(16)·8) = 16 + 8 + 2
        (-127, True, 32, 15),
        (-1000, True, 32, 15),
        (1000, True, 32, 31),
        # Decoder, 32 buckets in one direction: exact below 16; the future maps to 0.
        (5, False, 32, 0),
        (-3, False, 32, 3),
        (-16, False, 32, 16),
        (-32, False, 32, 21),  # 16 + floor(log(2)/log(8)·16) = 16 + 5
        (-64, False, 32, 26),  # 16 + floor(log(4)/log(8)·16) = 16 + 10
        (-200, False, 32, 31),
        # 8 buckets, bidirectional: exact 0, 1; then log-spaced to 128 in buckets 2, 3.
        (-2, True, 8, 2),
        (-15, True, 8, 2),
        (-16, True, 8, 3),
        (3, True, 8, 6),
    ],
)
def test_relative_position_bucket_hand_values(relative, bidirectional, num_buckets, bucket):
    got = relative_position_bucket(
        jnp.array([relative]),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=128,
    )
    assert int(got[0]) == bucket


# ----------------------------------------------------------------------------------------------
# Greedy decoding
# ----------------------------------------------------------------------------------------------


def naive_greedy(enc: np.ndarray, length: int, eos_id: int) -> np.ndarray:
    """Reruns the whole decoder without a cache at every step."""
    out = np.zeros((enc.shape[0], length), np.int32)
    for t in range(length):
        logits = forward(MODEL, params(), batch_of(enc, shift_right(out), np.ones_like(out)))
        out[:, t] = np.argmax(np.asarray(logits[:, t]), axis=-1)
    for row in out:
        hits = np.flatnonzero(row == eos_id)
        if hits.size:
            row[hits[0] + 1 :] = 0
    return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def cached_logits(model, length, params, enc, dec_in):
    """Teacher-forced logits from the cached decoder, one position per step."""
    encoded = model.apply(
        {"params": params}, enc, enable_dropout=False, method=EncoderDecoder.encode
    )

    def step(cache, token):
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            encoded,
            enc,
            token[:, None],
            enable_dropout=False,
            decode=True,
            max_decode_length=length,
            mutable=["cache"],
            method=EncoderDecoder.decode,
        )
        return variables["cache"], logits[:, 0]

    cache = init_decoder_cache(model, params, encoded, enc, length)
    cache, logits = jax.lax.scan(step, cache, dec_in.T)
    return jnp.swapaxes(logits, 0, 1), cache


def test_cached_decoder_step_logits_equal_the_full_decoder():
    # Large relative-position tables make any error in the cached bias visible in the logits.
    loud = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 20 if "relpos_bias" in jax.tree_util.keystr(p) else x, params()
    )
    dec_in = shift_right(TGT)
    full = forward(MODEL, loud, batch_of(ENC, dec_in, np.ones_like(dec_in)))
    stepped, cache = cached_logits(MODEL, 8, loud, jnp.asarray(ENC), jnp.asarray(dec_in))
    np.testing.assert_allclose(stepped, full, atol=1e-4, rtol=1e-4)
    assert int(cache["decoder"]["cache_index"]) == 8
    assert cache["decoder"]["layers_1"]["self_attention"]["cached_key"].shape == (2, 8, 2, 16)


def test_cached_greedy_decoding_equals_naive_greedy():
    enc = ENC[:, :6].copy()
    enc[0, 3:] = 0
    free = naive_greedy(enc, 8, eos_id=-1)
    np.testing.assert_array_equal(greedy_decode(MODEL, params(), enc, 8, eos_id=-1), free)
    # An EOS the model actually emits mid-sequence: its first appearance after step 0.
    row, step = next((r, t) for r in range(2) for t in range(1, 7) if free[r, t] not in free[r, :t])
    eos = int(free[row, step])
    cached = np.asarray(greedy_decode(MODEL, params(), enc, 8, eos_id=eos))
    np.testing.assert_array_equal(cached, naive_greedy(enc, 8, eos_id=eos))
    assert cached[row, step] == eos and not cached[row, step + 1 :].any()


def test_decoding_rejects_packed_inputs_and_bad_lengths():
    with pytest.raises(ConfigError, match="max_decode_length"):
        greedy_decode(MODEL, params(), ENC, 0)
    with pytest.raises(DataError, match="integer array"):
        greedy_decode(MODEL, params(), ENC[0], 4)
    with pytest.raises(ConfigError, match="packed"):
        MODEL.apply(
            {"params": params()},
            jnp.zeros((2, 10, 32)),
            BATCH["encoder_input_tokens"],
            BATCH["decoder_input_tokens"],
            encoder_segment_ids=BATCH["encoder_input_tokens"],
            decode=True,
            method=EncoderDecoder.decode,
        )


# ----------------------------------------------------------------------------------------------
# bf16, config, presets
# ----------------------------------------------------------------------------------------------


def test_bfloat16_forward_is_close_to_float32():
    bf16 = EncoderDecoder(dataclasses.replace(CFG, dtype="bfloat16"))
    low = forward(bf16, params(), BATCH)
    high = forward(MODEL, params(), BATCH)
    assert low.dtype == jnp.float32
    assert not np.array_equal(low, high)  # the computation really ran in bf16
    np.testing.assert_allclose(low, high, atol=0.03 * float(np.abs(high).max()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"emb_dim": 0}, "emb_dim"),
        ({"num_heads": -2}, "num_heads"),
        ({"num_decoder_layers": 0}, "num_decoder_layers"),
        ({"mlp_activations": ("gelu", "swishy")}, "swishy"),
        ({"mlp_activations": ()}, "non-empty"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"dtype": "float64"}, "dtype"),
        ({"relative_attention_num_buckets": 31}, "even"),
        ({"vocab_size": 2.5}, "vocab_size"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(CFG, **changes)


def test_with_vocab_size_and_unknown_preset():
    assert with_vocab_size(CFG, 128).vocab_size == 128
    assert dataclasses.replace(with_vocab_size(CFG, 128), vocab_size=VOCAB) == CFG
    with pytest.raises(UnknownNameError, match="mt5_small"):
        preset("mt5_smal", 100)
    assert hash(CFG) == hash(preset("tiny", VOCAB))


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_gin_model_file_equals_python_preset(name, clean_gin):
    path = GIN_DIR / f"{name}.gin"
    assert path.read_text().startswith("#")
    gin.parse_config_file(str(path))
    assert TransformerConfig(vocab_size=32128) == preset(name, 32128)


def test_every_gin_model_file_is_a_preset():
    assert sorted(p.stem for p in GIN_DIR.glob("*.gin")) == sorted(PRESET_NAMES)


def test_mt5_and_nmt_sizes():
    xxl = preset("mt5_xxl", 250112)
    assert (xxl.emb_dim, xxl.mlp_dim, xxl.num_heads, xxl.head_dim) == (4096, 10240, 64, 64)
    nmt = preset("nmt_3layer", 64000)
    # Paper Table 3: QKV dim 512 = heads × head_dim.
    assert nmt.num_heads * nmt.head_dim == 512 and nmt.mlp_activations == ("relu",)
    assert (nmt.num_encoder_layers, preset("nmt_6layer", 64000).num_decoder_layers) == (3, 6)

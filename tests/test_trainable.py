"""`Stage.trainable`: frozen parameters stay bit-identical and get no optimizer state; the
memory estimate counts the trained parameters' state only; bad patterns are refused before
the first step; a partially frozen state round-trips through a checkpoint."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjf import stages as stg
from ptjf.checkpoints import checkpointer as ck
from ptjf.checkpoints.fit import key_name
from ptjf.errors import ConfigError
from ptjf.models import EncoderDecoder, init_params, memory, preset
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import optimizers, run_checks, stage_state, state_layout, trainable
from ptjf.training.evaluation import make_apply_fn
from ptjf.training.steps import make_train_step

VOCAB = 64
# The tiny model with one layer per stack: quicker to compile, the same kinds of parameters.
CONFIG = dataclasses.replace(
    preset("tiny", VOCAB), dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1
)
MIXTURE = "bible_en_fr_tl"  # never read: these tests build no data pipeline
DECODER_ONLY = ("decoder/.*",)
SYNC = ck.CheckpointConfig(period=1, async_save=False)
ADAMW = optimizers.OptimizerConfig(name="adamw", weight_decay=0.1)
# Factors every matrix of the tiny model (its dimensions are 32 and 64, under T5's 128).
ADAFACTOR = dataclasses.replace(optimizers.t5_adafactor(), min_dim_size_to_factor=16)


def plan_with(trainable_patterns, optimizer=ADAMW, **stage) -> stg.Plan:
    return stg.Plan(
        stages=[
            stg.Stage(name="pretrain", mixture_or_task_name=MIXTURE, steps=2),
            stg.Stage(
                name="joint",
                mixture_or_task_name=MIXTURE,
                steps=3,
                optimizer=optimizer,
                trainable=trainable_patterns,
                **stage,
            ),
        ]
    )


def flat(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(key_name(k) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    tokens = lambda: jnp.asarray(rng.integers(2, VOCAB, size=(2, 8)), jnp.int32)  # noqa: E731
    targets = tokens()
    return {
        "encoder_input_tokens": tokens(),
        "decoder_input_tokens": jnp.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": jnp.ones((2, 8), jnp.float32),
    }


def state_leaves_of(opt_state, paths) -> dict[str, int]:
    """How many optimizer-state leaves hold statistics of each of `paths`."""
    counts = dict.fromkeys(paths, 0)
    for name in flat(opt_state):
        for p in paths:
            if name.endswith("/" + p):
                counts[p] += 1
    return counts


@pytest.fixture(scope="module")
def initial_params():
    """The model's initial parameters (initialised once: the initialiser compiles each call)."""
    return init_params(CONFIG, jax.random.key(0))


def train(plan: stg.Plan, initial_params, steps: int = 3):
    tx, schedule = stg.make_tx(plan, 1)
    params = jax.tree.map(lambda x: x, initial_params)  # a copy of the nested dicts
    # A negative zero in a frozen parameter: adding +0.0 would turn it into +0.0.
    params["encoder"]["encoder_norm"]["scale"] = (
        params["encoder"]["encoder_norm"]["scale"].at[0].set(-0.0)
    )
    before = flat(params)
    state = stg.switch_state(params, tx)
    step_fn = jax.jit(make_train_step(make_apply_fn(EncoderDecoder(CONFIG)), tx, schedule=schedule))
    losses = []
    for i in range(steps):
        state, metrics = step_fn(state, batch(i), jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return before, state, losses


@pytest.mark.parametrize(
    "optimizer,leaves_per_param",
    [(ADAMW, 2), (ADAFACTOR, 3)],  # Adam's mu and nu; Adafactor's v_row, v_col and v
    ids=["adamw", "adafactor"],
)
def test_frozen_parameters_stay_bit_identical_and_have_no_optimizer_state(
    optimizer, leaves_per_param, initial_params
):
    before, state, losses = train(plan_with(DECODER_ONLY, optimizer), initial_params)
    after = flat(state.params)
    frozen = [p for p in before if not p.startswith("decoder/")]
    trained = [p for p in before if p.startswith("decoder/")]
    assert "token_embedder/embedding" in frozen and "encoder/encoder_norm/scale" in frozen
    assert len(trained) == 17 and len(frozen) == 12
    assert all(np.isfinite(losses))
    for p in frozen:  # no update and no weight decay: the same bits
        assert after[p].tobytes() == before[p].tobytes(), p
    assert np.signbit(after["encoder/encoder_norm/scale"][0])  # -0.0 kept
    for p in trained:
        assert after[p].tobytes() != before[p].tobytes(), p
    # The optimizer state holds statistics of the trained parameters only.
    counts = state_leaves_of(state.opt_state, list(before))
    assert {p: counts[p] for p in frozen} == dict.fromkeys(frozen, 0)
    assert {p: counts[p] for p in trained} == dict.fromkeys(trained, leaves_per_param)
    # Everything else is counters: as many as the optimizer keeps when nothing is frozen.
    full = stg.switch_state(state.params, stg.make_tx(plan_with(None, optimizer), 1)[0])
    extra = len(jax.tree.leaves(state.opt_state)) - leaves_per_param * len(trained)
    assert extra == len(jax.tree.leaves(full.opt_state)) - leaves_per_param * len(before)
    if optimizer.name == "adafactor":  # factored: a row and a column factor per matrix
        shapes = {k: v.shape for k, v in flat(state.opt_state).items()}
        kernel = "decoder/layers_0/mlp/wi_0/kernel"
        assert sorted(s for k, s in shapes.items() if k.endswith(kernel)) == [(1,), (32,), (64,)]


def test_no_trainable_patterns_keeps_the_optimizer_as_it_was():
    plan = plan_with(None)
    tx = stg.make_tx(plan, 1)[0]
    params = state_layout.abstract_params(CONFIG)
    state = jax.eval_shape(lambda p: stg.switch_state(p, tx), params)
    plain = optimizers.make_optimizer(ADAMW, stg.stage_schedule(plan, 1))
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(
        jax.eval_shape(plain.init, params)
    )


def test_memory_estimate_counts_the_optimizer_state_of_trained_parameters_only():
    kwargs = dict(batch_size=8, input_length=16, target_length=16, optimizer=ADAMW)
    full = memory.estimate(CONFIG, **kwargs)
    frozen = memory.estimate(CONFIG, trainable=["decoder/.*"], **kwargs)
    # By hand, from the tiny model's shapes (emb 32, 2 heads x 16, MLP 64 gated, vocab 64):
    # an encoder layer has 4 attention kernels 32x32, wi_0 and wi_1 32x64, wo 64x32, two norm
    # scales of 32 and a relative-position table 2x32.
    encoder_layer = 4 * 32 * 32 + 2 * 32 * 64 + 64 * 32 + 2 * 32 + 2 * 32
    frozen_elements = encoder_layer + 32 + VOCAB * 32  # + encoder_norm + embedding
    assert frozen_elements == 12448
    # Adam keeps two float32 moments per trained element.
    assert full.optimizer_state - frozen.optimizer_state == 2 * 4 * frozen_elements
    assert frozen.parameters == full.parameters and frozen.gradients == full.gradients
    assert full.total - frozen.total == 2 * 4 * frozen_elements
    assert "% of parameters train" in frozen.labels["optimizer"]
    assert "%" not in full.labels["optimizer"]
    # ... and it is the size of the state the trainer builds.
    tx = stg.make_tx(plan_with(DECODER_ONLY), 1)[0]
    state = jax.eval_shape(lambda p: stg.switch_state(p, tx), state_layout.abstract_params(CONFIG))
    built = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state))
    assert built == frozen.optimizer_state


def test_a_pattern_that_matches_no_parameter_names_the_closest_paths():
    plan = plan_with(["decodr/.*"])
    with pytest.raises(ConfigError) as error:
        run_checks.check_trainable(plan, stop=1)
    message = str(error.value)
    assert "Stage 'joint': Stage.trainable pattern 'decodr/.*' matches no parameter" in message
    assert "Closest parameter paths: decoder/.*" in message
    # The optimizer refuses it too, when the state is built (before any step).
    tx = stg.make_tx(plan, 1)[0]
    with pytest.raises(ConfigError, match="matches no parameter"):
        jax.eval_shape(tx.init, state_layout.abstract_params(CONFIG))
    # A stage after `last_stage` is not checked.
    run_checks.check_trainable(plan, stop=0)
    with pytest.raises(ConfigError) as error:
        memory.estimate(
            CONFIG, batch_size=8, input_length=16, target_length=16, trainable=["embedding"]
        )
    assert "Closest parameter paths: token_embedder/embedding" in str(error.value)


def test_patterns_that_train_nothing_are_refused():
    with pytest.raises(ConfigError) as error:
        plan_with([])
    assert "Stage 'joint': Stage.trainable is empty, which trains no parameter" in str(error.value)
    paths = trainable.param_paths(state_layout.abstract_params(CONFIG))
    with pytest.raises(ConfigError) as error:
        trainable.check(paths, (), "joint")
    assert "trains no parameter: every parameter would be frozen" in str(error.value)


def test_an_invalid_regular_expression_is_named():
    with pytest.raises(ConfigError) as error:
        plan_with(["decoder/(layers_0/.*"])
    message = str(error.value)
    assert "Stage 'joint': Stage.trainable pattern 'decoder/(layers_0/.*' is not a valid " in (
        message
    )
    assert "regular expression (missing ), unterminated subpattern" in message
    with pytest.raises(ConfigError) as error:
        plan_with("decoder/.*")
    assert "is a string; give a list of patterns" in str(error.value)


def test_carrying_an_optimizer_state_across_different_trainable_sets_is_refused():
    with pytest.raises(ConfigError) as error:
        plan_with(DECODER_ONLY, reset_optimizer=False, reset_schedule=False)
    assert "carries the optimizer state of 'pretrain'" in str(error.value)
    assert "Give both the same Stage.trainable" in str(error.value)


def test_a_switch_into_a_frozen_stage_and_its_checkpoint_round_trip(tmp_path, initial_params):
    plan = plan_with(DECODER_ONLY, optimizer=ADAFACTOR)
    partitioner = Partitioner()
    # The finished pre-training, in full.
    pre_tx = stg.make_tx(plan, 0)[0]
    pre = stg.switch_state(initial_params, pre_tx)
    with ck.StageCheckpointer(tmp_path / "pretrain", SYNC) as c:
        assert c.save(2, pre, {"step": 2}, force=True)
    # The switch: its parameters, a fresh state for the trained parameters only.
    tx = stg.make_tx(plan, 1)[0]
    state, _, parent = stage_state.build_state(
        plan, 1, str(tmp_path), CONFIG, SYNC, 0, tx, partitioner
    )
    assert parent == (str(tmp_path / "pretrain"), 2)
    assert state_leaves_of(state.opt_state, ["encoder/layers_0/mlp/wo/kernel"]) == {
        "encoder/layers_0/mlp/wo/kernel": 0
    }
    state = state.apply_gradients(jax.tree.map(lambda p: 0.01 * p + 0.1, state.params), tx)
    with ck.StageCheckpointer(tmp_path / "joint", SYNC) as c:
        assert c.save(1, state, {"step": 1}, force=True)
    # A resume restores it onto the layout the trainer computes, bit for bit.
    resumed, _, _ = stage_state.build_state(
        plan, 1, str(tmp_path), CONFIG, SYNC, 0, tx, partitioner
    )
    assert jax.tree.structure(resumed) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert int(resumed.step) == 1
    frozen = flat(resumed.params)["encoder/layers_0/mlp/wo/kernel"]
    assert frozen.tobytes() == flat(pre.params)["encoder/layers_0/mlp/wo/kernel"].tobytes()


def test_exporting_a_partially_frozen_adafactor_state_to_t5x_is_refused(tmp_path):
    from test_t5x_export import BF16, MIN_DIM, adafactor, params_of, save_stage

    from ptjf.errors import CheckpointError
    from ptjf.t5x import export as te

    params = params_of(BF16)
    tx = trainable.freeze(adafactor(BF16), DECODER_ONLY)
    stage = save_stage(tmp_path / "run", 5, params, tx.init(params))
    out = tmp_path / "t5x"
    with pytest.raises(CheckpointError) as error:
        te.export_checkpoint(
            stage, out, optimizer_state="carry", min_dim_size_to_factor=MIN_DIM[BF16]
        )
    message = str(error.value)
    assert "frozen by the stage's Stage.trainable" in message
    assert "Export with optimizer_state='fresh'" in message
    assert not out.exists()

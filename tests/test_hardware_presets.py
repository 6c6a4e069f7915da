"""gin_configs/hardware/*.gin: each parses after a run and a model file, binds the documented
values, states a device count its mesh fits, and fits mT5-XXL in the memory it states."""

from __future__ import annotations

import re
from pathlib import Path

import gin
import pytest

from ptjf import config as gin_config
from ptjf.errors import ConfigError
from ptjf.models import TransformerConfig, memory
from ptjf.runtime.partitioning import Partitioner, standard_logical_axis_rules
from ptjf.training.optimizers import OptimizerConfig

HARDWARE = Path(__file__).resolve().parent.parent / "gin_configs" / "hardware"
REQUIRED = [
    "MODEL_DIR = '/tmp/unused'",
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "PRETRAIN_STEPS = 2",
    "FINETUNE_STEPS = 2",
]
# num_partitions, parameter_partitioning_dims, activation_partitioning_dims, dtype, remat,
# num_microbatches: the values the files' headers and docs/scaling.md document.
EXPECTED = {
    "cpu.gin": (1, 1, 1, "float32", "none", 1),
    "tpu_v4_128.gin": (8, 2, 1, "bfloat16", "minimal", 8),
    "tpu_v5e_256.gin": (8, 2, 1, "bfloat16", "minimal", 4),
    "h100x8.gin": (8, 1, 1, "bfloat16", "full", 32),
    "h100x8_x4nodes.gin": (8, 1, 1, "bfloat16", "full", 8),
}
HEADER = {
    "cpu.gin": {"devices": 1, "hosts": 1},
    "tpu_v4_128.gin": {"devices": 64, "hosts": 16, "memory_per_device_gib": 32},
    "tpu_v5e_256.gin": {"devices": 256, "hosts": 64, "memory_per_device_gib": 16},
    "h100x8.gin": {"devices": 8, "hosts": 1, "memory_per_device_gib": 79.6},
    "h100x8_x4nodes.gin": {"devices": 32, "hosts": 4, "memory_per_device_gib": 79.6},
}
# The mc4 experiment's model: 64,000 SentencePiece pieces + 100 sentinels, padded to 128.
MC4_VOCAB = 64_128
# What ptjf.models.memory leaves out (XLA's temporaries, padding, the program) must fit in the rest.
FIT_FRACTION = 0.75


def header(name: str) -> dict[str, float]:
    """The machine-readable `# key: number` lines of a preset's comment header."""
    values: dict[str, float] = {}
    for line in (HARDWARE / name).read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"# (devices|hosts|memory_per_device_gib): ([0-9.]+)", line.strip())
        if m:
            values[m[1]] = float(m[2]) if "." in m[2] else int(m[2])
    return values


def bound(name: str) -> tuple:
    return (
        gin.query_parameter("partitioning.PjitPartitioner.num_partitions"),
        gin.query_parameter("partitioning.standard_logical_axis_rules.parameter_partitioning_dims"),
        gin.query_parameter(
            "partitioning.standard_logical_axis_rules.activation_partitioning_dims"
        ),
        gin.query_parameter("TransformerConfig.dtype"),
        gin.query_parameter("TransformerConfig.remat_policy"),
        gin.query_parameter("train.num_microbatches"),
    )


def test_every_preset_is_listed_here():
    assert sorted(p.name for p in HARDWARE.glob("*.gin")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parses_after_a_run_and_a_model_and_binds_its_values(name):
    gin_config.parse_gin(["runs/ptjf.gin", "models/tiny.gin", f"hardware/{name}"], REQUIRED)
    assert bound(name) == EXPECTED[name]
    # The preset comes last, so its dtype wins over the model file's.
    assert TransformerConfig(vocab_size=128).dtype == EXPECTED[name][3]
    rules = standard_logical_axis_rules()
    assert (("embed", "data") in rules) == (EXPECTED[name][1] == 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_states_devices_and_hosts_the_mesh_fits(name):
    stated = header(name)
    assert {k: stated[k] for k in HEADER[name]} == HEADER[name]
    num_partitions = EXPECTED[name][0]
    assert stated["devices"] % num_partitions == 0
    assert stated["devices"] % stated["hosts"] == 0
    text = (HARDWARE / name).read_text(encoding="utf-8")
    assert f"--gin_file=hardware/{name}" in text  # the usage line names the file itself


@pytest.mark.parametrize(
    "name", sorted(n for n in EXPECTED if "memory_per_device_gib" in HEADER[n])
)
def test_preset_fits_mt5_xxl_in_the_stated_memory(name):
    gin_config.parse_gin(
        ["experiments/mc4_pretrain_finetune.gin", f"hardware/{name}"], [], finalize=False
    )
    config = TransformerConfig(vocab_size=MC4_VOCAB)
    assert (config.emb_dim, config.num_encoder_layers) == (4096, 24)  # mT5-XXL
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    num_partitions, param_dims, act_dims, _, remat, microbatches = bound(name)
    stated = header(name)
    estimate = memory.estimate(
        config,
        batch_size=gin.query_parameter("%BATCH_SIZE"),
        input_length=lengths["inputs"],
        target_length=lengths["targets"],
        num_devices=stated["devices"],
        num_partitions=num_partitions,
        parameter_partitioning_dims=param_dims,
        activation_partitioning_dims=act_dims,
        optimizer=OptimizerConfig(),
        remat_policy=remat,
        num_microbatches=microbatches,
    )
    assert estimate.labels["optimizer"] == "adafactor: momentum + full 2nd moment"
    assert estimate.total <= FIT_FRACTION * stated["memory_per_device_gib"] * memory.GiB


def test_cpu_preset_builds_a_one_device_mesh_and_the_others_say_what_to_change():
    gin_config.parse_gin(["runs/ptjf.gin", "models/tiny.gin", "hardware/cpu.gin"], REQUIRED)
    assert dict(Partitioner().mesh.shape) == {"data": 1, "model": 1}
    gin_config.parse_gin(["runs/ptjf.gin", "models/tiny.gin", "hardware/h100x8.gin"], REQUIRED)
    with pytest.raises(ConfigError, match="num_partitions=8 does not divide the 1 device"):
        Partitioner()

"""Smoke test of `benchmarks/train_throughput.py`: a `--quick` run of the tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import statistics

import jax
import pytest

from ptjf.errors import ConfigError
from ptjf.models import count_params, flops, preset

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_sane_json(bench, tmp_path):
    out = tmp_path / "results" / "throughput.json"
    returned = bench.main(["--quick", "--models", "tiny", "--steps", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))

    env = report["environment"]
    assert env["jax"] == jax.__version__
    assert env["backend"] == jax.default_backend()
    assert env["cpu_count"] >= 1
    args = report["arguments"]
    assert (args["batch_size"], args["input_length"], args["target_length"]) == (4, 16, 16)
    assert (args["vocab_size"], args["steps"]) == (512, 2)

    tiny = report["models"]["tiny"]
    config = preset("tiny", 512)
    assert tiny["params"] == tiny["params_analytic"] == count_params(config) == 82_560
    assert tiny["train_step_compilations"] == 1

    times = tiny["step_times_s"]
    assert len(times) == 2 and min(times) > 0
    step = tiny["step_time_s"]["median"]
    assert step == statistics.median(times)
    assert tiny["tokens_per_s"] == pytest.approx(4 * (16 + 16) / step)
    assert tiny["model_flops_per_step"] == flops.model_flops_per_step(config, 4, 16, 16)
    # XLA counts the elementwise work and Adam too, so it is above the matmul-only figure.
    assert tiny["xla_flops_per_step"] > tiny["model_flops_per_step"]

    matmul = report["matmul_peak"]
    peaks = tiny["matmul_flops_per_s_by_step"]
    assert len(peaks) == 2 and matmul["trials"] >= 2 + args["matmul_trials"]
    assert matmul["flops_per_s"] >= max(peaks)
    # Each step is divided by the matmul rate measured right after it; the headline is the
    # median of those ratios.
    flops_per_s = [tiny["model_flops_per_step"] / t for t in times]
    assert tiny["utilisation_by_step"] == pytest.approx(
        [f / p for f, p in zip(flops_per_s, peaks, strict=True)]
    )
    assert tiny["utilisation"] == pytest.approx(statistics.median(tiny["utilisation_by_step"]))
    assert tiny["utilisation_best"] == pytest.approx(max(flops_per_s) / max(peaks))
    assert 0 < tiny["utilisation"] < 1.5

    assert tiny["compile_s"] > 0 and tiny["lower_s"] > 0 and tiny["trace_s"] > 0
    # The step compiled on a background thread while the state was initialised: ready when
    # both were, and the launch figure counts them and the first step.
    assert tiny["compile_wall_s"] >= tiny["compile_s"]
    assert tiny["ready_s"] >= max(tiny["setup_s"], tiny["compile_wall_s"]) - 1e-3
    assert tiny["launch_to_first_step_s"] > tiny["ready_s"] + tiny["first_step_s"]
    assert tiny["peak_rss_bytes"] > 100 * 2**20  # jax and XLA alone take more than this
    # A freshly initialised model predicts about uniformly: loss near ln(vocab) = 6.2 nats.
    assert math.log(512) / 2 < tiny["final_loss"] < 2 * math.log(512)


def test_untied_flag_gives_reference_parameter_count(bench):
    # The reference 3+3-layer model: untied output layer, 32k vocabulary, 54.8M parameters.
    untied = bench.model_config("nmt_3layer", 32000, "float32", untied=True)
    tied = bench.model_config("nmt_3layer", 32000, "float32", untied=False)
    assert count_params(untied) == 54_798_336
    assert count_params(untied) - count_params(tied) == 32000 * 512


def test_unknown_model_is_rejected_with_the_known_names(bench):
    with pytest.raises(ConfigError, match=r"nmt_3layr.*nmt_3layer"):
        bench.parse_args(["--models", "nmt_3layr"])


def test_benchmark_options_below_their_minimum_are_refused_by_name(bench):
    import argparse

    args = argparse.Namespace(quick=True, batch_size=None, steps=0)
    bench.fill_defaults(args, {"batch_size": 4, "steps": 9}, {"batch_size": 32, "steps": 40})
    assert args.batch_size == 4 and args.steps == 0  # only unset options take a default
    with pytest.raises(ConfigError, match=r"^--steps = 0: expected >= 1\.$"):
        bench.check_at_least(args, ("batch_size", "steps"), 1)
    bench.check_at_least(args, ("steps",), 0)

"""Smoke tests of the input-pipeline, stage-switch and checkpointing benchmarks (`--quick`).

Each script's `main()` runs as `make bench` calls it (in this process), and its JSON report is checked
for the documented keys and for values that follow from the run's own figures. No timing is
compared with a threshold: the machine may be shared.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import statistics
import sys

import jax
import pytest

from ptjf.models import count_params, preset

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, tmp_path: pathlib.Path, capsys, *extra: str) -> dict:
    """The script's `main()` with `--quick`, in this process (the interpreter and its imports
    are already up), from `tmp_path`; its JSON report plus its last printed line."""
    if str(_BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(_BENCHMARKS))  # the scripts import `train_throughput`
    module = importlib.import_module(name)
    out = tmp_path / f"{name}.json"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        module.main(["--quick", "--out", str(out), *extra])
    finally:
        os.chdir(cwd)
    summary = [line for line in capsys.readouterr().out.splitlines() if line.strip()][-1]
    report = json.loads(out.read_text())
    report["summary_line"] = summary
    return report


def check_environment(env: dict) -> None:
    assert env["jax"] == jax.__version__
    assert env["backend"] == "cpu"
    assert env["cpu_count"] >= 1
    assert env["imports_s"] > 0
    assert len(env["load_average_at_end"]) == 3


def test_input_pipeline_quick(tmp_path, capsys, bible_vocab):
    # The test session's vocabulary cache (PTJF_DATA_DIR) is the script's.
    train_json = tmp_path / "train_throughput.json"
    shape = {"batch_size": 32, "input_length": 64, "target_length": 64}
    train_json.write_text(
        json.dumps(
            {
                "arguments": {**shape, "vocab_size": 32000, "untied": True},
                "models": {"nmt_3layer": {"steps_per_s": 2.0}},
            }
        )
    )
    report = run_script("input_pipeline", tmp_path, capsys, "--train-json", str(train_json))
    check_environment(report["environment"])
    assert report["environment"]["ptjf_data_dir"] == os.environ["PTJF_DATA_DIR"]
    assert report["vocab_size"] == bible_vocab.vocab_size
    assert report["vocabulary_s"] > 0

    streams = report["streams"]
    assert set(streams) == {"mixture_packed", "single_task_packed", "mixture_unpacked"}
    for s in streams.values():
        assert s["batches_per_s"] > 0 and s["startup_s"] > 0
        assert s["batches_per_s_runs"] == [s["batches_per_s"]]  # one repeat in --quick
        assert s["examples_per_s"] == pytest.approx(s["batches_per_s"] * s["examples_per_batch"])
        assert 0 < s["token_density"] <= 1
    # Unpadded rows hold one example each; packed rows at least one.
    assert streams["mixture_unpacked"]["examples_per_batch"] == 32
    assert streams["mixture_packed"]["examples_per_batch"] >= 32
    mixed = streams["mixture_packed"]["batches_per_s"]
    assert report["first_batch_s"] == streams["mixture_packed"]["startup_s"]
    assert report["mixing_cost"] == pytest.approx(
        streams["single_task_packed"]["batches_per_s"] / mixed
    )
    assert report["packing_speedup"] == pytest.approx(
        mixed / streams["mixture_unpacked"]["batches_per_s"]
    )

    resume = report["resume"]
    assert resume["start_batch"] == 20
    assert resume["resume_batch_matches"] is True
    assert resume["skip_vs_read"] == pytest.approx(resume["skip_s"] / resume["read_s"])

    trainer = report["trainer"]
    assert trainer["source"] == str(train_json)
    assert trainer["model"] == "nmt_3layer" and trainer["vocab_size"] == 32000
    assert report["trainer_steps_per_s"] == 2.0
    assert report["pipeline_batches_per_s"] == mixed
    assert report["pipeline_vs_trainer"] == pytest.approx(mixed / 2.0)
    assert report["summary_line"].startswith("input pipeline: ")


def test_stage_switch_quick(tmp_path, capsys):
    report = run_script("stage_switch", tmp_path, capsys)
    check_environment(report["environment"])
    assert report["environment"]["page_cache"].startswith("warm")
    models = report["models"]
    assert list(models) == ["tiny", "nmt_3layer"]
    for name, r in models.items():
        params = count_params(preset(name, 512))
        assert r["num_params"] == params and r["vocab_size"] == 512
        assert r["param_bytes"] == 4 * params  # float32
        assert r["params_disk_bytes"] > 0 and r["params_files"] >= 1
        # The switch links every parameter file of the source and writes none of them; the
        # fallback writes them all again (about the source's bytes: the same arrays, encoded
        # the same way) and links none.
        assert r["linked_files"] == r["params_files"]
        assert 0.9 * r["params_disk_bytes"] < r["copy_written_bytes"]
        assert r["copy_written_bytes"] < 1.1 * r["params_disk_bytes"] + 65536
        keys = ("switch_s", "first_switch_s", "switch_verified_s", "switch_copy_s")
        for key in (*keys, "verified_read_s", "raw_read_s"):
            assert r[key] > 0, key
        assert r["switch_times_s"] == [r["switch_s"]]  # one repeat in --quick
        for ratio, key in (
            ("ratio", "switch_s"),
            ("verified_ratio", "switch_verified_s"),
            ("copy_ratio", "switch_copy_s"),
            ("read_ratio", "verified_read_s"),
        ):
            assert r[ratio] == pytest.approx(r[key] / r["raw_read_s"]), ratio

    for key, y in (("linear_fit", "switch_s"), ("linear_fit_copy", "switch_copy_s")):
        fit = report[key]
        assert (fit["x"], fit["y"], fit["points"]) == ("param_bytes", y, 2)
        # Two points: the least-squares line passes through both.
        for r in models.values():
            predicted = fit["slope"] * r["param_bytes"] + fit["intercept"]
            assert predicted == pytest.approx(r[y], rel=1e-6, abs=1e-9)
        assert fit["r2"] == pytest.approx(1.0)
    assert report["summary_line"].startswith("stage switch: ")
    assert "x raw read (verified " in report["summary_line"]


def test_checkpointing_quick(tmp_path, capsys):
    report = run_script("checkpointing", tmp_path, capsys)
    check_environment(report["environment"])
    r = report["result"]
    assert (r["model"], r["period"], r["steps"], r["saves"]) == ("tiny", 3, 6, 2)
    assert r["param_bytes"] == 4 * count_params(preset("tiny", 512))  # untied, as trained
    assert 3 * r["param_bytes"] < r["state_bytes"] < 3 * r["param_bytes"] + 1024

    times = r["step_times_s"]
    # Steps 3 and 6 save; step 4 runs while the first write is in flight.
    assert (len(times["plain"]), len(times["with_save"]), len(times["after_save"])) == (3, 2, 1)
    assert all(t > 0 for ts in times.values() for t in ts)
    assert r["plain_step_s"] == statistics.median(times["plain"])
    assert r["save_step_s"] == statistics.median(times["with_save"])
    returns = r["save_return_s"]["all"]
    assert len(returns) == 2 and min(returns) > 0
    assert all(w > s for w, s in zip(times["with_save"], returns, strict=True))
    assert r["loop_s"] >= sum(t for ts in times.values() for t in ts)
    assert r["blocked_fraction"] == pytest.approx(sum(returns) / r["loop_s"])
    assert 0 < r["blocked_fraction"] < 1
    assert r["overhead_fraction"] == pytest.approx(
        (r["loop_s"] - 6 * r["plain_step_s"]) / r["loop_s"]
    )
    mean = r["save_return_s"]["mean"]
    assert r["default_period"] == 1000
    assert r["blocked_fraction_at_default_period"] == pytest.approx(
        mean / (1000 * r["plain_step_s"] + mean)
    )
    assert r["time_to_final_s"] > r["final_return_s"] > 0
    assert r["first_save_s"] > 0 and r["compile_and_warmup_s"] > 0
    assert r["restore_full_s"] > 0 and r["restore_params_s"] > 0
    assert report["summary_line"].startswith("checkpointing (tiny, ")


def test_resume_quick(tmp_path, capsys):
    report = run_script("resume", tmp_path, capsys, "--data-dir", str(tmp_path / "data"))
    assert report["restore_matches"] is True  # a fast but wrong resume would be no resume
    real = report["real_positions"]
    assert set(real) == {"5", "20"}
    for r in real.values():
        assert r["restore_s"] > 0 and r["save_s"] > 0 and r["state_bytes"] > 0
    rows = {r["step"]: r for r in report["table"]}
    assert sorted(rows) == [10**3, 10**4, 10**5, 10**6]
    per_batch, replay0 = report["replay_s_per_batch"], report["replay_s_at_0"]
    for n, r in rows.items():  # the arithmetic each row states
        assert r["replay_s"] == pytest.approx(replay0 + n * per_batch)
        assert r["restore_s"] == real["20"]["restore_s"]
        assert r["speedup"] == pytest.approx(r["replay_s"] / r["restore_s"])
        assert r["replay_rows"] == n * 64 // 8
    assert report["goal_met"] == (rows[10**6]["restore_s"] <= 2 * rows[10**3]["restore_s"])
    assert report["summary_line"].startswith("resume at 10^6:")

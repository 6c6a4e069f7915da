"""ptjf.training.metrics_io: metrics.jsonl, TensorBoard scalars, progress output."""

from __future__ import annotations

import glob
import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ptjf.errors import ConfigError, DataError
from ptjf.training import metrics_io as mio
from ptjf.training import progress


def eval_record(global_step: int, loss) -> dict:
    return {
        "stage": "joint",
        "stage_index": 1,
        "stage_step": 200,
        "global_step": global_step,
        "time": 1700000000.5,
        "examples_seen": {"en_fr": np.int64(4096), "en_tl": 512},
        "validation": {
            "en_fr": {"loss": loss, "accuracy": np.float32(0.25), "tokens": np.int32(77)}
        },
        "train": {"loss": jnp.asarray(2.5, jnp.float32), "learning_rate": 5e-4},
    }


# --- metrics.jsonl ----------------------------------------------------------------------------


def test_jsonl_round_trip_of_nested_numpy_jax_and_nonfinite_values(tmp_path):
    with mio.MetricsWriter(str(tmp_path), tensorboard=False) as w:
        w.write_eval(eval_record(1200, np.float64("nan")))
        w.write_eval(
            {
                "global_step": 1300,
                "a": {"b": float("inf"), "c": -math.inf, "flag": np.bool_(True)},
                "v": [1, np.float32(0.5)],
            }
        )
    records = mio.read_metrics(tmp_path)
    assert len(records) == 2
    first = records[0]
    assert math.isnan(first["validation"]["en_fr"]["loss"])
    first["validation"]["en_fr"]["loss"] = "checked"
    assert first == {
        "stage": "joint",
        "stage_index": 1,
        "stage_step": 200,
        "global_step": 1200,
        "time": 1700000000.5,
        "examples_seen": {"en_fr": 4096, "en_tl": 512},
        "validation": {"en_fr": {"loss": "checked", "accuracy": 0.25, "tokens": 77}},
        "train": {"loss": 2.5, "learning_rate": 5e-4},
    }
    assert type(first["examples_seen"]["en_fr"]) is int and type(first["train"]["loss"]) is float
    assert records[1] == {
        "global_step": 1300,
        "a": {"b": math.inf, "c": -math.inf, "flag": True},
        "v": [1, 0.5],
    }


def test_file_is_strict_json_with_nonfinite_as_strings(tmp_path):
    with mio.MetricsWriter(str(tmp_path), tensorboard=False) as w:
        w.write_eval({"global_step": 1, "loss": math.nan, "big": math.inf})
    line = (tmp_path / "metrics.jsonl").read_text()

    def reject(token):
        raise AssertionError(f"bare {token} in the file")

    assert json.loads(line, parse_constant=reject) == {
        "global_step": 1,
        "loss": "NaN",
        "big": "Infinity",
    }


def test_each_record_is_on_disk_before_close(tmp_path):
    w = mio.MetricsWriter(str(tmp_path), tensorboard=False)
    w.write_eval(eval_record(10, 1.5))
    assert [r["global_step"] for r in mio.read_metrics(tmp_path / "metrics.jsonl")] == [10]
    w.close()


def test_write_train_goes_to_train_metrics_jsonl(tmp_path):
    with mio.MetricsWriter(str(tmp_path), tensorboard=False) as w:
        w.write_train(7, {"loss": np.float32(3.0), "tokens_per_sec": 1000.0})
    (line,) = (tmp_path / "train_metrics.jsonl").read_text().splitlines()
    data = json.loads(line)
    assert (data["global_step"], data["loss"], data["tokens_per_sec"]) == (7, 3.0, 1000.0)
    assert not (tmp_path / "metrics.jsonl").read_text()  # eval records only


def test_eval_record_without_global_step_is_rejected(tmp_path):
    with (
        mio.MetricsWriter(str(tmp_path), tensorboard=False) as w,
        pytest.raises(ValueError, match="global_step"),
    ):
        w.write_eval({"stage": "joint"})


# --- reading broken files ---------------------------------------------------------------------


def test_truncated_last_line_is_skipped_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 1}\n\n{"global_step": 2}\n{"global_step": 3, "valid')
    with pytest.warns(RuntimeWarning, match=rf"{path}:4: skipping a broken metrics line"):
        records = mio.read_metrics(path)
    assert records == [{"global_step": 1}, {"global_step": 2}]


def test_a_line_that_is_not_an_object_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('[1, 2]\n{"global_step": 5}\n')
    with pytest.warns(RuntimeWarning, match=rf"{path}:1: .*not a JSON object"):
        assert mio.read_metrics(tmp_path) == [{"global_step": 5}]


def test_appending_after_a_killed_run_does_not_glue_onto_the_broken_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 1}\n{"global_step": 2, "los')
    with mio.MetricsWriter(str(tmp_path), tensorboard=False) as w:
        w.write_eval({"global_step": 3})
    with pytest.warns(RuntimeWarning, match=rf"{path}:2:"):
        assert mio.read_metrics(path) == [{"global_step": 1}, {"global_step": 3}]


def test_missing_metrics_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "metrics.jsonl")):
        mio.read_metrics(tmp_path)


def test_unwritable_model_dir_names_the_path_and_the_flag(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as e:
        mio.MetricsWriter(str(blocker / "run"), tensorboard=False)
    assert str(blocker / "run" / "metrics.jsonl") in str(e.value)
    assert "--gin.MODEL_DIR=" in str(e.value)


# --- TensorBoard ------------------------------------------------------------------------------


def test_numeric_leaves_become_slash_joined_tags():
    leaves = dict(
        mio.numeric_leaves(
            {"eval": {"bible_translate_en_fr": {"loss": 1.2}}, "stage": "x", "ok": True, "n": "NaN"}
        )
    )
    assert set(leaves) == {"eval/bible_translate_en_fr/loss", "n"}
    assert leaves["eval/bible_translate_en_fr/loss"] == 1.2 and math.isnan(leaves["n"])


def test_tensorboard_event_file_has_the_expected_tags_steps_and_values(tmp_path):
    import tensorflow as tf

    with mio.MetricsWriter(str(tmp_path)) as w:
        w.write_train(1150, {"loss": 2.75, "tokens_per_sec": 512.0})
        w.write_eval(eval_record(1200, 1.125))
    events = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    assert len(events) == 1
    seen = {}
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        for v in event.summary.value:
            assert (
                v.metadata.plugin_data.plugin_name == "scalars"
            )  # TensorBoard's scalars dashboard
            seen[v.tag] = (event.step, float(tf.make_ndarray(v.tensor)))
    assert seen == {
        # write_train's; the eval record's own `train` copy is not written a second time
        "train/loss": (1150, 2.75),
        "train/tokens_per_sec": (1150, 512.0),
        "stage_index": (1200, 1.0),
        "stage_step": (1200, 200.0),
        "examples_seen/en_fr": (1200, 4096.0),
        "examples_seen/en_tl": (1200, 512.0),
        "validation/en_fr/loss": (1200, 1.125),
        "validation/en_fr/accuracy": (1200, 0.25),
        "validation/en_fr/tokens": (1200, 77.0),
    }


# --- terminal output --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds,text",
    [
        (0, "0s"),
        (12, "12s"),
        (59.4, "59s"),
        (59.6, "1m00s"),
        (185, "3m05s"),
        (3720, "1h02m"),
        (3599.7, "1h00m"),
        (90061, "25h01m"),
        (math.nan, "?"),
        (math.inf, "?"),
        (-1, "?"),
        (None, "?"),
    ],
)
def test_format_eta(seconds, text):
    assert progress.format_eta(seconds) == text


@pytest.mark.parametrize(
    "rate,text",
    [
        (0, "0 tok/s"),
        (7.5, "7.50 tok/s"),
        (950, "950 tok/s"),
        (999.7, "1.00k tok/s"),
        (1234, "1.23k tok/s"),
        (12345, "12.3k tok/s"),
        (123456, "123k tok/s"),
        (45.6e6, "45.6M tok/s"),
        (2.5e9, "2.50G tok/s"),
        (math.nan, "? tok/s"),
    ],
)
def test_format_rate(rate, text):
    assert progress.format_rate(rate) == text


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_tty_progress_redraws_one_line_with_an_eta_from_the_measured_rate():
    out, clock = io.StringIO(), FakeClock()
    p = progress.ProgressDisplay(
        100, stage_name="joint", stream=out, is_tty=True, width=10, clock=clock
    )
    p.update(10, 2.5, 1234.0)
    clock.t = 20.0
    p.update(20, 2.25, 1500.0)  # 10 steps in 20 s: 80 steps left take 160 s
    p.close()
    assert out.getvalue() == (
        "\rjoint [#.........] 10/100 10% loss 2.5 1.23k tok/s ETA ?"
        "\rjoint [##........] 20/100 20% loss 2.25 1.50k tok/s ETA 2m40s"
        "\n"
    )


def test_tty_progress_wipes_a_longer_previous_line():
    out = io.StringIO()
    p = progress.ProgressDisplay(
        10, stage_name="s", stream=out, is_tty=True, width=2, clock=FakeClock()
    )
    p.update(1, 1.0, 1e6)
    p.update(2)
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.rstrip() == "s [..] 2/10 20% ETA ?"


def test_non_tty_progress_logs_plain_lines_every_log_every_steps_and_the_last():
    out, clock = io.StringIO(), FakeClock()
    p = progress.ProgressDisplay(
        30,
        stage_name="pretrain",
        stream=out,
        is_tty=False,
        log_every=10,
        log_seconds=1e9,
        clock=clock,
    )
    for step in range(1, 31):
        clock.t = float(step)
        p.update(step, 1.0, None)
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/30", "11/30", "21/30", "30/30"]
    assert lines[1] == "pretrain 11/30 37% loss 1 ETA 19s"  # 1 step/s, 19 steps left


def test_non_tty_progress_logs_when_enough_time_passed():
    out, clock = io.StringIO(), FakeClock()
    p = progress.ProgressDisplay(
        1000, stage_name="s", stream=out, is_tty=False, log_every=10**6, log_seconds=30, clock=clock
    )
    for step in range(1, 101):
        clock.t = step * 1.0  # one step per second
        p.update(step)
    steps = [int(ln.split()[1].split("/")[0]) for ln in out.getvalue().splitlines()]
    assert steps == [1, 31, 61, 91]


def test_tty_is_detected_from_the_stream():
    assert progress.ProgressDisplay(1, stage_name="s", stream=io.StringIO()).is_tty is False

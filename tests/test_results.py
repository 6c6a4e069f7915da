"""Loading runs for `ptjf report`: discovery, resume duplicates, broken lines, roles, tables."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
from fake_runs import BROKEN_TAIL, FRONT, OVERALL_FRONT, POINTS, record, write_run, write_sweep

from ptjf.errors import DataError
from ptjf.experiments import results
from ptjf.experiments.results import (
    TABLE_COLUMNS,
    best_point,
    best_runs,
    final_point,
    front_flags,
    load_runs,
    results_table,
    task_roles,
    write_csv,
)


@pytest.fixture
def runs(tmp_path):
    with pytest.warns(RuntimeWarning, match="broken metrics line"):
        return load_runs([write_sweep(tmp_path)])


def _by_name(runs):
    return {r.name: r for r in runs}


def test_load_runs_finds_every_point_and_shared_run(runs):
    names = [r.name for r in runs]
    assert sorted(names) == sorted([*POINTS, "pretrain-n100", "pretrain-n200"])
    by = _by_name(runs)
    assert by["pretrain-n100"].kind == "shared"
    assert by["ptjf-r0.5"].method == "ptjf"
    assert by["ptjf-r0.5"].kind == "point"
    assert by["ptjf-r0.5"].done is True
    assert by["ptjf-r0.5"].high_tasks == ("hi",)
    assert by["ptjf-r0.5"].low_tasks == ("lo",)
    assert by["ptjf-r0.5"].task_rate("lo") == 0.5
    assert by["ptjf-r0.5"].task_rate("hi") == 0.5
    assert by["scalarization-r0.2"].task_rate("hi") == pytest.approx(0.8)


def test_resume_duplicates_keep_the_last_record(runs):
    run = _by_name(runs)["scalarization-r0.5"]
    steps = [r["global_step"] for r in run.records]
    assert steps == [0, 100, 200]
    assert run.records[1]["validation"]["lo"]["loss"] == 2.55
    assert run.records[1]["validation"]["hi"]["loss"] == 3.25


def test_stage_switch_records_order_by_stage_at_the_same_step(runs):
    run = _by_name(runs)["ptjf-r0.2"]
    order = [(r["stage"], r["stage_step"], r["global_step"]) for r in run.records]
    assert order == [
        ("pretrain", 0, 0),
        ("pretrain", 100, 100),
        ("joint", 0, 100),
        ("joint", 100, 200),
    ]


def test_truncated_last_line_is_skipped_and_counted(runs):
    by = _by_name(runs)
    assert by["restart-r0.8"].broken_lines == (4,)
    assert len(by["restart-r0.8"].records) == 3
    assert all(r.broken_lines == () for r in runs if r.name != "restart-r0.8")


def test_nan_strings_become_floats(runs):
    run = _by_name(runs)["ptjf-r0.8"]
    hi, lo = final_point(run, "validation", ["hi", "lo"])
    assert math.isnan(hi) and math.isnan(lo)
    # the best point skips the NaN eval: min over pretrain and the fork's step-0 eval
    assert best_point(run, "validation", ["hi", "lo"]) == [2.4, 6.1]


def test_final_and_best_points(runs):
    run = _by_name(runs)["scalarization-r0.8"]
    assert final_point(run, "validation", ["hi", "lo"]) == [2.6, 2.7]
    assert best_point(run, "validation", ["hi", "lo"]) == [2.6, 2.4]
    assert final_point(run, "train_subset", ["lo", "hi"]) == [2.2, 2.1]
    assert math.isnan(final_point(run, "validation", ["missing"])[0])


def test_front_flags_match_the_hand_computed_fronts(runs):
    flags = front_flags(runs, ["hi", "lo"])
    on_front = {r.name for r, f in zip(runs, flags, strict=True) if f}
    assert on_front == set().union(*FRONT.values())
    assert {r.name for r, f in zip(runs, flags, strict=True) if f is None} == {
        "pretrain-n100",
        "pretrain-n200",
    }
    overall = front_flags(runs, ["hi", "lo"], by_method=False)
    assert {r.name for r, f in zip(runs, overall, strict=True) if f} == OVERALL_FRONT


def test_best_runs_per_method(runs):
    best = best_runs(runs, ["lo"])
    assert {m: r.name for m, r in best.items()} == {
        "ptjf": "ptjf-r0.5",
        "scalarization": "scalarization-r0.5",
        "restart": "restart-r0.5",
    }
    assert list(best) == ["ptjf", "scalarization", "restart"]  # the paper's order
    assert best_runs(runs, ["lo"], "best")["scalarization"].name == "scalarization-r0.8"


def test_results_table_rows_and_csv(runs, tmp_path):
    rows = results_table(runs)
    records = sum(len(r.records) for r in runs)
    assert len(rows) == records * 2 * 2  # two splits × two tasks per eval
    row = next(
        r
        for r in rows
        if r["run"] == "scalarization-r0.5"
        and r["global_step"] == 100
        and r["split"] == "validation"
        and r["task"] == "lo"
    )
    assert row == {
        "run": "scalarization-r0.5",
        "method": "scalarization",
        "kind": "point",
        "low_rate": 0.5,
        "tau": None,
        "learning_rate": 0.001,
        "seed": 0,
        "pretrain_steps": None,
        "stage": "joint",
        "global_step": 100,
        "split": "validation",
        "task": "lo",
        "loss": 2.55,
        "accuracy": 0.5,
        "bleu": None,
        "examples_seen": 500,
        "tokens_seen": 5000,
    }
    path = write_csv(rows, str(tmp_path / "out" / "results.csv"), TABLE_COLUMNS)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows)
    assert list(read[0]) == list(TABLE_COLUMNS)
    nan_row = next(
        r
        for r in read
        if r["run"] == "ptjf-r0.8" and r["global_step"] == "250" and r["split"] == "train_subset"
    )
    assert nan_row["loss"] == "nan"
    assert nan_row["tau"] == ""
    assert nan_row["pretrain_steps"] == "200"


def test_bleu_is_read_for_validation_rows(tmp_path):
    history = [("joint", 0, 0, 0, 3.0, 4.0, 10, 5)]
    directory = write_run(tmp_path / "bleu_run", history)
    path = os.path.join(directory, "metrics.jsonl")
    rec = record(*history[0]) | {"bleu": {"lo": 12.5}}
    with open(path, "w") as f:
        f.write(json.dumps(rec) + "\n")
    rows = results_table(load_runs([directory]))
    assert [(r["split"], r["task"], r["bleu"]) for r in rows] == [
        ("validation", "hi", None),
        ("validation", "lo", 12.5),
        ("train_subset", "hi", None),
        ("train_subset", "lo", None),
    ]


def test_run_without_point_json_is_described_from_its_records(tmp_path):
    # The task seen most is the high-resource one, whatever its name.
    a = write_run(tmp_path / "runs" / "alpha", [("joint", 0, 10, 10, 2.0, 3.0, 90, 10)])
    b = write_run(tmp_path / "runs" / "beta", [("joint", 0, 10, 10, 2.0, 3.0, 10, 90)])
    loaded = load_runs([tmp_path / "runs"])
    assert [r.dir for r in loaded] == [a, b]
    alpha, beta = loaded
    assert (alpha.method, alpha.kind, alpha.done) == ("alpha", "run", None)
    assert alpha.info.get("low_rate") is None and alpha.task_rate("lo") is None
    assert (alpha.high_tasks, alpha.low_tasks) == (("hi",), ("lo",))
    assert (beta.high_tasks, beta.low_tasks) == (("lo",), ("hi",))
    # a tie between the two runs' roles: the first-seen task is the high-resource one
    roles = task_roles(loaded)
    assert (roles.high, roles.low) == (("hi",), ("lo",))


def test_roles_from_point_json_outvote_inferred_ones(tmp_path, runs):
    write_run(tmp_path / "extra" / "a", [("joint", 0, 10, 10, 2.0, 3.0, 1, 90)])
    write_run(tmp_path / "extra" / "b", [("joint", 0, 10, 10, 2.0, 3.0, 1, 90)])
    inferred = load_runs([tmp_path / "extra"])
    assert task_roles(inferred).high == ("lo",)
    roles = task_roles(list(runs) + inferred)
    assert (roles.high, roles.low, roles.tasks) == (("hi",), ("lo",), ("hi", "lo"))


def test_clashing_names_become_relative_paths(tmp_path):
    write_run(tmp_path / "x" / "ptjf", [("joint", 0, 10, 10, 2.0, 3.0, 9, 1)])
    write_run(tmp_path / "y" / "ptjf", [("joint", 0, 10, 10, 2.0, 3.0, 9, 1)])
    names = [r.name for r in load_runs([tmp_path / "x", tmp_path / "y"])]
    assert names == [os.path.join("x", "ptjf"), os.path.join("y", "ptjf")]


def test_the_same_run_given_twice_is_loaded_once(tmp_path):
    d = write_run(tmp_path / "r", [("joint", 0, 10, 10, 2.0, 3.0, 9, 1)])
    assert len(load_runs([tmp_path, d])) == 1


def test_report_outputs_and_tensorboard_are_not_searched(tmp_path):
    write_run(tmp_path / "run", [("joint", 0, 10, 10, 2.0, 3.0, 9, 1)])
    write_run(tmp_path / "report" / "stray", [("joint", 0, 10, 10, 2.0, 3.0, 9, 1)])
    assert results.find_run_dirs(str(tmp_path)) == [str(tmp_path / "run")]


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"No runs found under .*empty.*metrics\.jsonl"):
        load_runs([tmp_path / "empty"])
    with pytest.raises(DataError, match="is not a directory"):
        load_runs([tmp_path / "nowhere"])


def test_broken_line_in_the_middle_is_skipped_too(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    lines = [json.dumps(record("joint", 0, s, s, 2.0, 3.0, s, s)) for s in (0, 10)]
    (d / "metrics.jsonl").write_text(lines[0] + "\n" + BROKEN_TAIL + "\n[1, 2]\n" + lines[1] + "\n")
    with pytest.warns(RuntimeWarning):
        (run,) = load_runs([d])
    assert run.broken_lines == (2, 3)
    assert [r["global_step"] for r in run.records] == [0, 10]

"""`ptjf report`: points.csv, report.md's tables and notes, the terminal summary, the CLI."""

from __future__ import annotations

import os

import pytest
from fake_runs import (
    BLEU,
    FRONT,
    OVERALL_FRONT,
    POINTS,
    add_bleu,
    quiet,
    read_csv,
    write_run,
    write_sweep,
)

from ptjf.commands import cli
from ptjf.errors import DataError
from ptjf.experiments import report
from ptjf.experiments.results import load_runs, task_roles

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(tmp_path):
    return write_sweep(tmp_path)


@pytest.fixture
def tables_only(sweep, tmp_path):
    out = tmp_path / "out"
    summary = quiet(report.write_report, [sweep], out, figures=False)
    return out, summary


def test_points_csv_one_row_per_run_with_front_flags(tables_only):
    out, _ = tables_only
    rows = {r["run"]: r for r in read_csv(out / "points.csv")}
    assert set(rows) == {*POINTS, "pretrain-n100", "pretrain-n200"}
    on_front = {name for name, r in rows.items() if r["on_front"] == "True"}
    assert on_front == set().union(*FRONT.values())
    assert {n for n, r in rows.items() if r["on_overall_front"] == "True"} == OVERALL_FRONT
    assert rows["pretrain-n100"]["on_front"] == ""  # shared pre-trainings are on no front
    assert rows["ptjf-r0.8"]["on_front"] == "False"  # diverged
    r = rows["scalarization-r0.8"]
    assert {k: r[k] for k in list(r)[:10]} == {
        "run": "scalarization-r0.8",
        "method": "scalarization",
        "kind": "point",
        "finished": "True",
        "low_rate": "0.8",
        "tau": "",
        "learning_rate": "0.001",
        "seed": "0",
        "pretrain_steps": "",
        "global_step": "200",
    }
    assert r["final_val_loss/lo"] == "2.7"
    assert r["best_val_loss/lo"] == "2.4"
    assert r["final_train_loss/hi"] == "2.1"
    assert r["best_train_loss/lo"] == "1.9"
    assert r["examples_seen/lo"] == "1600"
    assert r["tokens_seen/hi"] == "4000"
    assert rows["ptjf-r0.8"]["final_val_loss/hi"] == "nan"


def test_results_csv_has_every_eval(tables_only):
    out, _ = tables_only
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 * (2 + 2 + 3 + 3 + 3 + 4 + 4 + 4 + 4 + 3 + 3 + 3)
    resumed = [
        r["loss"]
        for r in rows
        if r["run"] == "scalarization-r0.5" and r["global_step"] == "100" and r["task"] == "lo"
    ]
    assert resumed == ["2.55", "2.05"]  # validation then training subset, the resumed values


def test_report_md_tables_and_notes(tables_only):
    out, _ = tables_only
    md = (out / "report.md").read_text()
    assert "Skipped 1 broken metrics line" in md
    assert "restart-r0.8/metrics.jsonl:4" in md
    assert "## Pareto front per method" in md
    assert "### ptjf (3 of 4 points on the front)" in md
    assert "### scalarization (2 of 3 points on the front)" in md
    assert "### restart (3 of 3 points on the front)" in md
    # front rows sorted by the high-resource loss
    assert "| ptjf-r0.2 | 0.2 | — | 0.001 | 0 | 100 | 2.1000 | 2.5000 |" in md
    assert (
        md.index("| restart-r0.2 |") < md.index("| restart-r0.8 |") < md.index("| restart-r0.5 |")
    )
    assert "Diverged (a NaN validation loss at the last eval; on no front): ptjf-r0.8." in md
    best = md.split("## Best low-resource validation loss per method")[1].split("##")[0]
    assert "| lo | ptjf | ptjf-r0.5 | 0.5 | 100 | 2.3000 | 200 | 2.2000 |" in best
    assert "| lo | scalarization | scalarization-r0.5 | 0.5 | — | 2.6000 | 200 | 2.5000 |" in best
    assert "| lo | restart | restart-r0.5 | 0.5 | 100 | 2.8000 | 200 | 2.4000 |" in best
    seen = md.split("## Examples seen by each method's best run")[1].split("##")[0]
    assert "| ptjf | ptjf-r0.5 | 1500 | 500 | 15000 | 5000 |" in seen
    assert "| scalarization | scalarization-r0.5 | 1000 | 1000 | 10000 | 10000 |" in seen
    assert "Not drawn (`--no_figures`)." in md
    assert not any(name.endswith(".png") for name in os.listdir(out))


def test_summary_is_the_best_low_resource_table(tables_only):
    out, summary = tables_only
    lines = summary.splitlines()
    assert lines[0] == "Best low-resource validation loss per method (final point of each run):"
    assert lines[1].split() == [
        "task",
        "method",
        "run",
        "rate",
        "N1",
        "val",
        "loss",
        "step",
        "val",
        "loss",
        "hi",
    ]
    assert lines[3].split() == ["lo", "ptjf", "ptjf-r0.5", "0.5", "100", "2.3000", "200", "2.2000"]
    assert lines[4].split()[:3] == ["lo", "scalarization", "scalarization-r0.5"]
    assert lines[5].split()[:3] == ["lo", "restart", "restart-r0.5"]
    assert f"Report: {out / 'report.md'}" in summary
    assert "Skipped 1 broken metrics line(s)" in summary


def test_point_best_uses_each_tasks_best_eval(sweep, tmp_path):
    summary = quiet(report.write_report, [sweep], tmp_path / "best", point="best", figures=False)
    row = next(line.split() for line in summary.splitlines() if " scalarization " in line)
    # scalarization r0.8 overfits: its best lo loss, at step 100, beats every final one
    assert row == [
        "lo",
        "scalarization",
        "scalarization-r0.8",
        "0.8",
        "—",
        "2.4000",
        "100",
        "2.6000",
    ]


def test_a_method_whose_runs_all_diverged_is_listed(tmp_path):
    write_run(tmp_path / "ok", [("joint", 0, 10, 10, 2.0, 3.0, 9, 1)], _info("ok", "a"))
    write_run(tmp_path / "bad", [("joint", 0, 10, 10, "NaN", "NaN", 9, 1)], _info("bad", "b"))
    rows = report.best_low_rows(*_runs_and_roles(tmp_path))
    # methods outside the paper's list come in the order of their runs' paths
    assert [(r["method"], r["run"]) for r in rows] == [("b", None), ("a", "ok")]
    summary = report.write_report([tmp_path], figures=False)
    assert "(all diverged)" in summary
    assert os.path.isfile(tmp_path / "report" / "report.md")  # default out: <first dir>/report


def _info(name, method):
    return {
        "name": name,
        "kind": "point",
        "method": method,
        "tasks": ["hi", "lo"],
        "high_tasks": ["hi"],
        "low_tasks": ["lo"],
    }


def _runs_and_roles(root):
    runs = load_runs([root])
    return runs, task_roles(runs)


def test_no_runs_and_bad_point_are_clear_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="No runs found"):
        report.write_report([tmp_path / "nothing"])
    with pytest.raises(DataError, match="point='median'"):
        report.write_report([tmp_path / "nothing"], point="median")
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match="no eval record yet"):
        report.write_report([tmp_path / "fresh"])


def test_cli_report_prints_the_summary_and_writes_figures(sweep, tmp_path, capsys):
    out = tmp_path / "cli_out"
    status = quiet(cli.main, ["report", sweep, "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Best low-resource validation loss per method (final point of each run):" in printed
    assert "ptjf-r0.5" in printed
    md = (out / "report.md").read_text()
    for name in ("fronts.png", "fronts_by_rate.png", "curves.png", "pretrain_length.png"):
        assert f"]({name})" in md
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert "- `transfer.png`: no transfer points (sweep method 'transfer')." in md


def test_cli_report_error_exits_2(tmp_path, capsys):
    status = cli.main(["report", str(tmp_path)])
    assert status == 2
    assert "ptjf report: error: No runs found" in capsys.readouterr().err


# --- BLEU -------------------------------------------------------------------------------------


@pytest.fixture
def bleu_sweep(tmp_path):
    sweep = write_sweep(tmp_path)
    add_bleu(sweep)
    return sweep


def test_best_bleu_per_method_table(bleu_sweep, tmp_path):
    out = tmp_path / "out"
    summary = quiet(report.write_report, [bleu_sweep], out, figures=False)
    md = (out / "report.md").read_text()
    table = md.split("## Best BLEU per method")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| lo ")]
    assert rows == [
        "| lo | ptjf | ptjf-r0.5 | 0.5 | 100 | 18.00 | 200 | 28.00 |",
        "| lo | scalarization | scalarization-r0.5 | 0.5 | — | 15.00 | 200 | 25.00 |",
        "| lo | restart | (no BLEU) | — | — | — | — | — |",
    ]
    assert "| task | method | run | rate | N1 | BLEU | step | BLEU hi |" in table
    # The loss tables are unchanged: the post-hoc records carry the trainer's losses.
    best = md.split("## Best low-resource validation loss per method")[1].split("##")[0]
    assert "| lo | ptjf | ptjf-r0.5 | 0.5 | 100 | 2.3000 | 200 | 2.2000 |" in best
    lines = summary.splitlines()
    start = lines.index("Best low-resource BLEU per method:")
    assert lines[start + 3].split() == [
        "lo",
        "ptjf",
        "ptjf-r0.5",
        "0.5",
        "100",
        "18.00",
        "200",
        "28.00",
    ]
    points = {r["run"]: r for r in read_csv(out / "points.csv")}
    assert (points["ptjf-r0.5"]["bleu/hi"], points["ptjf-r0.5"]["bleu/lo"]) == ("28.0", "18.0")
    assert points["restart-r0.2"]["bleu/lo"] == "nan"
    assert len([r for r in points.values() if r["bleu/lo"] != "nan"]) == len(BLEU)
    results = read_csv(out / "results.csv")
    scored = [r for r in results if r["bleu"] and r["task"] == "lo" and r["split"] == "validation"]
    assert {(r["run"], r["global_step"], r["bleu"]) for r in scored} >= {
        ("ptjf-r0.5", "200", "18.0"),
        ("scalarization-r0.8", "100", "21.0"),
    }


def test_best_bleu_with_point_best_takes_each_tasks_best_eval(bleu_sweep, tmp_path):
    out = tmp_path / "best"
    quiet(report.write_report, [bleu_sweep], out, point="best", figures=False)
    table = (out / "report.md").read_text().split("## Best BLEU per method")[1]
    # scalarization r0.8 scored 21 on lo at step 100, above every run's final BLEU
    assert "| lo | scalarization | scalarization-r0.8 | 0.8 | — | 21.00 | 100 | 20.00 |" in table


def test_without_bleu_there_is_no_bleu_table_and_the_figure_is_not_drawn(sweep, tmp_path):
    out = tmp_path / "out"
    summary = quiet(report.write_report, [sweep], out)
    md = (out / "report.md").read_text()
    assert "## Best BLEU per method" not in md
    assert "BLEU" not in summary
    assert "- `fronts_bleu.png`: no run has BLEU scores (score final checkpoints with" in md
    assert not (out / "fronts_bleu.png").exists()
    assert "bleu/lo" not in read_csv(out / "points.csv")[0]


def test_report_draws_the_bleu_fronts(bleu_sweep, tmp_path):
    out = tmp_path / "out"
    quiet(report.write_report, [bleu_sweep], out)
    md = (out / "report.md").read_text()
    assert "![BLEU trade-off fronts per method](fronts_bleu.png)" in md
    data = (out / "fronts_bleu.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000

"""`ptjf demo --quick`: both methods really train, the table and the verdict match the metrics
read independently, report.md and its figures are written, each eval prints its line, reruns
resume."""

from __future__ import annotations

import io
import json
import math
import re

from ptjf.commands import cli
from ptjf.commands.demo import HIGH_RESOURCE_TASK, LOW_RESOURCE_TASK, format_summary, summarize
from ptjf.training.metrics_io import read_metrics
from ptjf.training.progress import ProgressDisplay, format_eval_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = [HIGH_RESOURCE_TASK, LOW_RESOURCE_TASK]


def raw_evals(run_dir) -> list[dict]:
    """Eval records parsed straight from metrics.jsonl, without ptjf's reader."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "validation" in r]


def test_quick_demo_trains_both_methods_and_reports(quick_demo, capsys):
    result, tmp_path = quick_demo  # run as a program (conftest.py): stdout and stderr together
    assert result.returncode == 0, result.stdout
    out = result.stdout
    runs = {m: str(tmp_path / m) for m in ("ptjf", "scalarization")}
    ptjf_records, scal_records = read_metrics(runs["ptjf"]), read_metrics(runs["scalarization"])
    assert {r["stage"] for r in ptjf_records} == {"pretrain", "joint"}
    assert {r["stage"] for r in scal_records} == {"joint"}
    assert ptjf_records[-1]["global_step"] == scal_records[-1]["global_step"] == 6
    rows = summarize(runs)
    assert [(r["method"], r["task"]) for r in rows] == [
        ("ptjf", HIGH_RESOURCE_TASK),
        ("ptjf", LOW_RESOURCE_TASK),
        ("scalarization", HIGH_RESOURCE_TASK),
        ("scalarization", LOW_RESOURCE_TASK),
    ]
    # The table against the file itself: best is the minimum over every eval, at its step;
    # final is the last eval's loss, at its step.
    evals = {m: raw_evals(tmp_path / m) for m in runs}
    for r in rows:
        losses = [
            (e["validation"][r["task"]]["loss"], e["global_step"]) for e in evals[r["method"]]
        ]
        assert len(losses) >= 3  # step 0, the middle eval and the end: a real minimum
        best, best_step = min(losses, key=lambda x: x[0])
        assert (r["best"], r["best_step"]) == (best, best_step)
        assert (r["final"], r["final_step"]) == losses[-1]
    # Static sampling shows En→Tl from step 1; PTJF only after the switch (3 of 6 steps).
    seen = {(r["method"], r["task"]): r["examples_seen"] for r in rows}
    assert seen[("scalarization", LOW_RESOURCE_TASK)] > seen[("ptjf", LOW_RESOURCE_TASK)] > 0
    assert format_summary(rows) in out

    # The verdict names, per task and measure, the method with the lower loss in the file.
    loss = {(r["method"], r["task"], m): r[m] for r in rows for m in ("best", "final")}
    for task in TASKS:
        for measure in ("best", "final"):
            a, b = loss["ptjf", task, measure], loss["scalarization", task, measure]
            line = next(
                x for x in out.splitlines() if x.strip().startswith(f"{measure} ") and
                f"ptjf {a:.4f} vs scalarization {b:.4f}:" in x
            )  # fmt: skip
            if abs(a - b) > 1e-3:
                leader = "ptjf" if a < b else "scalarization"
                assert f": {leader} ahead by {abs(a - b):.4f} nats" in line
            else:
                assert ": tie" in line
    assert "Domination:" in out and f"Overfitting of {LOW_RESOURCE_TASK}" in out

    # report.md: the verdict on top, then the figures, each a PNG that exists.
    report = tmp_path / "report.md"
    assert f"report: {report}" in out
    text = report.read_text()
    assert text.index("Verdict (validation loss") < text.index("## Validation loss per task")
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert links == [
        f"figures/curves_{HIGH_RESOURCE_TASK}.png",
        f"figures/curves_{LOW_RESOURCE_TASK}.png",
        "figures/tradeoff.png",
    ]
    for link in links:
        png = tmp_path / link
        assert f"  figure: {png}" in out
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000

    # One eval line per eval, from the trainer, with every task's validation loss.
    eval_lines = [x for x in out.splitlines() if x.startswith("eval  step ")]
    assert len(eval_lines) == len(evals["ptjf"]) + len(evals["scalarization"])
    last = evals["scalarization"][-1]
    assert eval_lines[-1] == (
        f"eval  step 6/6 (joint)  val: {HIGH_RESOURCE_TASK} "
        f"{last['validation'][HIGH_RESOURCE_TASK]['loss']:.3f}  {LOW_RESOURCE_TASK} "
        f"{last['validation'][LOW_RESOURCE_TASK]['loss']:.3f}"
    )

    # A rerun trains nothing more and prints the same table.
    assert cli.main(["demo", "--model_dir", str(tmp_path), "--quick"]) == 0
    assert len(read_metrics(runs["ptjf"])) == len(ptjf_records)
    assert format_summary(rows) in capsys.readouterr().out


RECORD = {
    "stage": "joint",
    "global_step": 300,
    "validation": {"en_fr": {"loss": 2.4123}, "en_tl": {"loss": math.nan}},
}


def test_eval_line_is_short_and_names_every_task():
    assert (
        format_eval_line(RECORD, 3000) == "eval  step 300/3000 (joint)  val: en_fr 2.412  en_tl nan"
    )
    assert format_eval_line({"global_step": 5}) == "eval  step 5  (no validation losses)"


def test_eval_line_goes_through_the_open_display_and_redraws_its_bar():
    stream = io.StringIO()
    display = ProgressDisplay(10, stage_name="joint", stream=stream, is_tty=True)
    display.update(3, 1.5)
    bar = stream.getvalue()
    ProgressDisplay.print_eval(RECORD, 3000)
    after = stream.getvalue()[len(bar) :]
    line = format_eval_line(RECORD, 3000)
    assert after.startswith("\r" + line) and after.endswith("\n" + bar.lstrip("\r"))
    display.close()
    assert ProgressDisplay._active is None
    elsewhere = io.StringIO()
    assert ProgressDisplay.print_eval(RECORD, stream=elsewhere) == format_eval_line(RECORD)
    assert elsewhere.getvalue() == format_eval_line(RECORD) + "\n"


def test_eval_line_in_a_log_is_a_plain_line():
    stream = io.StringIO()
    display = ProgressDisplay(10, stage_name="joint", stream=stream, is_tty=False)
    display.update(1, 1.5)
    ProgressDisplay.print_eval(RECORD, 3000)
    display.close()
    assert stream.getvalue().splitlines()[-1] == format_eval_line(RECORD, 3000)

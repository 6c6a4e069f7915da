"""`ptjf demo --quick`: both methods really train, the table reads their metrics, reruns resume."""

from __future__ import annotations

from ptjf.commands import cli
from ptjf.commands.demo import format_summary, summarize
from ptjf.training.metrics_io import read_metrics


def test_quick_demo_trains_both_methods_and_prints_the_table(tmp_path, capsys, bible_vocab):
    assert cli.main(["demo", "--model_dir", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    runs = {m: str(tmp_path / m) for m in ("ptjf", "scalarization")}
    ptjf_records, scal_records = read_metrics(runs["ptjf"]), read_metrics(runs["scalarization"])
    assert {r["stage"] for r in ptjf_records} == {"pretrain", "joint"}
    assert {r["stage"] for r in scal_records} == {"joint"}
    assert ptjf_records[-1]["global_step"] == scal_records[-1]["global_step"] == 6
    rows = summarize(runs)
    assert [(r["method"], r["task"]) for r in rows] == [
        ("ptjf", "bible_translate_en_fr"),
        ("ptjf", "bible_translate_en_tl_low"),
        ("scalarization", "bible_translate_en_fr"),
        ("scalarization", "bible_translate_en_tl_low"),
    ]
    for r in rows:
        assert r["best"] <= r["final"]
        # The table's best is the minimum over that run's validation records.
        records = ptjf_records if r["method"] == "ptjf" else scal_records
        assert r["best"] == min(x["validation"][r["task"]]["loss"] for x in records)
    # Static sampling shows En→Tl from step 1; PTJF only after the switch (3 of 6 steps).
    seen = {(r["method"], r["task"]): r["examples_seen"] for r in rows}
    assert (
        seen[("scalarization", "bible_translate_en_tl_low")]
        > seen[("ptjf", "bible_translate_en_tl_low")]
        > 0
    )
    assert format_summary(rows).splitlines()[2].split()[0] == "ptjf"
    assert format_summary(rows) in out
    # A rerun trains nothing more and prints the same table.
    assert cli.main(["demo", "--model_dir", str(tmp_path), "--quick"]) == 0
    assert len(read_metrics(runs["ptjf"])) == len(ptjf_records)
    assert format_summary(rows) in capsys.readouterr().out

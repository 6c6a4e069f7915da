"""The report's figures: drawn when the runs have the data, skipped with a reason otherwise."""

from __future__ import annotations

import json
import math
import os
import struct
import warnings

import pytest
from fake_runs import BLEU, BLEU_FRONT, add_bleu, write_run, write_sweep

from ptjf.experiments import figures as report_figures
from ptjf.experiments import plots, plots_bleu
from ptjf.experiments.results import load_runs, task_roles

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk; fails on anything but a PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _load(*dirs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        runs = load_runs(list(dirs))
    return runs, task_roles(runs)


def _by_file(figures):
    return {f.file: f for f in figures}


def _info(name, method, tasks=("hi", "lo"), **extra):
    return {
        "name": name,
        "kind": "point",
        "method": method,
        "tasks": list(tasks),
        "high_tasks": [tasks[0]],
        "low_tasks": list(tasks[1:]),
        **extra,
    }


def test_every_figure_of_the_fake_sweep(tmp_path):
    runs, roles = _load(write_sweep(tmp_path))
    out = tmp_path / "figs"
    figures = _by_file(report_figures.draw_figures(runs, roles, str(out)))
    drawn = {name for name, f in figures.items() if f.path}
    assert drawn == {
        "fronts.png",
        "fronts_by_rate.png",
        "efficiency_hi.png",
        "efficiency_lo.png",
        "pretrain_length.png",
        "curves.png",
    }
    for name in drawn:
        assert figures[name].path == str(out / name)
        assert os.path.getsize(out / name) > 1000
    # two panels side by side (validation, training subset), one row: 2 × 4.4 in by 3.4 + 0.5 in
    assert _png_size(out / "fronts.png") == (880, 390)
    assert _png_size(out / "curves.png") == (880, 730)  # two splits × two tasks
    assert _png_size(out / "efficiency_lo.png") == (440, 390)
    assert figures["transfer.png"].path is None
    assert figures["transfer.png"].skipped == "no transfer points (sweep method 'transfer')"
    assert not (out / "transfer.png").exists()


def test_one_method_without_rates_or_pretraining_skips_what_it_cannot_draw(tmp_path):
    for i, (hi, lo) in enumerate([(2.0, 3.0), (2.5, 2.5)]):
        history = [("joint", 0, 0, 0, 9.0, 9.0, 0, 0), ("joint", 0, 10, 10, hi, lo, 90, 10)]
        write_run(tmp_path / f"t{i}", history, _info(f"t{i}", "temperature", tau=3.0))
    runs, roles = _load(tmp_path)
    figures = _by_file(report_figures.draw_figures(runs, roles, str(tmp_path / "out")))
    assert figures["fronts.png"].path is not None
    assert figures["fronts_by_rate.png"].skipped == (
        "no point has a sampling rate for a low-resource task (point.json low_rate)"
    )
    assert figures["pretrain_length.png"].skipped == (
        "PTJF points with finite losses have 0 distinct pre-training length(s); the figure "
        "needs 2 or more (Sweep.pretrain_steps)"
    )
    assert figures["transfer.png"].skipped.startswith("no transfer points")
    assert figures["curves.png"].path is not None


def test_three_tasks_give_one_row_of_fronts_per_low_resource_task(tmp_path):
    tasks = ("en", "gu", "sw")
    for i, rate in enumerate((0.2, 0.4)):
        record = {
            "stage": "joint",
            "stage_index": 0,
            "stage_step": 10,
            "global_step": 10,
            "examples_seen": {"en": 100, "gu": 10 + i, "sw": 20},
            "validation": {t: {"loss": 2.0 + i + j} for j, t in enumerate(tasks)},
            "train_subset": {t: {"loss": 1.0 + i + j} for j, t in enumerate(tasks)},
        }
        d = tmp_path / f"p{i}"
        d.mkdir()
        (d / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        rates = {"en": 1 - 2 * rate, "gu": rate, "sw": rate}
        (d / "point.json").write_text(json.dumps(_info(f"p{i}", "ptjf", tasks, rates=rates)))
    runs, roles = _load(tmp_path)
    assert (roles.high, roles.low) == (("en",), ("gu", "sw"))
    out = tmp_path / "out"
    figures = _by_file(report_figures.draw_figures(runs, roles, str(out)))
    assert _png_size(out / "fronts.png") == (880, 730)  # rows: gu, sw
    assert _png_size(out / "curves.png") == (1320, 730)  # columns: en, gu, sw
    assert figures["fronts_by_rate.png"].path is not None
    assert {f for f in figures if f.startswith("efficiency_")} == {
        "efficiency_en.png",
        "efficiency_gu.png",
        "efficiency_sw.png",
    }


def test_transfer_figure_when_transfer_points_exist(tmp_path):
    sweep = write_sweep(tmp_path)
    history = [
        ("pretrain", 0, 0, 0, 9.0, 9.0, 0, 0),
        ("pretrain", 0, 100, 100, 2.5, 6.0, 1000, 0),
        ("finetune", 1, 0, 100, 2.5, 6.0, 1000, 0),
        ("finetune", 1, 100, 200, 5.0, 2.9, 1000, 1000),  # forgets hi
    ]
    info = _info("transfer-n100", "transfer", low_rate=1.0, pretrain_steps=100)
    write_run(os.path.join(sweep, "points", "transfer-n100"), history, info)
    runs, roles = _load(sweep)
    figures = _by_file(report_figures.draw_figures(runs, roles, str(tmp_path / "out")))
    assert figures["transfer.png"].path == str(tmp_path / "out" / "transfer.png")
    assert _png_size(figures["transfer.png"].path) == (880, 390)  # one panel per task


def test_no_finite_losses_skip_the_fronts_and_remove_a_stale_figure(tmp_path):
    history = [("joint", 0, 10, 10, "NaN", "NaN", 9, 1)]
    write_run(tmp_path / "runs" / "a", history, _info("a", "ptjf", low_rate=0.3))
    runs, roles = _load(tmp_path / "runs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fronts.png").write_bytes(b"stale")
    figures = _by_file(report_figures.draw_figures(runs, roles, str(out)))
    reason = "no run has finite losses on both the high- and the low-resource task"
    assert figures["fronts.png"].skipped == reason
    assert figures["fronts_by_rate.png"].skipped == reason
    assert figures["efficiency_lo.png"].skipped == (
        "no method has a run with finite low-resource validation losses"
    )
    assert figures["curves.png"].skipped == "no run has a finite loss at any eval"
    assert not (out / "fronts.png").exists()


def test_single_task_runs_have_no_front(tmp_path):
    d = tmp_path / "solo"
    d.mkdir()
    record = {"global_step": 5, "examples_seen": {"x": 5}, "validation": {"x": {"loss": 1.5}}}
    (d / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    runs, roles = _load(d)
    assert (roles.high, roles.low) == (("x",), ())
    figures = _by_file(report_figures.draw_figures(runs, roles, str(tmp_path / "out")))
    assert figures["fronts.png"].skipped.startswith("the runs have a single task")
    assert figures["efficiency_x.png"].path is not None
    assert figures["curves.png"].path is not None


def test_method_styles_fix_the_papers_methods_and_vary_the_rest():
    styles = plots.method_styles(["mine", "ptjf", "other", "restart"])
    assert styles["ptjf"] == ("tab:red", "^")
    assert styles["restart"] == ("tab:green", "s")
    assert styles["mine"] != styles["other"]
    assert plots.safe_name("bible/en→fr x") == "bible_en_fr_x"


def test_efficiency_skips_a_task_no_best_run_saw(tmp_path):
    history = [("joint", 0, 10, 10, 2.0, 3.0, 9, 0)]  # no "lo" example seen yet
    write_run(tmp_path / "r", history, _info("r", "ptjf", low_rate=0.1))
    runs, roles = _load(tmp_path / "r")
    with pytest.raises(plots.NoData, match="no best run saw any lo example"):
        plots.plot_efficiency(runs, roles, "lo", str(tmp_path / "e.png"))


def test_bleu_fronts_are_the_non_dominated_points_by_larger_bleu(tmp_path):
    sweep = write_sweep(tmp_path)
    add_bleu(sweep)
    runs, _ = _load(sweep)
    for method, members in BLEU_FRONT.items():
        scored = [r for r in runs if r.method == method and r.name in BLEU]
        points = [tuple(plots_bleu.run_bleu(r, ["hi", "lo"])) for r in scored]
        assert sorted(points) == sorted(BLEU[r.name] for r in scored)  # final evals' BLEU
        front = plots_bleu.bleu_front(points)
        assert front == sorted((BLEU[name] for name in members), reverse=True)
    # restart has no BLEU; the diverged ptjf point neither
    restart = next(r for r in runs if r.name == "restart-r0.2")
    assert all(math.isnan(x) for x in plots_bleu.run_bleu(restart, ["hi", "lo"]))
    step, bleu = plots_bleu.bleu_at(restart, "lo")
    assert step is None and math.isnan(bleu)
    overfit = next(r for r in runs if r.name == "scalarization-r0.8")
    assert plots_bleu.bleu_at(overfit, "lo") == (200, 14.0)
    assert plots_bleu.bleu_at(overfit, "lo", "best") == (100, 21.0)


def test_bleu_fronts_figure_drawn_when_runs_have_bleu(tmp_path):
    sweep = write_sweep(tmp_path)
    runs, roles = _load(sweep)
    out = tmp_path / "figs"
    skipped = _by_file(report_figures.draw_figures(runs, roles, str(out)))["fronts_bleu.png"]
    assert skipped.path is None and skipped.skipped == plots_bleu.NO_BLEU
    add_bleu(sweep)
    runs, roles = _load(sweep)
    drawn = _by_file(report_figures.draw_figures(runs, roles, str(out)))["fronts_bleu.png"]
    assert drawn.path == str(out / "fronts_bleu.png")
    assert _png_size(out / "fronts_bleu.png") == (440, 390)  # one panel: validation BLEU of lo

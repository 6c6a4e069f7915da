"""`ptjf regime`: fabricated pilots whose answers are known by construction.

The main sweep (`_write_regime_sweep`): tasks "hi" (100000 examples) and "lo" (2000), 10
examples per step, evals every 100 steps up to N = 1000, 3 seeds per low rate. The mean "lo"
loss falls 3.0 → 1.5 until its bottom, then rises 0.001 a step; "hi" falls 0.002 a step all
along. Seeds are offset by -0.02, 0, +0.02, so their mean is the base curve.

    rate 0.8: bottom at step 300 (2400 lo examples = 1.2 epochs), final 2.2, hi drops 1.4
    rate 0.5: bottom at step 500 (1.25 epochs), final 2.0, hi drops 1.0; seed 2 alone dips
              0.2 at step 600 (its own bottom), which the mean does not follow
    rate 0.2: still falling (3.0 - 0.001 · step); seed 2 is still running, at step 900

So 0.5 and 0.8 are in the regime, N2 = 300 (rate 0.8), N1 = 700. A shared pre-training and a
PTJF point sit in the same sweep and must be ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptjf.commands import cli
from ptjf.errors import DataError
from ptjf.experiments import regime

SIZES = {"hi": 100000.0, "lo": 2000.0}
BATCH = 10


def _record(step: int, hi: float, lo: float, rate: float, stage_index: int = 0) -> dict:
    low_seen = round(rate * BATCH * step)
    seen = {"hi": BATCH * step - low_seen, "lo": low_seen}
    losses = {"hi": {"loss": hi, "accuracy": 0.5}, "lo": {"loss": lo, "accuracy": 0.5}}
    return {
        "stage": "joint",
        "stage_index": stage_index,
        "stage_step": step,
        "global_step": step,
        "examples_seen": seen,
        "tokens_seen": {t: 20 * n for t, n in seen.items()},
        "validation": losses,
        "train_subset": {t: {"loss": v["loss"] - 0.5} for t, v in losses.items()},
    }


def _write_run(run_dir: Path, records: list[dict], point: dict | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if point is not None:
        (run_dir / "point.json").write_text(json.dumps(point))
    return run_dir


def _point(name: str, rate: float, seed: int, method: str = "scalarization") -> dict:
    return {
        "kind": "point",
        "method": method,
        "name": name,
        "seed": seed,
        "low_rate": rate,
        "rates": {"hi": 1 - rate, "lo": rate},
        "tasks": ["hi", "lo"],
        "high_tasks": ["hi"],
        "low_tasks": ["lo"],
        "learning_rate": 0.002,
        "pretrain_steps": None,
        "total_steps": 1000,
    }


def _v_curve(step: int, bottom: int | None) -> float:
    """The base "lo" loss: down to 1.5 at `bottom`, then up 0.001 a step (None: no bottom)."""
    if bottom is None:
        return 3.0 - 0.001 * step
    return 3.0 - 1.5 * step / bottom if step <= bottom else 1.5 + 0.001 * (step - bottom)


def _write_regime_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    for rate, bottom in ((0.2, None), (0.5, 500), (0.8, 300)):
        for seed in range(3):
            name = f"scalarization-r{rate}-s{seed}"
            last = 900 if (rate, seed) == (0.2, 2) else 1000
            records = []
            for step in range(0, last + 1, 100):
                lo = _v_curve(step, bottom) + 0.02 * (seed - 1)
                if (rate, seed, step) == (0.5, 2, 600):
                    lo -= 0.2
                records.append(_record(step, 4.0 - 0.002 * step, lo, rate))
            _write_run(sweep / "points" / name, records, _point(name, rate, seed))
    shared = [_record(s, 4.0 - 0.002 * s, 9.0, 0.0) for s in range(0, 500, 100)]
    _write_run(sweep / "shared" / "pre", shared, {"kind": "shared", "name": "pre"})
    ptjf = [_record(s, 1.0, 0.1 + s / 1e4, 0.5) for s in range(0, 1001, 100)]  # would overfit
    _write_run(sweep / "points" / "ptjf-r0.5", ptjf, _point("ptjf-r0.5", 0.5, 0, "ptjf"))
    return sweep


def test_a_regime_at_rates_0_5_and_0_8_gives_n2_n1_and_the_rates_to_sweep(tmp_path):
    sweep = _write_regime_sweep(tmp_path)
    pilots = regime.load_pilots([str(sweep)])
    report = regime.regime_of_runs(pilots, SIZES)

    assert len(pilots) == 9  # the shared pre-training and the PTJF point are no pilots
    assert (report.low_task, report.high_task, report.total_steps) == ("lo", "hi", 1000)
    assert [f.low_rate for f in report.findings] == [0.2, 0.5, 0.8]
    assert [f.seeds for f in report.findings] == [3, 3, 3]
    low, mid, high = report.findings
    assert (mid.min_step, high.min_step) == (500, 300)
    assert mid.min_loss == pytest.approx(1.5) and high.min_loss == pytest.approx(1.5)
    assert mid.final_loss == pytest.approx(2.0) and high.final_loss == pytest.approx(2.2)
    assert mid.rise == pytest.approx(0.5) and high.rise == pytest.approx(0.7)
    assert mid.epochs_at_min == pytest.approx(1.25) and high.epochs_at_min == pytest.approx(1.2)
    assert mid.high_drop == pytest.approx(1.0) and high.high_drop == pytest.approx(1.4)
    assert [f.in_regime for f in report.findings] == [False, True, True]
    # Rate 0.2: a seed still running at step 900 cuts the common curve there; no bottom yet.
    assert (low.min_step, low.final_step, low.overfits) == (900, 900, False)
    assert low.epochs_at_final == pytest.approx(0.9)
    assert (low.high_drop, low.high_improving) == (0.0, False)  # nothing after its "bottom"
    assert report.kind == regime.PTJF
    assert (report.n2, report.n1, report.sweep_rates) == (300, 700, (0.5, 0.8))
    assert "N2 ≈ 300 and N1 = N − N2 = 700 for the pilot's N = 1000" in report.recommendation
    assert "sweep low rates 0.5, 0.8" in report.recommendation
    assert "1.20 epochs of lo" in report.recommendation

    # Seed 2 of rate 0.5 alone bottoms out at its dip (600); the seeds' mean does not.
    seed2 = [regime.pilot_run(r, "hi", "lo") for r in pilots if r.name.endswith("r0.5-s2")]
    assert regime.assess_regime(seed2, 2000).findings[0].min_step == 600

    text = regime.format_regime(report)
    lines = text.splitlines()
    assert lines[0] == "low-resource task lo (2000 training examples), high-resource task hi"
    assert (
        lines[1]
        == "pilot length N = 1000 steps; margins 0.01 (low-task rise), 0.01 (high-task drop)"
    )
    assert lines[3] == (
        "low rate  seeds  min step  min loss  end step  end loss    rise  epochs@min  high Δ  regime"
    )
    assert lines[5] == (
        "     0.2      3       900    2.1000       900    2.1000  +0.000        0.90  +0.000  "
        "running"
    )
    assert report.findings[0].running and not report.findings[1].running
    assert (
        "note: rate 0.2 is still running (its seeds' common evals end at step 900 of 1000)" in lines
    )
    assert lines[6].endswith(
        "0.5      3       500    1.5000      1000    2.0000  +0.500        1.25  +1.000  yes"
    )
    assert lines[7].endswith(
        "0.8      3       300    1.5000      1000    2.2000  +0.700        1.20  +1.400  yes"
    )
    assert lines[9].startswith("Verdict (ptjf): In the regime at low rates 0.5, 0.8")
    verdict = [line for line in lines[9:] if not line.startswith("note: ")]
    assert " ".join(verdict) == "Verdict (ptjf): " + report.recommendation
    assert max(len(line) for line in lines) <= 100


def test_no_rate_overfitting_says_static_sampling_is_enough(tmp_path):
    # Runs without point.json: single-stage mixtures, their rate read from examples_seen.
    for rate in (0.2, 0.5):
        records = [
            _record(s, 4.0 - 0.002 * s, _v_curve(s, None), rate) for s in range(0, 1001, 200)
        ]
        _write_run(tmp_path / f"static-{rate}", records)
    report = regime.regime_of_runs(regime.load_pilots([str(tmp_path)]), SIZES)

    assert [f.low_rate for f in report.findings] == [0.2, 0.5]
    assert report.kind == regime.STATIC
    assert [f.overfits for f in report.findings] == [False, False]
    assert report.findings[-1].epochs_at_final == pytest.approx(2.5)
    assert (report.n2, report.n1, report.sweep_rates) == (None, None, ())
    assert report.total_steps == 1000  # no point.json: the last eval's step
    assert report.recommendation.startswith(
        "No rate overfits within the pilot: at the highest rate 0.5 the lo loss is still "
        "falling after 2.50 epochs (step 1000"
    )
    assert "Static sampling is enough at this length" in report.recommendation


def test_both_tasks_converged_says_early_stopping_is_enough(tmp_path):
    for seed in range(2):
        name = f"scalarization-s{seed}"
        records = [
            _record(s, max(2.0, 4.0 - 0.01 * s), _v_curve(s, 400), 0.5) for s in range(0, 1001, 100)
        ]
        _write_run(tmp_path / name, records, _point(name, 0.5, seed))
    report = regime.regime_of_runs(regime.load_pilots([str(tmp_path)]), SIZES)

    (finding,) = report.findings
    assert (finding.min_step, finding.overfits, finding.high_improving) == (400, True, False)
    assert finding.high_drop == pytest.approx(0.0)
    assert finding.epochs_at_min == pytest.approx(1.0)
    assert report.kind == regime.EARLY_STOPPING
    assert report.n2 is None
    assert "static sampling with early stopping" in report.recommendation
    assert "first at step 400, rate 0.5, 1.00 epochs" in report.recommendation


def test_a_single_task_run_is_no_pilot(tmp_path):
    only_lo = {"validation": {"lo": {"loss": 2.0}}, "train_subset": {"lo": {"loss": 1.5}}}
    records = [{**_record(s, 1.0, 2.0, 1.0), **only_lo} for s in (0, 100)]
    _write_run(tmp_path / "lo-only", records)
    with pytest.raises(DataError, match="No static-sampling pilot under") as e:
        regime.load_pilots([str(tmp_path)])
    assert "lo-only is a single-task run (lo)" in str(e.value)
    assert "train the high- and low-resource tasks together" in str(e.value)


def test_a_mixture_without_a_low_resource_task_is_refused(tmp_path):
    pilots = regime.load_pilots([str(_write_regime_sweep(tmp_path))])
    with pytest.raises(DataError, match="No low-resource task: the smallest task") as e:
        regime.regime_of_runs(pilots, {"hi": 30000, "lo": 29000})
    assert "lo (29000 examples), is more than 0.1 (1/10) of the largest, hi (30000)" in str(e.value)
    with pytest.raises(DataError, match="No low-resource task") as e:  # equal sizes: two tasks
        regime.regime_of_runs(pilots, {"hi": 30000, "lo": 30000})
    assert "hi (30000 examples), is more than 0.1 (1/10) of the largest, lo (30000)" in str(e.value)
    assert regime.LOW_RESOURCE_FRACTION == 0.1


def test_no_scalarization_runs_is_a_clear_error(tmp_path):
    sweep = _write_regime_sweep(tmp_path)
    for point in (sweep / "points").glob("scalarization-*"):
        (point / "point.json").write_text(json.dumps({**_point("x", 0.5, 0), "method": "unimax"}))
    with pytest.raises(DataError, match="No scalarization runs under") as e:
        regime.load_pilots([str(sweep)])
    assert "pre is a shared pre-training" in str(e.value)
    assert "ptjf-r0.5 is a ptjf point" in str(e.value)


def test_fewer_than_three_evals_is_a_clear_error(tmp_path):
    for rate in (0.2, 0.5):
        name = f"scalarization-r{rate}"
        records = [_record(s, 4.0, 3.0, rate) for s in (0, 100)]
        _write_run(tmp_path / name, records, _point(name, rate, 0))
    pilots = regime.load_pilots([str(tmp_path)])
    with pytest.raises(DataError, match="No pilot has 3 evals yet") as e:
        regime.regime_of_runs(pilots, SIZES)
    assert "scalarization-r0.2: 2 eval(s), left out" in str(e.value)
    assert "Wait for more evals" in str(e.value)


def test_a_task_without_a_size_is_a_clear_error(tmp_path):
    pilots = regime.load_pilots([str(_write_regime_sweep(tmp_path))])
    with pytest.raises(DataError, match="No training size for task 'lo'") as e:
        regime.regime_of_runs(pilots, {"hi": 100000})
    assert "pass --sizes lo=N" in str(e.value)


def test_cli_regime_prints_the_table_and_the_recommendation(tmp_path, capsys):
    sweep = _write_regime_sweep(tmp_path)
    status = cli.main(["regime", str(sweep), "--sizes", "hi=100000,lo=2000"])
    out, err = capsys.readouterr()

    assert status == 0
    assert err == ""
    assert out.startswith("low-resource task lo (2000 training examples)")
    assert (
        "\n     0.8      3       300    1.5000      1000    2.2000  +0.700        1.20  +1.400  yes\n"
        in out
    )
    assert "N2 ≈ 300 and N1 = N − N2 = 700 for the pilot's N = 1000" in " ".join(out.split("\n"))
    assert "Verdict (ptjf)" in out


def test_cli_regime_error_exits_2_and_writes_nothing(tmp_path, capsys):
    sweep = _write_regime_sweep(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    status = cli.main(["regime", str(sweep), "--sizes", "hi=30000,lo=29000"])
    out, err = capsys.readouterr()

    assert status == 2
    assert out == ""
    assert err.startswith("ptjf regime: error: No low-resource task: the smallest task, lo")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

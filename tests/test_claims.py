"""The paper's claims judged from numbers: each verdict on fabricated configurations with a
known answer, the one-seed rule, the kind of study from training sizes, and report.md opening
with the verdicts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ptjf.experiments import report
from ptjf.experiments.claims import (
    FAILS,
    HOLDS,
    UNDECIDED,
    judge,
    render_claims,
    study_kind,
)
from ptjf.experiments.results import Roles, Run
from ptjf.experiments.seeds import DOMINANCE_RULE, group_configs

ROLES = Roles(("hi",), ("lo",))
HIGH_LOW = {"hi": 30_000, "lo": 450}
HIGH_HIGH = {"hi": 30_000, "lo": 29_000}


def _run(method: str, rate: float, seed: int, hi: float, lo: float, **info) -> Run:
    """A point whose final validation losses are (hi, lo); transfer and PTJF points also carry
    the eval at their switch (step 100) from `info['at_switch']`."""
    records = []
    at_switch = info.pop("at_switch", None)
    if at_switch is not None:
        records.append({"global_step": 100, "validation": _losses(*at_switch)})
    records.append({"global_step": 200, "validation": _losses(hi, lo)})
    meta = {
        "kind": "point",
        "method": method,
        "low_rate": rate,
        "seed": seed,
        "learning_rate": 0.002,
        "pretrain_steps": 100 if method in ("ptjf", "transfer", "restart") else None,
        "tasks": ["hi", "lo"],
        "high_tasks": ["hi"],
        "low_tasks": ["lo"],
        **info,
    }
    return Run(f"/x/{method}-{rate}-{seed}", f"{method}-r{rate}-s{seed}", meta, tuple(records))


def _losses(hi: float, lo: float) -> dict:
    return {"hi": {"loss": hi}, "lo": {"loss": lo}}


def _method(method: str, rate: float, his, los, **info) -> list[Run]:
    return [
        _run(method, rate, s, h, lo, **info) for s, (h, lo) in enumerate(zip(his, los, strict=True))
    ]


def _verdicts(runs, sizes=HIGH_LOW):
    return {c.number: c for c in judge(group_configs(runs), ROLES, sizes)}


def test_ptjf_dominating_static_beyond_the_spread_holds():
    runs = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    runs += _method("scalarization", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    runs += _method("scalarization", 0.2, (1.9, 2.0, 2.1), (3.6, 3.7, 3.8))  # a trade-off
    claims = _verdicts(runs)
    assert claims[1].verdict == HOLDS
    assert "1 of 2 static configurations dominated beyond the spread by PTJF" in claims[1].evidence
    assert "0 of 1 PTJF configurations by static" in claims[1].evidence
    assert "ptjf r=0.5 N1=100 beats scalarization r=0.5 (−0.300 / −0.300 nats)" in (
        claims[1].evidence
    )
    assert (
        "Best lo loss: ptjf r=0.5 N1=100: 3.100 [3.000–3.200] vs scalarization r=0.5: 3.400"
        in claims[1].evidence
    )
    assert claims[2].verdict is None and "high+high study" in claims[2].evidence
    assert claims[3].verdict is None and claims[4].verdict is None


def test_overlapping_seeds_are_undecided_and_the_reverse_does_not_hold():
    overlap = _method("ptjf", 0.5, (2.0, 2.1, 2.4), (3.0, 3.1, 3.4))
    overlap += _method("scalarization", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    assert _verdicts(overlap)[1].verdict == UNDECIDED
    reverse = _method("ptjf", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    reverse += _method("scalarization", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    claims = _verdicts(reverse)
    assert claims[1].verdict == FAILS
    assert "1 of 1 PTJF configurations by static" in claims[1].evidence


def test_one_seed_is_undecided_whatever_the_numbers():
    runs = [_run("ptjf", 0.5, 0, 1.0, 1.0), _run("scalarization", 0.5, 0, 5.0, 5.0)]
    claims = _verdicts(runs)
    assert claims[1].verdict == f"{UNDECIDED}: one seed"
    assert claims[1].evidence.endswith("one seed cannot say")


def test_an_unfinished_sweep_point_makes_every_verdict_undecided():
    runs = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    runs += _method("scalarization", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    runs[-1] = dataclasses.replace(runs[-1], done=False)
    claims = _verdicts(runs)
    assert claims[1].verdict == f"{UNDECIDED}: 1 run(s) unfinished"
    assert claims[1].evidence.endswith("a sweep point without DONE may still change")
    runs[0] = dataclasses.replace(runs[0], done=True)
    assert _verdicts(runs)[1].verdict == f"{UNDECIDED}: 1 run(s) unfinished"


def test_high_high_study_holds_without_a_ptjf_win_and_fails_with_one():
    level = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    level += _method("scalarization", 0.5, (2.1, 2.2, 2.3), (2.9, 3.0, 3.1))
    claims = _verdicts(level, HIGH_HIGH)
    assert claims[2].verdict == HOLDS
    assert claims[1].verdict is None and "high+low study" in claims[1].evidence
    win = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    win += _method("scalarization", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    assert _verdicts(win, HIGH_HIGH)[2].verdict == FAILS


def test_restart_claim_compares_ptjf_with_the_restart_baseline():
    runs = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    runs += _method("restart", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    assert _verdicts(runs)[3].verdict == HOLDS
    runs = _method("ptjf", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    runs += _method("restart", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    assert _verdicts(runs)[3].verdict == FAILS


def test_forgetting_holds_when_transfer_rises_from_the_switch_beyond_ptjf():
    ptjf = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    forgets = _method("transfer", 1.0, (3.0, 3.1, 3.2), (3.0, 3.1, 3.2), at_switch=(1.9, 3.9))
    claims = _verdicts(ptjf + forgets)
    assert claims[4].verdict == HOLDS
    assert "hi loss 1.900 [1.900–1.900] at the switch → 3.100 [3.000–3.200] at the end" in (
        claims[4].evidence
    )
    assert "On lo itself (not judged here; the paper's Fig. 6 finds transfer worse there): " in (
        claims[4].evidence
    )
    assert (
        "there): transfer r=1 N1=100: 3.100 [3.000–3.200] vs ptjf r=0.5 N1=100: 3.100"
        in claims[4].evidence
    )
    keeps = _method("transfer", 1.0, (1.8, 1.85, 1.9), (3.0, 3.1, 3.2), at_switch=(1.9, 3.9))
    assert _verdicts(ptjf + keeps)[4].verdict == FAILS


@pytest.mark.parametrize("number, method", [(5, "rate_schedule"), (6, "temperature_cooldown")])
def test_a_schedule_within_one_stage_is_judged_against_ptjf(number, method):
    ptjf = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    level = _method(method, 0.5, (2.1, 2.2, 2.3), (2.9, 3.0, 3.1))  # overlapping: no gain
    claims = _verdicts(ptjf + level)
    assert claims[number].verdict == HOLDS
    assert f"0 of 1 PTJF configurations by {method}" in claims[number].evidence
    assert "Best lo loss: " in claims[number].evidence
    better = _method(method, 0.5, (1.7, 1.8, 1.9), (2.7, 2.8, 2.9))
    claims = _verdicts(ptjf + better)
    assert claims[number].verdict == FAILS
    assert f"{method} r=0.5 beats ptjf r=0.5 N1=100 (−0.300 / −0.300 nats)" in (
        claims[number].evidence
    )
    assert _verdicts(ptjf)[number].verdict is None
    assert f"needs ptjf and {method} points" in _verdicts(ptjf)[number].evidence


def test_kind_of_study_from_training_sizes():
    assert study_kind(ROLES, {"hi": 30_000, "lo": 3_000}) == "high+low"
    assert study_kind(ROLES, {"hi": 30_000, "lo": 3_001}) is None  # in between
    assert study_kind(ROLES, {"hi": 30_000, "lo": 10_000}) == "high+high"
    assert study_kind(ROLES, {"hi": 30_000}) is None
    assert study_kind(ROLES, None) is None
    claims = _verdicts(_method("ptjf", 0.5, (1, 1, 1), (1, 1, 1)), sizes=None)
    assert "training sizes are unknown" in claims[1].evidence
    assert "--sizes" in claims[1].evidence


def test_rendered_section_lists_tested_then_untested_claims():
    runs = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    runs += _method("scalarization", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    configs = group_configs(runs)
    lines = render_claims(
        judge(configs, ROLES, HIGH_LOW),
        kind="high+low",
        seeds=3,
        measure="final",
        rule=DOMINANCE_RULE,
    )
    assert lines[0] == "## Verdicts"
    assert lines[2].startswith("Computed from this report's numbers: a study high + low resource")
    assert lines[4].startswith("- **Holds** — With a low-resource task, PTJF's front improves")
    assert "Not tested by these runs:" in lines
    assert sum(line.startswith("- ") for line in lines) == 6


@pytest.fixture
def sweep(tmp_path):
    """PTJF beats static sampling beyond the spread; three seeds each."""
    root = tmp_path / "sweep"
    runs = _method("ptjf", 0.5, (2.0, 2.1, 2.2), (3.0, 3.1, 3.2))
    runs += _method("scalarization", 0.5, (2.3, 2.4, 2.5), (3.3, 3.4, 3.5))
    for run in runs:
        d = root / "points" / run.name
        d.mkdir(parents=True)
        (d / "point.json").write_text(json.dumps(dict(run.info) | {"name": run.name}))
        lines = [
            json.dumps({"stage": "joint", "stage_index": 0, "stage_step": r["global_step"]} | r)
            for r in run.records
        ]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (d / "DONE").write_text("")
    return root


def test_report_opens_with_the_verdicts_and_the_summary_repeats_them(sweep):
    summary = report.write_report(sweep, figures=False, sizes=HIGH_LOW)
    text = (sweep / "report" / "report.md").read_text()
    assert text.startswith("# ptjf report\n\n## Verdicts\n")
    assert "- **Holds** — With a low-resource task, PTJF's front improves" in text
    assert text.index("## Verdicts") < text.index("## Notes") < text.index("## Over seeds")
    assert "  1. holds: With a low-resource task" in summary
    unknown = report.write_report(sweep, sweep / "r2", figures=False, sizes=lambda tasks: {})
    assert "1. holds" not in unknown
    assert "training sizes are unknown" in (sweep / "r2" / "report.md").read_text()

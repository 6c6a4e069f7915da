"""`ptjf report` over seeds: configs.csv, "Over seeds", error bars, and refused mixed settings.

The fabricated sweep: tasks "hi" and "lo", final validation losses (hi, lo) per seed 0, 1, 2:

    ptjf           r0.2  hi 2.0 2.1 2.2     lo 3.0  3.1 3.2
    ptjf           r0.8  hi 2.5 2.6 2.7     lo 2.5  2.6 2.7
    scalarization  r0.2  hi 2.3 2.4 2.5     lo 3.3  3.4 3.5    ← ptjf r0.2 beyond the spread
    scalarization  r0.8  hi 2.6 2.8 3.0     lo 2.65 2.8 2.9    ← overlaps ptjf r0.8: undecided

Training-subset losses are validation − 0.5; each run's step-100 eval is 0.1 worse than its
final one, so the best eval is the final one.
"""

from __future__ import annotations

import json
import math
import os
import statistics

import pytest
from fake_runs import quiet, read_csv

from ptjf.errors import DataError
from ptjf.experiments import plots, report
from ptjf.experiments.report_seeds import ONE_SEED_WARNING, seed_points
from ptjf.experiments.results import load_runs, task_roles
from ptjf.experiments.seeds import DOMINANCE_RULE, group_configs
from ptjf.experiments.settings import settings_from_text

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom
LOSSES = {
    ("ptjf", 0.2): ((2.0, 2.1, 2.2), (3.0, 3.1, 3.2)),
    ("ptjf", 0.8): ((2.5, 2.6, 2.7), (2.5, 2.6, 2.7)),
    ("scalarization", 0.2): ((2.3, 2.4, 2.5), (3.3, 3.4, 3.5)),
    ("scalarization", 0.8): ((2.6, 2.8, 3.0), (2.65, 2.8, 2.9)),
}
CONFIG_GIN = """\
import ptjf.tasks as ptjf2

# Macros:
# ==============================================================================
BATCH_SIZE = 16
FINETUNE_LEARNING_RATE = %LEARNING_RATE
LEARNING_RATE = {lr}
MIXTURE_RATES = {{'hi': {hi_rate}, 'lo': {lo_rate}}}
MODEL_DIR = \\
    '{model_dir}'
SEED = {seed}
TASK_FEATURE_LENGTHS = {{'inputs': 48,
    'targets': 48}}

# Parameters for Plan:
# ==============================================================================
Plan.stages = [@joint/Stage()]
joint/Stage.steps = {steps}

# Parameters for train:
# ==============================================================================
train.batch_size = %BATCH_SIZE
train.model_dir = %MODEL_DIR
train.seed = %SEED

# Parameters for TransformerConfig:
# ==============================================================================
TransformerConfig.emb_dim = {emb_dim}
"""


def _record(step: int, hi: float, lo: float, seen: int) -> dict:
    def split(offset: float) -> dict:
        return {
            t: {"loss": v + offset, "accuracy": 0.1, "tokens": 800.0, "examples": 20.0}
            for t, v in (("hi", hi), ("lo", lo))
            if v is not None
        }

    record = {"stage": "joint", "stage_index": 0, "stage_step": step, "global_step": step}
    record["examples_seen"] = {"hi": seen, "lo": seen // 4}
    record["tokens_seen"] = {"hi": seen * 40, "lo": seen * 10}
    record["validation"] = split(0.0)
    record["train_subset"] = split(-0.5)
    return record


def _write(directory, info: dict, records: list[dict], **gin) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(directory, "point.json"), "w") as f:
        json.dump(info, f, indent=1)
    settings = {"lr": 0.002, "emb_dim": 192, "steps": 200, "hi_rate": 0.5, "lo_rate": 0.5}
    settings |= {"seed": info["seed"], "model_dir": os.path.abspath(directory)} | gin
    with open(os.path.join(directory, "config.gin"), "w") as f:
        f.write(CONFIG_GIN.format(**settings))
    open(os.path.join(directory, "DONE"), "w").close()


def write_seed_sweep(root, seeds=(0, 1, 2)) -> str:
    """The sweep of the module docstring (only `seeds` of it), with shared pre-trainings."""
    sweep = os.path.join(root, "sweep")
    base = {"sweep": "s", "tasks": ["hi", "lo"], "high_tasks": ["hi"], "low_tasks": ["lo"]}
    base |= {"learning_rate": 0.002, "total_steps": 200, "tau": None, "max_epochs": None}
    for seed in seeds:
        name = f"pretrain-n100-s{seed}"
        info = base | {"kind": "shared", "method": "pretrain", "name": name, "seed": seed}
        info |= {"pretrain_steps": 100, "rates": None, "low_rate": None}
        pre = [_record(0, 9.0, 9.0, 0), _record(100, 2.9, 6.0, 800)]
        _write(os.path.join(sweep, "shared", name), info, pre, steps=100)
        for (method, rate), (his, los) in LOSSES.items():
            name = f"{method}-r{rate}-s{seed}"
            info = base | {"kind": "point", "method": method, "name": name, "seed": seed}
            info |= {"low_rate": rate, "rates": {"hi": 1 - rate, "lo": rate}}
            info["pretrain_steps"] = 100 if method == "ptjf" else None
            hi, lo = his[seed], los[seed]
            records = [_record(0, 9.0, 9.0, 0), _record(100, hi + 0.1, lo + 0.1, 800)]
            records.append(_record(200, hi, lo, 1600))
            _write(
                os.path.join(sweep, "points", name),
                info,
                records,
                hi_rate=round(1 - rate, 3),
                lo_rate=rate,
            )
    return sweep


def _section(text: str) -> str:
    start = text.index("## Over seeds")
    return text[start : text.index("## Pareto front per method")]


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    sweep = write_seed_sweep(root)
    out = root / "out"
    quiet(report.write_report, [sweep], out, figures=False)
    return sweep, out


def test_configs_csv_has_each_configuration_over_its_seeds(three_seeds):
    _, out = three_seeds
    rows = {r["label"]: r for r in read_csv(out / "configs.csv")}
    assert list(rows) == [
        "ptjf r=0.2 N1=100",
        "ptjf r=0.8 N1=100",
        "scalarization r=0.2",
        "scalarization r=0.8",
    ]
    for (method, rate), (his, los) in LOSSES.items():
        label = f"{method} r={rate}" + (" N1=100" if method == "ptjf" else "")
        row = rows[label]
        assert row["method"] == method
        assert float(row["low_rate"]) == rate
        assert (row["n_seeds"], row["seeds"]) == ("3", "0;1;2")
        for task, values in (("hi", his), ("lo", los)):
            for measure in ("final", "best"):
                assert float(row[f"{measure}_val_loss_mean/{task}"]) == pytest.approx(
                    sum(values) / 3, abs=1e-12
                )
                assert float(row[f"{measure}_val_loss_min/{task}"]) == min(values)
                assert float(row[f"{measure}_val_loss_max/{task}"]) == max(values)
                mean, std = sum(values) / 3, statistics.stdev(values)
                half = T_975_2 * std / math.sqrt(3)
                assert float(row[f"{measure}_val_loss_ci95_low/{task}"]) == pytest.approx(
                    mean - half, rel=1e-9
                )
                assert float(row[f"{measure}_val_loss_ci95_high/{task}"]) == pytest.approx(
                    mean + half, rel=1e-9
                )
            assert float(row[f"final_train_loss_mean/{task}"]) == pytest.approx(
                sum(values) / 3 - 0.5, abs=1e-12
            )
    assert rows["scalarization r=0.2"]["dominated_by"] == "ptjf r=0.2 N1=100"
    assert rows["scalarization r=0.8"]["dominated_by"] == ""  # ranges overlap ptjf r0.8
    assert rows["ptjf r=0.2 N1=100"]["dominated_by"] == ""
    assert {k for k, r in rows.items() if r["on_front"] == "True"} == set(rows)


def test_report_md_has_the_over_seeds_section(three_seeds):
    _, out = three_seeds
    text = (out / "report.md").read_text()
    assert text.index("## Over seeds") < text.index("## Pareto front per method")
    section = _section(text)
    assert f"Rule: {DOMINANCE_RULE}" in section
    assert "4 configurations, 3 seed(s) each" in section
    assert ONE_SEED_WARNING not in section
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()}
    scal_02, scal_08 = rows["scalarization r=0.2"], rows["scalarization r=0.8"]
    assert scal_02.endswith("| yes | ptjf r=0.2 N1=100 |")  # dominated beyond the spread
    assert scal_08.endswith("| yes | — |")  # overlapping ranges: nothing beyond the spread
    assert "| 3 (0, 1, 2) | 2.4000 [2.3000–2.5000] | [" in scal_02
    assert "### ptjf (2 of 2 configurations on the front)" in section


def test_one_seed_says_no_verdict_is_beyond_the_spread(tmp_path):
    sweep = write_seed_sweep(tmp_path, seeds=(0,))
    quiet(report.write_report, [sweep], tmp_path / "out", figures=False)
    section = _section((tmp_path / "out" / "report.md").read_text())
    assert ONE_SEED_WARNING in section
    assert "1 seed(s) each" in section
    rows = read_csv(tmp_path / "out" / "configs.csv")
    assert all(r["dominated_by"] == "" and r["final_val_loss_ci95_low/lo"] == "" for r in rows)
    assert "| scalarization r=0.2 | 1 (0) | 2.3000 | — | 3.3000 | — | yes | — |" in section


def test_runs_differing_in_a_non_swept_setting_are_refused(tmp_path):
    sweep = write_seed_sweep(tmp_path, seeds=(0, 1))
    odd = os.path.join(sweep, "points", "scalarization-r0.8-s1")
    with open(os.path.join(odd, "config.gin")) as f:
        text = f.read()
    with open(os.path.join(odd, "config.gin"), "w") as f:
        f.write(text.replace("emb_dim = 192", "emb_dim = 256"))
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        quiet(report.write_report, [sweep], out, figures=False)
    message = str(err.value)
    assert "TransformerConfig.emb_dim" in message
    assert "TransformerConfig.emb_dim = 192 in " in message
    assert f"TransformerConfig.emb_dim = 256 in {odd}" in message
    assert "differ in the swept axes" in message and "report them separately" in message.lower()
    assert not out.exists()


def test_per_point_settings_are_not_refused(tmp_path):
    sweep = write_seed_sweep(tmp_path, seeds=(0, 1))  # SEED and MODEL_DIR differ already
    odd = os.path.join(sweep, "points", "ptjf-r0.2-s1")
    with open(os.path.join(odd, "config.gin")) as f:
        text = f.read()
    with open(os.path.join(odd, "config.gin"), "w") as f:
        f.write(text.replace("LEARNING_RATE = 0.002", "LEARNING_RATE = 0.01"))
    quiet(report.write_report, [sweep], tmp_path / "out", figures=False)
    assert (tmp_path / "out" / "configs.csv").exists()


def test_fronts_are_drawn_at_the_means_with_error_bars(tmp_path, monkeypatch):
    sweep = write_seed_sweep(tmp_path)
    runs = load_runs([sweep])
    roles = task_roles(runs)
    points = seed_points(group_configs(runs), "validation", roles, "lo", "final")
    by_label = {p.label: p for p in points}
    p = by_label["scalarization r=0.8"]
    assert (p.x.mean, p.y.mean) == pytest.approx((2.8, (2.65 + 2.8 + 2.9) / 3))
    xerr, yerr = p.errors()
    assert [e for (e,) in xerr] == pytest.approx([0.2, 0.2])
    assert [e for (e,) in yerr] == pytest.approx([2.8 - 2.65 - 0.05 / 3, 0.1 + 0.05 / 3])

    given = []
    draw = plots._draw_seed_points

    def spy(ax, pts, method, styles):
        given.append((method, [v for q in pts for v in (q.x.mean, q.y.mean)]))
        return draw(ax, pts, method, styles)

    monkeypatch.setattr(plots, "_draw_seed_points", spy)
    path = quiet(plots.plot_fronts, runs, roles, str(tmp_path / "fronts.png"))
    assert os.path.getsize(path) > 0
    first = dict(given[:2])  # the validation panel: one call per method
    assert first["ptjf"] == pytest.approx([2.1, 3.1, 2.6, 2.6])
    assert first["scalarization"] == pytest.approx([2.4, 3.4, 2.8, 8.35 / 3])
    assert len(given) == 4  # and the training-subset panel


def test_settings_parse_continued_values_and_skip_per_point_bindings():
    text = "\n".join(
        [
            "import ptjf.tasks as ptjf2",
            "# Parameters for train:",
            "BATCH_SIZE = 16",
            "FINETUNE_LEARNING_RATE = %LEARNING_RATE  # tied to a swept macro",
            "MODEL_DIR = \\",
            "    '/runs/x'",
            "TASK_FEATURE_LENGTHS = {'inputs': 48,",
            "    'targets': 48}",
            "CheckpointConfig.keep_steps = (600,)",
            "Plan.stages = [@joint/Stage()]",
            "joint/Stage.steps = %TRAIN_STEPS",
            "mixture_rates.tau = 2.0",
            "ptjf3.train.last_stage = 'pretrain'",
            "train.seed = %SEED",
            "train.batch_size = %BATCH_SIZE",
            'TransformerConfig.dtype = "float32"  # a comment, "# in quotes" kept below',
            "TransformerConfig.name = 'a # b'",
        ]
    )
    assert settings_from_text(text) == {
        "BATCH_SIZE": "16",
        "TASK_FEATURE_LENGTHS": "{'inputs': 48, 'targets': 48}",
        "train.batch_size": "%BATCH_SIZE",
        "TransformerConfig.dtype": "'float32'",
        "TransformerConfig.name": "'a # b'",
    }

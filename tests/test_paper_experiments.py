"""The paper's experiments as gin files: each expands to the paper's grid, and every kind of point
parses into the plan the paper describes (steps of Table 4, schedules of App. A.1 / B), without
reading any data."""

from __future__ import annotations

from typing import NamedTuple

import gin
import pytest

from ptjf import config as gin_config
from ptjf import sampling, stages
from ptjf.commands import cli
from ptjf.experiments import runner
from ptjf.experiments import sweep as sw

LRS = [2.5e-4, 5e-4, 2.5e-3, 5e-3, 7.5e-3]  # App. A.1
RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
FR = {
    "wmt_en_ro_fr": "wmt_en_ro_fr.translate_en_fr",
    "wmt_en_hi_fr": "wmt_en_hi_fr.translate_en_fr",
    "wmt_en_zh_fr": "wmt_en_zh_fr.translate_en_fr",
}
LOW = {
    "wmt_en_ro_fr": "wmt_en_ro_fr.translate_en_ro",
    "wmt_en_hi_fr": "wmt_en_hi_fr.translate_en_hi",
    "wmt_en_zh_fr": "wmt_en_zh_fr.translate_en_zh",
}
# Table 2 sizes → the τ = 3.33 rates of the 5 mC4 languages.
MC4_RATES = sampling.temperature_rates(
    {"mc4.en": 13_396.0, "mc4.hi": 75.0, "mc4.gu": 3.6, "mc4.gd": 0.8, "mc4.sw": 4.1}, 3.33
)

WITH_TRANSFER = ["ptjf", "scalarization", "restart", "transfer"]
WITH_RESTART = ["ptjf", "scalarization", "restart"]
FRONTS_ONLY = ["ptjf", "scalarization"]


class Nmt(NamedTuple):
    """An NMT experiment file as the paper describes it (Table 4, App. A.1, the figures)."""

    problem: str
    layers: int
    n1: int  # Table 4 "base"
    n: int  # base + fine-tune
    finetune_warmup: int
    methods: list[str]
    nodes: int  # counted by hand: per learning rate, shared pre-training + points


NMT = {
    "wmt_en_ro_fr": Nmt("wmt_en_ro_fr", 3, 400_000, 450_000, 10_000, WITH_TRANSFER, 5 * 29),
    "wmt_en_ro_fr_6layer": Nmt("wmt_en_ro_fr", 6, 300_000, 350_000, 10_000, WITH_RESTART, 5 * 28),
    "wmt_en_hi_fr": Nmt("wmt_en_hi_fr", 3, 300_000, 350_000, 10_000, WITH_RESTART, 5 * 28),
    "wmt_en_hi_fr_6layer": Nmt("wmt_en_hi_fr", 6, 275_000, 325_000, 10_000, WITH_RESTART, 5 * 28),
    "wmt_en_zh_fr": Nmt("wmt_en_zh_fr", 3, 300_000, 600_000, 40_000, FRONTS_ONLY, 5 * 19),
    "wmt_en_zh_fr_6layer": Nmt("wmt_en_zh_fr", 6, 300_000, 600_000, 40_000, FRONTS_ONLY, 5 * 19),
}
# 29 = 1 shared pre-training + 9 scalarization + 9 PTJF + 9 restart + 1 transfer; 28 without
# transfer; 19 = 1 + 9 scalarization + 9 PTJF.

# file → nodes: shared pre-training + τ = 3.33 baseline + PTJF + restart; 4 shared
# pre-trainings + baseline + 4 PTJF points.
MC4 = {"mc4_pretrain_finetune": 1 + 1 + 1 + 1, "mc4_pretrain_length": 4 + 1 + 4}
ALL = [*NMT, *MC4]


def gin_file(name: str) -> str:
    return f"experiments/{name}.gin"


def nodes_of(name: str, bindings: list[str] | None = None) -> dict[str, sw.Node]:
    files = [gin_file(name)]
    sweep = runner.load_sweep(files, bindings or [])
    return {n.name: n for n in sw.expand(sweep, "/sweeps/" + name, files)}


def parse_point(argv) -> stages.Plan:
    """A `ptjf train` command's gin, parsed as `ptjf train` parses it, and its plan (no data)."""
    assert argv[:2] == ("ptjf", "train")
    files, bindings, rest = gin_config.flags_to_gin(list(argv[2:]))
    assert rest == []
    gin_config.parse_gin(files, bindings)
    return stages.Plan()


def macro(name: str):
    return gin.query_parameter(f"%{name}")


def schedule(stage: stages.Stage) -> tuple:
    s = stage.schedule
    return (s.name, s.peak_lr, s.warmup_steps, s.end_lr, s.decay_steps)


@pytest.mark.parametrize("name", ALL)
def test_every_experiment_parses_alone(name):
    gin_config.parse_gin([gin_file(name)], [])
    sweep = sw.Sweep()
    assert sweep.name == name
    assert sweep.seeds == [0]


@pytest.mark.parametrize("name", list(NMT))
def test_nmt_grid_is_the_papers(name):
    e = NMT[name]
    problem, n1, n = e.problem, e.n1, e.n
    nodes = nodes_of(name)
    sweep = runner.load_sweep([gin_file(name)], [])
    assert (sweep.mixture, sweep.high_task, sweep.low_task) == (problem, FR[problem], LOW[problem])
    assert list(sweep.methods) == e.methods
    assert list(sweep.rates) == RATES
    assert list(sweep.learning_rates) == LRS
    assert (sweep.total_steps, list(sweep.pretrain_steps), sweep.batch_size) == (n, [n1], 1024)
    assert len(nodes) == e.nodes
    shared = [x for x in nodes.values() if x.kind == "shared"]
    assert sorted(x.name for x in shared) == sorted(f"pretrain-n{n1}-lr{lr:g}-s0" for lr in LRS)
    for method in e.methods:
        per_lr = 1 if method == "transfer" else 9
        assert sum(x.info["method"] == method for x in nodes.values()) == 5 * per_lr


@pytest.mark.parametrize("name", list(NMT))
def test_nmt_commands_carry_table4_steps(name):
    n1, n = NMT[name].n1, NMT[name].n
    nodes = nodes_of(name)
    pre = nodes[f"pretrain-n{n1}-lr0.0005-s0"].commands[0]
    assert pre[:4] == ("ptjf", "train", "--gin_file=runs/ptjf.gin", f"--gin_file={gin_file(name)}")
    assert f"--gin.PRETRAIN_STEPS={n1}" in pre and f"--gin.FINETUNE_STEPS={n - n1}" in pre
    assert "--gin.train.last_stage='pretrain'" in pre
    scal = nodes["scalarization-r0.3-lr0.0075-s0"].commands[0]
    assert f"--gin.TRAIN_STEPS={n}" in scal and "--gin.LEARNING_RATE=0.0075" in scal
    switch, train = nodes[f"ptjf-r0.3-n{n1}-lr0.0025-s0"].commands
    assert switch[2] == f"--from=/sweeps/{name}/shared/pretrain-n{n1}-lr0.0025-s0/pretrain/{n1}"
    assert switch[6:] == train[2:]  # the switch parses the point's own gin


@pytest.mark.parametrize("name", list(NMT))
def test_nmt_points_build_the_papers_plans(name):
    e = NMT[name]
    problem, n1, n = e.problem, e.n1, e.n
    fr, low = FR[problem], LOW[problem]
    w = {fr: 0.7, low: 0.3}
    nodes = nodes_of(name)

    plan = parse_point(nodes[f"pretrain-n{n1}-lr0.0005-s0"].commands[0])
    assert [(s.name, s.mixture_or_task_name, s.steps) for s in plan.stages] == [
        ("pretrain", fr, n1),
        ("joint", problem, n - n1),
    ]
    assert gin.query_parameter("train.last_stage") == "pretrain"
    # App. A.1 / Table 3: batch 1024, Adam, label smoothing 0.1, dropout 0.1; the model's depth.
    assert macro("BATCH_SIZE") == 1024 and macro("LABEL_SMOOTHING") == 0.1
    assert macro("TASK_FEATURE_LENGTHS") == {"inputs": 256, "targets": 256}
    assert gin.query_parameter("train.pack") is False  # a step is 1024 sentence pairs
    assert gin.query_parameter("TransformerConfig.num_encoder_layers") == e.layers
    assert gin.query_parameter("TransformerConfig.num_decoder_layers") == e.layers
    assert gin.query_parameter("TransformerConfig.dropout_rate") == 0.1
    assert macro("EVAL_BLEU") is False

    plan = parse_point(nodes[f"ptjf-r0.3-n{n1}-lr0.0005-s0"].commands[1])
    pre, joint = plan.stages
    assert (pre.name, pre.mixture_or_task_name, pre.steps, pre.rates) == ("pretrain", fr, n1, None)
    assert (joint.name, joint.mixture_or_task_name, joint.steps) == ("joint", problem, n - n1)
    assert joint.rates == pytest.approx(w)
    assert schedule(pre) == ("warmup_cosine", 5e-4, 40_000, 0.0, None)
    assert schedule(joint) == ("warmup_cosine", 5e-4, e.finetune_warmup, 0.0, None)
    assert {s.optimizer.name for s in plan.stages} == {"adam"}
    assert all(s.reset_optimizer and s.reset_schedule for s in plan.stages)

    plan = parse_point(nodes["scalarization-r0.3-lr0.0005-s0"].commands[0])
    (only,) = plan.stages
    assert (only.mixture_or_task_name, only.steps) == (problem, n)
    assert only.rates == pytest.approx(w)
    assert schedule(only) == ("warmup_cosine", 5e-4, 40_000, 0.0, None)


@pytest.mark.parametrize("name", ["wmt_en_ro_fr", "wmt_en_hi_fr_6layer"])
def test_restart_point_cuts_the_scalarization_run_at_n1(name):
    n1, n = NMT[name].n1, NMT[name].n
    nodes = nodes_of(name)
    scalarization = nodes["scalarization-r0.5-lr0.0005-s0"].commands[0]
    assert f"--gin.CheckpointConfig.keep_steps=({n1},)" in scalarization
    first, restart = parse_point(nodes[f"restart-r0.5-n{n1}-lr0.0005-s0"].commands[1]).stages
    assert (first.steps, restart.steps) == (n1, n - n1)
    assert schedule(first) == ("warmup_cosine", 5e-4, 40_000, 0.0, n)
    assert schedule(restart) == ("warmup_cosine", 5e-4, NMT[name].finetune_warmup, 0.0, None)


def test_transfer_point_fine_tunes_on_en_ro_alone():
    nodes = nodes_of("wmt_en_ro_fr")
    pre, fine = parse_point(nodes["transfer-n400000-lr0.0005-s0"].commands[1]).stages
    assert (pre.mixture_or_task_name, pre.steps) == ("wmt_en_ro_fr.translate_en_fr", 400_000)
    assert (fine.mixture_or_task_name, fine.steps) == ("wmt_en_ro_fr.translate_en_ro", 50_000)


def test_en_zh_base_length_scalarization_sweep_from_the_comment():
    bindings = [
        "Sweep.name = 'wmt_en_zh_fr_300k'",
        "Sweep.methods = ['scalarization']",
        "Sweep.total_steps = 300000",
        "Sweep.pretrain_steps = []",
    ]
    nodes = nodes_of("wmt_en_zh_fr", bindings)
    assert len(nodes) == 5 * 9
    assert all("--gin.TRAIN_STEPS=300000" in x.commands[0] for x in nodes.values())


@pytest.mark.parametrize("name", list(MC4))
def test_mc4_grid(name):
    count = MC4[name]
    sweep = runner.load_sweep([gin_file(name)], [])
    assert (sweep.mixture, sweep.high_task, sweep.low_task) == ("mc4", "mc4.en", "mc4.gd")
    assert len(sweep.rates) == 1
    assert sweep.rates[0] == pytest.approx(MC4_RATES)
    assert list(sweep.learning_rates) == [0.01] and sweep.batch_size == 1024
    nodes = nodes_of(name)
    assert len(nodes) == count
    if name == "mc4_pretrain_finetune":
        assert list(sweep.methods) == ["ptjf", "scalarization", "restart"]
        assert (sweep.total_steps, list(sweep.pretrain_steps)) == (1_000_000, [500_000])
    else:
        assert list(sweep.methods) == ["ptjf", "scalarization"]
        assert sweep.total_steps == 500_000
        assert list(sweep.pretrain_steps) == [100_000, 200_000, 300_000, 400_000]


@pytest.mark.parametrize("name", list(MC4))
def test_mc4_points_build_the_papers_plans(name):
    layers_dim = {"mc4_pretrain_finetune": 4096, "mc4_pretrain_length": 2048}[name]
    nodes = nodes_of(name)
    n = 1_000_000 if name == "mc4_pretrain_finetune" else 500_000
    (scal,) = [x for x in nodes.values() if x.info["method"] == "scalarization"]
    (only,) = parse_point(scal.commands[0]).stages
    assert (only.mixture_or_task_name, only.steps) == ("mc4", n)
    assert only.rates == pytest.approx(MC4_RATES)
    assert (only.schedule.name, only.schedule.peak_lr, only.schedule.constant_steps) == (
        "constant_then_rsqrt",
        0.01,
        10_000,
    )
    opt = only.optimizer
    assert (opt.name, opt.factored, opt.momentum) == ("adafactor", False, 0.9)
    assert macro("BATCH_SIZE") == 1024
    assert macro("TASK_FEATURE_LENGTHS") == {"inputs": 1024, "targets": 229}
    assert (macro("LABEL_SMOOTHING"), macro("Z_LOSS")) == (0.0, 1e-4)
    assert gin.query_parameter("TransformerConfig.emb_dim") == layers_dim

    for shared in (x for x in nodes.values() if x.kind == "shared"):
        pre = parse_point(shared.commands[0]).stages[0]
        n1 = shared.info["pretrain_steps"]
        assert (pre.name, pre.mixture_or_task_name, pre.steps) == ("pretrain", "mc4.en", n1)
        assert (pre.schedule.name, pre.schedule.peak_lr) == ("constant_then_rsqrt", 0.01)
        assert pre.optimizer == opt


def test_mc4_restart_point_resets_into_the_fine_tuning_schedule():
    nodes = nodes_of("mc4_pretrain_finetune")
    (restart,) = [x for x in nodes.values() if x.info["method"] == "restart"]
    first, second = parse_point(restart.commands[1]).stages
    assert (first.steps, second.steps) == (500_000, 500_000)
    assert first.schedule.name == "constant_then_rsqrt"
    assert (second.schedule.name, second.schedule.peak_lr, second.schedule.warmup_steps) == (
        "warmup_rsqrt",
        0.01,
        10_000,
    )
    assert first.rates == pytest.approx(MC4_RATES) and second.rates == pytest.approx(MC4_RATES)


@pytest.mark.parametrize("name", list(MC4))
def test_mc4_ptjf_point_fine_tunes_with_warmup_rsqrt(name):
    nodes = nodes_of(name)
    point = next(x for x in nodes.values() if x.info["method"] == "ptjf")
    n1 = point.info["pretrain_steps"]
    pre, joint = parse_point(point.commands[1]).stages
    assert (pre.mixture_or_task_name, pre.steps) == ("mc4.en", n1)
    assert (joint.mixture_or_task_name, joint.rates) == ("mc4", pytest.approx(MC4_RATES))
    assert pre.schedule.name == "constant_then_rsqrt"
    assert (joint.schedule.name, joint.schedule.peak_lr, joint.schedule.warmup_steps) == (
        "warmup_rsqrt",
        0.01,
        10_000,
    )


def test_mc4_unimax_run_from_the_comment():
    plan = parse_point(
        (
            "ptjf",
            "train",
            "--gin_file=runs/scalarization.gin",
            "--gin_file=experiments/mc4_pretrain_finetune.gin",
            "--gin.MIXTURE_OR_TASK_NAME=mc4_unimax",
            "--gin.MODEL_DIR=/tmp/unused/unimax",
        )
    )
    (only,) = plan.stages
    assert (only.mixture_or_task_name, only.rates, only.steps) == ("mc4_unimax", None, 1_000_000)
    assert only.schedule.name == "constant_then_rsqrt"


@pytest.mark.parametrize("name", ALL)
def test_sweep_dry_run_through_the_cli(name, tmp_path, capsys):
    count = NMT[name].nodes if name in NMT else MC4[name]
    argv = ["sweep", f"--gin_file={gin_file(name)}", f"--sweep_dir={tmp_path}", "--dry_run"]
    assert cli.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{count} nodes: ")
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing

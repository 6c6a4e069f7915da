"""The sweep's scheduled methods and multi-task pre-training: rate_schedule (the high-resource
rate decays linearly, the low-resource rate averaging the grid's r), temperature_cooldown (τ
linear over the run) and ptjf_multi (PTJF pre-trained on several high-resource tasks): their
DAGs, bindings, run files, point.json, the report's grouping, and the bad inputs refused."""

from __future__ import annotations

import json
import os

import pytest

from ptjf import config as gin_config
from ptjf import stages as stg
from ptjf.errors import ConfigError
from ptjf.experiments import report, runner
from ptjf.experiments import sweep as sw
from ptjf.experiments.results import METHOD_ORDER, load_runs, methods
from ptjf.experiments.seeds import group_configs

FR, ES, TL = "bible_translate_en_fr", "bible_translate_en_es", "bible_translate_en_tl_low"
MIXTURE = "test_bible_en_fr_es_tl"
SUFFIX = "lr0.0005-s0"


@pytest.fixture(autouse=True)
def no_gin_bindings():
    """`Sweep` is gin-configurable: bindings another test parsed must not fill its defaults."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module", autouse=True)
def three_task_mixture():
    """En→Fr and En→Es (high-resource) with En→Tl (low-resource) in one mixture."""
    from ptjf import tasks

    tasks.register_mixture(
        MIXTURE, [FR, ES, TL], method="static", weights={FR: 1, ES: 1, TL: 1}, overwrite=True
    )


def make(**kw) -> sw.Sweep:
    args = dict(
        name="t",
        mixture=MIXTURE,
        high_task=FR,
        low_task=TL,
        total_steps=11,
        methods=("rate_schedule",),
        rates=(0.2, 0.8),
        pretrain_steps=(6,),
    )
    args.update(kw)
    return sw.Sweep(**args)


def nodes_of(sweep: sw.Sweep, root="/s") -> dict[str, sw.Node]:
    return {n.name: n for n in sw.expand(sweep, root, ["experiments/x.gin"])}


def binding(argv, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"--gin.{name}=")]
    return value


# --- rate_schedule --------------------------------------------------------------------------


def test_rate_schedule_points_decay_the_high_rate_and_average_the_grid_rate():
    nodes = nodes_of(make())
    assert sorted(nodes) == [f"rate_schedule-r0.2-{SUFFIX}", f"rate_schedule-r0.8-{SUFFIX}"]
    # r = 0.2 (≤ 0.5): low 0 → 2r = 0.4; r = 0.8: low 2r − 1 = 0.6 → 1. Worked by hand.
    expected = {
        "0.2": ({FR: 1.0, TL: 0.0}, {FR: 0.6, TL: 0.4}),
        "0.8": ({FR: 0.4, TL: 0.6}, {FR: 0.0, TL: 1.0}),
    }
    for r, (start, end) in expected.items():
        node = nodes[f"rate_schedule-r{r}-{SUFFIX}"]
        assert node.kind == "point" and node.deps == ()
        (argv,) = node.commands
        assert argv[:3] == ("ptjf", "train", "--gin_file=runs/rate_schedule.gin")
        assert binding(argv, "SCHEDULE_START_RATES") == sw._literal(start)
        assert binding(argv, "SCHEDULE_END_RATES") == sw._literal(end)
        assert binding(argv, "SCHEDULE_END_STEP") == "10"  # the last of the N = 11 steps
        assert binding(argv, "TRAIN_STEPS") == "11"
        assert "MIXTURE_RATES" not in " ".join(argv)
        info = node.info
        assert info["method"] == "rate_schedule" and info["low_rate"] == float(r)
        assert info["start_rates"] == start and info["end_rates"] == end
        assert info["rates"] == {FR: 1 - float(r), TL: float(r)}
        # The low rate at each of the 11 steps, linear from start to end: its mean is r.
        lows = [start[TL] + (end[TL] - start[TL]) * s / 10 for s in range(11)]
        assert sum(lows) / 11 == pytest.approx(float(r), abs=1e-12)


def test_rate_schedule_run_file_builds_a_linear_schedule_whose_mean_is_r():
    gin_config.parse_gin(
        ["runs/rate_schedule.gin", "models/tiny.gin"],
        [
            "MODEL_DIR = '/tmp/unused'",
            "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
            # An experiment's static rates must not clash with the schedule.
            f"MIXTURE_RATES = {{'{FR}': 0.5, '{TL}': 0.5}}",
            "TRAIN_STEPS = 11",
            "SCHEDULE_END_STEP = 10",
            f"SCHEDULE_START_RATES = {{'{FR}': 1.0, '{TL}': 0.0}}",
            f"SCHEDULE_END_RATES = {{'{FR}': 0.6, '{TL}': 0.4}}",
        ],
    )
    (stage,) = stg.Plan().stages
    assert stage.rates is None and stage.steps == 11
    schedule = stage.rate_schedule
    assert schedule.rates_at(0) == {FR: 1.0, TL: 0.0}
    assert schedule.rates_at(10) == pytest.approx({FR: 0.6, TL: 0.4})
    assert schedule.rates_at(5) == pytest.approx({FR: 0.8, TL: 0.2})
    mean_low = sum(schedule.rates_at(s)[TL] for s in range(11)) / 11
    assert mean_low == pytest.approx(0.2, abs=1e-12)


def test_rate_schedule_refuses_a_grid_of_task_weights():
    with pytest.raises(ConfigError) as e:
        make(rates=({FR: 0.7, TL: 0.3},))
    assert "which the rate_schedule method cannot realise" in str(e.value)
    assert "has no single low-resource rate" in str(e.value)


def test_scheduled_methods_refuse_a_one_step_run():
    for method in ("rate_schedule", "temperature_cooldown"):
        with pytest.raises(ConfigError) as e:
            make(methods=(method,), total_steps=1, pretrain_steps=())
        assert "which needs at least 2 steps" in str(e.value)


# --- temperature_cooldown -------------------------------------------------------------------


def test_temperature_cooldown_is_one_point_per_learning_rate_and_seed():
    sweep = make(methods=("temperature_cooldown",), learning_rates=(1e-3, 2e-3), seeds=(0, 1))
    nodes = nodes_of(sweep)
    assert sorted(nodes) == sorted(
        f"temperature_cooldown-t5-1.43-lr{lr}-s{s}" for lr in ("0.001", "0.002") for s in (0, 1)
    )
    node = nodes["temperature_cooldown-t5-1.43-lr0.001-s0"]
    (argv,) = node.commands
    assert argv[:3] == ("ptjf", "train", "--gin_file=runs/temperature_cooldown.gin")
    assert binding(argv, "TAU_START") == "5.0" and binding(argv, "TAU_END") == "1.43"
    assert binding(argv, "SCHEDULE_END_STEP") == "10"
    assert node.info["tau"] == "5→1.43"
    assert (node.info["tau_start"], node.info["tau_end"]) == (5.0, 1.43)
    assert node.info["low_rate"] is None and node.info["rates"] is None
    # Sweep.cooldown_taus sets the endpoints.
    other = nodes_of(make(methods=("temperature_cooldown",), cooldown_taus=(3.0, 1.0)))
    (argv,) = other[f"temperature_cooldown-t3-1-{SUFFIX}"].commands
    assert binding(argv, "TAU_START") == "3.0" and binding(argv, "TAU_END") == "1.0"


def test_temperature_cooldown_run_file_moves_tau_from_start_to_end():
    gin_config.parse_gin(
        ["runs/temperature_cooldown.gin", "models/tiny.gin"],
        [
            "MODEL_DIR = '/tmp/unused'",
            "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
            "TRAIN_STEPS = 11",
            "SCHEDULE_END_STEP = 10",
            "TAU_START = 3.0",
        ],
    )
    (stage,) = stg.Plan().stages
    assert stage.rates is None
    assert stage.rate_schedule.points == ((0, 3.0), (10, 1.43))
    sizes = {FR: 900.0, TL: 100.0}
    bound = stage.rate_schedule.bind([FR, TL], lambda: sizes)
    assert bound.rates_at(0)[TL] == pytest.approx(
        0.1 ** (1 / 3) / (0.9 ** (1 / 3) + 0.1 ** (1 / 3))
    )
    assert bound.rates_at(10)[TL] == pytest.approx(
        0.1 ** (1 / 1.43) / (0.9 ** (1 / 1.43) + 0.1 ** (1 / 1.43))
    )


@pytest.mark.parametrize(
    "taus,message",
    [
        ((5.0, 0.0), "has τ=0.0: temperature_cooldown needs each τ finite and > 0"),
        ((-1.0, 1.43), "has τ=-1.0: temperature_cooldown needs each τ finite and > 0"),
        ((5.0,), "must be two temperatures"),
    ],
)
def test_temperature_cooldown_refuses_bad_temperatures(taus, message):
    with pytest.raises(ConfigError) as e:
        make(methods=("temperature_cooldown",), cooldown_taus=taus)
    assert message in str(e.value)


# --- ptjf_multi -----------------------------------------------------------------------------


def multi(**kw) -> sw.Sweep:
    args = dict(methods=("ptjf", "ptjf_multi", "scalarization"), pretrain_rates={FR: 0.5, ES: 0.5})
    return make(**(args | kw))


def test_ptjf_multi_forks_from_its_own_multi_task_pretraining():
    nodes = nodes_of(multi())
    shared = sorted(n.name for n in nodes.values() if n.kind == "shared")
    assert shared == [f"pretrain-n6-{SUFFIX}", f"pretrain_multi-n6-{SUFFIX}"]
    pre = nodes[f"pretrain_multi-n6-{SUFFIX}"]
    (argv,) = pre.commands
    assert argv[:3] == ("ptjf", "train", "--gin_file=runs/ptjf_multi.gin")
    assert binding(argv, "PRETRAIN_RATES") == sw._literal({FR: 0.5, ES: 0.5})
    assert binding(argv, "train.last_stage") == "'pretrain'"
    assert pre.info["pretrain_rates"] == {FR: 0.5, ES: 0.5}
    # ptjf's own pre-training is on the high task alone: no PRETRAIN_RATES.
    (single,) = nodes[f"pretrain-n6-{SUFFIX}"].commands
    assert single[2] == "--gin_file=runs/ptjf.gin" and "PRETRAIN_RATES" not in " ".join(single)
    expected = {
        "0.2": {FR: 0.4, ES: 0.4, TL: 0.2},  # the high tasks share 1 − r = 0.8 half and half
        "0.8": {FR: 0.1, ES: 0.1, TL: 0.8},
    }
    for r, weights in expected.items():
        point = nodes[f"ptjf_multi-r{r}-n6-{SUFFIX}"]
        assert point.deps == (pre.name,)  # every rate forks from the one multi-task run
        assert nodes[f"ptjf-r{r}-n6-{SUFFIX}"].deps == (f"pretrain-n6-{SUFFIX}",)
        switch, train = point.commands
        assert f"--from={pre.directory}/pretrain/6" in switch
        assert f"--to={point.directory}/joint" in switch
        assert train[2] == "--gin_file=runs/ptjf_multi.gin"
        assert binding(train, "MIXTURE_RATES") == sw._literal(weights)
        assert binding(train, "PRETRAIN_RATES") == sw._literal({FR: 0.5, ES: 0.5})
        assert point.info["low_rate"] == pytest.approx(float(r))
        assert point.info["rates"] == weights
        assert point.info["parent"] == pre.directory


def test_ptjf_multi_pretraining_rates_are_normalised_and_weight_the_joint_stage():
    nodes = nodes_of(multi(methods=("ptjf_multi",), pretrain_rates={FR: 3, ES: 1}, rates=(0.2,)))
    (argv,) = nodes[f"pretrain_multi-n6-{SUFFIX}"].commands
    assert binding(argv, "PRETRAIN_RATES") == sw._literal({FR: 0.75, ES: 0.25})
    train = nodes[f"ptjf_multi-r0.2-n6-{SUFFIX}"].commands[1]
    assert binding(train, "MIXTURE_RATES") == sw._literal({FR: 0.6, ES: 0.2, TL: 0.2})


def test_ptjf_multi_run_file_pretrains_on_the_mixture_at_the_pretraining_rates():
    gin_config.parse_gin(
        ["runs/ptjf_multi.gin", "models/tiny.gin"],
        [
            "MODEL_DIR = '/tmp/unused'",
            f"MIXTURE_OR_TASK_NAME = '{MIXTURE}'",
            f"PRETRAIN_RATES = {{'{FR}': 0.5, '{ES}': 0.5}}",
            f"MIXTURE_RATES = {{'{FR}': 0.4, '{ES}': 0.4, '{TL}': 0.2}}",
            "PRETRAIN_STEPS = 6",
            "FINETUNE_STEPS = 5",
        ],
    )
    pretrain, joint = stg.Plan().stages
    assert (pretrain.name, pretrain.mixture_or_task_name, pretrain.steps) == (
        "pretrain",
        MIXTURE,
        6,
    )
    assert pretrain.rates == {FR: 0.5, ES: 0.5}
    assert (joint.name, joint.mixture_or_task_name, joint.steps) == ("joint", MIXTURE, 5)
    assert joint.rates == {FR: 0.4, ES: 0.4, TL: 0.2}


def test_every_point_lists_all_high_tasks_in_point_json(tmp_path):
    nodes = sw.expand(multi(methods=("ptjf_multi", "scalarization", "rate_schedule")), tmp_path, [])
    for node in nodes:
        runner.write_point_file(node)
    info = json.loads(
        (tmp_path / "points" / f"ptjf_multi-r0.2-n6-{SUFFIX}" / "point.json").read_text()
    )
    assert info["method"] == "ptjf_multi" and info["kind"] == "point"
    assert info["high_tasks"] == [FR, ES] and info["low_tasks"] == [TL]
    assert info["tasks"] == [FR, TL, ES]
    assert info["pretrain_rates"] == {FR: 0.5, ES: 0.5} and info["pretrain_steps"] == 6
    # Every point of the sweep says the same about the tasks (the report compares them).
    for node in nodes:
        assert (node.info["tasks"], node.info["high_tasks"]) == ([FR, TL, ES], [FR, ES])
    scal = json.loads(
        (tmp_path / "points" / f"scalarization-r0.2-{SUFFIX}" / "point.json").read_text()
    )
    assert scal["rates"] == {FR: 0.8, TL: 0.2}


@pytest.mark.parametrize(
    "kw,messages",
    [
        (
            dict(pretrain_rates=None),
            ["Sweep.methods has 'ptjf_multi'", "but Sweep.pretrain_rates is not set"],
        ),
        (
            dict(pretrain_rates={FR: 0.5, "bible_translate_en_ess": 0.5}),
            [
                "names task(s) ['bible_translate_en_ess'] that are not tasks of the sweep's "
                "mixture",
                f"closest ['{ES}'",
            ],
        ),
        (
            dict(pretrain_rates={FR: 0.5, ES: 0.3, TL: 0.2}),
            [f"names the low-resource task '{TL}'", f"Remove '{TL}' from Sweep.pretrain_rates"],
        ),
        (dict(pretrain_rates={FR: 0.0, ES: 0.0}), ["sums to zero"]),
        (dict(pretrain_rates={FR: 0.5, ES: -0.5}), ["a negative weight"]),
        (dict(pretrain_rates={ES: 1.0}), [f"leaves out Sweep.high_task '{FR}'"]),
        (dict(pretrain_rates={FR: 1.0, ES: 0.0}), ["that pre-training is the ptjf method's"]),
        (
            dict(methods=("ptjf", "scalarization")),
            ["Sweep.pretrain_rates is set, but no method", "Add 'ptjf_multi'"],
        ),
    ],
)
def test_bad_multi_task_pretrainings_are_refused_with_the_fix(kw, messages):
    with pytest.raises(ConfigError) as e:
        multi(**kw)
    for message in messages:
        assert message in str(e.value)


# --- the report -----------------------------------------------------------------------------


def _record(step: int, losses: dict[str, float]) -> dict:
    scores = {
        t: {"loss": v, "accuracy": 0.1, "tokens": 800.0, "examples": 20.0}
        for t, v in losses.items()
    }
    return {
        "stage": "joint",
        "stage_index": 0,
        "stage_step": step,
        "global_step": step,
        "examples_seen": dict.fromkeys(losses, step * 10),
        "tokens_seen": dict.fromkeys(losses, step * 400),
        "validation": scores,
        "train_subset": {t: {**s, "loss": s["loss"] - 0.5} for t, s in scores.items()},
    }


def test_the_report_groups_the_new_methods_as_their_own(tmp_path):
    sweep = multi(
        methods=("ptjf", "ptjf_multi", "scalarization", "rate_schedule", "temperature_cooldown"),
        seeds=(0, 1),
    )
    nodes = sw.expand(sweep, str(tmp_path), [])
    for i, node in enumerate(nodes):
        runner.write_point_file(node)
        losses = {FR: 2.0 + i / 100, ES: 2.2 + i / 100, TL: 3.0 - i / 100}
        with open(os.path.join(node.directory, "metrics.jsonl"), "w") as f:
            for step in (0, 11):
                f.write(json.dumps(_record(step, losses)) + "\n")
    runs = load_runs([tmp_path])
    order = methods(runs)
    assert order == [
        "ptjf",
        "scalarization",
        "rate_schedule",
        "temperature_cooldown",
        "ptjf_multi",
    ]
    assert order == [m for m in METHOD_ORDER if m in order]
    labels = {(c.method, c.label): len(c.runs) for c in group_configs(runs)}
    assert labels == {
        ("ptjf", "ptjf r=0.2 N1=6"): 2,
        ("ptjf", "ptjf r=0.8 N1=6"): 2,
        ("scalarization", "scalarization r=0.2"): 2,
        ("scalarization", "scalarization r=0.8"): 2,
        ("rate_schedule", "rate_schedule r=0.2"): 2,
        ("rate_schedule", "rate_schedule r=0.8"): 2,
        ("temperature_cooldown", "temperature_cooldown τ=5→1.43"): 2,
        ("ptjf_multi", "ptjf_multi r=0.2 N1=6"): 2,
        ("ptjf_multi", "ptjf_multi r=0.8 N1=6"): 2,
    }
    report.write_report([tmp_path], figures=False)
    text = (tmp_path / "report" / "report.md").read_text()
    for method in ("rate_schedule", "temperature_cooldown", "ptjf_multi"):
        assert f"### {method} (" in text
    assert f"High-resource task(s): `{FR}`, `{ES}`; low-resource task(s): `{TL}`." in text
    assert "| 5→1.43 |" in text  # the cooldown's τ in its front table


def test_the_per_point_schedule_is_no_setting_the_report_compares():
    """Two rate_schedule points (and two cooldowns) differ only in swept macros: their
    config.gin settings, as `ptjf report` compares them, are equal."""
    import gin

    from ptjf.experiments.settings import settings_from_text

    def settings(run_file: str, bindings: list[str]) -> dict[str, str]:
        gin.clear_config()
        gin_config.parse_gin(
            [run_file, "models/tiny.gin"],
            ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'", *bindings],
        )
        stg.Plan()
        return settings_from_text(gin.operative_config_str())

    def point(r: float) -> list[str]:
        start, end = make().schedule_rates(r)
        return [
            "TRAIN_STEPS = 11",
            "SCHEDULE_END_STEP = 10",
            f"SCHEDULE_START_RATES = {sw._literal(start)}",
            f"SCHEDULE_END_RATES = {sw._literal(end)}",
        ]

    a, b = (
        settings("runs/rate_schedule.gin", point(0.2)),
        settings("runs/rate_schedule.gin", point(0.8)),
    )
    assert a == b and a["MIXTURE_OR_TASK_NAME"] == "'bible_en_fr_tl'"
    assert not [k for k in a if k.startswith("SCHEDULE_")]
    cool = ["TRAIN_STEPS = 11", "SCHEDULE_END_STEP = 10"]
    c = settings("runs/temperature_cooldown.gin", cool)
    d = settings("runs/temperature_cooldown.gin", [*cool, "TAU_START = 3.0", "TAU_END = 1.0"])
    assert c == d


def test_the_multi_task_experiment_file_loads_and_expands(tmp_path):
    from ptjf.experiments import runner

    sweep = runner.load_sweep(["experiments/bible_en_fr_es_tl_multi.gin"], [])
    assert sweep.mixture == "bible_en_fr_es_tl"
    nodes = {n.name: n for n in sw.expand(sweep, str(tmp_path), [])}
    suffix = "lr0.002-s0"
    assert {f"pretrain-n1000-{suffix}", f"pretrain_multi-n1000-{suffix}"} <= set(nodes)
    point = nodes[f"ptjf_multi-r0.8-n1000-{suffix}"]
    assert point.info["rates"] == pytest.approx({FR: 0.1, ES: 0.1, TL: 0.8})
    assert len(nodes) == 3 * (2 + 3)  # per seed: two pre-trainings, 3 methods at r = 0.8

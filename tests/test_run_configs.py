"""The five methods' run files build the plans of `ptjf.stages`' table, and each one trains."""

from __future__ import annotations

import pytest

from ptjf import config as gin_config
from ptjf import stages as stg
from ptjf.commands import train
from ptjf.training.metrics_io import read_metrics

COMMON = [
    "MODEL_DIR = '/tmp/unused'",
    "HIGH_RESOURCE_TASK = 'bible_translate_en_fr'",
    "LOW_RESOURCE_TASK = 'bible_translate_en_tl_low'",
    "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
    "MIXTURE_RATES = {'bible_translate_en_fr': 0.7, 'bible_translate_en_tl_low': 0.3}",
    "TRAIN_STEPS = 30",
    "PRETRAIN_STEPS = 20",
    "FINETUNE_STEPS = 10",
    "WARMUP_STEPS = 2",
]
W = {"bible_translate_en_fr": 0.7, "bible_translate_en_tl_low": 0.3}


def plan_of(run_file: str) -> stg.Plan:
    gin_config.parse_gin([run_file, "models/tiny.gin"], COMMON)
    return stg.Plan()


@pytest.mark.parametrize(
    "run_file,expected",
    [
        ("runs/scalarization.gin", [("joint", "bible_en_fr_tl", 30, W)]),
        (
            "runs/restart.gin",
            [("first", "bible_en_fr_tl", 20, W), ("restart", "bible_en_fr_tl", 10, W)],
        ),
        (
            "runs/transfer.gin",
            [
                ("pretrain", "bible_translate_en_fr", 20, None),
                ("finetune", "bible_translate_en_tl_low", 10, None),
            ],
        ),
        (
            "runs/ptjf.gin",
            [("pretrain", "bible_translate_en_fr", 20, None), ("joint", "bible_en_fr_tl", 10, W)],
        ),
    ],
)
def test_run_files_build_the_methods_plans(run_file, expected):
    plan = plan_of(run_file)
    assert [(s.name, s.mixture_or_task_name, s.steps, s.rates) for s in plan.stages] == expected
    for s in plan.stages:  # every stage switch resets optimizer state and schedule
        assert s.reset_optimizer and s.reset_schedule and s.init_from == "previous"
        assert s.schedule.name == "warmup_cosine" and s.optimizer.name == "adam"


def test_temperature_run_file_rates_follow_tau():
    plan = plan_of("runs/temperature.gin")
    (stage,) = plan.stages
    from ptjf import sampling, tasks

    sizes = {t: tasks.task_size(t) for t in W}
    assert stage.rates == pytest.approx(sampling.temperature_rates(sizes, 3.33))


def test_restart_plan_trains_and_resets(tmp_path, bible_vocab):
    bindings = [
        f"MODEL_DIR = '{tmp_path}'",
        "MIXTURE_OR_TASK_NAME = 'bible_en_fr_tl'",
        "PRETRAIN_STEPS = 2",
        "FINETUNE_STEPS = 2",
        "WARMUP_STEPS = 1",
        "BATCH_SIZE = 4",
        "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}",
        "EVAL_PERIOD = 2",
        "train.max_eval_examples = 4",
        "train.train_eval_examples = 4",
        "train.tensorboard = False",
    ]
    summary = train.run(["runs/restart.gin", "models/tiny.gin"], bindings)
    assert summary.global_step == 4
    records = read_metrics(tmp_path)
    assert [(r["stage"], r["stage_step"]) for r in records] == [
        ("first", 0),
        ("first", 2),
        ("restart", 0),
        ("restart", 2),
    ]
    # Both stages train on both tasks (the restart baseline never pre-trains).
    assert records[1]["examples_seen"]["bible_translate_en_tl_low"] > 0

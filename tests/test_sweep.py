"""Sweeps: the grid's DAG shares stage 1, reruns skip finished points, failures stay local."""

from __future__ import annotations

import io
import json
import os

import pytest

from ptjf.errors import ConfigError, UnknownNameError
from ptjf.experiments import runner
from ptjf.experiments import sweep as sw

HIGH, LOW = "bible_translate_en_fr", "bible_translate_en_tl_low"


@pytest.fixture(autouse=True)
def no_gin_bindings():
    """`Sweep` is gin-configurable: bindings another test parsed must not fill its defaults."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def make(**kw) -> sw.Sweep:
    args = dict(
        name="t",
        mixture="bible_en_fr_tl",
        high_task=HIGH,
        low_task=LOW,
        total_steps=10,
        methods=("ptjf", "scalarization"),
        rates=(0.2, 0.5, 0.8),
        pretrain_steps=(6,),
    )
    args.update(kw)
    return sw.Sweep(**args)


def nodes_of(sweep: sw.Sweep, root="/s") -> dict[str, sw.Node]:
    return {n.name: n for n in sw.expand(sweep, root, ["experiments/x.gin"])}


def test_two_methods_three_rates_share_one_pretraining():
    nodes = nodes_of(make())
    shared = [n for n in nodes.values() if n.kind == "shared"]
    assert [n.name for n in shared] == ["pretrain-n6-lr0.0005-s0"]
    points = sorted(n.name for n in nodes.values() if n.kind == "point")
    assert points == sorted(
        [f"ptjf-r{r}-n6-lr0.0005-s0" for r in ("0.2", "0.5", "0.8")]
        + [f"scalarization-r{r}-lr0.0005-s0" for r in ("0.2", "0.5", "0.8")]
    )
    # Every PTJF point forks from the one pre-training: switch from its step-N1 checkpoint.
    for r in ("0.2", "0.5", "0.8"):
        point = nodes[f"ptjf-r{r}-n6-lr0.0005-s0"]
        assert point.deps == ("pretrain-n6-lr0.0005-s0",)
        switch, train = point.commands
        assert switch[:2] == ("ptjf", "switch")
        assert f"--from={shared[0].directory}/pretrain/6" in switch
        assert f"--to={point.directory}/joint" in switch and "--copy_metrics" in switch
        assert train[:3] == ("ptjf", "train", "--gin_file=runs/ptjf.gin")
        assert "--gin.FINETUNE_STEPS=4" in train and "--gin.PRETRAIN_STEPS=6" in train
        weights = {HIGH: 1 - float(r), LOW: float(r)}
        assert f"--gin.MIXTURE_RATES={sw._literal(weights)}" in train
        assert point.skip_if_exists == (f"{point.directory}/joint", None)
    # The shared run is the PTJF plan stopped after its first stage.
    (argv,) = shared[0].commands
    assert "--gin.train.last_stage='pretrain'" in argv
    assert "--gin.PRETRAIN_STEPS=6" in argv and f"--gin.MODEL_DIR='{shared[0].directory}'" in argv


def test_pretrainings_are_shared_per_learning_rate_seed_and_length():
    nodes = nodes_of(
        make(learning_rates=(1e-3, 2e-3), seeds=(0, 1), pretrain_steps=(3, 6), methods=("ptjf",))
    )
    shared = [n for n in nodes.values() if n.kind == "shared"]
    points = [n for n in nodes.values() if n.kind == "point"]
    assert len(shared) == 2 * 2 * 2  # lr × seed × N1, not × rates
    assert len(points) == 2 * 2 * 2 * 3
    assert {p.deps[0] for p in points} == {s.name for s in shared}


def test_restart_forks_from_the_scalarization_run_with_the_same_rate():
    nodes = nodes_of(make(methods=("scalarization", "restart"), pretrain_steps=(6,)))
    assert not [n for n in nodes.values() if n.kind == "shared"]
    for r in ("0.2", "0.5", "0.8"):
        scal = nodes[f"scalarization-r{r}-lr0.0005-s0"]
        restart = nodes[f"restart-r{r}-n6-lr0.0005-s0"]
        assert restart.deps == (scal.name,)
        assert f"--from={scal.directory}/joint/6" in restart.commands[0]
        # The scalarization run keeps its step-N1 checkpoint for the fork...
        assert "--gin.CheckpointConfig.keep_steps=(6,)" in scal.commands[0]
        # ...and the restart's first stage is that run's prefix: cosine over all N steps.
        assert "--gin.FIRST_DECAY_STEPS=10" in restart.commands[1]
        assert restart.info["parent"] == scal.directory


def test_transfer_temperature_and_unimax_points():
    nodes = nodes_of(
        make(
            methods=("transfer", "temperature", "unimax"),
            taus=(1.0, 3.33),
            unimax_max_epochs=(2.0,),
            batch_size=4,
        )
    )
    assert sorted(nodes) == sorted(
        [
            "pretrain-n6-lr0.0005-s0",
            "transfer-n6-lr0.0005-s0",
            "temperature-t1-lr0.0005-s0",
            "temperature-t3.33-lr0.0005-s0",
            "unimax-e2-lr0.0005-s0",
        ]
    )
    transfer = nodes["transfer-n6-lr0.0005-s0"]
    assert f"--to={transfer.directory}/finetune" in transfer.commands[0]
    unimax = nodes["unimax-e2-lr0.0005-s0"].commands[0]
    assert "--gin.mixture_rates.budget=40.0" in unimax  # N · batch examples
    assert "--gin.TAU=3.33" in nodes["temperature-t3.33-lr0.0005-s0"].commands[0]


def test_ordered_puts_parents_first():
    nodes = sw.expand(make(methods=("restart", "ptjf")), "/s", [])
    order = [n.name for n in sw.ordered(list(reversed(nodes)))]
    for n in nodes:
        for dep in n.deps:
            assert order.index(dep) < order.index(n.name)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(methods=("ptjf", "scalarisation")), "scalarization"),
        (dict(methods=()), "Sweep.methods is empty"),
        (dict(rates=()), "Sweep.rates is empty"),
        (dict(pretrain_steps=()), "Sweep.pretrain_steps is empty"),
        (dict(learning_rates=()), "Sweep.learning_rates is empty"),
        (dict(pretrain_steps=(10,)), "1 <= N1 < total_steps=10"),
        (dict(rates=(0.0, 0.5)), "must lie in (0, 1)"),
        (dict(rates=({HIGH: 0.0, LOW: 0.0},)), "not all 0"),
        (dict(methods=("unimax",)), "Sweep.unimax_budget"),
        (dict(low_task=HIGH), "name two tasks"),
    ],
)
def test_bad_sweeps_are_refused_with_the_fix(kw, message):
    with pytest.raises((ConfigError, UnknownNameError)) as e:
        make(**kw)
    assert message in str(e.value)


def test_two_points_in_one_directory_are_refused():
    with pytest.raises(ConfigError, match="same directory"):
        sw.expand(make(rates=(0.3, 0.30)), "/s", [])


# --- running --------------------------------------------------------------------------------


class FakeLauncher:
    """Records commands; 'trains' by writing a finalized-looking checkpoint where asked."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def __call__(self, argv, cwd, log_path) -> int:
        self.calls.append(tuple(argv))
        with open(log_path, "a") as f:
            f.write("fake run\n")
        model_dir = next(
            (a.split("=", 1)[1].strip("'") for a in argv if a.startswith("--gin.MODEL_DIR=")), ""
        )
        if any(name in model_dir for name in self.fail):
            with open(log_path, "a") as f:
                f.write("ptjf train: error: boom\n")
            return 2
        return 0


def run_sweep(tmp_path, launcher, sweep=None, parallel=2) -> tuple[dict, str]:
    out = io.StringIO()
    nodes = sw.expand(sweep or make(), str(tmp_path), [])
    status = runner.execute(nodes, parallel=parallel, launcher=launcher, out=out)
    return status, out.getvalue()


def test_execute_runs_parents_first_and_every_point_once(tmp_path):
    launcher = FakeLauncher()
    status, _ = run_sweep(tmp_path, launcher)
    assert set(status.values()) == {"done"} and len(status) == 7
    shared_dir = os.path.join(tmp_path, "shared", "pretrain-n6-lr0.0005-s0")
    first_fork = next(i for i, c in enumerate(launcher.calls) if c[1] == "switch")
    shared_call = next(
        i for i, c in enumerate(launcher.calls) if f"--gin.MODEL_DIR='{shared_dir}'" in c
    )
    assert shared_call < first_fork
    assert sum(1 for c in launcher.calls if f"--gin.MODEL_DIR='{shared_dir}'" in c) == 1
    assert len(launcher.calls) == 1 + 3 * 2 + 3  # shared, 3 × (switch, train), 3 scalarization
    point = tmp_path / "points" / "ptjf-r0.2-n6-lr0.0005-s0" / "point.json"
    info = json.loads(point.read_text())
    assert info["method"] == "ptjf" and info["low_rate"] == 0.2 and info["parent"] == shared_dir


def test_rerun_skips_finished_points(tmp_path):
    run_sweep(tmp_path, FakeLauncher())
    again = FakeLauncher()
    status, text = run_sweep(tmp_path, again)
    assert again.calls == [] and set(status.values()) == {"done"}
    assert "skipping 7 finished node(s)" in text


def test_a_failing_point_does_not_stop_the_others(tmp_path):
    launcher = FakeLauncher(fail={"scalarization-r0.5"})
    status, text = run_sweep(tmp_path, launcher, parallel=1)
    assert status["scalarization-r0.5-lr0.0005-s0"] == "failed"
    assert [s for n, s in status.items() if n != "scalarization-r0.5-lr0.0005-s0"] == ["done"] * 6
    failed = tmp_path / "points" / "scalarization-r0.5-lr0.0005-s0" / "FAILED"
    assert "exit status 2" in failed.read_text() and "boom" in failed.read_text()
    assert "FAILED scalarization-r0.5-lr0.0005-s0" in text and "boom" in text
    # The rerun retries only the failed point.
    again = FakeLauncher()
    status, _ = run_sweep(tmp_path, again)
    assert set(status.values()) == {"done"}
    assert len(again.calls) == 1 and not os.path.exists(failed)


def test_a_failed_parent_blocks_only_its_children(tmp_path):
    sweep = make(methods=("scalarization", "restart"), rates=(0.2, 0.5))
    status, text = run_sweep(tmp_path, FakeLauncher(fail={"scalarization-r0.2"}), sweep, 1)
    assert status == {
        "scalarization-r0.2-lr0.0005-s0": "failed",
        "scalarization-r0.5-lr0.0005-s0": "done",
        "restart-r0.2-n6-lr0.0005-s0": "blocked",
        "restart-r0.5-n6-lr0.0005-s0": "done",
    }
    assert "blocked restart-r0.2-n6-lr0.0005-s0: scalarization-r0.2-lr0.0005-s0" in text


def test_emit_prints_every_command_in_dependency_order(tmp_path):
    out = io.StringIO()
    nodes = sw.expand(make(), str(tmp_path), ["experiments/x.gin"])
    runner.emit_script(nodes, out)
    text = out.getvalue()
    lines = [x for x in text.splitlines() if x.startswith("ptjf ")]
    assert len(lines) == 1 + 3 * 2 + 3
    assert lines[0].startswith("ptjf train --gin_file=runs/ptjf.gin --gin_file=experiments/x.gin")
    assert all("--exist_ok" in x for x in lines if x.startswith("ptjf switch"))
    assert "# point ptjf-r0.2-n6-lr0.0005-s0 (after: pretrain-n6-lr0.0005-s0)" in text


def test_unimax_budget_in_the_mixtures_own_unit():
    nodes = nodes_of(make(methods=("unimax",), unimax_max_epochs=(5.0,), unimax_budget=1000.0))
    (argv,) = nodes["unimax-e5-lr0.0005-s0"].commands
    assert "--gin.mixture_rates.budget=1000.0" in argv
    assert "--gin.mixture_rates.max_epochs=5.0" in argv


def test_a_k_task_grid_names_every_task_and_treats_all_but_the_high_one_as_low():
    third = "bible_translate_en_es"
    grid = ({HIGH: 0.6, LOW: 0.2, third: 0.2}, {HIGH: 0.4, LOW: 0.3, third: 0.3})
    nodes = nodes_of(make(methods=("scalarization",), rates=grid))
    info = nodes["scalarization-w0.2_0.6_0.2-lr0.0005-s0"].info
    assert info["tasks"] == [HIGH, LOW, third]
    assert info["high_tasks"] == [HIGH] and info["low_tasks"] == [LOW, third]
    assert info["rates"] == grid[0]

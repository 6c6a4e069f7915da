"""A sweep directory on gs:// (a GCS API on 127.0.0.1, fake-gcs-server): markers, point files,
sweep.json, node logs and the emitted script, with a launcher that returns at once."""

from __future__ import annotations

import io
import json
import os
import shlex

import pytest

from ptjf import storage
from ptjf.commands import cli
from ptjf.errors import ConfigError
from ptjf.experiments import runner
from ptjf.experiments import sweep as sw

HIGH, LOW = "bible_translate_en_fr", "bible_translate_en_tl_low"
EXPERIMENT = f"""
import ptjf.experiments.sweep
Sweep.name = 'g'
Sweep.mixture = 'bible_en_fr_tl'
Sweep.high_task = '{HIGH}'
Sweep.low_task = '{LOW}'
Sweep.methods = ['ptjf', 'scalarization']
Sweep.rates = [0.2, 0.5]
Sweep.total_steps = 10
Sweep.pretrain_steps = [6]
"""
SHARED = "pretrain-n6-lr0.0005-s0"
FORK = "ptjf-r0.2-n6-lr0.0005-s0"
FAILS = "scalarization-r0.5-lr0.0005-s0"


@pytest.fixture
def experiment(tmp_path) -> str:
    path = tmp_path / "g.gin"
    path.write_text(EXPERIMENT)
    return str(path)


class FakeLauncher:
    """Records commands and the log path it was given; fails the points named in `fail`."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[tuple[str, ...]] = []
        self.logs: list[str] = []
        self.fail = fail

    def __call__(self, argv, cwd, log_path) -> int:
        self.calls.append(tuple(argv))
        self.logs.append(log_path)
        with open(log_path, "a") as f:  # a launcher's log is a local file, always
            f.write(f"fake run {argv[1]}\n")
        model_dir = next((a for a in argv if a.startswith("--gin.MODEL_DIR=")), "")
        if any(name in model_dir for name in self.fail):
            with open(log_path, "a") as f:
                f.write("ptjf train: error: boom\n")
            return 2
        return 0


def run(experiment: str, sweep_dir: str, launcher=None, **kw) -> tuple[int, str]:
    out = io.StringIO()
    code = runner.run_sweep_command(
        [experiment], [], sweep_dir=sweep_dir, launcher=launcher or FakeLauncher(), out=out, **kw
    )
    return code, out.getvalue()


def node_dir(root: str, name: str) -> str:
    kind = "shared" if name.startswith("pretrain") else "points"
    return f"{root}/{kind}/{name}"


def test_a_sweep_in_a_bucket_writes_its_markers_point_files_and_logs(gcs_bucket, experiment):
    root = f"{gcs_bucket}/sweeps/g"
    launcher = FakeLauncher(fail={FAILS})
    code, text = run(experiment, root, launcher)
    assert code == 1
    assert "4 done, 1 failed, 0 blocked" in text and f"results in {root}" in text
    assert f"see {root}/*/{FAILS}/sweep.log" in text
    record = json.loads(storage.read_text(f"{root}/sweep.json"))
    assert record["sweep"]["name"] == "g" and len(record["nodes"]) == 5
    # The commands wrote local logs; the bucket got each one whole, and the copies are gone.
    assert launcher.logs and not any(storage.is_remote(p) for p in launcher.logs)
    assert not any(os.path.exists(p) for p in launcher.logs)
    for node in record["nodes"]:
        directory, name = node["directory"], node["name"]
        assert directory == node_dir(root, name)
        info = json.loads(storage.read_text(f"{directory}/point.json"))
        assert info["name"] == name
        log = storage.read_text(f"{directory}/sweep.log")
        assert log.count("fake run") == len(node["commands"])
        if name == FAILS:
            failed = storage.read_text(f"{directory}/FAILED")
            assert "exit status 2" in failed and "boom" in failed
            assert not storage.exists(f"{directory}/DONE")
        else:
            assert json.loads(storage.read_text(f"{directory}/DONE"))["seconds"] >= 0
            assert not storage.exists(f"{directory}/FAILED")
    fork = [c for c in launcher.calls if f"--to={node_dir(root, FORK)}/joint" in c]
    assert fork and f"--from={node_dir(root, SHARED)}/pretrain/6" in fork[0]

    # The rerun skips the finished nodes and retries the failed one, appending to its log.
    again = FakeLauncher()
    code, text = run(experiment, root, again)
    assert code == 0 and "skipping 4 finished node(s)" in text
    assert [c[1] for c in again.calls] == ["train"]
    directory = node_dir(root, FAILS)
    assert not storage.exists(f"{directory}/FAILED") and storage.exists(f"{directory}/DONE")
    log = storage.read_text(f"{directory}/sweep.log")
    assert log.count("fake run") == 2 and log.index("boom") < log.rindex("fake run")


def test_a_forks_switch_is_skipped_when_its_target_holds_a_checkpoint_in_the_bucket(
    gcs_bucket, experiment
):
    root = f"{gcs_bucket}/g"
    nodes = {n.name: n for n in sw.expand(runner.load_sweep([experiment], []), root, [])}
    fork = nodes[FORK]
    # A finalised step 0 of the fork's stage, as an interrupted earlier run left it.
    storage.write_text(f"{fork.directory}/joint/0/commit_success.txt", "done")
    launcher = FakeLauncher()
    ok, _ = runner.run_node(fork, launcher, cwd=os.getcwd())
    assert ok and [c[1] for c in launcher.calls] == ["train"]


def test_dry_run_reads_the_markers_in_the_bucket(gcs_bucket, experiment):
    root = f"{gcs_bucket}/g"
    storage.write_text(f"{node_dir(root, SHARED)}/DONE", "{}")
    code, text = run(experiment, root, dry_run=True)
    assert code == 0
    assert f"done     shared {SHARED}" in text and f"pending  point  {FORK}" in text
    assert not storage.exists(f"{root}/sweep.json")  # a dry run writes nothing


def test_emit_writes_sweep_json_and_point_files_to_the_bucket(gcs_bucket, experiment, capsys):
    root = f"{gcs_bucket}/emitted"
    assert cli.main(["sweep", f"--gin_file={experiment}", f"--sweep_dir={root}", "--emit"]) == 0
    script = capsys.readouterr().out
    commands = [shlex.split(x) for x in script.splitlines() if x.startswith("ptjf ")]
    assert [c[1] for c in commands].count("train") == 5
    switches = [c for c in commands if c[1] == "switch"]
    assert len(switches) == 2 and all(c[-1] == "--exist_ok" for c in switches)
    assert f"--from={node_dir(root, SHARED)}/pretrain/6" in switches[0]
    assert f"--to={node_dir(root, FORK)}/joint" in switches[0]
    assert f"--gin.MODEL_DIR='{node_dir(root, SHARED)}'" in commands[0]
    record = json.loads(storage.read_text(f"{root}/sweep.json"))
    for node in record["nodes"]:
        assert storage.isfile(f"{node['directory']}/point.json")
        assert not storage.exists(f"{node['directory']}/sweep.log")  # nothing ran


def test_a_mistyped_bucket_uri_is_refused_before_anything_is_written(experiment):
    with pytest.raises(ConfigError, match="did you mean 'gs://bucket/g'"):
        run(experiment, "gs:/bucket/g")


def test_a_missing_bucket_is_named_before_anything_is_written(gcs_emulator, experiment):
    with pytest.raises(ConfigError, match=r"bucket gs://no-such-bucket-x does not exist"):
        run(experiment, "gs://no-such-bucket-x/g")

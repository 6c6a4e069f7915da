"""The launchers in launch/: the exact commands they print, their quoting, --run and --submit.

launch/ is a folder of scripts, not a package: its directory goes on sys.path (as it is when
a script runs as `python launch/tpu_pod.py`), and the scripts import as top-level modules.
Nothing here needs gcloud, sbatch or a network: subprocess.run is replaced.
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
GIN_DICT = "--gin.MIXTURE_RATES={'en': 0.9, \"fr\": 0.1}"
TRAIN = ["--gin_file=runs/ptjf.gin", GIN_DICT, "--gin.MODEL_DIR='gs://b/run 1'"]
EMITTED = """#!/bin/bash
# Each block is one node; run a block after the blocks it names in 'after:'. Rerunning a command resumes it.
set -e

# shared pre
ptjf train --gin_file=a.gin '--gin.MODEL_DIR='"'"'/s/pre'"'"''

# point p1 (after: pre)
ptjf switch /s/pre /s/p1 --exist_ok
ptjf train --gin_file=b.gin
"""


@pytest.fixture(scope="module")
def launchers():
    sys.path.insert(0, str(LAUNCH))
    try:
        yield importlib.import_module("tpu_pod"), importlib.import_module("slurm")
    finally:
        sys.path.remove(str(LAUNCH))


@pytest.fixture
def calls(monkeypatch):
    """Records subprocess.run's argv lists; the exit status of each call is popped from codes."""
    made: list[list[str]] = []
    codes: list[int] = []

    def fake_run(cmd, check=False, **kw):
        made.append(list(cmd))
        return subprocess.CompletedProcess(cmd, codes.pop(0) if codes else 0, "4242\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    return made, codes


POD = ["--tpu=pod", "--zone=us-central2-b", "--project=proj", "--repo=https://g/ptjf.git"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-central2-b"]
INSTALL = (
    "set -e; [ -d ptjf/.git ] || git clone --quiet https://g/ptjf.git ptjf; cd ptjf; "
    "git fetch --quiet origin v1; git checkout --quiet --detach FETCH_HEAD; "
    "[ -x .venv/bin/python ] || python3 -m venv .venv; "
    f".venv/bin/pip install --quiet -e '.[data]' 'jax[tpu]' -f {LIBTPU}"
)


def test_tpu_pod_prints_install_then_train_on_every_worker(launchers, capsys):
    tpu_pod, _ = launchers
    assert tpu_pod.main([*POD, "--ref=v1", "--", *TRAIN]) == 0
    out = capsys.readouterr().out.splitlines()
    install = [*SSH, "--project=proj", "--worker=all", f"--command={INSTALL}"]
    train_remote = "cd ptjf && .venv/bin/ptjf train " + shlex.join(TRAIN)
    train = [*SSH, "--project=proj", "--worker=all", f"--command={train_remote}"]
    assert out == [
        "# dry run: add --run to run these",
        "# install ptjf v1 on every worker",
        shlex.join(install),
        "# train: ptjf train on every worker",
        shlex.join(train),
    ]
    # The literal line, as a person would paste it.
    assert out[2] == (
        "gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --project=proj --worker=all "
        "'--command=set -e; [ -d ptjf/.git ] || git clone --quiet https://g/ptjf.git ptjf; "
        "cd ptjf; git fetch --quiet origin v1; git checkout --quiet --detach FETCH_HEAD; "
        "[ -x .venv/bin/python ] || python3 -m venv .venv; .venv/bin/pip install --quiet -e "
        "'\"'\"'.[data]'\"'\"' '\"'\"'jax[tpu]'\"'\"' -f " + LIBTPU + "'"
    )


def test_tpu_pod_gin_values_survive_both_shells(launchers, capsys):
    """Local shell → gcloud's --command → the worker's shell: the gin values arrive unchanged."""
    tpu_pod, _ = launchers
    assert tpu_pod.main([*POD, "--skip_install", "--", "ptjf", "train", *TRAIN]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    local = shlex.split(line)
    assert local[:-1] == [*SSH, "--project=proj", "--worker=all"]
    remote = local[-1].removeprefix("--command=")
    assert shlex.split(remote) == ["cd", "ptjf", "&&", ".venv/bin/ptjf", "train", *TRAIN]


def test_tpu_pod_run_stops_at_first_failure(launchers, calls, capsys):
    tpu_pod, _ = launchers
    made, codes = calls
    codes[:] = [0, 3]
    assert tpu_pod.main([*POD, "--run", "--", *TRAIN]) == 3
    assert len(made) == 2
    assert made[0][-1] == f"--command={INSTALL.replace('origin v1', 'origin main')}"
    assert made[1][-1] == "--command=cd ptjf && .venv/bin/ptjf train " + shlex.join(TRAIN)
    err = capsys.readouterr().err
    assert "step 2/2 (train: ptjf train on every worker) failed with exit status 3" in err


def test_tpu_pod_commands_file_runs_blocks_in_order(launchers, calls, tmp_path):
    tpu_pod, _ = launchers
    made, _ = calls
    cmds = tmp_path / "cmds.sh"
    cmds.write_text(EMITTED)
    assert tpu_pod.main([*POD, "--skip_install", "--run", f"--commands={cmds}"]) == 0
    assert [(c[-2], c[-1]) for c in made] == [
        (
            "--worker=all",
            "--command=cd ptjf && .venv/bin/ptjf train --gin_file=a.gin "
            "'--gin.MODEL_DIR='\"'\"'/s/pre'\"'\"''",
        ),
        ("--worker=all", "--command=cd ptjf && .venv/bin/ptjf switch /s/pre /s/p1 --exist_ok"),
        ("--worker=all", "--command=cd ptjf && .venv/bin/ptjf train --gin_file=b.gin"),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--zone=z", "--repo=r", "--", "--gin_file=a.gin"], "--tpu required"),
        (["--tpu=p", "--repo=r", "--", "--gin_file=a.gin"], "--zone required"),
        (["--tpu=p", "--zone=z", "--repo=r"], "no `ptjf train` arguments"),
        (["--tpu=p", "--zone=z", "--", "--gin_file=a.gin"], "--repo required"),
        (["--tpu=p", "--zone=z", "--repo=r", "--commands=/nonexistent"], "--commands"),
    ],
)
def test_tpu_pod_bad_input_exits_2(launchers, calls, capsys, argv, message):
    tpu_pod, _ = launchers
    assert tpu_pod.main(argv) == 2
    assert message in capsys.readouterr().err
    assert calls[0] == []


SLURM = ["--nodes=2", "--gpus_per_node=4", "--partition=gpu", "--time=12:00:00"]


def test_slurm_renders_sbatch_with_srun_on_every_node(launchers, tmp_path, capsys):
    _, slurm = launchers
    out = tmp_path / "job.sbatch"
    argv = [*SLURM, "--account=acct", "--job_name=pt", "--workdir=/shared/ptjf", f"--out={out}"]
    assert slurm.main([*argv, "--", *TRAIN]) == 0
    text = out.read_text()
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == [
        "#SBATCH --job-name=pt",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --output=pt-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=12:00:00",
        "#SBATCH --account=acct",
    ]
    assert "\nexport JAX_LOCAL_DEVICE_IDS=0,1,2,3\n" in text
    assert "\ncd /shared/ptjf\n" in text
    srun = text.splitlines()[-1]
    assert srun == "srun --nodes=2 --ntasks-per-node=1 .venv/bin/ptjf train " + shlex.join(TRAIN)
    assert shlex.split(srun)[-3:] == TRAIN
    assert "{{" not in text
    assert text in capsys.readouterr().out


def test_slurm_submit_runs_sbatch_on_the_file(launchers, calls, tmp_path):
    _, slurm = launchers
    made, _ = calls
    out = tmp_path / "job.sbatch"
    assert slurm.main([*SLURM, f"--out={out}", "--submit", "--", *TRAIN]) == 0
    assert made == [["sbatch", str(out)]]


def test_slurm_commands_file_chains_blocks_with_dependencies(launchers, calls, tmp_path):
    _, slurm = launchers
    made, _ = calls
    cmds = tmp_path / "cmds.sh"
    cmds.write_text(EMITTED)
    argv = [*SLURM, f"--commands={cmds}", f"--out={tmp_path}", "--submit"]
    assert slurm.main(argv) == 0
    first, second = tmp_path / "ptjf_ptjf-00.sbatch", tmp_path / "ptjf_ptjf-01.sbatch"
    assert made == [
        ["sbatch", "--parsable", str(first)],
        ["sbatch", "--parsable", "--dependency=afterok:4242", str(second)],
    ]
    assert second.read_text().splitlines()[-2:] == [
        "srun --nodes=1 --ntasks=1 .venv/bin/ptjf switch /s/pre /s/p1 --exist_ok",
        "srun --nodes=2 --ntasks-per-node=1 .venv/bin/ptjf train --gin_file=b.gin",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpus_per_node=4", "--", "--gin_file=a.gin"], "--nodes required"),
        (["--nodes=2", "--", "--gin_file=a.gin"], "--gpus_per_node required"),
        (["--nodes=2", "--gpus_per_node=4"], "no `ptjf train` arguments"),
        (["--nodes=2", "--gpus_per_node=4", "--time=12h", "--", "x"], "HH:MM:SS"),
    ],
)
def test_slurm_bad_input_exits_2(launchers, calls, tmp_path, capsys, argv, message):
    _, slurm = launchers
    assert slurm.main([f"--out={tmp_path / 'j'}", *argv]) == 2
    assert message in capsys.readouterr().err
    assert calls[0] == []
    assert not (tmp_path / "j").exists()


def test_emitted_blocks_read_back_what_ptjf_sweep_emit_prints(launchers):
    """The launchers read the real `ptjf sweep --emit` format, not a copy of it."""
    import io

    from ptjf.experiments import runner
    from ptjf.experiments import sweep as sw

    emitted = importlib.import_module("emitted")
    pre = sw.Node("pre", "shared", "/s/pre", {}, (("ptjf", "train", "--gin.X={'a': 1}"),))
    point = sw.Node(
        "r0.1",
        "point",
        "/s/r0.1",
        {},
        (("ptjf", "switch", "/s/pre", "/s/r0.1"), ("ptjf", "train", "--gin_file=b.gin")),
        ("pre",),
    )
    out = io.StringIO()
    runner.emit_script([point, pre], out)
    assert emitted.read_blocks(out.getvalue()) == [
        emitted.Block("pre", (), (("ptjf", "train", "--gin.X={'a': 1}"),)),
        emitted.Block(
            "r0.1",
            ("pre",),
            (
                ("ptjf", "switch", "/s/pre", "/s/r0.1", "--exist_ok"),
                ("ptjf", "train", "--gin_file=b.gin"),
            ),
        ),
    ]

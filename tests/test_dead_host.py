"""A two-process run on localhost loses one process (SIGKILL): the other stops within a bounded
time, non-zero, naming the lost process, instead of hanging in a collective."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from localhost_processes import free_port, launch_train, wait_for_steps

from ptjf.checkpoints import checkpointer as ckpt
from ptjf.runtime.watchdog import EXIT_PEER_LOST, PeerWatchdog
from ptjf.training.metrics_io import TRAIN_METRICS_FILE

pytestmark = pytest.mark.fault

BINDINGS = [
    "HIGH_RESOURCE_TASK='bible_translate_en_fr'",
    "MIXTURE_OR_TASK_NAME='bible_en_fr_tl'",
    "PRETRAIN_STEPS=100000",
    "FINETUNE_STEPS=1",
    "WARMUP_STEPS=1",
    "BATCH_SIZE=4",
    "TASK_FEATURE_LENGTHS={'inputs':16,'targets':16}",
    "EVAL_PERIOD=100000",
    "CheckpointConfig.period=100000",
    "train.max_eval_examples=4",
    "train.train_eval_examples=4",
    "train.log_every=1",
    "train.tensorboard=False",
]


def launch(model_dir, port: int, index: int):
    return launch_train(
        model_dir,
        port,
        index,
        files=["runs/ptjf.gin", "models/tiny.gin"],
        bindings=BINDINGS,
        flags=["--peer_timeout_s=5"],
    )


def test_survivor_exits_nonzero_naming_the_lost_process(tmp_path, bible_vocab):
    port = free_port()
    procs = [launch(tmp_path / "run", port, i) for i in (0, 1)]
    metrics = tmp_path / "run" / TRAIN_METRICS_FILE
    try:
        wait_for_steps(metrics, procs, 3)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, _ = procs[0].communicate(timeout=60)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == EXIT_PEER_LOST, out[-3000:]
    assert "lost process 1 of 2" in out
    assert "rerun the same command on every host" in out
    assert waited < 60
    steps = [json.loads(line)["global_step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] < 100000


class FakeStore:
    """The coordination service's key-value store, as the watchdog uses it."""

    def __init__(self):
        self.data: dict[str, str] = {}
        self.down = False

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        if self.down:
            raise ConnectionError("coordination service unavailable")
        self.data[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        if self.down:
            raise ConnectionError("coordination service unavailable")
        return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


def test_watchdog_names_a_silent_peer_and_ignores_a_finished_one():
    now = [0.0]
    store = FakeStore()
    dogs = [PeerWatchdog(store, i, 3, timeout_s=10, clock=lambda: now[0]) for i in range(3)]
    for t in range(0, 30, 2):  # everyone beats: nobody is lost
        now[0] = float(t)
        for dog in dogs:
            dog.beat()
        assert [dog.check() for dog in dogs] == [None, None, None]
    dogs[2].mark_done()  # process 2 finished normally
    for t in range(30, 60, 2):  # process 1 falls silent at t = 30
        now[0] = float(t)
        dogs[0].beat()
        verdict = dogs[0].check()
    assert verdict is not None and verdict.startswith("lost process 1 of 3: no heartbeat for")
    store.down = True  # the store lives in process 0
    assert dogs[1].check().startswith("lost the coordinator (process 0)")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PTJF_SLOW") != "1",
    reason="full form only (PTJF_SLOW=1); the cheap form is one process stopped by SIGTERM "
    "(tests/test_faults.py) and the preemption step agreement on one host",
)
def test_sigterm_on_one_host_stops_every_host_at_the_same_saved_step(tmp_path, bible_vocab):
    port = free_port()
    procs = [launch(tmp_path / "run", port, i) for i in (0, 1)]
    metrics = tmp_path / "run" / TRAIN_METRICS_FILE
    try:
        wait_for_steps(metrics, procs, 3)
        procs[1].send_signal(signal.SIGTERM)  # the notice reaches one host only
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    saved = {int(out.split("saved global step ")[1].split()[0]) for out in outs}
    assert len(saved) == 1  # both processes agreed on the step
    (step,) = saved
    assert ckpt.finalized_steps(tmp_path / "run" / "pretrain")[-1] == step

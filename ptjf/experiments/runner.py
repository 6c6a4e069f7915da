"""Runs a sweep's DAG as local processes, or prints its launch commands (`ptjf sweep`).

Each node (a shared pre-training or a point) runs its `ptjf` commands in order in its own
process, `--parallel N` nodes at a time, each as soon as the nodes it forks from are done. A
node that finishes writes `DONE` in its directory, so rerunning the same `ptjf sweep` skips it
and resumes the others (a point killed mid-run resumes from its own checkpoint: `ptjf train`
resumes by itself). A node that fails writes `FAILED` with its exit status and the tail of its
log; the nodes that fork from it are reported as blocked, and every other node still runs.
`--emit` prints the commands in dependency order instead, for a TPU pod or GPU cluster's own
scheduler.

A sweep directory may be on `gs://` (every point's MODEL_DIR is then in the bucket): markers,
point files and `sweep.json` are written through `ptjf.storage`, each as one whole object.
A node's log is a file its commands append to; an object store has no append, so there the
commands write a local temporary log (started from the one in the bucket, so a rerun appends),
which is uploaded whole after each command and when the node stops.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from ptjf import storage
from ptjf.errors import ConfigError
from ptjf.experiments import sweep as sw

LOG_FILE = "sweep.log"
FAILED_FILE = "FAILED"
# Runs one command; returns its exit status. Replaced in tests to fail a chosen point. Its
# third argument is the node's log, always a local file (see `NodeLog`).
Launcher = Callable[[Sequence[str], str, str], int]


def local_launcher(argv: Sequence[str], cwd: str, log_path: str) -> int:
    """`ptjf ...` as `python -m ptjf.commands.cli ...` in a child process, output appended to the log
    (a local file: a child's output needs one)."""
    command = [sys.executable, "-m", "ptjf.commands.cli", *argv[1:]]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        return subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode


def is_done(node: sw.Node) -> bool:
    return storage.exists(storage.join(node.directory, sw.DONE_FILE))


def _has_checkpoint(path: str | None) -> bool:
    if path is None:
        return False
    from ptjf.checkpoints.checkpointer import finalized_steps

    return bool(finalized_steps(path))  # [] where nothing is, local or gs://


def write_point_file(node: sw.Node) -> None:
    storage.makedirs(node.directory)
    storage.write_text(
        storage.join(node.directory, sw.POINT_FILE),
        json.dumps(node.info, indent=1, sort_keys=True),
    )


class NodeLog:
    """A node's log (`<node>/sweep.log`) and the local file its commands append to.

    Local disk: the log itself. `gs://`: a temporary local file, started with the log already
    in the bucket (a rerun appends to it); `upload` writes it to the bucket whole (one object,
    replaced), and `close` uploads once more and deletes the temporary file.
    """

    def __init__(self, path: str):
        self.path = path
        self.local = path
        self._tmpdir: str | None = None
        self._uploaded = -1
        if storage.is_remote(path):
            self._tmpdir = tempfile.mkdtemp(prefix="ptjf-sweep-log-")
            self.local = os.path.join(self._tmpdir, LOG_FILE)
            earlier = storage.read_bytes(path) if storage.exists(path) else b""
            storage.write_bytes(self.local, earlier)  # the staging copy the commands append to
            self._uploaded = len(earlier)

    def upload(self) -> None:
        """Copies the local log to the bucket if it grew since the last upload (gs:// only)."""
        if self._tmpdir is None or not os.path.exists(self.local):
            return
        data = storage.read_bytes(self.local)
        if len(data) != self._uploaded:
            storage.write_bytes(self.path, data)
            self._uploaded = len(data)

    def close(self) -> None:
        try:
            self.upload()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> NodeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_node(node: sw.Node, launcher: Launcher, cwd: str) -> tuple[bool, str]:
    """Runs a node's commands in order; returns (success, a one-line outcome)."""
    write_point_file(node)
    failed = storage.join(node.directory, FAILED_FILE)
    storage.remove(failed)  # a rerun retries a failed node
    start = time.time()
    with NodeLog(storage.join(node.directory, LOG_FILE)) as log:
        for argv, skip_path in zip(node.commands, node.skip_if_exists, strict=True):
            if _has_checkpoint(skip_path):
                continue  # the fork's switch ran before this node was interrupted
            status = launcher(argv, cwd, log.local)
            log.upload()
            if status != 0:
                tail = _tail(log.local)
                storage.write_text(
                    failed, f"exit status {status} from: {shlex.join(argv)}\n{tail}\n"
                )
                return False, f"exit status {status} (log: {log.path}) {_last_line(tail)}"
    seconds = time.time() - start
    storage.write_text(
        storage.join(node.directory, sw.DONE_FILE),
        json.dumps({"seconds": round(seconds, 1), "finished": time.time()}),
    )
    return True, f"{seconds:.0f}s"


def _tail(path: str, lines: int = 20) -> str:
    """The last lines of a local log file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return f"— {lines[-1].strip()}" if lines else ""


def execute(
    nodes: Sequence[sw.Node],
    *,
    parallel: int = 1,
    launcher: Launcher = local_launcher,
    cwd: str | None = None,
    out=None,
) -> dict[str, str]:
    """Runs every node not yet done, `parallel` at a time; returns {name: status}.

    Status is "done" (now or before), "failed", or "blocked" (a node it forks from failed).
    """
    out = out or sys.stdout
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--parallel={parallel!r} must be an integer >= 1.")
    cwd = cwd or os.getcwd()
    status = {n.name: "done" if is_done(n) else "pending" for n in nodes}
    skipped = [n for n in nodes if status[n.name] == "done"]
    if skipped:
        print(f"skipping {len(skipped)} finished node(s)", file=out, flush=True)
    todo = sum(1 for s in status.values() if s == "pending")
    finished = 0
    with cf.ThreadPoolExecutor(max_workers=parallel) as pool:
        running: dict[cf.Future, str] = {}
        while True:
            for node in nodes:
                if status[node.name] != "pending":
                    continue
                deps = [status[d] for d in node.deps]
                if any(d in ("failed", "blocked") for d in deps):
                    status[node.name] = "blocked"
                    finished += 1
                    bad = [d for d in node.deps if status[d] in ("failed", "blocked")]
                    print(
                        f"[{finished}/{todo}] blocked {node.name}: {bad[0]} did not finish",
                        file=out,
                        flush=True,
                    )
                elif all(d == "done" for d in deps) and len(running) < parallel:
                    status[node.name] = "running"
                    print(f"start {node.name}", file=out, flush=True)
                    running[pool.submit(run_node, node, launcher, cwd)] = node.name
            if not running:
                break
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    ok, detail = future.result()
                except Exception as e:  # the runner itself broke on this node: report, go on
                    ok, detail = False, f"{type(e).__name__}: {e}"
                status[name] = "done" if ok else "failed"
                finished += 1
                word = "done" if ok else "FAILED"
                print(f"[{finished}/{todo}] {word} {name} {detail}", file=out, flush=True)
    return status


def emit_script(nodes: Sequence[sw.Node], out=None) -> None:
    """Prints every node's commands, dependencies first, as a shell script."""
    out = out or sys.stdout
    print("#!/bin/bash", file=out)
    print(
        "# Each block is one node; run a block after the blocks it names in 'after:'. "
        "Rerunning a command resumes it.",
        file=out,
    )
    print("set -e", file=out)
    for node in sw.ordered(nodes):
        after = f" (after: {', '.join(node.deps)})" if node.deps else ""
        print(f"\n# {node.kind} {node.name}{after}", file=out)
        for argv in node.commands:
            argv = list(argv)
            if argv[1] == "switch":
                argv.append("--exist_ok")
            print(shlex.join(argv), file=out)


def describe(nodes: Sequence[sw.Node], out=None) -> None:
    """One line per node: status, kind, name, what it forks from."""
    out = out or sys.stdout
    for node in sw.ordered(nodes):
        state = "done" if is_done(node) else "pending"
        after = f" ← {', '.join(node.deps)}" if node.deps else ""
        print(f"{state:<8} {node.kind:<6} {node.name}{after}", file=out)
    shared = sum(n.kind == "shared" for n in nodes)
    print(
        f"{len(nodes)} nodes: {shared} shared pre-training(s), {len(nodes) - shared} points",
        file=out,
    )


def load_sweep(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> sw.Sweep:
    """Parses the experiment's gin files and returns its `Sweep`."""
    import ptjf.tasks  # noqa: F401  (registered before gin locks: Sweep's checks read them)
    from ptjf import config as gin_config
    from ptjf.training import trainer  # noqa: F401  (registers what experiment files bind)

    gin_config.parse_gin(gin_files, gin_bindings)
    try:
        return sw.Sweep()
    except TypeError as e:
        raise ConfigError(
            f"The gin files {list(gin_files)} do not define a complete sweep ({e}). An "
            "experiment file binds Sweep.name, Sweep.mixture, Sweep.high_task, Sweep.low_task "
            "and Sweep.total_steps (see gin_configs/experiments/bible_en_fr_tl.gin)."
        ) from e


def run_sweep_command(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    *,
    sweep_dir: str | None = None,
    parallel: int = 1,
    emit: bool = False,
    dry_run: bool = False,
    launcher: Launcher = local_launcher,
    out=None,
) -> int:
    """`ptjf sweep`: expand the experiment, then run, emit or describe it. 0 when all done."""
    out = out or sys.stdout
    if not gin_files:
        raise ConfigError(
            "No --gin_file given: name an experiment file, e.g. "
            "--gin_file=experiments/bible_en_fr_tl.gin."
        )
    sweep = load_sweep(gin_files, gin_bindings)
    directory = sweep_dir or sweep.sweep_dir
    if not directory:
        raise ConfigError(
            "No sweep directory: pass --sweep_dir=DIR (or bind Sweep.sweep_dir in the experiment)."
        )
    directory = storage.absolute(directory)  # a local path made absolute; gs:// as it is
    # The command line's bindings (other than the grid's own) reach every point too.
    forwarded = [b for b in gin_bindings if not b.strip().startswith("Sweep.")]
    sweep_with = sw.dataclasses.replace(sweep, bindings=(*sweep.bindings, *forwarded))
    nodes = sw.expand(sweep_with, directory, gin_files)
    if dry_run:
        describe(nodes, out)
        return 0
    # A missing bucket or a read-only path stops here, in one message naming it.
    storage.check_writable(directory, "the sweep directory", "Pass another --sweep_dir=DIR.")
    storage.write_text(
        storage.join(directory, sw.SWEEP_FILE),
        json.dumps(sw.sweep_record(sweep_with, gin_files, nodes), indent=1),
    )
    if emit:
        for node in nodes:
            write_point_file(node)
        emit_script(nodes, out)
        return 0
    status = execute(nodes, parallel=parallel, launcher=launcher, out=out)
    counts = {s: sum(v == s for v in status.values()) for s in ("done", "failed", "blocked")}
    print(
        f"sweep {sweep.name}: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['blocked']} blocked; results in {directory} (ptjf report {directory})",
        file=out,
    )
    for name, s in status.items():
        if s != "done":
            print(f"  {s}: {name} (see {storage.join(directory, '*', name, LOG_FILE)})", file=out)
    return 0 if counts["done"] == len(status) else 1

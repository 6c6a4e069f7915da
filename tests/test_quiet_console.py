"""`ptjf` keeps the terminal for its own lines; library logs go to MODEL_DIR/logs/.

The quick demo runs once per session, as a program (the `quick_demo` fixture in conftest.py:
routing works on file descriptor 2, which pytest owns in-process; tests/test_demo.py checks the
same run's results). What a library line is: tests/console_runs.py. Everything else the demo prints is ptjf's (`== ptjf: …`, progress and eval lines, the table,
`ptjf …:` lines, `WARNING:ptjf.…` records): the test also checks a few of those are there.
"""

from __future__ import annotations

import re

from console_runs import library_lines, run_ptjf


def test_demo_prints_only_ptjf_lines(quick_demo):
    result, _ = quick_demo
    assert result.returncode == 0, result.stdout
    assert library_lines(result.stdout) == [], result.stdout
    # ptjf's own lines are all still there.
    assert "== ptjf: runs/ptjf.gin" in result.stdout
    assert "== scalarization: runs/scalarization.gin" in result.stdout
    assert re.search(r"^method +task +best val loss", result.stdout, re.M), result.stdout
    assert re.search(r"^pretrain \d+/\d+ \d+%", result.stdout, re.M), result.stdout
    assert "library logs" not in result.stdout  # the log's path is said only on error


def test_library_lines_are_kept_in_the_model_dir(quick_demo):
    _, model_dir = quick_demo
    log = model_dir / "logs" / "libraries-0.log"
    assert log.is_file()
    text = log.read_text()
    assert library_lines(text), text[:2000]
    assert "INFO:absl:" in text  # orbax's Python logging
    assert re.search(r"^[IWE]\d{4} ", text, re.M), text[:2000]  # TensorFlow/XLA's C++ logging


def test_verbose_shows_library_lines(tmp_path):
    # A cheap command: building the parser imports TensorFlow, which logs from C++ at once.
    result = run_ptjf(["--verbose", "rates", "--sizes", "a=1,b=2"], tmp_path)
    assert result.returncode == 0, result.stdout
    assert library_lines(result.stdout), result.stdout
    assert re.search(r"^a +1 +0\.3333", result.stdout, re.M), result.stdout


def test_a_gs_model_dir_gets_a_copy_of_the_library_log(gcs_bucket, tmp_path, monkeypatch):
    # fd 2 needs a local file; a bucket gets its content through the storage layer, at each
    # call (the command calls again when it ends, so the copy holds the whole run).
    import io

    from ptjf import storage
    from ptjf.runtime import console

    local = tmp_path / "libraries-123.log"
    local.write_bytes(b"I0000 00:00:00.0 1 cuda.cc:1] failed call to cuInit\n")
    routing = console.Routing(terminal=io.StringIO(), log_path=str(local))
    monkeypatch.setattr(console, "_routing", routing)
    remote = console.use_model_dir(f"{gcs_bucket}/run", process_index=3)
    assert remote == f"{gcs_bucket}/run/logs/libraries-3.log"
    assert storage.read_bytes(remote) == local.read_bytes()
    with local.open("ab") as f:
        f.write(b"INFO:absl:later\n")
    console.use_model_dir(f"{gcs_bucket}/run", process_index=3)
    assert storage.read_bytes(remote) == local.read_bytes()
    assert routing.log_path == str(local) and not routing.in_model_dir  # fd 2 stays local

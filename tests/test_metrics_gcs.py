"""Run metrics on `gs://` (a GCS API on 127.0.0.1): the metrics log as parts, TensorBoard
mirrored from a local staging directory, and the readers (`ptjf report`, `ptjf eval`,
`ptjf demo`) on runs and sweeps in a bucket."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings

import pytest
from fake_runs import BLEU, FRONT, POINTS, add_bleu, record, write_run, write_sweep

from ptjf import storage
from ptjf.commands import demo, evaluate
from ptjf.errors import ConfigError, DataError
from ptjf.experiments import report, results
from ptjf.training import metrics_io as mio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def _parts(log_path: str) -> list[str]:
    return storage.listdir(mio.parts_dir(log_path))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- naming and reading parts (pure) ----------------------------------------------------------


def test_part_names_are_zero_padded_sequence_numbers():
    assert mio.part_name(0) == "00000000.jsonl"
    assert mio.part_name(42) == "00000042.jsonl"
    assert mio.part_name(123456789) == "123456789.jsonl"
    for bad in (-1, 1.0, True, "3"):
        with pytest.raises(ValueError, match="sequence number"):
            mio.part_name(bad)
    assert mio.parts_dir("gs://b/run/metrics.jsonl") == "gs://b/run/metrics.jsonl.parts"
    assert mio.parts_dir("/r/train_metrics.jsonl") == "/r/train_metrics.jsonl.parts"


@pytest.mark.parametrize(
    "name, sequence",
    [
        ("00000000.jsonl", 0),
        ("00000042.jsonl", 42),
        ("123456789.jsonl", 123456789),
        ("7.jsonl", 7),
        ("00000001.jsonl.abc123.tmp", None),  # a local writer's temporary file
        (".jsonl", None),
        ("x1.jsonl", None),
        ("-1.jsonl", None),
        ("00000001.json", None),
        ("٣.jsonl", None),  # a non-ASCII digit
    ],
)
def test_part_sequence_of_a_name(name, sequence):
    assert mio.part_sequence(name) == sequence


def test_parts_are_ordered_by_number_and_numbering_continues_after_the_highest():
    names = ["00000010.jsonl", "stray.txt", "7.jsonl", "100000000.jsonl", "x.tmp"]
    assert mio.ordered_parts(names) == ["7.jsonl", "00000010.jsonl", "100000000.jsonl"]
    assert mio.next_part_sequence(names) == 100000001
    assert mio.next_part_sequence(["stray.txt"]) == 0
    assert mio.next_part_sequence([]) == 0


def test_parse_log_numbers_broken_lines_through_the_log_and_names_the_part():
    data = b'{"global_step": 1}\n\n[1]\r\n{"global_step": 2, "lo\n{"global_step": 3}'
    with pytest.warns(RuntimeWarning) as caught:
        records, broken, lines = mio.parse_log(data, "gs://b/r/metrics.jsonl.parts/x", 10)
    assert records == [{"global_step": 1}, {"global_step": 3}]
    assert broken == [13, 14]
    assert lines == 5
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith("gs://b/r/metrics.jsonl.parts/x:3: skipping a broken")
    assert messages[1].startswith("gs://b/r/metrics.jsonl.parts/x:4: skipping a broken")
    assert mio.parse_log(b"", "empty") == ([], [], 0)


def test_reader_reads_the_file_then_the_parts_numbering_lines_through(tmp_path):
    run = tmp_path / "run"
    (run / "metrics.jsonl.parts").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"global_step": 1}\n{"global_step": 2, "cut')
    (run / "metrics.jsonl.parts" / "00000010.jsonl").write_text('{"global_step": 4}\n')
    (run / "metrics.jsonl.parts" / "00000002.jsonl").write_text('{"global_step": 3}\n[]\n')
    (run / "metrics.jsonl.parts" / "notes.txt").write_text("not a part")
    with pytest.warns(RuntimeWarning) as caught:
        records, broken = mio.read_metrics_and_broken_lines(run)
    assert [str(w.message).split(": skipping")[0] for w in caught] == [
        f"{run / 'metrics.jsonl'}:2",
        f"{run / 'metrics.jsonl.parts' / '00000002.jsonl'}:2",
    ]
    assert [r["global_step"] for r in records] == [1, 3, 4]
    assert broken == [2, 4]  # the file's line 2; the first part's line 2 is the log's line 4
    assert mio.log_sources(run / "metrics.jsonl") == [
        str(run / "metrics.jsonl"),
        str(run / "metrics.jsonl.parts" / "00000002.jsonl"),
        str(run / "metrics.jsonl.parts" / "00000010.jsonl"),
    ]


def test_a_local_run_with_parts_goes_on_writing_parts(tmp_path):
    """A run copied from a bucket to local disk and resumed there: appending to a file would
    put the new records before the old ones in reading order."""
    run = tmp_path / "run"
    (run / "metrics.jsonl.parts").mkdir(parents=True)
    (run / "metrics.jsonl.parts" / "00000000.jsonl").write_text('{"global_step": 1}\n')
    with mio.MetricsWriter(str(run), tensorboard=False) as w:
        w.write_eval({"global_step": 2})
    assert not (run / "metrics.jsonl").exists()
    assert sorted(os.listdir(run / "metrics.jsonl.parts")) == ["00000000.jsonl", "00000001.jsonl"]
    assert [r["global_step"] for r in mio.read_metrics(run)] == [1, 2]


def test_run_dirs_in_a_listing_follow_find_run_dirs_rules():
    files = [
        "sweep.json",
        "points/a/metrics.jsonl",
        "points/a/joint/10/state",  # under a run: not searched
        "points/a/nested/metrics.jsonl",
        "points/b/metrics.jsonl.parts/00000000.jsonl",  # a run on an object store
        "points/c/point.json",  # no metrics yet: not a run
        "report/stray/metrics.jsonl",  # report outputs are skipped
        "tb/metrics.jsonl",
        "old/report.md",  # a folder holding report.md is a report
        "old/x/metrics.jsonl",
        "metrics.jsonl.parts.bak/metrics.jsonl",
    ]
    assert results.run_dirs_in(files) == [
        "metrics.jsonl.parts.bak",
        "points/a",
        "points/b",
    ]
    assert results.run_dirs_in(["metrics.jsonl", "sub/metrics.jsonl"]) == [""]


def test_uri_safe_path_helpers():
    assert results.normalize_dir("gs://b//x/./y/") == "gs://b/x/y"
    assert results.normalize_dir("gs://b/x/../y") == "gs://b/y"
    assert results.normalize_dir("a//b/") == os.path.normpath("a//b/")
    assert results.common_dir(["gs://b/s/x/ptjf", "gs://b/s/y/ptjf/"]) == "gs://b/s"
    assert results.common_dir(["gs://b/x", "gs://c/x"]) is None
    assert results.common_dir(["gs://b/x", "/local/x"]) is None
    assert results.common_dir(["/r/x/a", "/r/y/a"]) == "/r"
    assert results.relative_to("gs://b/s/x/ptjf", "gs://b/s") == "x/ptjf"
    assert results.relative_to("gs://b/s", "gs://b/s") == "."
    assert results.relative_to("gs://b/s/x/", None) == "gs://b/s/x"
    assert results.relative_to("/r/x/a", "/r") == os.path.join("x", "a")


# --- the writer on gs:// ----------------------------------------------------------------------


def test_writer_on_gcs_round_trips_records_one_part_per_eval(gcs_bucket):
    run = f"{gcs_bucket}/run"
    w = mio.MetricsWriter(run, tensorboard=False)
    w.write_eval({"global_step": 1, "loss": math.nan, "v": {"a": math.inf}})
    # each eval record is in the bucket before the next call, without close
    assert _parts(f"{run}/metrics.jsonl") == ["00000000.jsonl"]
    w.write_eval({"global_step": 2, "loss": 0.5})
    w.close()
    assert _parts(f"{run}/metrics.jsonl") == ["00000000.jsonl", "00000001.jsonl"]
    assert not storage.exists(f"{run}/metrics.jsonl")  # no append on an object store
    first, second = mio.read_metrics(run)
    assert math.isnan(first["loss"]) and first["v"] == {"a": math.inf}
    assert second == {"global_step": 2, "loss": 0.5}
    by_path = mio.read_metrics(f"{run}/metrics.jsonl")  # the log's path reads the same
    assert [r["global_step"] for r in by_path] == [1, 2] and by_path[1] == second
    assert json.loads(storage.read_text(f"{run}/metrics.jsonl.parts/00000000.jsonl")) == {
        "global_step": 1,
        "loss": "NaN",
        "v": {"a": "Infinity"},
    }
    assert mio.has_metrics(run) and not mio.has_metrics(f"{gcs_bucket}/other")


def test_a_killed_writer_loses_only_unflushed_training_scalars(gcs_bucket):
    run = f"{gcs_bucket}/run"
    w = mio.MetricsWriter(run, tensorboard=False)
    w.write_train(1, {"loss": 3.0})
    w.write_eval({"global_step": 2, "loss": 2.5})  # flushes the training scalars too
    w.write_train(3, {"loss": 2.0})  # buffered: lost with the process
    del w  # killed: never closed
    assert [r["global_step"] for r in mio.read_metrics(run)] == [2]
    assert [(r["global_step"], r["loss"]) for r in mio.read_train_metrics(run)] == [(1, 3.0)]


def test_a_resumed_writer_continues_the_numbering_and_keeps_every_record(gcs_bucket):
    run = f"{gcs_bucket}/run"
    with mio.MetricsWriter(run, tensorboard=False) as w:
        w.write_eval({"global_step": 1})
        w.write_eval({"global_step": 2})
    with mio.MetricsWriter(run, tensorboard=False) as w:
        w.write_eval({"global_step": 2, "resumed": True})
        w.write_eval({"global_step": 3})
    assert _parts(f"{run}/metrics.jsonl") == [mio.part_name(i) for i in range(4)]
    records = mio.read_metrics(run)
    assert records == [
        {"global_step": 1},
        {"global_step": 2},
        {"global_step": 2, "resumed": True},
        {"global_step": 3},
    ]
    assert [r.get("resumed", False) for r in results.clean_records(records)] == [0, 1, 0]


def test_a_part_taken_by_another_writer_is_never_overwritten(gcs_bucket):
    run = f"{gcs_bucket}/run"
    w = mio.MetricsWriter(run, tensorboard=False)
    # a stale writer of the same run wrote part 0 after this one listed the parts
    storage.write_text(f"{run}/metrics.jsonl.parts/00000000.jsonl", '{"global_step": 0}\n')
    w.write_eval({"global_step": 1})
    w.close()
    assert [r["global_step"] for r in mio.read_metrics(run)] == [0, 1]


def test_the_gcs_log_follows_a_metrics_jsonl_copied_into_the_bucket(gcs_bucket):
    run = f"{gcs_bucket}/run"
    storage.write_text(f"{run}/metrics.jsonl", '{"global_step": 1}\n{"global_step": 2, "x')
    with mio.MetricsWriter(run, tensorboard=False) as w:
        w.write_eval({"global_step": 3})
    with pytest.warns(RuntimeWarning, match=rf"{run}/metrics\.jsonl:2: skipping"):
        records, broken = mio.read_metrics_and_broken_lines(run)
    assert [r["global_step"] for r in records] == [1, 3]
    assert broken == [2]


def test_training_scalars_are_flushed_at_eval_every_n_records_after_a_while_and_at_close(
    gcs_bucket,
):
    run = f"{gcs_bucket}/run"
    train = f"{run}/train_metrics.jsonl"
    clock = FakeClock()
    w = mio.MetricsWriter(
        run, tensorboard=False, train_flush_records=3, train_flush_seconds=60.0, clock=clock
    )
    w.write_train(1, {"loss": 1.0})
    w.write_train(2, {"loss": 1.0})
    assert _parts(train) == []  # buffered
    w.write_train(3, {"loss": 1.0})  # the third record: a part of three lines
    assert _parts(train) == ["00000000.jsonl"]
    w.write_train(4, {"loss": 1.0})
    w.write_eval({"global_step": 4})  # the eval takes the buffered line with it
    assert _parts(train) == ["00000000.jsonl", "00000001.jsonl"]
    w.write_train(5, {"loss": 1.0})
    clock.now = 59.0
    w.write_train(6, {"loss": 1.0})
    assert len(_parts(train)) == 2
    clock.now = 61.0  # a minute since the last flush
    w.write_train(7, {"loss": 1.0})
    assert len(_parts(train)) == 3
    w.write_train(8, {"loss": 1.0})
    w.close()
    w.close()  # closing twice writes nothing twice
    assert len(_parts(train)) == 4
    steps = [[json.loads(x)["global_step"] for x in storage.read_text(f"{mio.parts_dir(train)}/{p}").splitlines()] for p in _parts(train)]  # fmt: skip
    assert steps == [[1, 2, 3], [4], [5, 6, 7], [8]]
    assert [r["global_step"] for r in mio.read_train_metrics(run)] == list(range(1, 9))


def test_local_writer_still_appends_one_file_each(tmp_path):
    with mio.MetricsWriter(str(tmp_path), tensorboard=False, train_flush_records=1) as w:
        w.write_train(1, {"loss": 1.0})
        w.write_eval({"global_step": 1})
        assert (tmp_path / "train_metrics.jsonl").read_text().count("\n") == 1
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())
    assert [r["global_step"] for r in mio.read_train_metrics(tmp_path)] == [1]


def test_tensorboard_events_are_mirrored_to_the_bucket_and_a_resume_adds_a_file(
    gcs_bucket, tmp_path
):
    import tensorflow as tf

    run = f"{gcs_bucket}/run"
    w = mio.MetricsWriter(run)
    staging = w._tb_staging
    assert staging and os.path.isdir(staging) and not storage.is_remote(staging)
    w.write_train(5, {"loss": 2.75})
    w.write_eval({"global_step": 10, "validation": {"t": {"loss": 1.5}}})
    (event,) = storage.listdir(f"{run}/tb")  # copied at the eval, before close
    assert event.startswith("events.out.tfevents.")
    w.write_train(15, {"loss": 2.5})
    w.close()
    assert not os.path.exists(staging)
    seen = {}
    local = str(tmp_path / event)
    storage.write_bytes(local, storage.read_bytes(f"{run}/tb/{event}"))
    for e in tf.compat.v1.train.summary_iterator(local):
        for v in e.summary.value:
            seen[(v.tag, e.step)] = float(tf.make_ndarray(v.tensor))
    assert seen == {
        ("train/loss", 5): 2.75,
        ("validation/t/loss", 10): 1.5,
        ("train/loss", 15): 2.5,  # written at close
    }
    with mio.MetricsWriter(run) as w:
        w.write_eval({"global_step": 20, "validation": {"t": {"loss": 1.25}}})
    events = storage.listdir(f"{run}/tb")
    assert len(events) == 2 and event in events


def test_an_unwritable_gcs_model_dir_is_a_config_error_naming_it(gcs_emulator):
    with pytest.raises(ConfigError) as e:
        mio.MetricsWriter("gs://no-such-bucket-ptjf/run", tensorboard=False)
    text = str(e.value)
    assert "gs://no-such-bucket-ptjf/run" in text and "does not exist" in text
    assert "--gin.MODEL_DIR=" in text
    with pytest.raises(ConfigError, match="did you mean 'gs://bucket/run'"):
        mio.MetricsWriter("gs:/bucket/run", tensorboard=False)


def test_missing_metrics_on_gcs_is_a_data_error(gcs_bucket):
    storage.write_text(f"{gcs_bucket}/run/config.gin", "")
    with pytest.raises(DataError, match=rf"No metrics file at {gcs_bucket}/run/metrics\.jsonl"):
        mio.read_metrics(f"{gcs_bucket}/run")


# --- ptjf report on gs:// ---------------------------------------------------------------------


@pytest.fixture
def gcs_sweep(tmp_path, gcs_bucket):
    """fake_runs' sweep, copied into the bucket (metrics.jsonl files, one with a broken tail)."""
    local = write_sweep(tmp_path / "local")
    remote = f"{gcs_bucket}/sweep"
    storage.copy_tree(local, remote)
    return local, remote


def _summary(run: results.Run) -> tuple:
    return (run.name, run.method, run.kind, run.done, run.broken_lines, run.records)


def test_runs_load_from_a_gcs_sweep_as_from_local_disk(gcs_sweep):
    local, remote = gcs_sweep
    local_runs = _quiet(results.load_runs, [local])
    remote_runs = _quiet(results.load_runs, [remote + "/"])
    assert [_summary(r) for r in remote_runs] == [_summary(r) for r in local_runs]
    assert {r.name for r in remote_runs} == {*POINTS, "pretrain-n100", "pretrain-n200"}
    by_name = {r.name: r for r in remote_runs}
    assert by_name["ptjf-r0.2"].dir == f"{remote}/points/ptjf-r0.2"
    assert by_name["restart-r0.8"].broken_lines == (4,)
    assert by_name["restart-r0.8"].path == f"{remote}/points/restart-r0.8/metrics.jsonl"
    assert all(r.done for r in remote_runs)
    # given twice (a sweep and one of its runs): loaded once
    assert len(_quiet(results.load_runs, [remote, f"{remote}/points/ptjf-r0.2"])) == len(
        remote_runs
    )


def test_a_gcs_run_written_as_parts_is_found_and_read(gcs_bucket, tmp_path):
    sweep = f"{gcs_bucket}/s"
    with mio.MetricsWriter(f"{sweep}/points/a", tensorboard=False) as w:
        for h in POINTS["ptjf-r0.2"][3]:
            w.write_eval(record(*h))
    storage.write_text(f"{sweep}/points/a/point.json", json.dumps({"method": "ptjf"}))
    storage.write_text(f"{sweep}/report/stray/metrics.jsonl", "{}\n")
    assert results.find_run_dirs(sweep) == [f"{sweep}/points/a"]
    (run,) = results.load_runs([sweep])
    assert run.method == "ptjf" and run.done is False
    assert [r["global_step"] for r in run.records] == [0, 100, 100, 200]
    with pytest.raises(DataError, match="is not a directory"):
        results.load_runs([f"{gcs_bucket}/nowhere"])
    with pytest.raises(DataError, match=r"No metrics\.jsonl in"):
        results.load_run(f"{sweep}/report")


def test_clashing_gcs_run_names_become_relative_uris(gcs_bucket):
    for where in ("x", "y"):
        with mio.MetricsWriter(f"{gcs_bucket}/r/{where}/ptjf", tensorboard=False) as w:
            w.write_eval(record("joint", 0, 10, 10, 2.0, 3.0, 9, 1))
    runs = results.load_runs([f"{gcs_bucket}/r/x", f"{gcs_bucket}/r/y"])
    assert [r.name for r in runs] == ["x/ptjf", "y/ptjf"]


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_report_of_a_gcs_sweep_written_to_gcs(gcs_sweep, tmp_path):
    local, remote = gcs_sweep
    add_bleu(local)
    storage.copy_tree(local, remote)  # the BLEU records too
    # a stale figure the fake sweep cannot draw (it has no transfer points)
    storage.write_bytes(f"{remote}/report/transfer.png", PNG_MAGIC)
    summary = _quiet(report.write_report, [remote])
    out = f"{remote}/report"
    assert f"Report: {out}/report.md" in summary
    assert "Best low-resource BLEU per method:" in summary
    local_out = tmp_path / "local-report"
    _quiet(report.write_report, [local], local_out)
    for table in ("points.csv", "results.csv"):
        assert storage.read_bytes(f"{out}/{table}") == (local_out / table).read_bytes()
    points = {r["run"]: r for r in _csv(storage.read_text(f"{out}/points.csv"))}
    assert {n for n, r in points.items() if r["on_front"] == "True"} == set().union(*FRONT.values())
    assert set(BLEU) <= {n for n, r in points.items() if r["bleu/lo"]}
    md = storage.read_text(f"{out}/report.md")
    assert f"`{remote}/points/restart-r0.8/metrics.jsonl:4`" in md
    assert "![Trade-off fronts per method](fronts.png)" in md
    for png in ("fronts.png", "fronts_bleu.png", "curves.png"):
        data = storage.read_bytes(f"{out}/{png}")
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert storage.read_bytes(f"{out}/fronts.png") == (local_out / "fronts.png").read_bytes()
    assert not storage.exists(f"{out}/transfer.png")
    assert sorted(storage.listdir(out)) == sorted(os.listdir(local_out))


def test_report_of_local_runs_into_a_bucket(tmp_path, gcs_bucket):
    run = write_run(tmp_path / "ptjf", POINTS["ptjf-r0.2"][3])
    out = f"{gcs_bucket}/reports/one"
    summary = report.write_report([run], out, figures=False)
    assert f"Report: {out}/report.md" in summary
    assert storage.listdir(out) == ["configs.csv", "points.csv", "report.md", "results.csv"]
    assert storage.read_text(f"{out}/configs.csv").startswith("method,label,")
    assert "Not drawn (`--no_figures`)." in storage.read_text(f"{out}/report.md")


# --- ptjf eval's and ptjf demo's readers on gs:// ---------------------------------------------


def _node(name, kind, directory, *commands) -> dict:
    return {"name": name, "kind": kind, "directory": directory, "commands": list(commands)}


def test_eval_reads_a_gcs_sweep_and_skips_what_it_need_not_score(gcs_bucket):
    sweep = f"{gcs_bucket}/sweep"
    scored, running = f"{sweep}/points/a-r0.3", f"{sweep}/points/b-r0.3"
    train = ["ptjf", "train", "--gin_file=none.gin"]
    nodes = [
        _node("pretrain", "shared", f"{sweep}/shared/p", train),
        _node("a-r0.3", "point", scored, train),
        _node("b-r0.3", "point", running, train),
    ]
    storage.write_text(f"{sweep}/sweep.json", json.dumps({"nodes": nodes}))
    storage.write_text(f"{scored}/point.json", json.dumps({"method": "ptjf"}))
    storage.write_text(f"{scored}/DONE", "{}")
    storage.write_text(f"{running}/point.json", json.dumps({"method": "scalarization"}))
    with mio.MetricsWriter(scored, tensorboard=False) as w:
        w.write_eval({"global_step": 4, "stage_index": 1, "stage": "joint", "stage_step": 2})
        w.write_eval({"global_step": 4, "bleu": {"t": 12.5}, "posthoc": True})
    assert evaluate._read_sweep(sweep) == nodes
    assert evaluate._method(nodes[1]) == "ptjf" and evaluate._method(nodes[2]) == "scalarization"
    assert evaluate._has_bleu(scored) and not evaluate._has_bleu(running)
    out = io.StringIO()
    status = evaluate.evaluate_sweep(sweep, out=out)
    assert status == {"a-r0.3": "has bleu", "b-r0.3": "unfinished"}
    assert evaluate.evaluate_sweep(sweep, methods=["scalarization"], out=out) == {
        "b-r0.3": "unfinished"
    }
    with pytest.raises(DataError, match=rf"No sweep.json in {gcs_bucket}/nowhere"):
        evaluate._read_sweep(f"{gcs_bucket}/nowhere")
    storage.write_text(f"{gcs_bucket}/bad/sweep.json", "{not json")
    with pytest.raises(DataError, match=rf"Cannot read {gcs_bucket}/bad/sweep\.json"):
        evaluate._read_sweep(f"{gcs_bucket}/bad")


def test_eval_carries_the_trainers_scalars_over_from_a_gcs_run(gcs_bucket):
    run = f"{gcs_bucket}/run"
    key = {"stage_index": 1, "stage": "joint", "stage_step": 2}
    assert evaluate._train_scalars(run, key) is None  # no metrics yet
    with mio.MetricsWriter(run, tensorboard=False) as w:
        w.write_eval({"global_step": 2, **key, "stage_step": 1, "train": {"loss": 9.0}})
        w.write_eval({"global_step": 3, **key, "train": {"loss": 1.5}})
    assert evaluate._train_scalars(run, key) == {"loss": 1.5}


def test_demo_summarizes_runs_in_a_bucket(gcs_bucket):
    runs = {}
    for method, name in (("ptjf", "ptjf-r0.2"), ("scalarization", "scalarization-r0.8")):
        runs[method] = f"{gcs_bucket}/demo/{method}"
        with mio.MetricsWriter(runs[method], tensorboard=False) as w:
            for h in POINTS[name][3]:
                w.write_eval(record(*h))
    rows = {(r["method"], r["task"]): r for r in demo.summarize(runs)}
    assert rows[("scalarization", "lo")]["best"] == 2.4
    assert rows[("scalarization", "lo")]["best_step"] == 100
    assert rows[("ptjf", "hi")]["final"] == 2.1
    assert rows[("ptjf", "hi")]["examples_seen"] == 1800

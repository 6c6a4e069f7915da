"""Resuming a training stream from its saved position: exact at a random step for every kind of
source, across a change of host count, and never silently another stream's position."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import mc4_like
import numpy as np
import ptjf.tasks as T
import pytest
import tensorflow as tf

from ptjf.data import batches as B
from ptjf.data import input_state
from ptjf.data.input_state import ShardStream
from ptjf.errors import CheckpointError, DataError
from ptjf.training.input_resume import StageInput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

SHORT = {"inputs": 32, "targets": 32}
MC4_LENGTHS = {"inputs": 64, "targets": 16}


def _config(name: str, lengths=SHORT, batch_size: int = 8, **kw) -> B.DatasetConfig:
    return B.DatasetConfig(
        mixture_or_task_name=name, task_feature_lengths=lengths, batch_size=batch_size, seed=5, **kw
    )


def _differences(want: list[dict], got: list[dict]) -> list[str]:
    """Where two lists of batches differ ('batch 2: decoder_target_tokens', …); [] if equal."""
    if len(want) != len(got):
        return [f"{len(want)} batches against {len(got)}"]
    out = []
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        if a.keys() != b.keys():
            out.append(f"batch {i}: features {sorted(a)} against {sorted(b)}")
            continue
        out += [f"batch {i}: {k}" for k in a if not np.array_equal(a[k], b[k])]
    return out


def _resume(config: B.DatasetConfig, step: int, after: int = 4):
    """(uninterrupted batches step..step+after-1, the same batches from a stream saved after
    `step` batches and restored in a fresh stream, the saved state, the restored position)."""
    uninterrupted = list(itertools.islice(B.train_batches(config), step + after))
    stream = B.train_batches(config)
    for _ in range(step):
        next(stream)
    state = stream.save()
    resumed = B.train_batches(config, start_batch=step, state=state)
    taken = resumed.taken
    return uninterrupted[step:], [next(resumed) for _ in range(after)], state, taken


def _task_ids(batches: list[dict]) -> set[int]:
    return {int(t) for b in batches for t in np.unique(b["task_ids"]) if t >= 0}


@pytest.fixture(scope="module")
def mc4_problem(tmp_path_factory):
    """Three mC4-like languages in TFDS format, span-corrupted, in a temperature mixture."""
    data_dir = mc4_like.prepare(
        str(tmp_path_factory.mktemp("tfds")), {"en": 30, "hi": 12, "sw": 6}, words_per_doc=90
    )
    T.mc4.register_problem(
        "resume_mc4",
        {"en": 10.0, "hi": 2.0, "sw": 0.5},
        data_dir=data_dir,
        vocab_size=300,
        vocab_sentences=2_000,
        overwrite=True,
    )
    return "resume_mc4"


@pytest.fixture(scope="module")
def bible_temperature(bible_vocab):
    names = ["bible_translate_en_fr", "bible_translate_en_es", "bible_translate_en_tl"]
    T.register_mixture("resume_bible_tau", names, method="temperature", tau=3.33, overwrite=True)
    return "resume_bible_tau"


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
def test_bible_mixture_resumes_exactly_at_a_random_step(bible_vocab, pack):
    step = random.Random(11 + pack).randint(3, 15)
    want, got, state, taken = _resume(_config("bible_en_fr_tl", pack=pack), step)
    assert taken == step
    assert _differences(want, got) == []
    # Epochs are index permutations, not shuffle buffers: the position is small.
    assert len(state) < 2_000_000


def test_three_task_temperature_mixture_resumes_exactly(bible_temperature):
    step = random.Random(3).randint(3, 15)
    want, got, _, taken = _resume(_config(bible_temperature), step)
    assert taken == step
    assert _differences(want, got) == []
    assert _task_ids(want) == {0, 1, 2}  # all three tasks are in the resumed batches


def test_tfds_span_corrupted_temperature_mixture_resumes_exactly(mc4_problem):
    """TFDS files → SeqIO's shuffle buffer → span corruption → three-language temperature
    sampling → packing, resumed past the end of an epoch of the smallest language."""
    step = random.Random(5).randint(15, 25)
    want, got, _, taken = _resume(_config(mc4_problem, MC4_LENGTHS), step)
    assert taken == step
    assert _differences(want, got) == []
    assert len(_task_ids(want)) >= 2  # the resumed batches mix languages
    # Packed: at least one row holds several span-corrupted examples.
    assert max(int(b["decoder_segment_ids"].max()) for b in want) >= 2


def test_tfds_single_task_unpacked_resumes_exactly(mc4_problem):
    want, got, _, taken = _resume(_config(f"{mc4_problem}.sw", MC4_LENGTHS, pack=False), 13)
    assert taken == 13
    assert _differences(want, got) == []
    assert "decoder_segment_ids" not in want[0]  # unpacked: no segments
    # The resumed stream is not the stream's start again (a restore that silently restarted).
    first = next(iter(B.train_batches(_config(f"{mc4_problem}.sw", MC4_LENGTHS, pack=False))))
    assert _differences([first], got[:1]) != []


def test_positions_saved_on_one_host_resume_on_another_number_of_hosts(bible_vocab):
    config = _config("bible_en_fr_tl")
    hosts, step = 2, random.Random(2).randint(3, 10)

    def host(h: int, n: int, start: int = 0, states=None):
        return B.host_train_batches(
            config,
            start_batch=start,
            host_shard=h,
            num_host_shards=n,
            input_shards=4,
            states=states,
        )

    uninterrupted = list(itertools.islice(host(0, 1), step + 3))
    one = host(0, 1)
    for _ in range(step):
        next(one)
    states = one.save()
    assert sorted(states) == [0, 1, 2, 3]
    streams = [host(h, hosts, step, states) for h in range(hosts)]
    for want in uninterrupted[step:]:
        parts = [next(s) for s in streams]
        got = {k: np.concatenate([p[k] for p in parts]) for k in want}
        assert _differences([want], [got]) == []


def test_a_host_whose_shard_has_no_saved_state_is_refused(bible_vocab):
    with pytest.raises(DataError, match=r"No saved input state for shard\(s\) \[2, 3\] of 4"):
        B.host_train_batches(
            _config("bible_en_fr_tl"),
            start_batch=5,
            host_shard=1,
            num_host_shards=2,
            input_shards=4,
            states={0: b"", 1: b""},
        )


def test_a_saved_position_of_another_pipeline_is_refused(bible_vocab, bible_temperature):
    state = B.train_batches(_config("bible_en_fr_tl")).save()
    with pytest.raises(DataError, match=r"does not fit its pipeline.*resume_input"):
        B.train_batches(_config("bible_translate_en_fr"), start_batch=1, state=state)


def test_descriptor_differences_name_each_setting():
    config = _config("bible_en_fr_tl")
    saved = input_state.describe(
        config, ["a", "b"], {"a": 0.5, "b": 0.5}, input_shards=2, vocabulary="x" * 64
    )
    current = dict(saved, rates={"a": 0.8, "b": 0.2}, input_shards=4)
    with pytest.raises(DataError) as e:
        input_state.check_matches(saved, current, "/runs/x/joint step 40")
    text = str(e.value)
    assert "rates: saved {'a': 0.5, 'b': 0.5}, this run {'a': 0.8, 'b': 0.2}" in text
    assert "input_shards: saved 2, this run 4" in text
    assert "train.input_shards" in text and "resume_input" in text
    input_state.check_matches(saved, dict(saved), "same")  # no difference: no error


def test_a_damaged_shard_file_is_caught():
    blob = input_state.encode(b"position")
    assert input_state.decode(blob, "f") == b"position"
    with pytest.raises(CheckpointError, match="damaged"):
        input_state.decode(blob[:-1], "shard-00000-of-00001.state")


def test_a_stream_tf_data_cannot_save_is_replayed_with_a_warning(caplog, tmp_path):
    ds = B._deterministic(
        tf.data.Dataset.range(100).map(
            lambda i: {"x": tf.py_function(lambda v: v * 2, [i], tf.int64)}
        )
    )
    stream = ShardStream(ds, "the test stream")
    next(stream)
    with pytest.raises(DataError, match="cannot save the position of the test stream") as e:
        stream.save()
    assert "function_node" not in str(e.value) and "[Op:" not in str(e.value)
    stage = StageInput(
        str(tmp_path), lambda start, states: None, {"input_shards": 1}, [0], "restore"
    )
    host = B.HostStream({0: stream})
    with caplog.at_level("WARNING", logger="ptjf.commands.train"):
        assert stage.capture(host) is None
        assert stage.capture(host) is None  # logged once
    assert sum("without the input position" in r.message for r in caplog.records) == 1
    # The fallback replays, exactly: the stream after 20 replayed elements is at element 20.
    replayed = ShardStream(ds)
    replayed.replay(20)
    assert int(next(replayed)["x"]) == 40

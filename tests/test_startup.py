"""Start-up helpers: process start time, background work, the precompiled step's batch."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from ptjf.data import batches as data
from ptjf.training import startup
from ptjf.training.evaluation import model_features


def test_process_start_is_before_now_and_after_boot():
    start = time.time() - startup.process_start_time()
    with open("/proc/uptime", encoding="ascii") as f:
        uptime = float(f.read().split()[0])
    assert 0 < start < uptime + 1


def test_timeline_marks_seconds_since_its_origin():
    timeline = startup.Timeline(origin=time.time() - 2.0)
    assert 2.0 <= timeline.mark("a") < 3.0
    assert list(timeline.marks) == ["a"] and "a 2." in timeline.summary()


def test_background_returns_the_result_and_reraises_the_error():
    assert startup.Background(lambda x, y=0: x + y, 2, y=3).result() == 5
    with pytest.raises(ValueError, match="bad eval data"):
        startup.Background(lambda: (_ for _ in ()).throw(ValueError("bad eval data"))).result()


@pytest.mark.parametrize("pack", [True, False])
def test_abstract_batch_is_what_the_pipeline_feeds(bible_vocab, pack):
    lengths = {"inputs": 16, "targets": 12}
    config = data.DatasetConfig(
        mixture_or_task_name="bible_en_fr_tl",
        task_feature_lengths=lengths,
        batch_size=4,
        seed=0,
        pack=pack,
        rates={"bible_translate_en_fr": 0.5, "bible_translate_en_tl_low": 0.5},
    )
    batch = model_features(next(data.host_train_batches(config)))
    device = jax.devices()[0]
    spec = startup.abstract_batch(
        lengths, 4, pack, lambda shape: jax.sharding.SingleDeviceSharding(device)
    )
    assert startup.signature(batch) == startup.signature(spec)
    assert all(np.asarray(v).dtype == np.int32 for v in batch.values())


def test_a_deferred_background_waits_for_start_or_result():
    ran = []
    work = startup.Background(lambda: ran.append(1) or "done", start=False)
    time.sleep(0.05)
    assert ran == []
    work.start()
    work.start()  # idempotent
    assert work.result() == "done" and ran == [1]
    assert startup.Background(lambda: 7, start=False).result() == 7


def test_the_compilation_cache_keeps_every_compile_in_any_directory(monkeypatch, tmp_path):
    # A launch pays every sub-second compile (init, eval, checkpoint fingerprint) before its
    # first step, so each is kept, also in a cache directory the user chose.
    from ptjf.runtime import compilation_cache

    saved = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        compilation_cache.enable()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        # A threshold the user set in the environment stays.
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
        compilation_cache.enable()
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])

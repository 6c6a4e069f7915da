"""Resuming a preempted stage's input stream: from its saved position against replay, at steps
10^3 to 10^6 of mC4-like span corruption (568 raw tokens → 512 / 114), global batch 1,024.

    python benchmarks/resume.py --out bench_results/resume.json
    python benchmarks/resume.py --quick      # small data, seconds-long

The stream is one host's part of a pod's: host 0 of `--hosts` (64) reads input shard 0 of 64,
16 rows of every global batch of 1,024 (what each host of a 64-host pod replays or restores on
its own, in parallel with the others). The data is a made-up c4/multilingual:3.1.0 in TFDS
format (`mc4_like.py`, 64 files per split), three languages (en, hi, sw) at mC4's temperature
rates (τ = 3.33), read through ptjf's mC4 tasks: TFDS files → SeqIO's shuffle buffer →
tokenizing → span corruption → temperature sampling → packing.

Measured, each the median of `--repeats`:
* save_s, state_bytes: capturing a position (what a checkpoint adds to the train loop) and its
  size, at each real position (`--positions`, batches actually read: 10, 100, 1,000);
* restore_s: from building the stream with a saved position to its first batch, at each real
  position; the batch is checked against the uninterrupted stream's (`restore_matches`);
* replay_s: from building the stream to its first batch after replaying n batches, measured at
  0 and at `--replay-position` (1,000); replay_s_per_batch is their difference over n.
* process_start_s: interpreter start to ptjf, SeqIO and TensorFlow imported (the same for both
  ways; the model's compile and the arrays' restore are too, and are not counted here).

The table at 10^3 … 10^6 (`table`): positions that were not read here are scaled, with the
arithmetic stated in each row: replay at n = replay_s(0) + n · replay_s_per_batch; restore at
n = restore_s at the largest real position, because a saved position holds counters and the
examples in flight, whose size does not grow with n (`state_bytes` at 10 … 10,000 show it). `goal_met`: resume at 10^6 costs at most twice resume at 10^3.
"""

# Import time is part of the measurement, hence imports below code.
# ruff: noqa: E402
from __future__ import annotations

import time

LAUNCH_TIME = time.perf_counter()

import argparse
import logging
import os
import statistics
from collections.abc import Sequence
from typing import Any

import mc4_like
import numpy as np
import ptjf.tasks as T
import train_throughput
from train_throughput import check_at_least, fill_defaults

from ptjf.data.batches import DatasetConfig, train_batches
from ptjf.errors import ConfigError

IMPORTS_DONE = time.perf_counter()

PROBLEM = "resume_bench_mc4"
LANGUAGES = {"en": 2733.0, "hi": 24.0, "sw": 1.0}  # Table 2's ratios, billions of characters
LENGTHS = {"inputs": 512, "targets": 114}
TABLE_STEPS = (10**3, 10**4, 10**5, 10**6)
DEFAULT_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_results", "mc4_like"
)
FULL = {
    "global_batch": 1024,
    "hosts": 64,
    "docs": "en=3000,hi=600,sw=150",
    "words_per_doc": 700,
    "vocab_size": 1000,
    "positions": "10,100,1000,10000",
    "replay_position": 1000,
    "repeats": 3,
}
QUICK = {
    "global_batch": 64,
    "hosts": 8,
    "docs": "en=64,hi=16,sw=8",
    "words_per_doc": 200,
    "vocab_size": 300,
    "positions": "5,20",
    "replay_position": 20,
    "repeats": 1,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--global-batch", type=int, help="rows per global batch (1024)")
    parser.add_argument("--hosts", type=int, help="hosts (= input shards) of the pod (64)")
    parser.add_argument("--docs", help="training documents per language (en=3000,hi=600,sw=150)")
    parser.add_argument("--words-per-doc", type=int, help="words per document (700)")
    parser.add_argument("--vocab-size", type=int, help="SentencePiece pieces (1000)")
    parser.add_argument("--positions", help="real positions, in batches (10,100,1000)")
    parser.add_argument(
        "--replay-position", type=int, help="batches replayed for the replay rate (1000)"
    )
    parser.add_argument("--repeats", type=int, help="measurements per figure (3; quick: 1)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where the TFDS data goes")
    parser.add_argument("--quick", action="store_true", help="small data, seconds-long run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    fill_defaults(args, QUICK, FULL)
    check_at_least(
        args, ("global_batch", "hosts", "words_per_doc", "repeats", "replay_position"), 1
    )
    if args.global_batch % args.hosts:
        raise ConfigError(
            f"--global-batch {args.global_batch} does not split over --hosts {args.hosts}."
        )
    try:
        args.docs = {k: int(v) for k, v in (p.split("=") for p in args.docs.split(","))}
        args.positions = sorted({int(p) for p in args.positions.split(",")})
    except ValueError:
        raise ConfigError(
            f"--docs {args.docs!r} / --positions {args.positions!r}: expected e.g. "
            "en=3000,hi=600,sw=150 and 10,100,1000."
        ) from None
    if set(args.docs) != set(LANGUAGES) or min(args.positions) < 1:
        raise ConfigError(f"--docs must name {sorted(LANGUAGES)}; --positions must be >= 1.")
    return args


def register(args: argparse.Namespace) -> DatasetConfig:
    data_dir = os.path.join(args.data_dir, "quick" if args.quick else "full")
    mc4_like.prepare(data_dir, args.docs, args.words_per_doc, num_shards=args.hosts)
    T.mc4.register_problem(
        PROBLEM,
        LANGUAGES,
        data_dir=data_dir,
        vocab_size=args.vocab_size,
        vocab_sentences=5_000,
        overwrite=True,
    )
    return DatasetConfig(
        mixture_or_task_name=PROBLEM,
        task_feature_lengths=LENGTHS,
        batch_size=args.global_batch,
        seed=0,
    )


def _open(config: DatasetConfig, args: argparse.Namespace, **kw):
    return train_batches(config, shard_index=0, num_shards=args.hosts, **kw)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def saved_positions(config: DatasetConfig, args: argparse.Namespace) -> dict[int, dict]:
    """One uninterrupted stream read to the largest position, saved at each position (timed),
    with the batch that follows each."""
    stream, out = _open(config, args), {}
    for target in args.positions:
        while stream.taken < target:
            next(stream)
        saves = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            state = stream.save()
            saves.append(time.perf_counter() - start)
        out[target] = {"state": state, "save_s": statistics.median(saves)}
        out[target]["next_batch"] = next(stream)
    return out


def measure_restore(config, args, position: int, saved: dict) -> dict[str, Any]:
    times, matches = [], True
    for _ in range(args.repeats):
        start = time.perf_counter()
        stream = _open(config, args, start_batch=position, state=saved["state"])
        batch = next(stream)
        times.append(time.perf_counter() - start)
        matches = matches and _same(batch, saved["next_batch"])
    return {
        "restore_s": statistics.median(times),
        "save_s": saved["save_s"],
        "state_bytes": len(saved["state"]),
        "restore_matches": bool(matches),
    }


def measure_replay(config, args, n: int) -> float:
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stream = _open(config, args, start_batch=n)
        next(stream)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(real: dict[int, dict], replay0: float, per_batch: float, args) -> list[dict]:
    largest = max(real)
    rows = []
    for n in TABLE_STEPS:
        restore = real.get(n, {}).get("restore_s")
        restore_how = f"measured at {n}"
        if restore is None:
            restore = real[largest]["restore_s"]
            restore_how = f"restore_s at {largest} (state size does not grow with the step)"
        replay = replay0 + n * per_batch
        rows.append(
            {
                "step": n,
                "restore_s": restore,
                "restore_how": restore_how,
                "replay_s": replay,
                "replay_how": f"{replay0:.3f} s + {n} x {per_batch * 1e3:.2f} ms per batch",
                "replay_rows": n * args.global_batch // args.hosts,
                "speedup": replay / restore,
            }
        )
    return rows


def summary_line(report: dict[str, Any]) -> str:
    rows = {r["step"]: r for r in report["table"]}
    return (
        f"resume at 10^6: {rows[10**6]['restore_s']:.2f} s from the saved position vs "
        f"{rows[10**6]['replay_s'] / 3600:.1f} h of replay; at 10^3 {rows[10**3]['restore_s']:.2f}"
        f" s vs {rows[10**3]['replay_s']:.1f} s; state {report['state_bytes_max'] / 1e6:.2f} MB "
        f"per shard, saved in {report['save_s_max'] * 1e3:.0f} ms; goal met: {report['goal_met']}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    env = train_throughput.environment()
    config = register(args)
    saved = saved_positions(config, args)
    # Each restore_s times open + restore + one batch, as replay_s times open + replay + one.
    real = {n: measure_restore(config, args, n, s) for n, s in saved.items()}
    replayed = args.replay_position
    replay0 = measure_replay(config, args, 0)
    replay_n = measure_replay(config, args, replayed)
    per_batch = max(replay_n - replay0, 0.0) / replayed
    rows = table(real, replay0, per_batch, args)
    rows_by = {r["step"]: r for r in rows}
    report = {
        "environment": env,
        "arguments": vars(args),
        "process_start_s": IMPORTS_DONE - LAUNCH_TIME,
        "rows_per_host": args.global_batch // args.hosts,
        "real_positions": {str(n): r for n, r in real.items()},
        "replay_s_at_0": replay0,
        f"replay_s_at_{replayed}": replay_n,
        "replay_s_per_batch": per_batch,
        "table": rows,
        "state_bytes_max": max(r["state_bytes"] for r in real.values()),
        "save_s_max": max(r["save_s"] for r in real.values()),
        "restore_matches": all(r["restore_matches"] for r in real.values()),
        "goal_met": rows_by[10**6]["restore_s"] <= 2 * rows_by[10**3]["restore_s"],
    }
    print(summary_line(report), flush=True)
    train_throughput.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()

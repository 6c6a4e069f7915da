"""Training batches per second of ptjf's input pipeline, against what the train step consumes.

    python benchmarks/input_pipeline.py --out bench_results/input_pipeline.json
    python benchmarks/input_pipeline.py --quick      # few batches, seconds-long

Batches come from `ptjf.data.batches.train_batches`, the trainer's stream: SeqIO tasks,
tokenized, mixed example by example, packed (SeqIO's `trim_and_pack_dataset`) and converted to
the encoder-decoder features plus `task_ids`, at the trainer's reference shape (32 rows,
inputs 64 / targets 64 tokens). Measured, on the embedded Bible data:

* vocabulary_s: time to make the problem's SentencePiece vocabulary usable, built and cached
  under `PTJF_DATA_DIR` on first use (seconds on a fresh cache, milliseconds once cached);
* per stream, `startup_s`: from the `train_batches` call to the first batch (building the
  tf.data graph, opening the sources, the non-empty check per task, filling the first batch);
  then `--warmup-batches` untimed batches; then `batches_per_s` over `--batches` batches, each
  taken as numpy arrays as the trainer takes them. Each stream is measured `--repeats` times
  (fresh iterators, rounds interleaved across streams so that the machine's load falls on all
  of them alike) and the median is reported. Streams: the mixture `bible_en_fr_tl` packed (the
  reference), its first task `bible_translate_en_fr` alone packed, and the mixture unpacked;
  `examples_per_batch` and `token_density` (non-padding target tokens / target slots) say how
  much each batch carries;
* mixing_cost = single-task batches/s / mixture batches/s (above 1: mixing is slower), and
  packing_speedup = packed / unpacked batches/s (packed batches carry more examples each, see
  examples_per_s);
* resume: time from the `train_batches` call to batch N with `start_batch=N` and no saved
  position (the replay fallback: N batches are built and discarded) against reading batches
  0..N; `benchmarks/resume.py` measures resuming from a saved position; the two batches are compared
  (`resume_batch_matches`), since a fast but wrong resume would be no resume;
* trainer_steps_per_s: steps/s of the train step of `nmt_3layer` at the same shape, from
  `--train-json` (a `benchmarks/train_throughput.py` report; used when it holds `nmt_3layer`
  at this batch and sequence lengths), else measured here with the trainer's model for this
  data (the tied `nmt_3layer` preset at the Bible vocabulary's padded size; with `--quick`, the
  tiny preset). `pipeline_vs_trainer` = pipeline batches/s / trainer steps/s: how many times
  faster the pipeline is than the step it feeds (the target is at least 20).

tf.data runs its own thread pool. The pipeline and the train step share the host's cores in a
real run, so on a machine with few cores these figures are an upper bound for the pipeline.
The machine is usually shared: compare the ratios, measured within one run.
"""

# Import time is part of the environment block, hence imports below code.
# ruff: noqa: E402
from __future__ import annotations

import time

LAUNCH_TIME = time.perf_counter()

import argparse
import json
import logging
import os
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import ptjf.tasks  # noqa: F401  registers the embedded Bible tasks and mixtures
import seqio
import train_throughput

from ptjf.data.batches import Batch, DatasetConfig, count_by_task, train_batches
from ptjf.data.vocabularies import padded_vocab_size

IMPORTS_DONE = time.perf_counter()

MIXTURE = "bible_en_fr_tl"
SINGLE_TASK = "bible_translate_en_fr"
TRAINER_MODEL = "nmt_3layer"
DEFAULT_TRAIN_JSON = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "bench_results",
    "train_throughput.json",
)
FULL = {
    "batch_size": 32,
    "input_length": 64,
    "target_length": 64,
    "batches": 300,
    "warmup_batches": 20,
    "repeats": 3,
    "resume_batches": 500,
    "trainer_steps": 3,
}
QUICK = {
    "batch_size": 32,
    "input_length": 64,
    "target_length": 64,
    "batches": 20,
    "warmup_batches": 2,
    "repeats": 1,
    "resume_batches": 20,
    "trainer_steps": 2,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, help="rows per batch (32)")
    parser.add_argument("--input-length", type=int, help="encoder tokens (64)")
    parser.add_argument("--target-length", type=int, help="decoder tokens (64)")
    parser.add_argument("--batches", type=int, help="timed batches per stream (300; quick: 20)")
    parser.add_argument("--warmup-batches", type=int, help="untimed batches first (20; quick: 2)")
    parser.add_argument("--repeats", type=int, help="measurements per stream (3; quick: 1)")
    parser.add_argument(
        "--resume-batches", type=int, help="N of the resume test, start_batch=N (500; quick: 20)"
    )
    parser.add_argument(
        "--train-json",
        "--train_json",
        dest="train_json",
        default=DEFAULT_TRAIN_JSON,
        help="train_throughput.py report giving the train step's steps/s "
        "(default: bench_results/train_throughput.json)",
    )
    parser.add_argument(
        "--trainer-steps", type=int, help="timed steps when measuring the trainer here (3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="few batches, seconds-long run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    train_throughput.fill_defaults(args, QUICK, FULL)
    train_throughput.check_at_least(
        args, ("batch_size", "input_length", "target_length", "batches", "repeats"), 1
    )
    train_throughput.check_at_least(args, ("warmup_batches", "resume_batches", "trainer_steps"), 0)
    return args


def dataset_config(args: argparse.Namespace, name: str, pack: bool) -> DatasetConfig:
    return DatasetConfig(
        mixture_or_task_name=name,
        task_feature_lengths={"inputs": args.input_length, "targets": args.target_length},
        batch_size=args.batch_size,
        pack=pack,
        seed=args.seed,
    )


def measure_vocabulary() -> tuple[seqio.Vocabulary, float]:
    """The Bible problem's vocabulary, loaded (or built) now rather than inside a timing."""
    start = time.perf_counter()
    task = seqio.get_mixture_or_task(SINGLE_TASK)
    vocab = task.output_features["targets"].vocabulary
    vocab.encode("In the beginning")  # forces the SentencePiece model to load (or be built)
    return vocab, time.perf_counter() - start


def _take(stream: Iterator[Batch], count: int) -> list[Batch]:
    return [next(stream) for _ in range(count)]


def measure_stream(config: DatasetConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Start-up, then batches/s after the warm-up, of one fresh iterator."""
    start = time.perf_counter()
    stream = train_batches(config)
    next(stream)
    startup = time.perf_counter() - start
    _take(stream, args.warmup_batches)
    start = time.perf_counter()
    batches = _take(stream, args.batches)
    seconds = time.perf_counter() - start
    num_tasks = int(max(b["task_ids"].max() for b in batches)) + 1
    examples = sum(int(count_by_task(b, num_tasks)[0].sum()) for b in batches)
    real_tokens = sum(int(np.count_nonzero(b["decoder_target_tokens"])) for b in batches)
    slots = sum(b["decoder_target_tokens"].size for b in batches)
    return {
        "startup_s": startup,
        "seconds": seconds,
        "batches_per_s": args.batches / seconds,
        "examples_per_batch": examples / args.batches,
        "token_density": real_tokens / slots,
    }


def measure_streams(
    streams: dict[str, DatasetConfig], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in streams}
    for _ in range(args.repeats):
        for name, config in streams.items():
            runs[name].append(measure_stream(config, args))
    results = {}
    for name, config in streams.items():
        r = runs[name]
        bps = statistics.median(x["batches_per_s"] for x in r)
        per_batch = statistics.median(x["examples_per_batch"] for x in r)
        results[name] = {
            "mixture_or_task_name": config.mixture_or_task_name,
            "pack": config.pack,
            "startup_s": statistics.median(x["startup_s"] for x in r),
            "batches_per_s": bps,
            "batches_per_s_runs": [x["batches_per_s"] for x in r],
            "examples_per_batch": per_batch,
            "examples_per_s": bps * per_batch,
            "token_density": statistics.median(x["token_density"] for x in r),
        }
    return results


def measure_resume(config: DatasetConfig, n: int) -> dict[str, Any]:
    """Batch n by `start_batch=n` (replayed) against reading batches 0..n."""
    start = time.perf_counter()
    skipped = next(train_batches(config, start_batch=n))
    skip_s = time.perf_counter() - start
    start = time.perf_counter()
    read = _take(train_batches(config), n + 1)[-1]
    read_s = time.perf_counter() - start
    matches = skipped.keys() == read.keys() and all(
        np.array_equal(skipped[k], read[k]) for k in read
    )
    return {
        "start_batch": n,
        "skip_s": skip_s,
        "read_s": read_s,
        "skip_vs_read": skip_s / read_s,
        "resume_batch_matches": bool(matches),
    }


def trainer_from_json(path: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The train step's steps/s from a train_throughput report of the same shape, or None."""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        report = json.load(f)
    shape = ("batch_size", "input_length", "target_length")
    arguments = report.get("arguments", {})
    model = report.get("models", {}).get(TRAINER_MODEL)
    if model is None or any(arguments.get(k) != getattr(args, k) for k in shape):
        return None
    return {
        "source": os.path.abspath(path),
        "model": TRAINER_MODEL,
        "vocab_size": arguments.get("vocab_size"),
        "untied": arguments.get("untied"),
        "date": report.get("environment", {}).get("date"),
        "steps_per_s": float(model["steps_per_s"]),
    }


def trainer_measured(args: argparse.Namespace, vocab: seqio.Vocabulary) -> dict[str, Any]:
    """The train step measured here, with the model the trainer would build for this data."""
    name = "tiny" if args.quick else TRAINER_MODEL
    options = argparse.Namespace(
        batch_size=args.batch_size,
        input_length=args.input_length,
        target_length=args.target_length,
        vocab_size=padded_vocab_size(vocab),
        steps=max(args.trainer_steps, 1),
        warmup_steps=1,
        dtype="float32",
        untied=False,  # the preset as the trainer builds it
        profile=False,
        seed=args.seed,
    )
    result = train_throughput.benchmark_model(name, options)
    return {
        "source": "measured in this run",
        "model": name,
        "vocab_size": options.vocab_size,
        "untied": False,
        "steps_per_s": result["steps_per_s"],
    }


def environment() -> dict[str, Any]:
    env = train_throughput.environment()
    env["imports_s"] = IMPORTS_DONE - LAUNCH_TIME
    env["ptjf_data_dir"] = os.environ.get("PTJF_DATA_DIR")
    return env


def summary_line(report: dict[str, Any]) -> str:
    s, r, t = report["streams"], report["resume"], report["trainer"]
    ref = s["mixture_packed"]
    return (
        f"input pipeline: {ref['batches_per_s']:.0f} batches/s ({MIXTURE}, packed, "
        f"{ref['examples_per_s']:.0f} examples/s) = {report['pipeline_vs_trainer']:.0f}x the "
        f"train step's {t['steps_per_s']:.3g} steps/s ({t['model']}); mixing cost "
        f"{report['mixing_cost']:.2f}x, packing speed-up {report['packing_speedup']:.2f}x "
        f"(unpacked {s['mixture_unpacked']['batches_per_s']:.0f} batches/s); start-up "
        f"{ref['startup_s']:.1f} s, vocabulary {report['vocabulary_s']:.1f} s; resume at "
        f"batch {r['start_batch']}: skip {r['skip_s']:.1f} s vs read {r['read_s']:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    env = environment()
    vocab, vocabulary_s = measure_vocabulary()
    print(f"vocabulary: {vocab.vocab_size} ids, ready in {vocabulary_s:.2f} s", flush=True)
    streams = {
        "mixture_packed": dataset_config(args, MIXTURE, pack=True),
        "single_task_packed": dataset_config(args, SINGLE_TASK, pack=True),
        "mixture_unpacked": dataset_config(args, MIXTURE, pack=False),
    }
    results = measure_streams(streams, args)
    for name, r in results.items():
        print(
            f"{name}: {r['batches_per_s']:.1f} batches/s, {r['examples_per_batch']:.1f} "
            f"examples/batch, start-up {r['startup_s']:.2f} s",
            flush=True,
        )
    resume = measure_resume(streams["mixture_packed"], args.resume_batches)
    trainer = trainer_from_json(args.train_json, args) or trainer_measured(args, vocab)
    pipeline_bps = results["mixture_packed"]["batches_per_s"]
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "environment": env,
        "arguments": vars(args),
        "vocabulary_s": vocabulary_s,
        "vocab_size": vocab.vocab_size,
        "first_batch_s": results["mixture_packed"]["startup_s"],
        "streams": results,
        "mixing_cost": results["single_task_packed"]["batches_per_s"] / pipeline_bps,
        "packing_speedup": pipeline_bps / results["mixture_unpacked"]["batches_per_s"],
        "resume": resume,
        "trainer": trainer,
        "pipeline_batches_per_s": pipeline_bps,
        "trainer_steps_per_s": trainer["steps_per_s"],
        "pipeline_vs_trainer": pipeline_bps / trainer["steps_per_s"],
    }
    print(summary_line(report), flush=True)
    train_throughput.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()

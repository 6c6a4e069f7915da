"""Time of the stage switch against reading the same parameter bytes raw, for growing models.

    python benchmarks/stage_switch.py --out bench_results/stage_switch.json
    python benchmarks/stage_switch.py --quick      # tiny and nmt_3layer, small vocabulary

For each model preset: freshly initialised parameters and their Adam state are saved as the
source checkpoint of a finished stage (`StageCheckpointer`, synchronous save). Then
`ptjf.commands.switch.switch`, the function behind `ptjf switch`, writes step 0 of an empty stage
directory from it, three ways:

* linked (the default): the fit check against the target model from the item's metadata, then
  step and metadata written by orbax, the parameter files hard-linked to the source's and the
  staged step renamed into place. No parameter is read: the fingerprint the source recorded
  goes with them and the trainer checks it when it restores them to start the stage;
* verified (`ptjf switch --verify`): the same after reading the parameters onto the mesh and
  checking their fingerprint;
* copy: where links cannot be made (another filesystem, `gs://`) the parameters are read,
  checked and written again by orbax.

The switched step holds no optimizer state; the trainer builds it when it starts the stage.
Measured, each the median over `--repeats` switches into new directories after one untimed
switch per way (`first_switch_s`: a fresh process's one-off traces and compiles):

* switch_s, switch_verified_s, switch_copy_s; `copy_written_bytes` is what a copy writes;
* verified_read_s: the params-only restore with its fit and fingerprint checks alone, which is
  what starting the switched stage costs the trainer;
* raw_read_s: reading every file under the source step's `params` directory into memory with
  plain Python reads, the floor for any restore. Page cache: all figures are warm (the source
  was just written and its files read once, untimed, before any timing); a cold start adds the
  disk's read time to the figures that read;
* ratio = switch_s / raw_read_s, verified_ratio, copy_ratio and read_ratio likewise;
* param_bytes (in memory, float32) and params_disk_bytes (what the raw read reads);
* least-squares lines of switch_s (`linear_fit`) and switch_copy_s (`linear_fit_copy`) against
  param_bytes, with R²: the linked switch is nearly flat, the copy grows linearly.

`--vocab-size` (default 32,000 for every model, 512 with `--quick`) replaces each preset's
SentencePiece vocabulary so that mT5-base stays CPU-friendly (about 1 GB of parameters instead
of 2.3 GB with mT5's 250k vocabulary). The machine is usually shared: compare the ratios, which
are measured within one run, rather than absolute times across runs.
"""

# Import time is part of the environment block, hence imports below code.
# ruff: noqa: E402
from __future__ import annotations

import time

LAUNCH_TIME = time.perf_counter()

import argparse
import logging
import os
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import train_throughput

from ptjf import stages
from ptjf.checkpoints import checkpointer as ckpt
from ptjf.commands import switch
from ptjf.errors import ConfigError
from ptjf.models import PRESET_NAMES, TransformerConfig, init_params, preset
from ptjf.runtime.partitioning import Partitioner
from ptjf.training import optimizers, schedules, stage_state

IMPORTS_DONE = time.perf_counter()

FULL_MODELS = ("tiny", "nmt_3layer", "nmt_6layer", "mt5_small", "mt5_base")
QUICK_MODELS = ("tiny", "nmt_3layer")
MIXTURE = "bible_en_fr_tl"  # names the plan's stages only; never read
SOURCE_STEP = 1000  # any finished stage's last step
FULL = {"vocab_size": 32000, "repeats": 3}
QUICK = {"vocab_size": 512, "repeats": 1}
MIB = 2**20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        help=f"comma-separated presets ({','.join(FULL_MODELS)}; quick: {','.join(QUICK_MODELS)})",
    )
    parser.add_argument("--vocab-size", type=int, help="every model's vocabulary (32000; 512)")
    parser.add_argument("--repeats", type=int, help="timed switches and raw reads (3; quick: 1)")
    parser.add_argument("--workdir", help="where checkpoints go (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two small models, one repeat")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    train_throughput.fill_defaults(args, QUICK, FULL)
    default_models = QUICK_MODELS if args.quick else FULL_MODELS
    args.models = (
        [m.strip() for m in args.models.split(",") if m.strip()]
        if args.models
        else list(default_models)
    )
    unknown = [m for m in args.models if m not in PRESET_NAMES]
    if unknown or not args.models:
        raise ConfigError(
            f"--models names unknown preset(s) {unknown}; expected a comma-separated list "
            f"from {list(PRESET_NAMES)}."
        )
    train_throughput.check_at_least(args, ("repeats",), 1)
    train_throughput.check_at_least(args, ("vocab_size",), 3)
    return args


def tree_bytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def directory_files(path: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)


def read_raw(files: Sequence[str]) -> int:
    """Reads every file whole into memory, the way any reader must at least; returns bytes."""
    total = 0
    for name in files:
        with open(name, "rb") as f:
            total += len(f.read())
    return total


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Least-squares y = slope · x + intercept and its R² (None with fewer than 2 points)."""
    if len(x) < 2 or len(set(x)) < 2:
        return {"slope": None, "intercept": None, "r2": None, "points": len(x)}
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = float(np.sum((ys - (slope * xs + intercept)) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2, "points": len(x)}


def write_source(directory: str, config: TransformerConfig, tx, seed: int) -> dict[str, Any]:
    """A finished stage's checkpoint (parameters and Adam state) at SOURCE_STEP."""
    start = time.perf_counter()
    params = init_params(config, jax.random.key(seed))
    param_bytes = tree_bytes(params)
    state = stages.switch_state(params, tx)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    meta = ckpt.checkpoint_metadata(stage_index=0, stage_name="pretrain", global_step=SOURCE_STEP)
    start = time.perf_counter()
    with ckpt.StageCheckpointer(directory, ckpt.CheckpointConfig(async_save=False)) as c:
        c.save(SOURCE_STEP, state, meta, force=True)
    return {
        "param_bytes": param_bytes,
        "num_params": sum(int(x.size) for x in jax.tree.leaves(params)),
        "init_s": init_s,
        "source_save_s": time.perf_counter() - start,
    }


def _plan() -> stages.Plan:
    """The two-stage plan the switch reads its target stage's optimizer from (the model is
    given, so the mixture named here is never read)."""
    return stages.Plan(
        stages=[
            stages.Stage(name="pretrain", mixture_or_task_name=MIXTURE, steps=SOURCE_STEP),
            stages.Stage(name="finetune", mixture_or_task_name=MIXTURE, steps=SOURCE_STEP),
        ]
    )


def switch_once(
    source: str, target: str, config: TransformerConfig, *, link: bool, verify: bool
) -> dict[str, Any]:
    """One `ptjf switch` (`ptjf.commands.switch.switch`) into an empty stage directory, timed."""
    start = time.perf_counter()
    switch.switch(
        f"{source}/{SOURCE_STEP}",
        target,
        _plan(),
        stage="finetune",
        config=config,
        link=link,
        verify=verify,
    )
    seconds = time.perf_counter() - start
    if ckpt.finalized_steps(target) != [0]:
        raise RuntimeError(f"the switch left {ckpt.finalized_steps(target)} in {target}")
    params_dir = os.path.join(target, "0", ckpt.PARAMS)
    new_files = [f for f in directory_files(params_dir) if os.stat(f).st_nlink == 1]
    return {
        "seconds": seconds,
        "written_bytes": sum(os.path.getsize(f) for f in new_files),
        "linked_files": len(directory_files(params_dir)) - len(new_files),
    }


def verified_read_s(source: str, config: TransformerConfig, partitioner: Partitioner) -> float:
    """A params-only restore onto the mesh with its fit and fingerprint checks: what the trainer
    does when it starts the switched stage, and what `--verify` adds to the switch."""
    start = time.perf_counter()
    with ckpt.StageCheckpointer(source, read_only=True) as c:
        params, _ = stage_state.restore_params(c, SOURCE_STEP, partitioner, config)
        jax.block_until_ready(params)
    return time.perf_counter() - start


def benchmark_model(name: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    config = preset(name, args.vocab_size)
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), schedules.constant(1e-3))
    partitioner = Partitioner()
    source = os.path.join(workdir, name, "pretrain")
    record = write_source(source, config, tx, args.seed)

    files = directory_files(os.path.join(source, str(SOURCE_STEP), ckpt.PARAMS))
    disk_bytes = read_raw(files)  # untimed: every page of the files is now cached
    raw_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        read_raw(files)
        raw_times.append(time.perf_counter() - start)

    def run(mode: str, index: int) -> dict[str, Any]:
        target = os.path.join(workdir, name, f"finetune-{mode}-{index}")
        try:
            return switch_once(
                source, target, config, link=mode != "copy", verify=mode == "verified"
            )
        finally:
            shutil.rmtree(target, ignore_errors=True)

    modes = ("linked", "verified", "copy")
    first = {mode: run(mode, 0) for mode in modes}  # untimed: one-off traces and compiles
    runs = {mode: [run(mode, i + 1) for i in range(args.repeats)] for mode in modes}
    reads = [verified_read_s(source, config, partitioner) for _ in range(args.repeats)]
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)

    seconds = {mode: statistics.median(r["seconds"] for r in runs[mode]) for mode in modes}
    raw_s = statistics.median(raw_times)
    read_s = statistics.median(reads)
    return {
        **record,
        "vocab_size": config.vocab_size,
        "params_disk_bytes": disk_bytes,
        "params_files": len(files),
        "linked_files": runs["linked"][0]["linked_files"],
        "first_switch_s": first["linked"]["seconds"],
        "switch_s": seconds["linked"],
        "switch_times_s": [r["seconds"] for r in runs["linked"]],
        "switch_verified_s": seconds["verified"],
        "switch_copy_s": seconds["copy"],
        "copy_written_bytes": runs["copy"][0]["written_bytes"],
        "verified_read_s": read_s,
        "raw_read_s": raw_s,
        "raw_read_times_s": raw_times,
        "raw_read_bytes_per_s": disk_bytes / raw_s,
        "ratio": seconds["linked"] / raw_s,
        "verified_ratio": seconds["verified"] / raw_s,
        "copy_ratio": seconds["copy"] / raw_s,
        "read_ratio": read_s / raw_s,
    }


def environment() -> dict[str, Any]:
    env = train_throughput.environment()
    env["imports_s"] = IMPORTS_DONE - LAUNCH_TIME
    env["page_cache"] = (
        "warm: the source checkpoint was just written and its params files read once, "
        "untimed, before any timing"
    )
    return env


def summary_line(results: dict[str, dict[str, Any]], fit: dict[str, Any]) -> str:
    parts = [
        f"{n} {r['param_bytes'] / MIB:.0f} MiB: switch {r['switch_s']:.2f} s = "
        f"{r['ratio']:.2f}x raw read (verified {r['verified_ratio']:.1f}x, "
        f"copying {r['copy_ratio']:.1f}x)"
        for n, r in results.items()
    ]
    line = "stage switch: " + "; ".join(parts)
    if fit["slope"] is not None:
        line += (
            f"; linear fit {fit['slope'] * 2**30:.2f} s/GiB + {fit['intercept']:.2f} s, "
            f"R² {fit['r2']:.3f}"
        )
    return line


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on every save
    env = environment()
    workdir = args.workdir or tempfile.mkdtemp(prefix="ptjf-bench-switch-")
    results = {}
    try:
        for name in args.models:
            results[name] = benchmark_model(name, args, workdir)
            r = results[name]
            print(
                f"{name}: {r['num_params']:,} params, switch {r['switch_s']:.3f} s, verified "
                f"{r['switch_verified_s']:.3f} s, copying {r['switch_copy_s']:.3f} s; verified "
                f"read {r['verified_read_s']:.3f} s, raw read {r['raw_read_s']:.3f} s",
                flush=True,
            )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    sizes = [r["param_bytes"] for r in results.values()]
    fit = linear_fit(sizes, [r["switch_s"] for r in results.values()])
    fit_copy = linear_fit(sizes, [r["switch_copy_s"] for r in results.values()])
    print(summary_line(results, fit), flush=True)
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "environment": env,
        "arguments": vars(args),
        "models": results,
        "linear_fit": {"x": "param_bytes", "y": "switch_s", **fit},
        "linear_fit_copy": {"x": "param_bytes", "y": "switch_copy_s", **fit_copy},
    }
    train_throughput.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()

"""How long the training loop is blocked by asynchronous checkpoint saves, and restore times.

    python benchmarks/checkpointing.py --out bench_results/checkpointing.json
    python benchmarks/checkpointing.py --quick      # tiny model, a few steps

The train step is `benchmarks/train_throughput.py`'s (its model, synthetic batches, Adam, the
`ptjf.training.steps` step jitted with the state donated), at its shape: `nmt_3layer` with an
untied 32k vocabulary, 32 rows of 64 + 64 tokens (`--quick`: the tiny preset at 4 × 16 + 16).
A `StageCheckpointer` with `async_save=True` saves the train state (params, Adam state, step,
metadata) every `--period` steps, as the trainer does: after the step, `save()` fingerprints
the state, copies it off the device and returns while orbax writes in a background thread; the
next `save()` first waits for the previous write. Before the loop: the first step (compile),
`--warmup-steps` steps, and the trainer's stage-start save at step 0 followed by a wait
(`first_save_s`, which compiles the fingerprint). Then `--steps` steps are timed. Measured:

* step times: each step waits for its own result; `plain_step_s` is the median over steps
  without a save, `save_step_s` the median of (step + its `save()`), and `after_save_step_s`
  the median of the steps right after a save, which run while the write is in flight and share
  the host's cores with it;
* save_return_s: how long each `save()` in the loop took to return (the part the loop is
  blocked); `last_wait_s`: the `wait()` after the loop for the last save's write still in
  flight; `time_to_final_s`: one more save after the loop, from its `save()` call until
  `wait()` returns, i.e. until the checkpoint is finalised on disk (`final_return_s` of which
  is its `save()`);
* blocked_fraction = sum(save() return times) / loop wall time, at `--period`; the target is
  at most 5%. `overhead_fraction` = (loop wall time − steps × plain_step_s) / loop wall time
  also counts the steps slowed by the background write. `blocked_fraction_at_default_period`
  extrapolates the blocked fraction to `CheckpointConfig`'s default period (1000 steps), from
  the mean return time and the plain step time;
* restore: the full train state (`restore`) and the parameters only (`restore_params`, the
  stage switch's read) of the last checkpoint, the median of `--restore-repeats` after one
  untimed restore of each kind, warm (just written, so read from the page cache).

The default period of 20 steps is far more frequent than a real run's (T5X and ptjf default to
1000) so that a short loop holds several saves; a longer period only lowers the fraction. The
machine is usually shared: compare the ratios, measured within one run.
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
import train_throughput as tt

from ptjf.checkpoints import checkpointer as ckpt
from ptjf.errors import ConfigError
from ptjf.models import PRESET_NAMES, EncoderDecoder, init_params
from ptjf.training import optimizers, schedules, steps
from ptjf.training.train_state import create_train_state

IMPORTS_DONE = time.perf_counter()

_SHAPE = ("batch_size", "input_length", "target_length", "vocab_size", "warmup_steps")
FULL = {
    **{k: tt.FULL[k] for k in _SHAPE},
    "model": "nmt_3layer",
    "steps": 40,
    "period": 20,
    "restore_repeats": 3,
}
QUICK = {
    **{k: tt.QUICK[k] for k in _SHAPE},
    "model": "tiny",
    "steps": 6,
    "period": 3,
    "restore_repeats": 1,
}
DEFAULT_PERIOD = ckpt.CheckpointConfig().period
MIB = 2**20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=PRESET_NAMES, help="preset (nmt_3layer; quick: tiny)")
    parser.add_argument("--batch-size", type=int, help="examples per step (32; quick: 4)")
    parser.add_argument("--input-length", type=int, help="encoder tokens (64; quick: 16)")
    parser.add_argument("--target-length", type=int, help="decoder tokens (64; quick: 16)")
    parser.add_argument("--vocab-size", type=int, help="vocabulary (32000; quick: 512)")
    parser.add_argument("--steps", type=int, help="timed steps (40; quick: 6)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps after the first (2)")
    parser.add_argument("--period", type=int, help="save every this many steps (20; quick: 3)")
    parser.add_argument("--restore-repeats", type=int, help="timed restores of each kind (3)")
    parser.add_argument(
        "--untied",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="own output layer, as train_throughput.py (default: on)",
    )
    parser.add_argument("--workdir", help="where checkpoints go (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    tt.fill_defaults(args, QUICK, FULL)
    tt.check_at_least(args, ("batch_size", "input_length", "target_length", "steps", "period"), 1)
    if args.warmup_steps < 0 or args.restore_repeats < 1:
        raise ConfigError("--warmup-steps must be >= 0 and --restore-repeats >= 1.")
    if args.period > args.steps:
        raise ConfigError(
            f"--period {args.period} > --steps {args.steps}: the loop would hold no save; "
            "give at least as many steps as the period."
        )
    return args


def build(args: argparse.Namespace):
    """train_throughput's step and state for `args.model`; (step_fn, state, batches, rng)."""
    config = tt.model_config(args.model, args.vocab_size, "float32", args.untied)
    total = 1 + args.warmup_steps + args.steps
    schedule = schedules.warmup_cosine(5e-4, warmup_steps=1, total_steps=total)
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adam"), schedule)
    state = create_train_state(init_params(config, jax.random.key(args.seed)), tx)
    data_rng = np.random.default_rng(args.seed)
    batches = [
        jax.device_put(
            tt.synthetic_batch(
                data_rng, args.batch_size, args.input_length, args.target_length, args.vocab_size
            )
        )
        for _ in range(tt.NUM_DISTINCT_BATCHES)
    ]
    step_fn = jax.jit(
        steps.make_train_step(
            tt.make_apply_fn(EncoderDecoder(config)),
            tx,
            label_smoothing=tt.LABEL_SMOOTHING,
            schedule=schedule,
        ),
        donate_argnums=(0,),
    )
    return step_fn, state, batches, jax.random.key(args.seed + 1)


def state_bytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def metadata(step: int) -> dict[str, Any]:
    return ckpt.checkpoint_metadata(
        stage_index=0, stage_name="bench", global_step=step, data_position={"batches": step}
    )


def run_loop(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    step_fn, state, batches, rng = build(args)
    start = time.perf_counter()
    for i in range(1 + args.warmup_steps):
        state, metrics = step_fn(state, batches[i % len(batches)], rng)
        jax.block_until_ready((state, metrics))
    compile_and_warmup_s = time.perf_counter() - start

    checkpointer = ckpt.StageCheckpointer(directory, ckpt.CheckpointConfig(period=args.period))
    try:
        start = time.perf_counter()
        checkpointer.save(0, state, metadata(0), force=True)
        checkpointer.wait()
        first_save_s = time.perf_counter() - start

        plain, with_save, after_save, save_returns = [], [], [], []
        previous_saved = False
        loop_start = time.perf_counter()
        for step in range(1, args.steps + 1):
            start = time.perf_counter()
            state, metrics = step_fn(state, batches[step % len(batches)], rng)
            jax.block_until_ready((state, metrics))
            stepped = time.perf_counter()
            saved = checkpointer.due(step)
            if saved:
                checkpointer.save(step, state, metadata(step))
            done = time.perf_counter()
            if saved:
                save_returns.append(done - stepped)
                with_save.append(done - start)
            else:
                (after_save if previous_saved else plain).append(done - start)
            previous_saved = saved
        loop_s = time.perf_counter() - loop_start
        start = time.perf_counter()
        checkpointer.wait()
        last_wait_s = time.perf_counter() - start
        # One more save on its own, waited for at once: how long until a write is final.
        start = time.perf_counter()
        checkpointer.save(args.steps + 1, state, metadata(args.steps + 1), force=True)
        final_return_s = time.perf_counter() - start
        checkpointer.wait()
        time_to_final_s = time.perf_counter() - start
        last_step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    if last_step != args.steps + 1:
        raise RuntimeError(f"the newest finalised checkpoint is step {last_step}")
    return {
        "state": state,
        "compile_and_warmup_s": compile_and_warmup_s,
        "first_save_s": first_save_s,
        "plain": plain,
        "with_save": with_save,
        "after_save": after_save,
        "save_returns": save_returns,
        "loop_s": loop_s,
        "last_wait_s": last_wait_s,
        "final_return_s": final_return_s,
        "time_to_final_s": time_to_final_s,
        "last_step": last_step,
    }


def measure_restore(directory: str, state: Any, step: int, repeats: int) -> dict[str, float]:
    """Median seconds of a full-state and of a params-only restore onto abstract targets."""
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    times: dict[str, list[float]] = {"full": [], "params": []}
    with ckpt.StageCheckpointer(directory, read_only=True) as c:
        # Untimed: orbax's and the fingerprint's one-off set-up for these trees.
        jax.block_until_ready(c.restore(step, target_state=target)[0])
        jax.block_until_ready(c.restore_params(step, target_params=target.params)[0])
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(c.restore(step, target_state=target)[0])
            times["full"].append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(c.restore_params(step, target_params=target.params)[0])
            times["params"].append(time.perf_counter() - start)
    return {
        "restore_full_s": statistics.median(times["full"]),
        "restore_params_s": statistics.median(times["params"]),
        "restore_full_times_s": times["full"],
        "restore_params_times_s": times["params"],
    }


def blocked_fraction_at(period: int, save_return_s: float, step_s: float) -> float:
    """Share of wall time spent in save() when one save of this cost follows `period` steps."""
    return save_return_s / (period * step_s + save_return_s)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def environment() -> dict[str, Any]:
    env = tt.environment()
    env["imports_s"] = IMPORTS_DONE - LAUNCH_TIME
    return env


def summary_line(r: dict[str, Any]) -> str:
    return (
        f"checkpointing ({r['model']}, {r['state_bytes'] / MIB:.0f} MiB state, save every "
        f"{r['period']} steps): loop blocked {100 * r['blocked_fraction']:.2f}% "
        f"(save() returns in {r['save_return_s']['mean']:.3f} s, final after "
        f"{r['time_to_final_s']:.2f} s; steps {r['plain_step_s']:.3f} s plain, "
        f"{r['after_save_step_s'] or float('nan'):.3f} s while writing), overhead "
        f"{100 * r['overhead_fraction']:.2f}%; at period {DEFAULT_PERIOD}: "
        f"{100 * r['blocked_fraction_at_default_period']:.3f}%; restore full "
        f"{r['restore_full_s']:.2f} s, params only {r['restore_params_s']:.2f} s"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    env = environment()
    workdir = args.workdir or tempfile.mkdtemp(prefix="ptjf-bench-ckpt-")
    directory = os.path.join(workdir, "bench")
    try:
        loop = run_loop(args, directory)
        restore = measure_restore(directory, loop["state"], loop["last_step"], args.restore_repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    plain_s = statistics.median(loop["plain"])
    returns = loop["save_returns"]
    mean_return = statistics.fmean(returns)
    loop_s = loop["loop_s"]
    result = {
        "model": args.model,
        "period": args.period,
        "steps": args.steps,
        "saves": len(returns),
        "state_bytes": state_bytes(loop["state"]),
        "param_bytes": state_bytes(loop["state"].params),
        "compile_and_warmup_s": loop["compile_and_warmup_s"],
        "first_save_s": loop["first_save_s"],
        "plain_step_s": plain_s,
        "save_step_s": _median(loop["with_save"]),
        "after_save_step_s": _median(loop["after_save"]),
        "step_times_s": {
            "plain": loop["plain"],
            "with_save": loop["with_save"],
            "after_save": loop["after_save"],
        },
        "save_return_s": {"mean": mean_return, "max": max(returns), "all": returns},
        "last_wait_s": loop["last_wait_s"],
        "time_to_final_s": loop["time_to_final_s"],
        "final_return_s": loop["final_return_s"],
        "loop_s": loop_s,
        "blocked_fraction": sum(returns) / loop_s,
        "overhead_fraction": (loop_s - args.steps * plain_s) / loop_s,
        "default_period": DEFAULT_PERIOD,
        "blocked_fraction_at_default_period": blocked_fraction_at(
            DEFAULT_PERIOD, mean_return, plain_s
        ),
        **restore,
    }
    print(summary_line(result), flush=True)
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {"environment": env, "arguments": vars(args), "result": result}
    tt.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()

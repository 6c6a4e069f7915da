"""Training throughput and model FLOPs utilisation (MFU) of ptjf's train step.

    python benchmarks/train_throughput.py --out bench_results/train_throughput.json
    python benchmarks/train_throughput.py --models tiny --quick      # seconds-long smoke run

For each model: random token batches with SeqIO's EncDec feature names, Adam, and the train step
from `ptjf.training.steps` jitted with the state donated, as the trainer does. Measured:

* compile: the first call's wall time (trace + lower + XLA compile + one step) and, separately,
  the durations jax reports for that call through `jax.monitoring`: tracing to a jaxpr, lowering
  to StableHLO (`lower_s`) and XLA's compile (`compile_s`); their sum is `compile_total_s`, the
  "compile" of the summary line. These are the trainer's own costs, not a second ahead-of-time
  compile, which would double the run and could hit jax's caches. XLA's own FLOP count of the
  compiled step (`xla_flops_per_step`, cached, no recompile) is kept as a check on `ptjf.models.flops`;
* launch to first step: from the top of this module (before jax is imported) to the first step's
  result, so it counts the imports, initialisation and compilation; only the first model of a
  run starts from a fresh process;
* steady-state step time: each timed step waits for its own result (`block_until_ready`) before
  the next is dispatched, the only host sync; the median over the timed steps is reported (min,
  mean and max too). A trainer that does not sync every step overlaps the next dispatch with the
  current step, which saves well under a millisecond per step;
* tokens/s: (input + target tokens per step) / median step time;
* peak memory: the process's host RSS high-water mark (`ru_maxrss`; process-wide, so later models
  include earlier ones) and, where the device reports it, `peak_bytes_in_use`;
* compilations of the train step: XLA compiles observed through `jax.monitoring` from the first
  call to the last timed step, and the jitted function's cache size; both should be 1;
* MFU: analytic model FLOPs per step (`ptjf.models.flops`) / median step time, divided by the matmul
  FLOP/s measured on the same machine in the same run (a best-of-several square `jnp.dot` in the
  compute dtype), not by a datasheet peak: on a shared CPU the attainable peak is what matters.

`--vocab-size` stands in for a SentencePiece vocabulary: the model only sees token ids, so no
vocabulary is built. `--untied` (the default) gives every preset its own output layer: the
reference it is compared with (T5X's trainer, 3+3 layers, d_model 512, 32k vocabulary) has an
untied output layer, while ptjf's `nmt_3layer` ties it (the paper does not say). Untied, with
32,000 rows, it has 54,798,336 parameters; the reference's 54.9M matches 32,128 rows (a vocabulary
padded to a multiple of 128), a 0.2% difference. `--dtype` applies to every preset (mT5's is
bfloat16), so models are compared in one dtype. `--profile` also times the forward pass and the
forward + backward pass alone, which splits the step into forward, backward and optimizer.

The step runs with the presets' dropout and the paper's label smoothing 0.1. The full trainer
also imports seqio and TensorFlow for its input pipeline; this benchmark does not, so its launch
time leaves those imports out.
"""

# The launch time is taken before the imports it must count, hence imports below code.
# ruff: noqa: E402
from __future__ import annotations

import time

LAUNCH_TIME = time.perf_counter()

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptjf.errors import ConfigError
from ptjf.models import PRESET_NAMES, EncoderDecoder, count_params, flops, init_params, preset
from ptjf.training import losses, optimizers, schedules, startup, steps
from ptjf.training.train_state import create_train_state

IMPORTS_DONE = time.perf_counter()

MODEL_CHOICES = ("tiny", "nmt_3layer", "mt5_small")
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
LABEL_SMOOTHING = 0.1  # paper App. A
NUM_DISTINCT_BATCHES = 2  # cycled, so consecutive steps see different data
GIB = 2**30

# Values for options left unset: the full run (the reference's shapes) and `--quick`.
FULL = {
    "batch_size": 32,
    "input_length": 64,
    "target_length": 64,
    "vocab_size": 32000,
    "steps": 10,
    "warmup_steps": 2,
    "matmul_trials": 5,
}
QUICK = {
    "batch_size": 4,
    "input_length": 16,
    "target_length": 16,
    "vocab_size": 512,
    "steps": 2,
    "warmup_steps": 1,
    "matmul_trials": 3,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="nmt_3layer",
        help=f"comma-separated presets, from {', '.join(MODEL_CHOICES)}",
    )
    parser.add_argument("--batch-size", type=int, help="examples per step (32; quick: 4)")
    parser.add_argument("--input-length", type=int, help="encoder tokens (64; quick: 16)")
    parser.add_argument("--target-length", type=int, help="decoder tokens (64; quick: 16)")
    parser.add_argument(
        "--vocab-size", type=int, help="stand-in for a SentencePiece vocabulary (32000; quick: 512)"
    )
    parser.add_argument("--steps", type=int, help="timed steps (10; quick: 2)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps after the first (2)")
    parser.add_argument("--matmul-trials", type=int, help="matmul peak: best of this many (5)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype of every model and of the matmul peak",
    )
    parser.add_argument(
        "--untied",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="own output layer instead of the tied embedding (default: on)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time the forward pass and forward+backward on their own",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds-long run")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--launches",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time two fresh processes to their first step, with an empty and then a "
        "filled compilation cache (default: on, off with --quick)",
    )
    parser.add_argument(
        "--compilation-cache",
        help="jax's persistent compilation cache directory, as `ptjf train` keeps one",
    )
    parser.add_argument("--launch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launches is None:
        args.launches = not args.quick
    fill_defaults(args, QUICK, FULL)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    _check_args(args)
    return args


def fill_defaults(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> None:
    """Options left unset take the `--quick` or the full run's value (shared by every script)."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def check_at_least(args: argparse.Namespace, names: Sequence[str], minimum: int) -> None:
    """Refuses an option below `minimum`, naming it as the command line spells it."""
    for name in names:
        if getattr(args, name) < minimum:
            raise ConfigError(
                f"--{name.replace('_', '-')} = {getattr(args, name)}: expected >= {minimum}."
            )


def _check_args(args: argparse.Namespace) -> None:
    unknown = [m for m in args.models if m not in PRESET_NAMES]
    if unknown or not args.models:
        raise ConfigError(
            f"--models {','.join(args.models)!r} names unknown preset(s) {unknown}; expected "
            f"a comma-separated list from {list(PRESET_NAMES)} (benchmarked: {MODEL_CHOICES})."
        )
    check_at_least(
        args, ("batch_size", "input_length", "target_length", "steps", "matmul_trials"), 1
    )
    check_at_least(args, ("warmup_steps",), 0)
    if args.vocab_size < 3:
        raise ConfigError(
            f"--vocab-size = {args.vocab_size}: expected >= 3 (ids 0 and 1 are padding and EOS)."
        )


def model_config(name: str, vocab_size: int, dtype: str, untied: bool):
    config = dataclasses.replace(preset(name, vocab_size), dtype=dtype)
    if untied:
        config = dataclasses.replace(config, logits_via_embedding=False)
    return config


def synthetic_batch(
    rng: np.random.Generator,
    batch_size: int,
    input_length: int,
    target_length: int,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    """Unpadded random ids in [2, vocab): 0 is padding and 1 EOS in T5 vocabularies."""
    inputs = rng.integers(2, vocab_size, (batch_size, input_length), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (batch_size, target_length), dtype=np.int32)
    # Teacher forcing as SeqIO's EncDecFeatureConverter builds it: targets shifted right by one.
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((batch_size, target_length), np.float32),
    }


def make_apply_fn(model: EncoderDecoder):
    """The trainer's `apply_fn` for unpacked batches (the trainer module imports seqio)."""

    def apply_fn(params, batch, *, enable_dropout: bool, rngs=None):
        return model.apply(
            {"params": params},
            *(batch[f] for f in FEATURES),
            enable_dropout=enable_dropout,
            rngs=rngs,
        )

    return apply_fn


class CompileEvents:
    """Trace / lower / XLA-compile durations reported through `jax.monitoring`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []

    def __enter__(self) -> CompileEvents:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            name = str(kwargs.get("fun_name", ""))
            self.events.append((event.rsplit("/", 1)[-1], name, duration))

    def of(self, fun_name: str) -> dict[str, list[float]]:
        """Durations per event kind, for one function (named `f` or `jit(f)` by jax)."""
        found: dict[str, list[float]] = {}
        for kind, name, duration in self.events:
            if name in (fun_name, f"jit({fun_name})"):
                found.setdefault(kind, []).append(duration)
        return found


def _timed_steps(step_fn, state, batches, rng, count: int, matmul=None):
    """Run `count` steps, each timed to its own result; returns (state, metrics, seconds,
    matmul FLOP/s). With `matmul` (a `MatmulProbe`), each step is followed by one matmul
    trial, so every step has a peak measured under the same load as it ran."""
    times, peaks = [], []
    metrics = None
    for i in range(count):
        start = time.perf_counter()
        state, metrics = step_fn(state, batches[i % len(batches)], rng)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
        if matmul is not None:
            peaks.append(matmul.trial())
    return state, metrics, times, peaks


def _peak_rss_bytes() -> int:
    """The process's resident-memory high-water mark. Linux: /proc's VmHWM, which starts afresh
    at exec, unlike `ru_maxrss`, which a child started by a big process inherits."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _device_peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per device program
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def _seconds_stats(times: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "min": min(times),
        "max": max(times),
    }


def start_model(name: str, config, tx, schedule, args: argparse.Namespace) -> dict[str, Any]:
    """Everything up to the end of the first step, as the trainer does it
    (ptjf.training.startup): the step compiles from shapes on a background thread while the
    state is initialised on this one. Returns the launch figures and, under "run", what the
    timed steps need."""
    setup_start = time.perf_counter()
    apply_fn = make_apply_fn(EncoderDecoder(config))
    data_rng = np.random.default_rng(args.seed)
    host_batches = [
        synthetic_batch(
            data_rng, args.batch_size, args.input_length, args.target_length, args.vocab_size
        )
        for _ in range(NUM_DISTINCT_BATCHES)
    ]
    dropout_rng = jax.random.key(args.seed + 1)
    train_step = steps.make_train_step(
        apply_fn, tx, label_smoothing=LABEL_SMOOTHING, schedule=schedule
    )

    def new_state(rng):
        return create_train_state(init_params(config, rng), tx)

    events = CompileEvents().__enter__()
    abstract = (
        jax.eval_shape(new_state, jax.random.key(args.seed)),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_batches[0]),
        jax.eval_shape(lambda: dropout_rng),
    )
    compiling = startup.Background(
        lambda: jax.jit(train_step, donate_argnums=(0,)).lower(*abstract).compile()
    )
    state = new_state(jax.random.key(args.seed))
    batches = [jax.device_put(b) for b in host_batches]
    jax.block_until_ready((state, batches))
    setup_s = time.perf_counter() - setup_start
    step_fn = compiling.result()
    ready = time.perf_counter()
    state, _, _, _ = _timed_steps(step_fn, state, batches, dropout_rng, 1)
    first_done = time.perf_counter()
    compile_events = {kind: sum(d) for kind, d in events.of("train_step").items()}
    return {
        "imports_s": IMPORTS_DONE - LAUNCH_TIME,
        "setup_s": setup_s,
        "compile_wall_s": compiling.seconds,
        "ready_s": ready - setup_start,
        "first_step_s": first_done - ready,
        "trace_s": compile_events.get("jaxpr_trace_duration"),
        "lower_s": compile_events.get("jaxpr_to_mlir_module_duration"),
        "compile_s": compile_events.get("backend_compile_duration"),
        "compile_total_s": sum(compile_events.values()),
        "launch_to_first_step_s": first_done - LAUNCH_TIME,
        "peak_rss_bytes": _peak_rss_bytes(),
        "run": {
            "state": state,
            "step_fn": step_fn,
            "batches": batches,
            "dropout_rng": dropout_rng,
            "events": events,
            "apply_fn": apply_fn,
        },
    }


def benchmark_model(name: str, args: argparse.Namespace, matmul: MatmulProbe) -> dict[str, Any]:
    """Compile, run and time the train step of preset `name`; one JSON-ready record."""
    config = model_config(name, args.vocab_size, args.dtype, args.untied)
    total_steps = 1 + args.warmup_steps + args.steps
    schedule = schedules.warmup_cosine(5e-4, warmup_steps=1, total_steps=total_steps)
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adam"), schedule)
    launch = start_model(name, config, tx, schedule, args)
    run = launch.pop("run")
    state, step_fn, batches, rng = (run[k] for k in ("state", "step_fn", "batches", "dropout_rng"))
    state, metrics, _, _ = _timed_steps(step_fn, state, batches, rng, args.warmup_steps)
    state, metrics, times, peaks = _timed_steps(step_fn, state, batches, rng, args.steps, matmul)
    run["events"].__exit__()
    loss = float(metrics["loss"])
    peak_rss, device_peak = _peak_rss_bytes(), _device_peak_bytes()
    compilations = len(run["events"].of("train_step").get("backend_compile_duration", []))
    xla_flops = _cost_flops(step_fn)  # XLA's own count of the compiled step
    profile = profile_step(run["apply_fn"], state, batches[0], rng, args) if args.profile else None

    step_s = statistics.median(times)
    tokens_per_step = args.batch_size * (args.input_length + args.target_length)
    breakdown = flops.forward_flops_breakdown(
        config, args.batch_size, args.input_length, args.target_length
    )
    flops_per_step = flops.model_flops_per_step(
        config, args.batch_size, args.input_length, args.target_length
    )
    # Each step against the matmul rate measured right after it, under the same load.
    paired = [flops_per_step / t / peak for t, peak in zip(times, peaks, strict=True)]
    return {
        "config": dataclasses.asdict(config),
        "params": sum(int(x.size) for x in jax.tree.leaves(state.params)),
        "params_analytic": count_params(config),
        "tied_logits": config.logits_via_embedding,
        "tokens_per_step": tokens_per_step,
        **launch,
        "step_time_s": _seconds_stats(times),
        "step_times_s": times,
        "steps_per_s": 1.0 / step_s,
        "tokens_per_s": tokens_per_step / step_s,
        "final_loss": loss,
        "train_step_compilations": compilations,
        "model_flops_per_step": flops_per_step,
        "forward_flops_breakdown": breakdown,
        "xla_flops_per_step": xla_flops,
        "model_flops_per_s": flops_per_step / step_s,
        "matmul_flops_per_s_by_step": peaks,
        "utilisation_by_step": paired,
        "utilisation": statistics.median(paired),
        "utilisation_best": flops_per_step / min(times) / max(peaks),
        "peak_rss_bytes": peak_rss,
        "device_peak_bytes": device_peak,
        "profile": profile,
    }


def profile_step(apply_fn, state, batch, rng, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of the forward loss alone and of loss + gradients (no optimizer)."""

    def loss_fn(params, batch, rng):
        logits = apply_fn(params, batch, enable_dropout=True, rngs={"dropout": rng})
        token = losses.token_losses(logits, batch["decoder_target_tokens"], LABEL_SMOOTHING)
        return jnp.sum(token.loss * batch["decoder_loss_weights"])

    timings = {}
    for label, fn in (("forward_s", loss_fn), ("forward_backward_s", jax.grad(loss_fn))):
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(state.params, batch, rng))
        runs = []
        for _ in range(max(args.steps // 2, 2)):
            start = time.perf_counter()
            jax.block_until_ready(jitted(state.params, batch, rng))
            runs.append(time.perf_counter() - start)
        timings[label] = statistics.median(runs)
    return timings


class MatmulProbe:
    """The machine's matmul FLOP/s: a square `jnp.dot` in the compute dtype, timed per trial.

    On a shared machine the attainable rate moves with the other load, so the benchmark runs
    one trial after every timed step and divides each step by the rate of its own trial.
    """

    def __init__(self, dtype: str, quick: bool):
        on_cpu = jax.default_backend() == "cpu"
        self.size = 256 if quick else (2048 if on_cpu else 8192)
        self.repeats = 3 if on_cpu else 20  # enough work per timing to hide dispatch
        self.dtype = dtype
        keys = jax.random.split(jax.random.key(0), 2)
        self._a, self._b = (jax.random.normal(k, (self.size,) * 2, jnp.dtype(dtype)) for k in keys)
        self._dot = jax.jit(jnp.dot)
        jax.block_until_ready(self._dot(self._a, self._b))
        self.rates: list[float] = []

    def trial(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready([self._dot(self._a, self._b) for _ in range(self.repeats)])
        seconds = (time.perf_counter() - start) / self.repeats
        self.rates.append(flops.matmul_flops(self.size, self.size, self.size) / seconds)
        return self.rates[-1]

    def best_of(self, trials: int) -> float:
        for _ in range(trials):
            self.trial()
        return max(self.rates)

    def record(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "dtype": self.dtype,
            "repeats": self.repeats,
            "trials": len(self.rates),
            "flops_per_s": max(self.rates),
            "median_flops_per_s": statistics.median(self.rates),
        }


def environment() -> dict[str, Any]:
    device = jax.local_devices()[0]
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": None if affinity is None else len(affinity),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "imports_s": IMPORTS_DONE - LAUNCH_TIME,
    }


def summary_line(name: str, result: dict[str, Any], matmul: dict[str, Any]) -> str:
    launch = (
        f"launch to first step {result['launch_to_first_step_s']:.1f} s, "
        if result["first_in_process"]
        else ""
    )
    return (
        f"{name}: {result['steps_per_s']:.3g} steps/s, {result['tokens_per_s']:.0f} tok/s, "
        f"MFU {result['utilisation']:.2f} of the matmul rate measured beside each step "
        f"(best {matmul['flops_per_s'] / 1e9:.0f} GFLOP/s), "
        f"compile {result['compile_total_s']:.1f} s (first step {result['first_step_s']:.1f} s), "
        f"{launch}peak RSS {result['peak_rss_bytes'] / GIB:.1f} GiB, "
        f"{result['params'] / 1e6:.2f}M params"
    )


def write_report(report: dict[str, Any], path: str | None) -> None:
    """The benchmark's JSON at `path` (its folder made), when a path is given."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


def launch_once(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    """A fresh process of this script, stopped after its first step: the launch figures."""
    command = [sys.executable, os.path.abspath(__file__), "--launch-only", "--launches"]
    for name in ("models", "batch_size", "input_length", "target_length", "vocab_size", "dtype"):
        value = getattr(args, name)
        command += [
            f"--{name.replace('_', '-')}",
            ",".join(value) if name == "models" else str(value),
        ]
    command += ["--untied" if args.untied else "--no-untied", "--compilation-cache", cache_dir]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"launch run failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def launches(args: argparse.Namespace) -> dict[str, Any]:
    """Cold (empty compilation cache) and warm (filled by the cold run) process launches."""
    with tempfile.TemporaryDirectory(prefix="ptjf-bench-jax-cache-") as cache_dir:
        cold = launch_once(args, cache_dir)
        warm = launch_once(args, cache_dir)
    return {"cold": cold, "warm": warm}


def first_step_only(args: argparse.Namespace) -> None:
    """`--launch-only`: one model to its first step, then its launch figures as one JSON line."""
    name = args.models[0]
    config = model_config(name, args.vocab_size, args.dtype, args.untied)
    schedule = schedules.warmup_cosine(5e-4, warmup_steps=1, total_steps=2)
    tx = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adam"), schedule)
    record = start_model(name, config, tx, schedule, args)
    print(json.dumps({k: v for k, v in record.items() if k != "run"}))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if args.launch_only:
        first_step_only(args)
        return {}
    env = environment()
    matmul = MatmulProbe(args.dtype, args.quick)
    results = {}
    for name in args.models:
        results[name] = benchmark_model(name, args, matmul)
        r = results[name]
        # Launch time and peak memory are the process's: only the first model's are its own.
        r["first_in_process"] = len(results) == 1
        print(
            f"{name}: {r['params']:,} params ({'tied' if r['tied_logits'] else 'untied'} "
            f"logits; analytic count {r['params_analytic']:,}), step "
            f"{r['step_time_s']['median']:.3f} s",
            flush=True,
        )
    matmul.best_of(args.matmul_trials)
    launch = launches(args) if args.launches else None
    if launch:
        cold, warm = launch["cold"], launch["warm"]
        print(
            f"{args.models[0]}: launch to first step in a fresh process: "
            f"{cold['launch_to_first_step_s']:.1f} s with an empty compilation cache, "
            f"{warm['launch_to_first_step_s']:.1f} s with a filled one",
            flush=True,
        )
    for name, r in results.items():
        print(summary_line(name, r, matmul.record()), flush=True)
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "environment": env,
        "arguments": vars(args),
        "matmul_peak": matmul.record(),
        "models": results,
        "launches": launch,
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()

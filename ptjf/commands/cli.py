"""The `ptjf` command: `ptjf rates | train | eval | switch | sweep | report | regime | demo`.

Each subcommand is a thin layer over a library function, so everything it does can also be
done from Python. Errors that ptjf raises for bad input are printed as one clear message
(exit status 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from ptjf.commands import rates
from ptjf.commands.rates import format_table
from ptjf.errors import PtjfError, UnknownNameError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_multihost_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator_address", help="HOST:PORT of process 0, for a multi-process run")
    p.add_argument("--process_count", type=int, help="number of processes in the run")
    p.add_argument("--process_index", type=int, help="this process's index, 0..count-1")
    p.add_argument(
        "--peer_timeout_s",
        type=float,
        default=60.0,
        help="seconds without a heartbeat from another process before this one stops, naming "
        "it (multi-process runs; default 60)",
    )


def _join_multihost(args: argparse.Namespace) -> None:
    """Joins the run's other processes (flags, or a TPU pod / SLURM step), before any JAX work."""
    from ptjf.runtime import distributed

    distributed.initialize(
        distributed.DistributedConfig(
            coordinator_address=args.coordinator_address,
            process_count=args.process_count,
            process_index=args.process_index,
            peer_timeout_s=args.peer_timeout_s,
        )
    )


def cmd_train(args: argparse.Namespace) -> int:
    from ptjf import config as gin_config
    from ptjf.commands import train

    files, bindings, rest = gin_config.flags_to_gin(args.extra)
    if rest:
        raise PtjfError(
            f"unrecognized arguments: {' '.join(rest)} (gin settings are --gin.NAME=VALUE)."
        )
    _join_multihost(args)
    summary = train.run(files, bindings)
    if summary.preempted:
        print(
            f"ptjf train: preempted; saved global step {summary.global_step} in "
            f"{summary.model_dir}. Rerun the same command to resume."
        )
        return 0
    print(f"ptjf train: done at global step {summary.global_step}; results in {summary.model_dir}")
    if summary.startup_seconds:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in summary.startup_seconds.items())
        print(f"ptjf train: seconds from launch: {phases}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ptjf import config as gin_config
    from ptjf.commands import evaluate

    files, bindings, rest = gin_config.flags_to_gin(args.extra)
    if rest:
        raise PtjfError(
            f"unrecognized arguments: {' '.join(rest)} (gin settings are --gin.NAME=VALUE)."
        )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.sweep_dir:
        given = [
            f
            for f, v in (
                ("--gin_file/--gin.", files or bindings),
                ("--checkpoint", args.checkpoint),
                ("--no_bleu", args.no_bleu),
            )
            if v
        ]
        if given:
            raise PtjfError(
                f"--sweep_dir scores each point with its own gin files and final checkpoint, "
                f"BLEU included; drop {', '.join(given)}."
            )
        status = evaluate.evaluate_sweep(
            args.sweep_dir, bleu_examples=args.bleu_examples, methods=methods
        )
        counts = {
            s: sum(v.split(":")[0] == s for v in status.values())
            for s in ("scored", "has bleu", "unfinished", "failed")
        }
        print(
            f"ptjf eval: {counts['scored']} scored, {counts['has bleu']} already had BLEU, "
            f"{counts['unfinished']} unfinished, {counts['failed']} failed "
            f"(ptjf report {args.sweep_dir})"
        )
        return 1 if counts["failed"] else 0
    if methods is not None:
        raise PtjfError("--methods selects points of a sweep; use it with --sweep_dir.")
    record = evaluate.evaluate_checkpoint(
        files,
        bindings,
        checkpoint=args.checkpoint,
        bleu=not args.no_bleu,
        bleu_examples=args.bleu_examples,
    )
    bleu = record.get("bleu") or {}
    rows = [
        [
            task,
            f"{scores['loss']:.4f}",
            f"{scores['accuracy']:.4f}",
            f"{record['train_subset'][task]['loss']:.4f}",
            f"{bleu[task]:.2f}" if task in bleu else "—",
        ]
        for task, scores in record["validation"].items()
    ]
    print(
        f"ptjf eval: stage {record['stage']} step {record['stage_step']} "
        f"(global step {record['global_step']}); record appended to metrics.jsonl"
    )
    print(format_table(["task", "val loss", "val accuracy", "train loss", "BLEU"], rows))
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    from ptjf import config as gin_config
    from ptjf import stages, storage
    from ptjf.checkpoints import checkpointer as checkpoints
    from ptjf.commands import switch
    from ptjf.runtime import distributed

    files, bindings, rest = gin_config.flags_to_gin(args.extra)
    if rest:
        raise PtjfError(f"unrecognized arguments: {' '.join(rest)}")
    _join_multihost(args)
    gin_config.parse_gin(files, bindings)
    plan = stages.Plan()
    model_dir = switch.model_dir_from_gin()
    if model_dir is None:
        raise PtjfError(
            "ptjf switch needs the run's MODEL_DIR (--gin.MODEL_DIR=...), the same as `ptjf "
            "train`: the stage start goes to MODEL_DIR/<stage>, where the trainer reads it."
        )
    target = args.target or switch.stage_dir(model_dir, plan, args.stage)
    if args.exist_ok and checkpoints.finalized_steps(storage.check_uri(target)):
        print(f"ptjf switch: {target} already holds a checkpoint; nothing to do")
        return 0
    src, step = switch.switch(
        args.source,
        target,
        plan,
        stage=args.stage,
        model_dir=model_dir,  # refuses a target `ptjf train` would not read
        checkpoint=checkpoints.CheckpointConfig(),
        verify=args.verify,
    )
    if args.copy_metrics and distributed.is_primary():
        copied = switch.copy_metrics(src, step, target)
        print(f"ptjf switch: copied {copied} eval records of {storage.dirname(src)}")
    print(f"ptjf switch: parameters of {src} step {step} → {target} step 0 (fresh optimizer state)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ptjf import config as gin_config
    from ptjf.experiments import runner

    files, bindings, rest = gin_config.flags_to_gin(args.extra)
    if rest:
        raise PtjfError(
            f"unrecognized arguments: {' '.join(rest)} (gin settings are --gin.NAME=VALUE)."
        )
    return runner.run_sweep_command(
        files,
        bindings,
        sweep_dir=args.sweep_dir,
        parallel=args.parallel,
        emit=args.emit,
        dry_run=args.dry_run,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from ptjf.commands.regime import report_sizes
    from ptjf.experiments import report

    summary = report.write_report(
        args.dirs,
        args.out,
        point=args.point,
        figures=not args.no_figures,
        sizes=report_sizes(args.sizes),
    )
    print(summary)
    return 0


def cmd_regime(args: argparse.Namespace) -> int:
    from ptjf.commands import regime

    print(regime.run(args.dirs, args.sizes, args.margin))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ptjf.commands import demo

    demo.run_demo(args.model_dir, quick=args.quick)
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run a plan of stages: --gin_file=FILE ... --gin.NAME=VALUE ...",
        description="Runs the gin-configured plan. Rerunning the same command resumes it. "
        "Every host of a multi-host run runs the same command; Cloud TPU pods and SLURM steps "
        "are detected, elsewhere pass the three multi-process flags.",
    )
    _add_multihost_flags(p)
    p.set_defaults(fn=cmd_train, accepts_extra=True)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a run's checkpoint after the run (losses and BLEU): --gin_file=... or "
        "--sweep_dir=SWEEP",
        description="Scores a checkpoint with the run's own gin files and bindings (as given to "
        "`ptjf train`) and appends the record to MODEL_DIR/metrics.jsonl, where `ptjf report` "
        "reads it. --sweep_dir scores every finished point of a sweep and skips points already "
        "scored by BLEU, so rerunning it resumes.",
    )
    p.add_argument(
        "--checkpoint",
        help="DIR/STEP, or a stage directory (its latest step); default: the latest checkpoint "
        "of the run's last stage",
    )
    p.add_argument("--no_bleu", action="store_true", help="losses only (no beam search)")
    p.add_argument(
        "--bleu_examples",
        type=int,
        help="validation examples decoded per task (default: the run's train.bleu_examples, "
        "else train.max_eval_examples)",
    )
    p.add_argument("--sweep_dir", help="score every finished point of this sweep")
    p.add_argument("--methods", help="with --sweep_dir: only these methods, e.g. ptjf,restart")
    p.set_defaults(fn=cmd_eval, accepts_extra=True)


def _switch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "switch",
        help="stage switch: a checkpoint's parameters + a fresh optimizer state, at step 0",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a ptjf stage DIR (latest step) or DIR/STEP, or a T5X checkpoint "
        "(.../checkpoint_<step>, orbax or legacy layout); local or gs://",
    )
    p.add_argument(
        "--to",
        dest="target",
        help="the target stage directory: MODEL_DIR/<stage>, where `ptjf train` with the same "
        "gin files reads the stage (the default; any other directory is refused)",
    )
    p.add_argument("--stage", help="target stage of the gin plan (default: its last stage)")
    p.add_argument(
        "--copy_metrics",
        action="store_true",
        help="start the new run's metrics.jsonl with the source run's records up to the fork",
    )
    p.add_argument(
        "--exist_ok",
        action="store_true",
        help="do nothing (exit 0) when the target already holds a checkpoint (reruns)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="read the parameters and check their fingerprint now (ptjf train checks it anyway)",
    )
    _add_multihost_flags(p)
    p.set_defaults(fn=cmd_switch, accepts_extra=True)


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run an experiment's grid of points, sharing each pre-training: --gin_file=X.gin",
        description="Expands methods × rates × learning rates × seeds × pre-training lengths into "
        "a DAG of stage runs, runs every distinct stage 1 once, and skips finished points, so "
        "rerunning the same command resumes the sweep.",
    )
    p.add_argument("--sweep_dir", help="where the points go (default: Sweep.sweep_dir in gin)")
    p.add_argument("--parallel", type=int, default=1, help="points run at once as local processes")
    p.add_argument(
        "--emit",
        action="store_true",
        help="print each point's launch commands (in dependency order) instead of running them",
    )
    p.add_argument(
        "--dry_run", action="store_true", help="list the points and their status; run nothing"
    )
    p.set_defaults(fn=cmd_sweep, accepts_extra=True)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="tables, Pareto fronts and figures from runs' metrics.jsonl: ptjf report DIR...",
    )
    p.add_argument("dirs", nargs="+", help="sweep directories or MODEL_DIRs (searched below)")
    p.add_argument("--out", help="where report.md, results.csv and figures go (default DIR/report)")
    p.add_argument(
        "--point",
        choices=["final", "best"],
        default="final",
        help="each run's point on the front: its final eval, or each task's best (early stop)",
    )
    p.add_argument("--no_figures", action="store_true", help="tables only")
    p.add_argument(
        "--sizes",
        help="training examples per task (task=N,...), for the verdicts' kind of study; "
        "registered tasks are counted when this leaves them out",
    )
    p.set_defaults(fn=cmd_report)


def _regime_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regime",
        help="before a sweep: is the mixture where PTJF can help? ptjf regime PILOT_DIR...",
        description="Reads static-sampling pilots (a sweep's scalarization points, even while "
        "they run, or single-stage MODEL_DIRs of the mixture) and says, per low-resource rate, "
        "where the low-resource validation loss bottoms out, after how many epochs, and whether "
        "the high-resource task still improves after it; then whether PTJF can help, with N2, "
        "N1 and the rates to sweep. Writes nothing.",
    )
    p.add_argument("dirs", nargs="+", help="sweep directories or MODEL_DIRs (searched below)")
    p.add_argument(
        "--sizes", help="training sizes, task=N,… (default: counted from the registered tasks)"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="loss change that counts as the low task's rise or the high task's improvement "
        "(default 0.01)",
    )
    p.set_defaults(fn=cmd_regime)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ptjf.t5x import checkpoints as t5x_checkpoints
    from ptjf.t5x import models as t5x_models

    checkpoint = t5x_checkpoints.open_checkpoint(args.checkpoint)
    print(t5x_models.model_gin_text(checkpoint), end="")
    return 0


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the gin model file that matches a T5X checkpoint: ptjf inspect CHECKPOINT",
        description="Reads a T5X checkpoint's parameter listing (no array data) and the run's "
        "config.gin when there is one, and prints the gin model file (gin_configs/models/ "
        "format) whose parameters are exactly the checkpoint's.",
    )
    p.add_argument("checkpoint", help="a T5X checkpoint directory, .../checkpoint_<step>")
    p.set_defaults(fn=cmd_inspect)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    from ptjf.t5x import export as t5x_export

    t5x_export.add_export_parser(sub)


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="PTJF vs scalarization on the embedded Bible data")
    p.add_argument(
        "--model_dir", default="runs/demo", help="where both runs go (default runs/demo)"
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long version (tests)")
    p.set_defaults(fn=cmd_demo)


PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    rates.add_parser,
    _train_parser,
    _eval_parser,
    _switch_parser,
    _sweep_parser,
    _report_parser,
    _regime_parser,
    _inspect_parser,
    _export_parser,
    _demo_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptjf",
        description="Pre-training joint fine-tuning: staged multi-task training under imbalance.",
    )
    parser.add_argument(
        VERBOSE_FLAG,
        action="store_true",
        help="show every library's log lines (TensorFlow, XLA, JAX, absl, orbax) on the "
        "terminal, as before; by default they go to MODEL_DIR/logs/libraries-<process>.log "
        "(allowed anywhere on the command line)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, route_output: bool | None = None) -> int:
    """Runs one `ptjf` command; returns its exit status.

    `route_output` decides whether library output leaves the terminal (`ptjf.runtime.console`).
    None means: only when `argv` is None, i.e. when this is the program — the `ptjf` console
    script and `python -m ptjf.commands.cli` both call `main()` without arguments. Called
    in-process with an argument list (tests, `ptjf.train.main`), file descriptor 2 is left
    alone: pytest's capture and a caller's own logging own it.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    verbose, raw = _take_verbose(raw)
    if route_output is None:
        route_output = argv is None
    if route_output and not verbose:
        from ptjf.runtime import console

        # Before build_parser: building it imports TensorFlow and JAX, whose C++ logging
        # writes to fd 2 from the first import on.
        console.route_library_output()
    parser = build_parser()
    args, extra = parser.parse_known_args(raw)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.verbose = verbose
    from ptjf.runtime import distributed, malloc_arenas

    malloc_arenas.limit_arenas()  # before any thread starts: a lower peak memory
    _logs_to_model_dir(args, before_run=True)

    try:
        status = int(args.fn(args) or 0)
    except (PtjfError, UnknownNameError) as e:
        # gin appends "In call to configurable ..." lines: the user's message is the rest.
        message = "\n".join(
            line for line in str(e).splitlines() if not line.startswith("  In call to configurable")
        )
        print(f"ptjf {args.command}: error: {message}", file=sys.stderr)
        _say_where_logs_are(args)
        distributed.stop_after_failure(e, 2)  # a multi-process run exits here, at once
        return 2
    except Exception as e:
        _say_where_logs_are(args)
        distributed.stop_after_failure(e, 1, traceback=True)
        raise
    _logs_to_model_dir(args, before_run=False)
    if status:
        _say_where_logs_are(args)
    return status


VERBOSE_FLAG = "--verbose"


def _take_verbose(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether `--verbose` is given anywhere before a `--`, and argv without it.

    It is a flag of the `ptjf` parser, yet `ptjf demo --verbose` must work as well, and the
    decision is needed before the parser exists (building it imports TensorFlow).
    """
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != VERBOSE_FLAG]
    return len(kept) < end, kept + argv[end:]


def _model_dir_of(args: argparse.Namespace, *, before_run: bool) -> str | None:
    """The directory whose `logs/` keeps this command's library log, when there is one.

    Before the run only what the flags say (`--model_dir`, `--sweep_dir`, `--gin.MODEL_DIR=`);
    after it, also the `MODEL_DIR` the gin files bound.
    """
    for attr in ("model_dir", "sweep_dir"):
        if getattr(args, attr, None):
            return getattr(args, attr)
    for arg in getattr(args, "extra", []):
        if arg.startswith("--gin.MODEL_DIR="):
            value = arg.split("=", 1)[1]
            return value.strip("'\"") or None
    if before_run:
        return None
    try:
        import gin

        value = gin.query_parameter("%MODEL_DIR")
    except Exception:  # no gin, or MODEL_DIR unbound
        return None
    return value if isinstance(value, str) and value else None


def _process_index(args: argparse.Namespace) -> int | None:
    """This process's index for the log's name; None when not yet known (a pod before it
    joins the others)."""
    from ptjf.runtime import distributed

    if distributed._initialized:
        import jax

        return jax.process_index()
    if getattr(args, "process_index", None) is not None:
        return int(args.process_index)
    if distributed.cluster_from_environment() is None:
        return 0
    return None


def _logs_to_model_dir(args: argparse.Namespace, *, before_run: bool) -> None:
    """Moves the library log into the model dir once both it and the process index are known."""
    from ptjf.runtime import console

    routing = console.routing()
    if routing is None or routing.in_model_dir:
        return
    model_dir = _model_dir_of(args, before_run=before_run)
    index = _process_index(args)
    if model_dir is not None and index is not None:
        console.use_model_dir(model_dir, index)


def _say_where_logs_are(args: argparse.Namespace) -> None:
    """After a failure: one line naming the library log, which may say more."""
    from ptjf.runtime import console

    with contextlib.suppress(Exception):  # the failure matters more than where its log lands
        _logs_to_model_dir(args, before_run=False)
    console.say_where_logs_are(f"ptjf {args.command}")


if __name__ == "__main__":
    sys.exit(main())

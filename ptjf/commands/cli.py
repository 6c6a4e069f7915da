"""The `ptjf` command: `ptjf rates | train | eval | switch | sweep | report | demo`.

Each subcommand is a thin layer over a library function, so everything it does can also be
done from Python. Errors that ptjf raises for bad input are printed as one clear message
(exit status 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ptjf.errors import PtjfError, UnknownNameError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def cmd_rates(args: argparse.Namespace) -> int:
    """Prints each task's size, rate and the epochs it would see over `--examples`."""
    from ptjf import sampling

    weights, tau = None, args.tau
    if args.sizes:
        sizes, what, default_method = sampling.parse_sizes(args.sizes), "sizes given by hand", None
        unit = args.unit
    elif args.mixture:
        from ptjf import tasks

        spec = tasks.mixture_spec(args.mixture)
        sizes, what, default_method = spec.resolved_sizes(), f"mixture {args.mixture}", spec.method
        weights = dict(spec.weights) if spec.weights else None
        tau = tau if tau is not None else spec.tau
        # Sizes the mixture was registered with keep their unit (mC4: characters); counted
        # sizes are examples.
        unit = spec.size_unit if spec.sizes else "examples"
    else:
        raise PtjfError("Give --mixture NAME or --sizes task=size,… (see `ptjf rates --help`).")
    if args.weights:
        weights = sampling.parse_weights(args.weights)
    method = args.method or default_method or "proportional"
    params: dict[str, object] = {"sizes": sizes}
    if method == "static":
        if weights is None:
            raise PtjfError("--method static needs --weights task=w,… (or a static mixture).")
        params["weights"] = weights
    elif method == "temperature":
        params["tau"] = tau
    elif method == "unimax":
        params.update(budget=args.budget, max_epochs=args.max_epochs)
    rates = sampling.rates_for(method, unit=unit, **params)

    total = (
        args.examples
        if args.examples is not None
        else (args.budget if method == "unimax" else None)
    )
    epochs = sampling.epochs_seen(rates, sizes, total) if total is not None else None
    header = ["task", f"size ({unit})", "rate"] + ([f"epochs over {total:g}"] if epochs else [])
    rows = [
        [t, f"{sizes[t]:g}", f"{r:.4f}"] + ([f"{epochs[t]:.3g}"] if epochs else [])
        for t, r in rates.items()
    ]
    detail = {
        "temperature": f" (tau={tau:g})" if tau is not None else "",
        "unimax": f" (budget={args.budget:g}, max_epochs={args.max_epochs:g})"
        if method == "unimax"
        else "",
    }.get(method, "")
    print(f"{what} · method {method}{detail}")
    print(_format_table(header, rows))
    return 0


def _rates_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rates", help="show a mixture's sampling rates and the epochs each task sees"
    )
    p.add_argument("--mixture", help="a registered mixture, e.g. bible_en_fr_tl")
    p.add_argument("--sizes", help="sizes by hand instead of a mixture: en=13396,hi=75,…")
    p.add_argument(
        "--unit",
        default="examples",
        choices=["examples", "characters", "tokens"],
        help="what --sizes count (default examples)",
    )
    p.add_argument(
        "--method",
        choices=["static", "temperature", "proportional", "uniform", "unimax"],
        help="rate method (default: the mixture's own, else proportional)",
    )
    p.add_argument("--weights", help="static weights: task=w,…")
    p.add_argument("--tau", type=float, help="temperature τ (e.g. 3.33)")
    p.add_argument("--budget", type=float, help="UniMax budget, in the sizes' unit")
    p.add_argument("--max-epochs", type=float, dest="max_epochs", help="UniMax epoch cap per task")
    p.add_argument("--examples", type=float, help="total examples drawn, to show epochs per task")
    p.set_defaults(fn=cmd_rates)


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
    print(_format_table(["task", "val loss", "val accuracy", "train loss", "BLEU"], rows))
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
    if args.exist_ok and checkpoints.finalized_steps(storage.check_uri(args.target)):
        print(f"ptjf switch: {args.target} already holds a checkpoint; nothing to do")
        return 0
    src, step = switch.switch(
        args.source,
        args.target,
        plan,
        stage=args.stage,
        checkpoint=checkpoints.CheckpointConfig(),
        verify=args.verify,
    )
    if args.copy_metrics and distributed.is_primary():
        copied = switch.copy_metrics(src, step, args.target)
        print(f"ptjf switch: copied {copied} eval records of {storage.dirname(src)}")
    print(
        f"ptjf switch: parameters of {src} step {step} → {args.target} step 0 (fresh optimizer state)"
    )
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
    from ptjf.experiments import report

    summary = report.write_report(
        args.dirs, args.out, point=args.point, figures=not args.no_figures
    )
    print(summary)
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
    p.add_argument("--to", dest="target", required=True, help="the target stage directory")
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
    p.set_defaults(fn=cmd_report)


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
    _rates_parser,
    _train_parser,
    _eval_parser,
    _switch_parser,
    _sweep_parser,
    _report_parser,
    _inspect_parser,
    _export_parser,
    _demo_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptjf",
        description="Pre-training joint fine-tuning: staged multi-task training under imbalance.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    from ptjf.runtime import distributed, malloc_arenas

    malloc_arenas.limit_arenas()  # before any thread starts: a lower peak memory

    try:
        return int(args.fn(args) or 0)
    except (PtjfError, UnknownNameError) as e:
        # gin appends "In call to configurable ..." lines: the user's message is the rest.
        message = "\n".join(
            line for line in str(e).splitlines() if not line.startswith("  In call to configurable")
        )
        print(f"ptjf {args.command}: error: {message}", file=sys.stderr)
        distributed.stop_after_failure(e, 2)  # a multi-process run exits here, at once
        return 2
    except Exception as e:
        distributed.stop_after_failure(e, 1, traceback=True)
        raise


if __name__ == "__main__":
    sys.exit(main())

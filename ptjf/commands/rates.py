"""`ptjf rates`: a mixture's sampling rates, sizes and epochs per task, before any training."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ptjf.errors import PtjfError


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
    print(format_table(header, rows))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
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

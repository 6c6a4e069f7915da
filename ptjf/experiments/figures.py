"""Every figure of a report, drawn in one call (`ptjf report`): the loss plots of
`ptjf.experiments.plots` and the BLEU fronts of `ptjf.experiments.plots_bleu`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ptjf import storage
from ptjf.experiments.plots import (
    FigureFile,
    NoData,
    plot_curves,
    plot_efficiency,
    plot_fronts,
    plot_fronts_by_rate,
    plot_pretrain_length,
    plot_transfer,
    safe_name,
)
from ptjf.experiments.plots_bleu import bleu_figure_job
from ptjf.experiments.results import Roles, Run


def draw_figures(
    runs: Sequence[Run], roles: Roles, out_dir: str, *, point: str = "final"
) -> list[FigureFile]:
    """Draws every figure the runs support into `out_dir` (local or `gs://`); the others come
    back as skipped."""
    jobs: list[tuple[str, str, Callable[[str], str]]] = [
        (
            "fronts.png",
            "Trade-off fronts per method",
            lambda p: plot_fronts(runs, roles, p, point=point),
        ),
        (
            "fronts_by_rate.png",
            "Trade-off points by sampling rate",
            lambda p: plot_fronts_by_rate(runs, roles, p, point=point),
        ),
    ]
    jobs.append(bleu_figure_job(runs, roles, point=point))
    for task in roles.tasks:
        jobs.append(
            (
                f"efficiency_{safe_name(task)}.png",
                f"Data efficiency on {task}",
                lambda p, t=task: plot_efficiency(runs, roles, t, p, point=point),
            )
        )
    jobs += [
        (
            "transfer.png",
            "Transfer learning vs PTJF",
            lambda p: plot_transfer(runs, roles, p, point=point),
        ),
        (
            "pretrain_length.png",
            "Pre-training length",
            lambda p: plot_pretrain_length(runs, roles, p, point=point),
        ),
        ("curves.png", "Loss curves", lambda p: plot_curves(runs, roles, p)),
    ]
    storage.makedirs(out_dir)
    out = []
    for file, title, draw in jobs:
        path = storage.join(out_dir, file)
        try:
            out.append(FigureFile(file, title, path=draw(path)))
        except NoData as why:
            storage.remove(path)  # a stale figure from an earlier report would mislead
            out.append(FigureFile(file, title, skipped=str(why)))
    return out

"""`ptjf regime DIR...`: before a sweep, does the mixture sit where PTJF can help?

Reads static-sampling pilots (`ptjf.experiments.regime`) and returns the per-rate table and the
recommendation, which `ptjf.commands.cli` prints. Training sizes come from `--sizes` or, for
the tasks it leaves out, from the task registry. Only this command layer imports `ptjf.tasks`,
and only when it needs to (the import loads TensorFlow and SeqIO); the library takes sizes as
a mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ptjf.errors import ConfigError, DataError, UnknownNameError


def registry_sizes(tasks: Sequence[str]) -> dict[str, float]:
    """Each task's training-split size, counted by the registered task's source."""
    import ptjf.tasks

    sizes = {}
    for task in tasks:
        try:
            sizes[task] = float(ptjf.tasks.registration.task_size(task))
        except UnknownNameError as e:
            raise DataError(
                f"{e} The probe needs its training size: pass --sizes {task}=N,… (examples in "
                "each task's training split)."
            ) from e
    return sizes


def training_sizes(tasks: Sequence[str], given: Mapping[str, float]) -> dict[str, float]:
    """`given` (from --sizes), completed from the registry for the tasks it leaves out."""
    missing = [t for t in tasks if t not in given]
    return {**registry_sizes(missing), **given} if missing else dict(given)


def report_sizes(text: str | None) -> Callable[[Sequence[str]], dict[str, float]]:
    """`ptjf report --sizes`: the given sizes, completed from the registry where it knows the
    tasks; a task it does not know leaves the sizes unknown (the report then says which claims
    it could not test, and why) rather than failing the report."""
    from ptjf import sampling

    given = sampling.parse_sizes(text) if text else {}

    def sizes(tasks: Sequence[str]) -> dict[str, float]:
        try:
            return training_sizes(tasks, given)
        except DataError:
            return {t: given[t] for t in tasks if t in given}

    return sizes


def run(dirs: Sequence[str], sizes: str | None = None, margin: float = 0.01) -> str:
    """The probe's text for the pilots under `dirs`; `sizes` is --sizes' text (task=N,…)."""
    from ptjf import sampling
    from ptjf.experiments import regime

    if not margin >= 0:
        raise ConfigError(f"--margin {margin:g}: a margin is a loss difference; give one ≥ 0.")
    given = sampling.parse_sizes(sizes) if sizes else {}
    pilots = regime.load_pilots(dirs)
    task_sizes = training_sizes(regime.pilot_tasks(pilots), given)
    return regime.format_regime(regime.regime_of_runs(pilots, task_sizes, margin=margin))

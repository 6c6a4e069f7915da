"""Runs' non-swept settings, and the refusal to aggregate runs that differ in them.

`ptjf report` puts seeds of one configuration side by side and methods on one plane. That is a
fair comparison only when the runs differ in the swept axes alone (method, rates, τ, learning
rate, N1, seed): two runs with different model sizes or batch sizes on one front would credit
the method with what the model did. Each run's `config.gin` (the operative config gin wrote
beside its results) says what it was trained with; `check_comparable` refuses a set of runs in
which two runs give one setting different values.

Each method's gin file defines its own macros (PTJF's FINETUNE_STEPS, temperature's TAU), so a
setting present in only one of two runs is not compared.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence

from ptjf import storage
from ptjf.errors import DataError
from ptjf.experiments.results import Run

CONFIG_FILE = "config.gin"

# Macros the sweep sets per point (ptjf.experiments.sweep.expand): they are the swept axes (or
# follow from them, like a point's directory and step counts), so they differ by design.
PER_POINT_MACROS = frozenset(
    {
        "MODEL_DIR",
        "SEED",
        "LEARNING_RATE",
        "MIXTURE_RATES",
        "PRETRAIN_STEPS",
        "FINETUNE_STEPS",
        "TRAIN_STEPS",
        "TAU",
        "MAX_EPOCHS",
        # rate_schedule's and temperature_cooldown's per-point schedule (point.json's
        # start_rates / end_rates and tau say what they were).
        "SCHEDULE_START_RATES",
        "SCHEDULE_END_RATES",
        "SCHEDULE_END_STEP",
        "TAU_START",
        "TAU_END",
    }
)
# Configurables whose bindings describe the sweep or the run's bookkeeping rather than what is
# trained: the plan's stage list is the method, the grid is the sweep's, checkpoint keeping
# (keep_steps for restart's forks) and the mixture-rate function's arguments vary per point.
IGNORED_CONFIGURABLES = frozenset({"Plan", "Sweep", "CheckpointConfig", "mixture_rates"})
# Single bindings the sweep sets per point: where a run writes, and where a shared
# pre-training stops.
IGNORED_BINDINGS = frozenset({"train.model_dir", "train.last_stage"})
# point.json's facts that every run of one sweep shares; compared with the gin settings.
POINT_KEYS = ("total_steps", "tasks", "high_tasks", "low_tasks")
# How many differing settings a refusal lists.
MAX_LISTED = 3

_REFERENCE = re.compile(r"%([A-Za-z_][\w.]*)")
_NAME = re.compile(r"^[A-Za-z_][\w./]*$")


def parse_operative_config(text: str) -> dict[str, str]:
    """`NAME = value` bindings of a gin config text (macros and `Configurable.param`), values
    normalised (a Python literal as its repr, anything else with whitespace collapsed).

    Values may continue over lines (a trailing backslash, or an open bracket); comments,
    `import`/`include` lines and blank lines are skipped.
    """
    out: dict[str, str] = {}
    for statement in _statements(text):
        if statement.startswith(("import ", "from ", "include ")) or "=" not in statement:
            continue
        name, value = (s.strip() for s in statement.split("=", 1))
        if _NAME.match(name):
            out[name] = _normalise(value)
    return out


def _statements(text: str) -> list[str]:
    """The text's logical lines: comments stripped, continued lines joined."""
    out: list[str] = []
    current: list[str] = []
    depth = 0
    quote = ""
    for line in text.splitlines():
        code = []
        i = 0
        while i < len(line):
            c = line[i]
            if quote:
                if c == "\\" and i + 1 < len(line):
                    code.append(line[i : i + 2])
                    i += 2
                    continue
                if c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c == "#":
                break
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth = max(depth - 1, 0)
            code.append(c)
            i += 1
        piece = "".join(code).rstrip()
        continued = piece.endswith("\\") and not quote
        if continued:
            piece = piece[:-1]
        current.append(piece.strip())
        if not (continued or depth or quote):
            statement = " ".join(p for p in current if p)
            if statement:
                out.append(statement)
            current = []
    if current and any(current):
        out.append(" ".join(p for p in current if p))
    return out


def _normalise(value: str) -> str:
    try:
        return repr(ast.literal_eval(value))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return re.sub(r"\s+", " ", value).strip()


def _ignored(name: str) -> bool:
    """Whether a binding is per point, a method's stage (scoped) or sweep bookkeeping."""
    if name in PER_POINT_MACROS or "/" in name:
        return True
    parts = name.split(".")  # gin may prefix a configurable with its module
    short = ".".join(parts[-2:])
    return short in IGNORED_BINDINGS or (len(parts) > 1 and parts[-2] in IGNORED_CONFIGURABLES)


def _tied(name: str, bindings: Mapping[str, str], seen: frozenset[str] = frozenset()) -> bool:
    """Whether the binding's value refers (through macros) to a per-point macro: e.g.
    FINETUNE_LEARNING_RATE = %LEARNING_RATE moves with the swept learning rate."""
    for ref in _REFERENCE.findall(bindings.get(name, "")):
        if ref in PER_POINT_MACROS:
            return True
        if ref in bindings and ref not in seen and _tied(ref, bindings, seen | {name}):
            return True
    return False


def settings_from_text(text: str) -> dict[str, str]:
    """The settings of an operative config text that no sweep axis covers."""
    bindings = parse_operative_config(text)
    return {k: v for k, v in bindings.items() if not _ignored(k) and not _tied(k, bindings)}


def run_settings(run: Run) -> dict[str, str]:
    """The run's settings that no sweep axis covers: its config.gin's (when it has one) and
    point.json's tasks and total steps (when it has point.json)."""
    out: dict[str, str] = {}
    path = storage.join(run.dir, CONFIG_FILE)
    if storage.isfile(path):
        try:
            text = storage.read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"Cannot read {path}: {e}. It is the operative config `ptjf train` wrote; "
                "fix or delete it (the run is then compared by its point.json alone)."
            ) from e
        out.update(settings_from_text(text))
    if run.described:  # inferred roles say what a run saw most, not how it was configured
        for key in POINT_KEYS:
            value = run.info.get(key)
            if value is not None:
                out[key] = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def differences(runs: Sequence[Run]) -> list[tuple[str, str, Run, str, Run]]:
    """(setting, value, run, other value, other run) per setting two runs give different
    values, the first pair found per setting, in setting order."""
    first: dict[str, tuple[str, Run]] = {}
    found: dict[str, tuple[str, str, Run, str, Run]] = {}
    for run in runs:
        for key, value in run_settings(run).items():
            if key not in first:
                first[key] = (value, run)
            elif value != first[key][0] and key not in found:
                found[key] = (key, first[key][0], first[key][1], value, run)
    return [found[k] for k in sorted(found)]


def check_comparable(runs: Sequence[Run]) -> None:
    """Raises DataError when two runs (shared pre-trainings included) give one non-swept
    setting different values: their losses would not measure the methods alone."""
    found = differences(runs)
    if not found:
        return
    lines = [
        f"- {key} = {a} in {run_a.dir}, but {key} = {b} in {run_b.dir}"
        for key, a, run_a, b, run_b in found[:MAX_LISTED]
    ]
    more = f" (and {len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
    raise DataError(
        f"The runs differ in {len(found)} setting(s) that no sweep axis covers{more}:\n"
        + "\n".join(lines)
        + "\nptjf report aggregates only runs that differ in the swept axes (method, rates, τ, "
        "learning rate, N1, seed). Report them separately (one `ptjf report` per set of "
        "settings), or rerun the odd runs with matching settings."
    )

"""Runs as data: every metrics.jsonl under the given directories, read into `Run`s and tables.

A run is a MODEL_DIR holding `metrics.jsonl` (one eval record per line); a sweep point also holds
`point.json`, which says what the run is (method, rates, learning rate, pre-training length). A
run without point.json is described from its records: its method is its directory's name, and
its high-resource task is the one it saw the most examples of.

Records are cleaned the way the writer's conventions require: a resumed run appends the evals
it repeats, so the last record of each (stage, stage_step) wins; the stage switch gives two
records the same global step (a stage's last eval and the next stage's step 0), so records are
ordered by (global_step, stage_index). A broken line — the last line of a killed run, cut
mid-write — is skipped, and counted so the report can say so.

Directories may be local or `gs://` (through `ptjf.storage`); a run on an object store keeps its
log as parts (`metrics.jsonl.parts/`, see `ptjf.training.metrics_io`), read the same way.
`os.path`'s normpath, commonpath and realpath would mangle a URI (`gs://` → `gs:/`), so paths are
compared and shortened here by `normalize_dir`, `common_dir` and `relative_to`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ptjf import storage
from ptjf.errors import DataError
from ptjf.experiments.pareto import pareto_front
from ptjf.training.metrics_io import (
    METRICS_FILE,
    PARTS_SUFFIX,
    has_metrics,
    read_metrics_and_broken_lines,
)

POINT_FILE = "point.json"
DONE_FILE = "DONE"
SPLITS = ("validation", "train_subset")
# The paper's methods in the order tables and legends list them; other names follow.
METHOD_ORDER = (
    "ptjf",
    "scalarization",
    "restart",
    "temperature",
    "unimax",
    "rate_schedule",
    "temperature_cooldown",
    "ptjf_multi",
    "transfer",
)
# Directories never searched for runs: report outputs, TensorBoard event files.
_SKIPPED_DIRS = frozenset({"report", "tb"})

TABLE_COLUMNS = (
    "run",
    "method",
    "kind",
    "low_rate",
    "tau",
    "learning_rate",
    "seed",
    "pretrain_steps",
    "stage",
    "global_step",
    "split",
    "task",
    "loss",
    "accuracy",
    "bleu",
    "examples_seen",
    "tokens_seen",
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: where it is, what it is (point.json or inferred), and its eval records.

    records: eval records, deduplicated and sorted (see the module docstring).
    broken_lines: 1-based numbers of the metrics.jsonl lines that could not be read.
    done: whether the sweep marked the point finished (`DONE`); None outside a sweep.
    """

    dir: str
    name: str
    info: Mapping[str, Any]
    records: tuple[Mapping[str, Any], ...]
    broken_lines: tuple[int, ...] = ()
    done: bool | None = None

    @property
    def method(self) -> str:
        return str(self.info.get("method") or storage.basename(self.dir))

    @property
    def kind(self) -> str:
        """ "point" or "shared" (a sweep's shared pre-training), "run" outside a sweep."""
        return str(self.info.get("kind") or "run")

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.info.get("tasks") or ())

    @property
    def high_tasks(self) -> tuple[str, ...]:
        return tuple(self.info.get("high_tasks") or ())

    @property
    def low_tasks(self) -> tuple[str, ...]:
        return tuple(self.info.get("low_tasks") or ())

    @property
    def described(self) -> bool:
        """Whether point.json described the run (otherwise its roles were inferred)."""
        return "method" in self.info

    @property
    def path(self) -> str:
        return storage.join(self.dir, METRICS_FILE)

    def task_rate(self, task: str) -> float | None:
        """The task's sampling rate in the joint stage, when point.json gives one."""
        rates = self.info.get("rates")
        if isinstance(rates, Mapping) and rates:
            total = sum(float(v) for v in rates.values())
            return float(rates.get(task, 0.0)) / total if total > 0 else None
        low_rate = self.info.get("low_rate")
        if low_rate is not None and self.low_tasks == (task,):
            return float(low_rate)
        return None


@dataclasses.dataclass(frozen=True)
class Roles:
    """The report's tasks: high-resource first, then low-resource, each in first-seen order."""

    high: tuple[str, ...]
    low: tuple[str, ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.high + self.low


# --- reading ----------------------------------------------------------------------------------


def read_records(path: str) -> tuple[list[dict], list[int]]:
    """(records, broken line numbers) of one metrics.jsonl, in file order (`read_metrics`'s
    rules: a line cut by a killed run is skipped with a warning, and counted here)."""
    return read_metrics_and_broken_lines(path)


def clean_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Eval records, the last one per (stage, stage_step), ordered by (global_step, stage)."""
    last: dict[tuple, dict] = {}
    for r in records:
        if "global_step" not in r:
            continue
        key = (r.get("stage_index"), r.get("stage"), r.get("stage_step", r["global_step"]))
        last[key] = dict(r)  # a later line is the resumed attempt's: it wins
    return sorted(last.values(), key=lambda r: (r["global_step"], r.get("stage_index") or 0))


def _read_json(path: str) -> dict:
    try:
        data = json.loads(storage.read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"Cannot read {path}: {e}. point.json is written by `ptjf sweep`; fix or delete it "
            "(the run is then described from its metrics alone)."
        ) from e
    if not isinstance(data, dict):
        raise DataError(f"{path} holds {type(data).__name__}, not a JSON object.")
    return data


def _inferred_info(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Tasks and roles of a run without point.json: the most-seen task is high-resource."""
    tasks: list[str] = []
    for r in records:
        for split in SPLITS:
            for t in r.get(split) or {}:
                if t not in tasks:
                    tasks.append(t)
    seen = dict(records[-1].get("examples_seen") or {}) if records else {}
    if not tasks or not seen:
        return {"tasks": tasks, "high_tasks": tasks[:1], "low_tasks": tasks[1:]}
    high = max(tasks, key=lambda t: (seen.get(t, 0), -tasks.index(t)))
    return {"tasks": tasks, "high_tasks": [high], "low_tasks": [t for t in tasks if t != high]}


def load_run(directory: str) -> Run:
    """The run in `directory` (which holds metrics.jsonl, and point.json in a sweep)."""
    directory = normalize_dir(directory)
    path = storage.join(directory, METRICS_FILE)
    if not has_metrics(path):
        raise DataError(f"No {METRICS_FILE} in {directory}: it is not a run directory.")
    raw, broken = read_records(path)
    records = clean_records(raw)
    point_file = storage.join(directory, POINT_FILE)
    has_point = storage.isfile(point_file)
    info = _read_json(point_file) if has_point else {}
    inferred = _inferred_info(records)
    for key in ("tasks", "high_tasks", "low_tasks"):
        if not info.get(key):
            info[key] = inferred[key]
    done = storage.exists(storage.join(directory, DONE_FILE)) if has_point else None
    name = str(info.get("name") or storage.basename(directory))
    return Run(directory, name, info, tuple(records), tuple(broken), done)


_PARTS_DIR = METRICS_FILE + PARTS_SUFFIX


def find_run_dirs(directory: str) -> list[str]:
    """Every directory under `directory` (itself included) holding a metrics log, sorted: a
    metrics.jsonl, or its parts (metrics.jsonl.parts/, a run on an object store).

    A run directory is not searched further (its stage folders hold checkpoints, not runs);
    report outputs and TensorBoard folders are skipped.
    """
    directory = storage.check_uri(os.fspath(directory))
    if storage.is_remote(directory):
        root = normalize_dir(directory)
        found = run_dirs_in(storage.walk_files(root))
        return sorted(storage.join(root, d) if d else root for d in found)
    found = []
    for root, dirs, files in os.walk(directory):
        if METRICS_FILE in files or _PARTS_DIR in dirs:
            found.append(os.path.normpath(root))
            dirs[:] = []
            continue
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in _SKIPPED_DIRS and not os.path.isfile(os.path.join(root, d, "report.md"))
        )
    return sorted(found)


def run_dirs_in(files: Iterable[str]) -> list[str]:
    """The run directories among a tree's files (paths relative to its root, '/'-separated),
    by `find_run_dirs`' rules, as relative paths ("" for the root itself), sorted.

    An object store lists a tree at once (no directories to walk), so the rules are applied to
    the listing: a directory holding metrics.jsonl or metrics.jsonl.parts/ is a run; nothing
    below a run, below a report or TensorBoard folder, or below a folder holding report.md is.
    """
    files = set(files)
    candidates: set[tuple[str, ...]] = set()
    for f in files:
        parts = tuple(f.split("/"))
        if parts[-1] == METRICS_FILE:
            candidates.add(parts[:-1])
        elif len(parts) >= 2 and parts[-2] == _PARTS_DIR:
            candidates.add(parts[:-2])

    def reached(d: tuple[str, ...]) -> bool:
        for i, name in enumerate(d):
            if d[:i] in candidates or name in _SKIPPED_DIRS:
                return False
            if "/".join((*d[: i + 1], "report.md")) in files:
                return False
        return True

    return sorted("/".join(d) for d in candidates if reached(d))


# --- paths that may be URIs -------------------------------------------------------------------


def normalize_dir(path: str | os.PathLike) -> str:
    """One spelling of a directory: `os.path.normpath` for a local path; for a `gs://` URI the
    same without collapsing the scheme's `//` (no trailing, doubled or `.` parts; `..` resolved
    within the bucket)."""
    p = storage.check_uri(os.fspath(path))
    if not storage.is_remote(p):
        return os.path.normpath(p)
    bucket, *rest = p[len(storage.GCS) :].split("/")
    parts: list[str] = []
    for c in rest:
        if c in ("", "."):
            continue
        if c == "..":
            if parts:
                parts.pop()
            continue
        parts.append(c)
    return storage.GCS + "/".join([bucket, *parts])


def _place(path: str) -> str:
    """What makes two spellings of a directory the same one (symlinks resolved when local)."""
    return normalize_dir(path) if storage.is_remote(path) else os.path.realpath(path)


def common_dir(paths: Sequence[str]) -> str | None:
    """The deepest directory holding every one of `paths` (local ones made absolute); None when
    they share none (local paths and `gs://` URIs, or two buckets)."""
    remote = [storage.is_remote(p) for p in paths]
    if not any(remote):
        return os.path.commonpath([os.path.abspath(p) for p in paths])
    if not all(remote):
        return None
    split = [normalize_dir(p)[len(storage.GCS) :].split("/") for p in paths]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return storage.GCS + "/".join(common) if common else None


def relative_to(path: str, base: str | None) -> str:
    """`path` relative to `base` (a `common_dir` of it); the path itself when `base` is None."""
    if base is None:
        return normalize_dir(path)
    if not storage.is_remote(path):
        return os.path.relpath(os.path.abspath(path), base)
    rest = normalize_dir(path)[len(base) :].strip("/")
    return rest or "."


def load_runs(dirs: Sequence[str | os.PathLike]) -> list[Run]:
    """All runs under `dirs` (sweep directories or MODEL_DIRs), each once, in path order."""
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    paths: list[str] = []
    for d in dirs:
        d = storage.check_uri(os.fspath(d))
        if not storage.isdir(d):
            raise DataError(
                f"{d} is not a directory. Pass sweep directories (from `ptjf sweep`) or run "
                f"directories (MODEL_DIRs holding {METRICS_FILE})."
            )
        for p in find_run_dirs(d):
            if _place(p) not in {_place(q) for q in paths}:
                paths.append(p)
    if not paths:
        raise DataError(
            f"No runs found under {', '.join(map(os.fspath, dirs))}. A run directory (MODEL_DIR) "
            f"holds {METRICS_FILE}, written by `ptjf train` at each eval; a sweep directory holds "
            f"shared/<name>/ and points/<name>/ run directories. Pass one of those, or wait "
            "for a run's first eval."
        )
    return _unique_names([load_run(p) for p in paths])


def _unique_names(runs: list[Run]) -> list[Run]:
    """Runs whose names clash (same basename in two places) are named by their relative path."""
    counts = collections.Counter(r.name for r in runs)
    if all(c == 1 for c in counts.values()):
        return runs
    base = common_dir([r.dir for r in runs])
    return [
        dataclasses.replace(r, name=relative_to(r.dir, base)) if counts[r.name] > 1 else r
        for r in runs
    ]


# --- roles and points -------------------------------------------------------------------------


def task_roles(runs: Sequence[Run]) -> Roles:
    """High- and low-resource tasks over all runs, by majority of the runs' own roles.

    Runs described by point.json outvote inferred ones: a sweep says which task is which, while
    an inferred role only says which task a run happened to see most.
    """
    described = [r for r in runs if r.described]
    voters = described or list(runs)
    order: list[str] = []
    votes: collections.Counter = collections.Counter()
    for run in voters:
        for t in run.tasks:
            if t not in order:
                order.append(t)
        for t in run.high_tasks:
            votes[t] += 1
        for t in run.low_tasks:
            votes[t] -= 1
    high = tuple(t for t in order if votes[t] > 0)
    low = tuple(t for t in order if votes[t] <= 0)
    if not high and low:
        high, low = low[:1], low[1:]
    return Roles(high, low)


def split_losses(run: Run, split: str, task: str) -> list[tuple[int, float]]:
    """(global_step, loss) of every eval that scored `task` on `split`."""
    out = []
    for r in run.records:
        scores = (r.get(split) or {}).get(task)
        if isinstance(scores, Mapping) and "loss" in scores:
            out.append((int(r["global_step"]), _float(scores["loss"])))
    return out


def final_point(run: Run, split: str, tasks: Sequence[str]) -> list[float]:
    """Each task's loss at the run's last eval of `split` (NaN where it has none)."""
    last = next((r for r in reversed(run.records) if r.get(split)), None)
    if last is None:
        return [math.nan] * len(tasks)
    return [_float((last[split].get(t) or {}).get("loss")) for t in tasks]


def best_point(run: Run, split: str, tasks: Sequence[str]) -> list[float]:
    """Each task's lowest loss over the run's evals (early stopping per task); NaNs ignored."""
    out = []
    for t in tasks:
        finite = [loss for _, loss in split_losses(run, split, t) if not math.isnan(loss)]
        out.append(min(finite) if finite else math.nan)
    return out


def run_point(run: Run, split: str, tasks: Sequence[str], point: str = "final") -> list[float]:
    """`final_point` or `best_point`, as `ptjf report --point` chooses."""
    if point == "final":
        return final_point(run, split, tasks)
    if point == "best":
        return best_point(run, split, tasks)
    raise DataError(f"point={point!r}: choose 'final' (each run's last eval) or 'best'.")


def methods(runs: Sequence[Run]) -> list[str]:
    """The points' methods (shared pre-trainings are no method's points), in display order."""
    names = list(dict.fromkeys(r.method for r in runs if r.kind != "shared"))
    known = [m for m in METHOD_ORDER if m in names]
    return known + [m for m in names if m not in known]


def points_of(runs: Sequence[Run], method: str) -> list[Run]:
    """A method's points: its runs with at least one eval, shared pre-trainings excluded."""
    return [r for r in runs if r.method == method and r.kind != "shared" and r.records]


def best_runs(runs: Sequence[Run], tasks: Sequence[str], point: str = "final") -> dict[str, Run]:
    """Each method's run with the lowest mean validation loss over `tasks` (the low-resource
    tasks: the paper's "best" run, Fig. 3). Methods whose runs all diverged are left out."""
    best: dict[str, Run] = {}
    for method in methods(runs):
        scored = []
        for run in points_of(runs, method):
            losses = run_point(run, "validation", tasks, point)
            if losses and not any(math.isnan(x) for x in losses):
                scored.append((sum(losses) / len(losses), run))
        if scored:
            best[method] = min(scored, key=lambda s: s[0])[1]
    return best


def front_flags(
    runs: Sequence[Run],
    tasks: Sequence[str],
    point: str = "final",
    *,
    split: str = "validation",
    by_method: bool = True,
) -> list[bool | None]:
    """Per run: whether its point is on the Pareto front over `tasks` (paper §2).

    by_method: each method's own front (runs compete with their method's runs only); otherwise
    one front over all points. Shared pre-trainings and runs without evals get None.
    """
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, run in enumerate(runs):
        if run.kind != "shared" and run.records:
            groups[run.method if by_method else ""].append(i)
    flags: list[bool | None] = [None] * len(runs)
    if not tasks:
        return flags
    for members in groups.values():
        points = [run_point(runs[i], split, tasks, point) for i in members]
        on_front = set(pareto_front(points))
        for j, i in enumerate(members):
            flags[i] = j in on_front
    return flags


def final_seen(run: Run, what: str = "examples_seen") -> dict[str, int]:
    """Examples (or tokens) seen per task by the run's last eval."""
    return dict(run.records[-1].get(what) or {}) if run.records else {}


def _float(x: Any) -> float:
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# --- the long table ---------------------------------------------------------------------------


def results_table(runs: Sequence[Run]) -> list[dict]:
    """One row per (run, eval, split, task): every number `ptjf report` draws from."""
    rows = []
    for run in runs:
        info = run.info
        for r in run.records:
            for split in SPLITS:
                for task, scores in (r.get(split) or {}).items():
                    bleu = (r.get("bleu") or {}).get(task) if split == "validation" else None
                    rows.append(
                        {
                            "run": run.name,
                            "method": run.method,
                            "kind": run.kind,
                            "low_rate": info.get("low_rate"),
                            "tau": info.get("tau"),
                            "learning_rate": info.get("learning_rate"),
                            "seed": info.get("seed"),
                            "pretrain_steps": info.get("pretrain_steps"),
                            "stage": r.get("stage"),
                            "global_step": r["global_step"],
                            "split": split,
                            "task": task,
                            "loss": scores.get("loss"),
                            "accuracy": scores.get("accuracy"),
                            "bleu": bleu,
                            "examples_seen": (r.get("examples_seen") or {}).get(task),
                            "tokens_seen": (r.get("tokens_seen") or {}).get(task),
                        }
                    )
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str, columns: Sequence[str] = ()) -> str:
    """Writes `rows` as CSV (None → empty cell), locally or to `gs://`, whole; columns default to
    the keys in first-seen order."""
    if not columns:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen) or list(TABLE_COLUMNS)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    storage.write_text(path, text.getvalue())
    return path

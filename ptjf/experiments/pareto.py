"""Pareto dominance and fronts over per-task losses (paper §2, "Pareto Optimality").

θ dominates θ' when every task loss of θ is ≤ that of θ' and at least one is strictly <. The
front is the set of points no other point dominates. Everything here *minimises*; negate
metrics where larger is better (e.g. BLEU) before calling.

Conventions, fixed so that fronts over sweeps are reproducible:

* Duplicates: equal points do not dominate each other (neither is strictly better anywhere),
  so every copy of a non-dominated point stays on the front.
* NaN: a point with any NaN objective is a diverged run. It is never on the front and never
  dominates anything (IEEE comparisons with NaN are false, so it drops out of the ≤ test too).
* ±inf is an ordinary (if extreme) loss value and compares as usual.

Cost is O(n² K) time, vectorised with numpy and processed in row blocks so memory stays
O(block · n · K) for sweeps of thousands of points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ptjf.errors import DataError

# Rows of candidates compared against all points at once: bounds the (block, n, K) temporaries.
_BLOCK = 256


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    try:
        vec = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"{name} must be a sequence of numbers (one loss per task); got {values!r} ({err})."
        ) from err
    if vec.ndim != 1 or vec.size == 0:
        raise DataError(
            f"{name} must be a non-empty 1-D sequence of losses; got shape {vec.shape} from "
            f"{values!r}. Pass one number per task."
        )
    return vec


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether `a` Pareto-dominates `b` (minimisation): a ≤ b everywhere and a < b somewhere.

    A point with a NaN on either side neither dominates nor is dominated (diverged run).
    """
    va, vb = _as_vector(a, "a"), _as_vector(b, "b")
    if va.shape != vb.shape:
        raise DataError(
            f"Cannot compare points with different numbers of objectives: len(a)={va.size}, "
            f"len(b)={vb.size}. Both must hold one loss per task, in the same task order."
        )
    return bool(np.all(va <= vb) and np.any(va < vb))


def _as_matrix(points: Sequence[Sequence[float]]) -> np.ndarray:
    """(n, K) float array, raising DataError that names the first row of the wrong length."""
    rows = list(points)
    if not rows:
        return np.zeros((0, 0))
    vectors = [_as_vector(row, f"points[{i}]") for i, row in enumerate(rows)]
    k = vectors[0].size
    for i, vec in enumerate(vectors):
        if vec.size != k:
            raise DataError(
                f"points[{i}] has {vec.size} objectives but points[0] has {k}. Every point "
                "needs one loss per task, in the same task order; drop or fix that point."
            )
    return np.stack(vectors)


def _front_mask(matrix: np.ndarray) -> np.ndarray:
    """Boolean mask of non-dominated, NaN-free rows of an (n, K) array."""
    n = matrix.shape[0]
    valid = ~np.isnan(matrix).any(axis=1)
    clean = matrix[valid]
    on_front = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero(valid)
    for start in range(0, clean.shape[0], _BLOCK):
        block = clean[start : start + _BLOCK]
        # dominated[r] ⇔ some clean row d has d ≤ block[r] everywhere and d < block[r] somewhere.
        le = np.all(clean[None, :, :] <= block[:, None, :], axis=2)
        lt = np.any(clean[None, :, :] < block[:, None, :], axis=2)
        dominated = np.any(le & lt, axis=1)
        on_front[candidates[start : start + _BLOCK]] = ~dominated
    return on_front


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order, for any number of objectives K ≥ 1.

    Duplicates of a non-dominated point are all kept; rows with NaN are never on the front and
    never dominate (see the module docstring). Empty input gives []. Points of differing
    lengths raise `DataError` naming the offending index.
    """
    matrix = _as_matrix(points)
    if matrix.shape[0] == 0:
        return []
    return [int(i) for i in np.flatnonzero(_front_mask(matrix))]


def pareto_front_records(records: Sequence[Mapping], objectives: Sequence[str]) -> list[Mapping]:
    """The non-dominated records (same objects, input order) over the named loss keys.

    E.g. `pareto_front_records(runs, ["loss/en_fr", "loss/en_ro"])` keeps the runs on the
    low- vs high-resource trade-off front. A record without one of the keys raises `DataError`.
    """
    if isinstance(objectives, str) or len(objectives) == 0:
        raise DataError(
            f"objectives must be a non-empty list of record keys; got {objectives!r}. "
            'Pass e.g. ["loss/high", "loss/low"].'
        )
    objectives = list(objectives)
    records = list(records)
    points = []
    for i, record in enumerate(records):
        row = []
        for key in objectives:
            if key not in record:
                raise DataError(
                    f"records[{i}] has no key {key!r} (its keys: {sorted(map(str, record))}). "
                    f"Every record needs all objectives {objectives}; fix or drop the record."
                )
            value = record[key]
            try:
                row.append(float(value))
            except (TypeError, ValueError) as err:
                raise DataError(
                    f"records[{i}][{key!r}] = {value!r} is not a number; objectives must be "
                    "numeric losses."
                ) from err
        points.append(row)
    return [records[i] for i in pareto_front(points)]


def front_curve(points_2d: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The 2-objective front's points sorted by the first objective (ties by the second).

    This is the line a trade-off plot draws (e.g. high-resource loss on x, low-resource on y);
    along a front the second objective is then non-increasing. Duplicates are kept.
    """
    matrix = _as_matrix(points_2d)
    if matrix.shape[0] == 0:
        return []
    if matrix.shape[1] != 2:
        raise DataError(
            f"front_curve needs exactly 2 objectives per point; got {matrix.shape[1]}. "
            "Use pareto_front for K != 2, or select two objectives first."
        )
    front = matrix[_front_mask(matrix)]
    order = np.lexsort((front[:, 1], front[:, 0]))
    return [(float(x), float(y)) for x, y in front[order]]

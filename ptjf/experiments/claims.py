"""The paper's claims, judged from a report's numbers: holds, does not hold, or undecided.

Each claim is a comparison between configurations over seeds (`ptjf.experiments.seeds`), made
with the report's rule: a configuration beats another only beyond the spread (every seed of it
better than every seed of the other). A claim is judged only when the runs hold what it needs
(its methods, and for the first two the kind of study, read from the tasks' training sizes);
otherwise it is listed as not tested. With one seed anywhere nothing is beyond the spread, so
every judged claim is "undecided: one seed"; while a sweep point has no DONE file (still
running, or failed) every judged claim is undecided too, since its numbers may still change.

The claims (paper §4.1):
1. With a low-resource task, PTJF's front improves on static sampling's (§4.1.2, Fig. 2).
2. With two high-resource tasks, PTJF gives no gain over static sampling (§4.1.1, Fig. 1).
3. The restart baseline does not explain the gain: PTJF beats it (§4.1.2, Fig. 2).
4. Fine-tuning on the low-resource task alone forgets the high-resource task (§4.1.3, Fig. 6).
5. Changing the rates within one stage (a linear decay of the high-resource rate, App. C) does
   not improve on PTJF: no `rate_schedule` configuration beats a PTJF one.
6. Beyond the paper: a temperature cooldown within one stage (Li et al., NAACL 2025) does not
   improve on PTJF: no `temperature_cooldown` configuration beats a PTJF one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ptjf.experiments.regime import LOW_RESOURCE_FRACTION
from ptjf.experiments.results import Roles, split_losses
from ptjf.experiments.seeds import (
    Config,
    Spread,
    better_beyond_spread,
    dominates_beyond_spread,
    fewest_seeds,
)

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
# A task is low-resource when its training set is at most LOW_RESOURCE_FRACTION of the largest
# task's (`ptjf regime`'s rule; the paper's pairs are 1 : 16 to 1 : 67); tasks within a factor
# HIGH_HIGH_RATIO of each other make a high + high study. In between, neither claim 1 nor 2
# is judged.
HIGH_HIGH_RATIO = 3.0


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim: its number, statement, verdict (or None: not tested) and the numbers behind."""

    number: int
    statement: str
    verdict: str | None
    evidence: str


def study_kind(roles: Roles, sizes: Mapping[str, float] | None) -> str | None:
    """'high+low', 'high+high' or None (sizes unknown, or an imbalance in between)."""
    if not sizes or any(t not in sizes for t in roles.tasks):
        return None
    largest = max(float(sizes[t]) for t in roles.tasks)
    smallest = min(float(sizes[t]) for t in roles.tasks)
    if smallest <= largest * LOW_RESOURCE_FRACTION:
        return "high+low"
    if smallest >= largest / HIGH_HIGH_RATIO:
        return "high+high"
    return None


def _of(configs: Sequence[Config], method: str) -> list[Config]:
    return [c for c in configs if c.method == method]


def _wins(
    winners: Sequence[Config], losers: Sequence[Config], tasks: Sequence[str], measure: str
) -> list[tuple[Config, Config]]:
    return [
        (w, lo) for lo in losers for w in winners if dominates_beyond_spread(w, lo, tasks, measure)
    ]


def _gaps(a: Config, b: Config, tasks: Sequence[str], measure: str) -> str:
    """Mean differences a − b per task, e.g. "−0.120 / −0.031 nats"."""
    diffs = [a.spread(t, measure).mean - b.spread(t, measure).mean for t in tasks]
    return " / ".join(f"{d:+.3f}".replace("-", "−") for d in diffs) + " nats"


def _pairs_text(pairs: Sequence[tuple[Config, Config]], tasks: Sequence[str], measure: str) -> str:
    shown = [f"{w.label} beats {lo.label} ({_gaps(w, lo, tasks, measure)})" for w, lo in pairs[:3]]
    more = f"; and {len(pairs) - 3} more" if len(pairs) > 3 else ""
    return "; ".join(shown) + more


def _spread_text(s: Spread) -> str:
    if s.diverged:
        return "diverged"
    if s.n == 1:
        return f"{s.mean:.3f}"
    return f"{s.mean:.3f} [{s.min:.3f}–{s.max:.3f}]"


def _best_low(configs: Sequence[Config], low: str, measure: str) -> str:
    scored = [(c.spread(low, measure), c) for c in configs]
    scored = [(s, c) for s, c in scored if not s.diverged]
    if not scored:
        return "all diverged"
    s, c = min(scored, key=lambda sc: sc[0].mean)
    return f"{c.label}: {_spread_text(s)}"


def _front_claim(
    a: Sequence[Config],
    b: Sequence[Config],
    tasks: Sequence[str],
    measure: str,
    *,
    names: tuple[str, str],
) -> tuple[list, list, str]:
    """(a-over-b wins, b-over-a wins, evidence text) of two methods' configurations."""
    a_wins, b_wins = _wins(a, b, tasks, measure), _wins(b, a, tasks, measure)
    dominated_b = len({id(lo) for _, lo in a_wins})
    dominated_a = len({id(lo) for _, lo in b_wins})
    text = (
        f"{dominated_b} of {len(b)} {names[1]} configurations dominated beyond the spread by "
        f"{names[0]}, {dominated_a} of {len(a)} {names[0]} configurations by {names[1]}"
    )
    pairs = a_wins + b_wins
    if pairs:
        text += f" ({_pairs_text(pairs, tasks, measure)})"
    return a_wins, b_wins, text


def judge(
    configs: Sequence[Config],
    roles: Roles,
    sizes: Mapping[str, float] | None = None,
    measure: str = "final",
) -> list[Claim]:
    """Every claim of the module docstring, judged on `configs` (see there for the rules)."""
    tasks = roles.tasks
    one_seed = fewest_seeds(configs) == 1
    kind = study_kind(roles, sizes)
    ptjf, static = _of(configs, "ptjf"), _of(configs, "scalarization")
    restart, transfer = _of(configs, "restart"), _of(configs, "transfer")
    low = roles.low[0] if roles.low else None
    claims: list[Claim] = []

    unfinished = sum(r.done is False for c in configs for r in c.runs)
    reasons = (["one seed"] if one_seed else []) + (
        [f"{unfinished} run(s) unfinished"] if unfinished else []
    )

    def add(number: int, statement: str, verdict: str | None, evidence: str) -> None:
        if verdict is not None and reasons:
            verdict = f"{UNDECIDED}: {'; '.join(reasons)}"
            evidence += "; " + " and ".join(
                ["one seed cannot say"] * one_seed
                + ["a sweep point without DONE may still change"] * bool(unfinished)
            )
        claims.append(Claim(number, statement, verdict, evidence))

    statement = "With a low-resource task, PTJF's front improves on static sampling's (§4.1.2)"
    if kind == "high+low" and ptjf and static and low:
        wins, losses, text = _front_claim(ptjf, static, tasks, measure, names=("PTJF", "static"))
        verdict = HOLDS if wins and not losses else FAILS if losses and not wins else UNDECIDED
        text += (
            f". Best {low} loss: {_best_low(ptjf, low, measure)} vs "
            f"{_best_low(static, low, measure)}"
        )
        add(1, statement, verdict, text)
    else:
        add(1, statement, None, _untested(kind, "high+low", "ptjf and scalarization", sizes))

    statement = "With two high-resource tasks, PTJF gives no gain over static sampling (§4.1.1)"
    if kind == "high+high" and ptjf and static:
        wins, _, text = _front_claim(ptjf, static, tasks, measure, names=("PTJF", "static"))
        add(2, statement, FAILS if wins else HOLDS, text)
    else:
        add(2, statement, None, _untested(kind, "high+high", "ptjf and scalarization", sizes))

    statement = "The restart baseline does not explain PTJF's gain: PTJF beats it (§4.1.2)"
    if ptjf and restart:
        wins, losses, text = _front_claim(ptjf, restart, tasks, measure, names=("PTJF", "restart"))
        verdict = HOLDS if wins and not losses else FAILS if losses and not wins else UNDECIDED
        add(3, statement, verdict, text)
    else:
        add(3, statement, None, "not tested here: needs ptjf and restart points")

    statement = "Fine-tuning on the low-resource task alone forgets the high-resource task (§4.1.3)"
    if ptjf and transfer and roles.high:
        verdict, text = _forgetting(ptjf, transfer, roles.high[0], measure)
        if low:
            text += (
                f". On {low} itself (not judged here; the paper's Fig. 6 finds transfer worse "
                f"there): {_best_low(transfer, low, measure)} vs "
                f"{_best_low(ptjf, low, measure)}"
            )
        add(4, statement, verdict, text)
    else:
        add(4, statement, None, "not tested here: needs ptjf and transfer points")

    for number, method, statement in SCHEDULE_CLAIMS:
        scheduled = _of(configs, method)
        if ptjf and scheduled:
            wins, losses, text = _front_claim(
                ptjf, scheduled, tasks, measure, names=("PTJF", method)
            )
            if low:
                text += (
                    f". Best {low} loss: {_best_low(ptjf, low, measure)} vs "
                    f"{_best_low(scheduled, low, measure)}"
                )
            add(number, statement, FAILS if losses else HOLDS, text)
        else:
            add(number, statement, None, f"not tested here: needs ptjf and {method} points")
    return claims


# Claims 5 and 6: a schedule inside one stage against PTJF's two stages. "Holds" when no
# configuration of the schedule beats a PTJF one beyond the spread (as claim 2's "no gain").
SCHEDULE_CLAIMS = (
    (
        5,
        "rate_schedule",
        "A linear rate schedule within one stage does not improve on PTJF (App. C)",
    ),
    (
        6,
        "temperature_cooldown",
        "Beyond the paper: a temperature cooldown within one stage does not improve on PTJF",
    ),
)


def _untested(kind: str | None, wanted: str, methods: str, sizes: Mapping | None) -> str:
    if kind is None and not sizes:
        return (
            "not tested here: the tasks' training sizes are unknown (registered tasks are "
            "counted; otherwise pass `ptjf report --sizes task=N,...`)"
        )
    if kind != wanted:
        return f"not tested here: needs a {wanted} study (these runs are {kind or 'neither'})"
    return f"not tested here: needs {methods} points"


def _switch_spread(config: Config, task: str) -> Spread:
    """The task's loss at each seed's switch (the eval at step N1, from the parent's history)."""
    n1 = config.info.get("pretrain_steps")
    values = []
    for run in config.runs:
        at = [loss for step, loss in split_losses(run, "validation", task) if step == n1]
        values.append(at[0] if at else float("nan"))
    return Spread(tuple(values))


def _forgetting(
    ptjf: Sequence[Config], transfer: Sequence[Config], high: str, measure: str
) -> tuple[str, str]:
    """Holds when every transfer configuration's high-resource loss rose from the switch beyond
    the spread and ends worse, beyond the spread, than every PTJF configuration with its N1;
    fails when no seed's high-resource loss rose at all."""
    verdicts, texts = [], []
    for t in transfer:
        n1 = t.info.get("pretrain_steps")
        at_switch, final = _switch_spread(t, high), t.spread(high, "final")
        peers = [p for p in ptjf if p.info.get("pretrain_steps") == n1] or list(ptjf)
        rose = better_beyond_spread(at_switch, final)
        worse = all(better_beyond_spread(p.spread(high, "final"), final) for p in peers)
        no_rise = not at_switch.diverged and all(
            f <= s for f, s in zip(final.values, at_switch.values, strict=True)
        )
        verdicts.append(HOLDS if rose and worse else FAILS if no_rise else UNDECIDED)
        best_peer = min(peers, key=lambda p: p.spread(high, "final").mean)
        texts.append(
            f"{t.label}: {high} loss {_spread_text(at_switch)} at the switch → "
            f"{_spread_text(final)} at the end; PTJF's best on it, {best_peer.label}: "
            f"{_spread_text(best_peer.spread(high, 'final'))}"
        )
    verdict = verdicts[0] if len(set(verdicts)) == 1 else UNDECIDED
    return verdict, "; ".join(texts)


def render_claims(
    claims: Sequence[Claim], *, kind: str | None, seeds: int, measure: str, rule: str
) -> list[str]:
    """The "## Verdicts" section of report.md (the lines; also what the docs quote)."""
    study = {"high+low": "high + low resource", "high+high": "high + high resource"}.get(
        kind or "", "of unknown imbalance"
    )
    point = "each run's final eval" if measure == "final" else "each task's best eval"
    lines = [
        "## Verdicts",
        "",
        f"Computed from this report's numbers: a study {study}, {seeds} seed(s) per "
        f"configuration at the fewest, {point}. {rule}",
        "",
    ]
    tested = [c for c in claims if c.verdict is not None]
    for c in tested:
        lines.append(f"- **{c.verdict[0].upper()}{c.verdict[1:]}** — {c.statement}: {c.evidence}.")
    untested = [c for c in claims if c.verdict is None]
    if untested:
        lines += ["", "Not tested by these runs:"]
        lines += [f"- {c.statement}: {c.evidence}." for c in untested]
    return lines

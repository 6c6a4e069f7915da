"""Fault injection at named points of a run, for the reliability tests and for drills.

`PTJF_FAULT=<action>@<point>[:<step>]` makes the run fail there on purpose, so that recovery
can be checked at moments a random kill rarely hits:

    PTJF_FAULT=kill@save:4          SIGKILL right after the async save of stage step 4 started
    PTJF_FAULT=kill@stage_start:1   SIGKILL when stage 1 (the second) begins, before its step-0
                                    checkpoint: the moment of the stage switch
    PTJF_FAULT=enospc@save_write:4  writing stage step 4 fails: "No space left on device"

The number after the point is the stage step (`save`, `save_write`) or the stage index
(`stage_start`). Points are checked only where the trainer and the checkpointer call `inject`; with the variable
unset (always, outside tests and drills) `inject` returns at once.
"""

from __future__ import annotations

import errno
import os
import signal

from ptjf.errors import ConfigError

ENV = "PTJF_FAULT"
ACTIONS = ("kill", "enospc")
POINTS = ("save", "save_write", "stage_start")


def parse(spec: str) -> tuple[str, str, int | None]:
    """(action, point, step or None) of a `PTJF_FAULT` value."""
    action, sep, where = spec.partition("@")
    point, _, step = where.partition(":")
    if not sep or action not in ACTIONS or point not in POINTS or (step and not step.isdigit()):
        raise ConfigError(
            f"{ENV}={spec!r} is malformed: expected ACTION@POINT[:STEP] with ACTION in "
            f"{ACTIONS} and POINT in {POINTS}, e.g. kill@save:4."
        )
    return action, point, int(step) if step else None


def inject(point: str, step: int | None = None) -> None:
    """Fails here when `PTJF_FAULT` names this point (and step)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action, want_point, want_step = parse(spec)
    if want_point != point or (want_step is not None and want_step != step):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

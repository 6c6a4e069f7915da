"""The terminal's view of a run: one progress line per stage (step, loss, speed, ETA), redrawn
in place on a terminal and printed at intervals otherwise, and one line per eval with every
task's validation loss (`ProgressDisplay.print_eval`)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, ClassVar


def format_eta(seconds: float) -> str:
    """A compact duration: "12s", "3m05s", "1h02m" ("?" when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(x: float, unit: str = "tok/s") -> str:
    """Three significant digits with a k/M/G prefix: "950 tok/s", "1.23k tok/s", "45.6M tok/s"."""
    if x is None or not math.isfinite(x):
        return f"? {unit}"
    prefixes = ["", "k", "M", "G", "T"]
    i = 0
    value = float(x)
    while abs(value) >= 1000 and i < len(prefixes) - 1:
        value /= 1000
        i += 1
    text = _three_digits(value)
    if text in ("1000", "-1000") and i < len(prefixes) - 1:  # 999.6 rounds up into the next prefix
        value /= 1000
        i += 1
        text = _three_digits(value)
    return f"{text}{prefixes[i]} {unit}"


def format_eval_line(record: Mapping[str, Any], total_steps: int | None = None) -> str:
    """One eval record as one short line: global step, stage, each task's validation loss.

    "eval  step 300/3000 (joint)  val: bible_translate_en_fr 2.412  bible_translate_en_tl 3.105"
    Three decimals: differences between methods and evals matter from about 0.01 nats.
    """
    step = str(record.get("global_step", "?"))
    if total_steps is not None:
        step += f"/{total_steps}"
    head = f"eval  step {step}"
    if record.get("stage"):
        head += f" ({record['stage']})"
    losses = [
        f"{task} {_loss_text(scores.get('loss') if isinstance(scores, Mapping) else None)}"
        for task, scores in (record.get("validation") or {}).items()
    ]
    return head + ("  val: " + "  ".join(losses) if losses else "  (no validation losses)")


def _loss_text(loss: Any) -> str:
    try:
        return f"{float(loss):.3f}"
    except (TypeError, ValueError):
        return "?"


def _three_digits(v: float) -> str:
    a = abs(v)
    if a >= 100 or v == 0:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class ProgressDisplay:
    """Progress of one stage: a redrawn bar on a terminal, periodic plain lines elsewhere.

    On a terminal each `update` redraws one line with `\\r`. In logs (CI, files, SLURM output)
    carriage returns make a mess, so a plain line is written at the first update, the last step,
    and otherwise when `log_every` steps or `log_seconds` seconds have passed since the last one.
    The ETA uses the rate measured since the first update (the first update comes after the
    first compiled step, so compile time does not skew it).

    The newest display not yet closed is the *active* one: `print_eval` writes through it, so
    an eval line never lands in the middle of a redrawn bar (the trainer's eval path has the
    record but not the stage's display).
    """

    _active: ClassVar[ProgressDisplay | None] = None

    def __init__(
        self,
        total_steps: int,
        *,
        stage_name: str,
        stream: IO[str] | None = None,
        is_tty: bool | None = None,
        log_every: int = 100,
        log_seconds: float = 60.0,
        width: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps = int(total_steps)
        self.stage_name = stage_name
        self.stream = sys.stderr if stream is None else stream
        if is_tty is None:
            isatty = getattr(self.stream, "isatty", None)
            is_tty = bool(isatty and isatty())
        self.is_tty = is_tty
        self.log_every = max(1, int(log_every))
        self.log_seconds = log_seconds
        self.width = width
        self.clock = clock
        self._start: tuple[int, float] | None = None
        self._last_logged: tuple[int, float] | None = None
        self._drawn = 0
        self._last_text = ""
        ProgressDisplay._active = self

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the rate measured so far, or None before a rate exists."""
        if self._start is None:
            return None
        first_step, first_time = self._start
        elapsed = self.clock() - first_time
        if step <= first_step or elapsed <= 0:
            return None
        return (self.total_steps - step) * elapsed / (step - first_step)

    def line(self, step: int, loss: float | None, tokens_per_sec: float | None) -> str:
        """The text of one progress line (no `\\r`, no newline)."""
        total = max(self.total_steps, 1)
        parts = [self.stage_name, f"{step}/{self.total_steps}"]
        if self.is_tty:
            filled = min(self.width, max(0, self.width * step // total))
            parts.insert(1, "[" + "#" * filled + "." * (self.width - filled) + "]")
        parts.append(f"{100 * step / total:.0f}%")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if tokens_per_sec is not None:
            parts.append(format_rate(tokens_per_sec))
        parts.append(f"ETA {format_eta(self.eta_seconds(step))}")
        return " ".join(parts)

    def update(
        self, step: int, loss: float | None = None, tokens_per_sec: float | None = None
    ) -> None:
        now = self.clock()
        if self._start is None:
            self._start = (step, now)
        if self.is_tty:
            text = self.line(step, loss, tokens_per_sec)
            pad = " " * max(0, self._drawn - len(text))  # wipe a longer previous line
            self.stream.write("\r" + text + pad)
            self._drawn = len(text)
            self._last_text = text
            self.stream.flush()
            return
        last = self._last_logged
        due = (
            last is None
            or step >= self.total_steps
            or step - last[0] >= self.log_every
            or now - last[1] >= self.log_seconds
        )
        if due:
            self.stream.write(self.line(step, loss, tokens_per_sec) + "\n")
            self.stream.flush()
            self._last_logged = (step, now)

    def write_line(self, text: str) -> None:
        """Writes a whole line of its own; on a terminal it replaces the bar, which is then
        drawn again below it."""
        if self.is_tty and self._drawn:
            self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)) + "\n")
            self.stream.write(self._last_text)
            self._drawn = len(self._last_text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    @classmethod
    def print_eval(
        cls,
        record: Mapping[str, Any],
        total_steps: int | None = None,
        stream: IO[str] | None = None,
    ) -> str:
        """Writes `format_eval_line(record)` through the active display (to `stream`, or
        stderr, when none is open); returns the line. Callers keep it to the primary process."""
        text = format_eval_line(record, total_steps)
        if stream is None and cls._active is not None:
            cls._active.write_line(text)
        else:
            out = sys.stderr if stream is None else stream
            out.write(text + "\n")
            out.flush()
        return text

    def close(self) -> None:
        """Ends the terminal line so later output starts on a fresh one."""
        if self.is_tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0
        if ProgressDisplay._active is self:
            ProgressDisplay._active = None

"""Progress and warnings on stderr. Progress can be silenced; warnings also land in the manifest."""

from __future__ import annotations

import os
import sys
import time


def _own_stderr():
    """A private copy of the stderr descriptor: progress must show while the converter's own
    chatter is being captured at the fd level (see util.captured_output)."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):
        return sys.stderr


class Progress:
    """What every stage reports through, and so where a wall-time budget is checked inside stages: a stage that
    draws progress (every stage does) stops within one sample of the deadline."""

    def __init__(self, quiet: bool = False, stream=None, deadline: float | None = None):
        self.quiet = quiet
        self.stream = stream or _own_stderr()
        self.warnings: list = []
        self.deadline = deadline  # time.monotonic() past which the work stops (BudgetExceeded)
        self.budget_s: float | None = None
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def limit(self, seconds: float | None) -> None:
        """Stop the work `seconds` from now (None: no limit; an earlier deadline already set stands)."""
        if seconds is None:
            return
        deadline = time.monotonic() + seconds
        if self.deadline is None or deadline < self.deadline:
            self.deadline, self.budget_s = deadline, seconds

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            from .errors import BudgetExceeded
            spent = f" of {self.budget_s:g} s" if self.budget_s else ""
            raise BudgetExceeded(f"The time budget{spent} ran out; nothing half-made was kept. Give a larger "
                                 f"--budget, or fewer samples (--calibration-samples) or --no-recover to do less.")

    def step(self, message: str) -> None:
        self.check()
        if not self.quiet:
            print(f"[edgesdk] {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        message = message.removeprefix("warning: ")
        self.warnings.append(message)
        print(f"[edgesdk] warning: {message}", file=self.stream, flush=True)

    def bar(self, label: str):
        """A callback(i, n) that draws a bar on a terminal, or a line every ~2 s otherwise; a later stage of
        the same work names itself with callback(i, n, label=...)."""
        default = label

        def update(i: int, n: int, label: str | None = None) -> None:
            self.check()
            label = label or default
            if self.quiet:
                return
            now = time.monotonic()
            done = i >= n
            if not done and now - self._last < (0.1 if self._tty else 2.0):
                return
            self._last = now
            width = 24
            filled = int(width * i / max(n, 1))
            text = f"[edgesdk]   {label} [{'#' * filled}{'.' * (width - filled)}] {i}/{n}"
            if self._tty:
                print("\r" + text, end="\n" if done else "", file=self.stream, flush=True)
            else:
                print(text, file=self.stream, flush=True)
        return update


def parse_budget(value) -> float | None:
    """'30m', '90s', '1h', '45' (seconds) or a number -> seconds; None for no limit."""
    from .errors import OptionError
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1)
        except ValueError:
            raise OptionError(f"--budget takes a time such as 30m, 90s or 1h; got {value!r}.") from None
    if seconds <= 0:
        raise OptionError(f"--budget must be positive, got {value!r}.")
    return seconds

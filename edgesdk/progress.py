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
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or _own_stderr()
        self.warnings: list = []
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def step(self, message: str) -> None:
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

"""Quiet-by-default progress reporting on stderr (one line that updates, or a line per step when not a tty)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts work done out of ``total`` and reports it at most every ``every`` seconds.

    Use as a context manager; ``update(n)`` adds ``n`` finished items.
    """

    def __init__(self, total: int, desc: str, every: float = 1.0, stream=None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.every = every
        self.stream = stream or sys.stderr
        self.done = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        if not self._tty:  # logs and CI: a line every 10 s at most, not a wall of updates
            self.every = max(every, 10.0)

    def __enter__(self) -> "Progress":
        self._emit(force=True)
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        self._emit()

    def _emit(self, force: bool = False, end: bool = False) -> None:
        now = time.monotonic()
        if not (force or end) and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = f"{100.0 * self.done / self.total:5.1f}%" if self.total else ""
        line = f"{self.desc}: {self.done}/{self.total} {pct} [{elapsed:6.1f}s, {rate:7.1f}/s]"
        if self._tty:
            self.stream.write("\r" + line + ("\n" if end else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __exit__(self, *exc) -> None:
        self._emit(end=True)


def say(message: str) -> None:
    """One line for the user on stderr, at once (stdout is for results)."""
    print(message, file=sys.stderr, flush=True)

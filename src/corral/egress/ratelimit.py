"""Recording under a flood: the first events of each kind in a window one by one, then a count.

A sandbox that opens ten thousand connections past its cap must neither go unrecorded nor bury the
store: each kind (a rule id) gets `burst` individual records per window; the rest are counted, with
a few sample destinations, and reported in one summary when the window closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 8


@dataclass
class _Window:
    started: float
    admitted: int = 0
    suppressed: int = 0
    samples: list[str] = field(default_factory=list)


class Summariser:
    """`admit(kind, sample)` says whether to record one event now; suppressed ones reach
    `report(kind, count, samples, window_s)` once their window closes (on the next `admit`, on
    the timer `schedule` sets, or on `flush`)."""

    def __init__(self, report: Callable[[str, int, list[str], float], None], *, burst: int = 20,
                 window: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[float, Callable[[], None]], Any] | None = None) -> None:  # fmt: skip
        self.report, self.burst, self.window = report, burst, window
        self.clock, self.schedule = clock, schedule
        self._windows: dict[str, _Window] = {}
        self._timer = False

    def admit(self, kind: str, sample: str = "") -> bool:
        now = self.clock()
        w = self._windows.get(kind)
        if w is not None and now - w.started >= self.window:
            self._close(kind, w, now)
            w = None
        if w is None:
            w = self._windows[kind] = _Window(now)
        if w.admitted < self.burst:
            w.admitted += 1
            return True
        w.suppressed += 1
        if sample and len(w.samples) < SAMPLES and sample not in w.samples:
            w.samples.append(sample)
        if self.schedule is not None and not self._timer:
            self._timer = True
            self.schedule(self.window, self._tick)
        return False

    def _close(self, kind: str, w: _Window, now: float) -> None:
        del self._windows[kind]
        if w.suppressed:
            self.report(kind, w.suppressed, w.samples, round(now - w.started, 3))

    def _tick(self) -> None:
        self._timer = False
        now = self.clock()
        for kind, w in list(self._windows.items()):
            if now - w.started >= self.window:
                self._close(kind, w, now)
        if (
            self._windows
            and self.schedule is not None
            and any(w.suppressed for w in self._windows.values())
        ):
            self._timer = True
            self.schedule(self.window, self._tick)

    def flush(self) -> None:
        """Report every open window now (the sandbox is stopping)."""
        now = self.clock()
        for kind, w in list(self._windows.items()):
            self._close(kind, w, now)

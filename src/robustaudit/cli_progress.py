"""Progress of ``robustaudit audit`` on stderr: a rich bar with ETA on a terminal; without one (a file, a
pipe, ``nohup``, CI logs) plain lines, one per finished stage and at most one every few seconds while a
stage runs, each with the elapsed time and an ETA. ``--quiet`` silences both.

Both implement the runner's ``Progress`` protocol (``start(description, total)``, ``advance(amount)``);
the units are whatever the stage counts (samples of a cell, detector cells, fit steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Seconds between two plain lines of a running stage (a stage's end is always reported).
PLAIN_EVERY_S = 5.0


def make_progress(err: Any, *, quiet: bool = False) -> Any:
    """The progress sink of an audit printing to ``err`` (a rich console on stderr)."""
    if quiet:
        return _Silent()
    if err.is_terminal:
        return RichProgress(err)
    return PlainProgress(lambda line: err.print(line, soft_wrap=True, markup=False, highlight=False))


def duration(seconds: float) -> str:
    """``"42s"``, ``"1m20s"``, ``"2h05m"``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainProgress:
    """Plain, rate-limited progress lines: ``[  42.1 s] digits-cnn: pgd: 120/400, ETA 1m10s``.

    A line when a fit starts (patch, ATN, AdvGAN, universal perturbations: minutes on a CPU), a line when
    a stage finishes (its count reaches the total, or the next stage starts) and, while it
    runs, at most one every ``every`` seconds. ``clock`` is injectable for tests.
    """

    def __init__(self, emit: Callable[[str], None], *, every: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._emit, self._every, self._clock = emit, every, clock
        self._t0 = clock()
        self._stage: str | None = None
        self._total = self._done = 0
        self._started = self._last = self._t0
        self._ended = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()

    def start(self, description: str, total: int) -> None:
        self._finish()
        self._stage, self._total, self._done = description, max(int(total), 1), 0
        self._started = self._clock()
        self._ended = False
        if description.startswith("fit"):  # fits can take minutes: say so before the first ETA line
            self._emit(f"[{self._started - self._t0:7.1f} s] {description}: starting ({self._total} units); "
                       f"an ETA follows within {duration(self._every)}")

    def advance(self, amount: int) -> None:
        if self._stage is None or self._ended:
            return
        self._done = min(self._done + int(amount), self._total)
        now = self._clock()
        if self._done >= self._total:
            self._finish()
        elif now - self._last >= self._every:
            self._line(now)

    def _finish(self) -> None:
        if self._stage is not None and not self._ended:
            self._ended = True
            self._line(self._clock(), done=True)

    def _line(self, now: float, *, done: bool = False) -> None:
        self._last = now
        spent = now - self._started
        count = f"{self._done}/{self._total}, " if self._total > 1 else ""
        if done:
            tail = f"done in {duration(spent)}"
        elif self._done > 0:
            tail = f"ETA {duration(spent * (self._total - self._done) / self._done)}"
        else:
            tail = "ETA unknown"
        self._emit(f"[{now - self._t0:7.1f} s] {self._stage}: {count}{tail}")


class RichProgress:
    """The runner's Progress protocol on a rich progress bar with elapsed time and ETA (stderr, transient)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  console=console, transient=True)
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, description: str, total: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=max(total, 1))

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


class _Silent:
    """``--quiet``: no progress at all."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

"""Progress of an audit on stderr: a rich bar with ETA on a terminal; without one (a file, a pipe,
``nohup``, CI logs) plain lines, one per finished stage and at most one every few seconds while a stage
runs, each with the elapsed time and an ETA. ``robustaudit audit`` shows it (``--quiet`` silences both),
and so does ``robustaudit.audit(..., progress=True)`` (:func:`open_progress`).

Both implement the runner's ``Progress`` protocol (``start(description, total)``, ``advance(amount)``);
the units are whatever the stage counts (samples of a cell, detector cells, fit steps). A fit (a
description starting with "fit") that starts inside a running stage (a patch or generator cell fits
before it attacks) nests: the cell is not reported done; it resumes when the fit has finished. So do the
transferability stage's replays (:data:`NESTED`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from robustaudit.core.errors import UserError

if TYPE_CHECKING:
    from robustaudit.evaluate.entries import Progress

#: Seconds between two plain lines of a running stage (a stage's end is always reported).
PLAIN_EVERY_S = 5.0
#: Stages that run inside the stage before them, which resumes when they end: a cell's fit (a patch or a
#: generator is fitted before the cell attacks) and the transferability stage's replays on each model.
NESTED = ("fit", "transfer · ")


def _nested(description: str) -> bool:
    return description.startswith(NESTED)


def make_progress(err: Any, *, quiet: bool = False) -> Any:
    """The progress sink of an audit printing to ``err`` (a rich console on stderr)."""
    if quiet:
        return _Silent()
    if err.is_terminal:
        return RichProgress(err)
    return PlainProgress(lambda line: err.print(line, soft_wrap=True, markup=False, highlight=False))


def open_progress(progress: bool | Progress | None, *, rank: int = 0) -> AbstractContextManager[Any]:
    """The progress sink of a ``robustaudit.audit(progress=...)`` call, as a context manager to run the
    audit in (it starts and stops a rich bar, and reports the last stage's end).

    ``True``: the CLI's progress on stderr (:func:`make_progress`), except on a ``torchrun`` rank other
    than 0, which stays silent as in the CLI (rank 0 speaks for all). ``False`` or ``None``: silent. An
    object with ``start(description, total)`` and ``advance(amount)`` (the runner's ``Progress``) is used
    as it is, not entered: its owner manages it. Anything else is a :class:`UserError`.
    """
    if progress is None or progress is False or (progress is True and rank != 0):
        return nullcontext(_Silent())
    if progress is True:
        from rich.console import Console

        return make_progress(Console(stderr=True))
    if callable(getattr(progress, "start", None)) and callable(getattr(progress, "advance", None)):
        return nullcontext(progress)
    raise UserError(f"progress must be True, False, None or an object with start(description, total) and "
                    f"advance(amount) methods, got {type(progress).__name__} {progress!r:.60}")


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
        self._outer: tuple[str, int, int, float] | None = None  # the stage a running fit interrupted

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_all()

    def start(self, description: str, total: int) -> None:
        if _nested(description) and self._stage is not None and not self._ended:
            if self._outer is None:  # the running stage resumes when this one ends
                self._outer = (self._stage, self._total, self._done, self._started)
            else:  # a nested stage that stopped short of its total: it is done, its outer stays
                self._ended = True
                self._line(self._clock(), done=True)
        else:
            self._finish_all()
        self._stage, self._total, self._done = description, max(int(total), 1), 0
        self._started = self._clock()
        self._ended = False
        if description.startswith("fit"):  # fits can take minutes: say so, and their cost, before they run
            self._emit(f"[{self._started - self._t0:7.1f} s] {description}: starting ({self._total} units); "
                       "an estimate follows the first unit")
        elif "about " in description:  # a stage that states its estimated cost states it before it runs
            self._emit(f"[{self._started - self._t0:7.1f} s] {description}: starting")

    def advance(self, amount: int) -> None:
        if self._stage is None or self._ended:
            return
        first = self._done == 0
        self._done = min(self._done + int(amount), self._total)
        now = self._clock()
        if self._done >= self._total:
            self._finish()
        elif now - self._last >= self._every or (first and self._done and self._stage.startswith("fit")):
            self._line(now)  # a fit's estimate right after its first unit: the time it will take, up front

    def _finish(self) -> None:
        if self._stage is not None and not self._ended:
            self._ended = True
            self._line(self._clock(), done=True)
            if self._outer is not None:  # a nested fit ended: back to its cell
                self._stage, self._total, self._done, self._started = self._outer
                self._outer, self._ended = None, False

    def _finish_all(self) -> None:
        while self._stage is not None and not self._ended:
            self._finish()

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
        self._left = 0  # units the current task still has to go
        self._outer: tuple[Any, int] | None = None  # the task a running fit interrupted, and its units left

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, description: str, total: int) -> None:
        if _nested(description) and self._task is not None and self._left > 0 and self._outer is None:
            self._outer = (self._task, self._left)  # its bar stays; the nested one goes below it
        elif _nested(description) and self._outer is not None:  # a nested task that stopped short: replaced
            self._progress.remove_task(self._task)
        else:
            for task in (self._task, *(() if self._outer is None else (self._outer[0],))):
                if task is not None:
                    self._progress.remove_task(task)
            self._outer = None
        self._task = self._progress.add_task(description, total=max(total, 1))
        self._left = max(total, 1)

    def advance(self, amount: int) -> None:
        if self._task is None:
            return
        self._progress.advance(self._task, amount)
        self._left -= amount
        if self._left <= 0 and self._outer is not None:  # a nested fit ended: back to its cell
            self._progress.remove_task(self._task)
            (self._task, self._left), self._outer = self._outer, None


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

"""Progress reporting and cancellation for long work (CLI progress bars, the Slicer module's Cancel button)."""
from __future__ import annotations

from typing import Callable, Optional


class Cancelled(Exception):
    """The user cancelled the work."""


class Progress:
    """``progress(fraction, message)`` calls ``callback`` and raises :class:`Cancelled` when ``cancel()`` is true."""

    def __init__(self, callback: Optional[Callable[[float, str], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None, start: float = 0.0, end: float = 1.0):
        self.callback, self.cancel, self.start, self.end = callback, cancel, start, end

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user")
        if self.callback is not None:
            self.callback(self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0), message)

    def part(self, start: float, end: float) -> "Progress":
        """A progress for the sub-range ``[start, end]`` of this one."""
        span = self.end - self.start
        return Progress(self.callback, self.cancel, self.start + span * start, self.start + span * end)


class JobStatus:
    """What every job shows -- the in-process :class:`~.mrml.tasks.Job`, the web page's ``BackgroundJob`` and the
    Slicer module's ``WorkerJob``: ``state`` (pending | running | done | failed | cancelled | discarded), the
    ``fraction`` and ``message`` of its progress, its log lines (:meth:`take_messages`), and its ``result`` or
    ``error``."""

    FINISHED = ("done", "failed", "cancelled", "discarded")

    def __init__(self, messages=()):
        self.state = "pending"
        self.fraction, self.message = 0.0, ""
        self.result = self.error = None
        self._log: list = list(messages)

    def report(self, fraction: float, message: str = "") -> None:
        """New progress; a new message also goes to the log."""
        self.fraction = float(fraction)
        if message and message != self.message:
            self._log.append(message)
        self.message = message or self.message

    def log(self, line: str) -> None:
        self._log.append(line)

    def take_messages(self) -> list:
        """Log lines since the last call."""
        out, self._log = self._log, []
        return out

    @property
    def finished(self) -> bool:
        return self.state in self.FINISHED


def as_progress(progress=None, cancel=None) -> Progress:
    return progress if isinstance(progress, Progress) else Progress(progress, cancel)


def one_line(exc: BaseException) -> str:
    """The error as one line for the user: the message alone for bad input (ValueError, FileNotFoundError),
    else prefixed by the exception type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"

"""The page's long work, in one place: a :class:`slicer_logic.Task` run as a :class:`BackgroundJob`.

The task is prepared on the server's thread (reading the input nodes), computed in a worker thread (torch, no
MRML), and its result applied to MRML back on the server's thread when the event loop polls the job, so the
page stays responsive and the scene is only touched from one thread.  Switching to a worker process later means
changing :meth:`JobRunner.start` only.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

from ..progress import Cancelled, JobStatus, Progress, one_line
from ..slicer_logic import Task


class BackgroundJob(JobStatus):
    """A :class:`Task` computed in a thread (the web server is plain Python, not Slicer's PythonQt, so a thread
    runs freely here) and applied to MRML by :meth:`poll` on the caller's thread."""

    def __init__(self, task: Task):
        super().__init__(task.messages)
        self.task = task
        self.state = "running"
        self._cancelled, self._outcome, self._raw = False, None, None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._compute, name=f"liver-lrp {task.name}", daemon=True)
        self._thread.start()

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self.report(fraction, message)

    def _compute(self) -> None:
        try:
            self._raw = self.task.compute(Progress(self._report, lambda: self._cancelled))
            self._outcome = "done"
        except Cancelled:
            self._outcome = "cancelled"
        except Exception as exc:  # reported by poll()
            self.error, self._outcome = exc, "failed"

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop at the next progress report; nothing is applied."""
        self._cancelled = True

    def take_messages(self) -> list:
        with self._lock:
            return super().take_messages()

    def poll(self) -> bool:
        """True once finished; applies the result (on the calling thread) when it computed successfully."""
        if self._thread.is_alive() or self.state != "running":
            return self.state != "running"
        if self._outcome == "done" and not self._cancelled:
            try:
                self.result = self.task.apply(self._raw)
                self.state = "done"
                self._report(1.0, f"{self.task.name}: done")
            except Exception as exc:
                self.error, self.state = exc, "failed"
        else:
            self.state = "cancelled" if self._cancelled or self._outcome == "cancelled" else "failed"
        return True


class JobRunner:
    """One job at a time; mirrors its progress, log and outcome into the trame ``state``.

    State written: ``busy``, ``job_name``, ``progress`` (0-100), ``log`` (text), ``error`` (one line or ""),
    ``jobs_finished`` (a counter, for automation).
    """

    def __init__(self, state, interval: float = 0.15):
        self.state, self.interval = state, interval
        self.job: Optional[BackgroundJob] = None
        self._watcher: Optional[asyncio.Task] = None

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.state == "running" and not self.job.cancelled

    def log(self, line: str) -> None:
        self.state.log = (self.state.log + "\n" + line).strip()[-20000:]

    def start(self, name: str, make_task: Callable[[], Task], on_done: Callable[[Any], None]) -> None:
        """Prepare the task now (errors raise here, before anything runs) and compute it in the background."""
        if self.busy:
            raise ValueError(f"{self.job.task.name} is still running; wait for it or press Cancel")
        task = make_task()
        self.job = BackgroundJob(task)
        self.state.update({"busy": True, "job_name": name, "progress": 0, "error": ""})
        self.log(f"{name}: started")
        self._watcher = asyncio.get_event_loop().create_task(self._watch(self.job, name, on_done))

    def cancel(self) -> None:
        if self.busy:
            self.job.cancel()
            self.log(f"{self.job.task.name}: cancelling")

    async def _watch(self, job: BackgroundJob, name: str, on_done) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # Cancel takes effect in the page at once: the job is dropped unapplied (its thread stops at its next
            # progress report, or finishes unseen), so Cancel always means no result and the page is free again
            cancelled = job.cancelled
            finished = cancelled or job.poll()  # poll applies the result to MRML here, on the server's thread
            with self.state:
                for line in job.take_messages():
                    self.log(line if line.startswith(job.task.name) else f"{name}: {line}")
                self.state.progress = int(round(100 * job.fraction))
                if not finished:
                    continue
                self.state.busy = False
                self.state.jobs_finished = int(self.state.jobs_finished or 0) + 1
                if cancelled:
                    self.state.progress = 0
                    self.log(f"{name}: cancelled; no result was written")
                elif job.state == "done":
                    try:
                        on_done(job.result)
                        self.state.progress = 100
                    except Exception as exc:  # showing the result failed: say so, keep serving
                        self.state.error = f"{name}: {one_line(exc)}"
                        self.log(self.state.error)
                else:
                    self.state.progress = 0
                    self.state.error = f"{name} failed: {one_line(job.error)}"
                    self.log(self.state.error)
            return


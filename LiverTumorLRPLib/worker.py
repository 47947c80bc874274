"""The worker process: one case-level job (:mod:`pipeline`) on files in a job folder, with progress lines.

Run it as ``python -m LiverTumorLRPLib.worker JOB_DIR`` or ``python .../LiverTumorLRPLib/worker.py JOB_DIR``
(the second form imports the library beside this file, so an installed copy cannot shadow it).

``JOB_DIR/job.json`` describes the job::

    {"task": "segment" | "explain" | "sequence relevance", "case": "input", "out": "out",
     "model": "bundled" | path, "device": "auto" | "cpu" | "cuda", "preset": "recommended", "seed": 0,
     "region": "tumor" | "background" | "<mask file in the case folder>", "class": "tumor" | "background",
     "max_voxels": null}

``case`` is a case folder (one NRRD/NIfTI per sequence, see :mod:`case_io`), ``out`` the output folder
(both relative to ``JOB_DIR``).  The worker prints one JSON object per line on stdout:
``{"progress": 0.42, "message": "..."}`` while it runs, then ``{"done": "job_result.json"}`` or
``{"error": "one line"}``.  Outputs are written atomically by the pipeline; ``JOB_DIR/job_result.json``
(the job's summary and output files) is written last, so its presence marks a complete job.  Exit code 0 on
success, 1 on an error (its one-line message also goes to stderr), 2 on a bad job description.

:class:`WorkerProcess` starts and watches such a process without threads and without Qt: stdout goes to
``JOB_DIR/worker.log``, and :meth:`WorkerProcess.poll` reads the lines added since the last call.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Optional

if __name__ == "__main__" and not __package__:
    # run as a file: import the library that holds this file, ahead of any installed copy
    _ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[0] = _ROOT
    import LiverTumorLRPLib.worker as _worker

    if os.path.dirname(os.path.abspath(_worker.__file__)) != os.path.dirname(os.path.abspath(__file__)):
        sys.exit(f"LiverTumorLRP worker: imported {_worker.__file__} instead of the library beside {__file__}")
    sys.exit(_worker.main())

JOB_FILE = "job.json"
RESULT_FILE = "job_result.json"
LOG_FILE = "worker.log"
ERROR_FILE = "worker.err"
TASKS = ("segment", "explain", "sequence relevance")
WORKER_SCRIPT = os.path.abspath(__file__)


def emit(**fields) -> None:
    """One JSON line on stdout (flushed: the parent reads the log file while this process runs)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def read_job(job_dir: str) -> dict:
    """The job description, checked; ValueError naming the file and the field."""
    path = os.path.join(job_dir, JOB_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            job = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(job, dict) or job.get("task") not in TASKS:
        raise ValueError(f"{path}: 'task' must be one of {', '.join(TASKS)}")
    return job


def run_job(job_dir: str, job: dict, progress=None) -> dict:
    """Run the pipeline job described by ``job`` (paths relative to ``job_dir``); its summary without arrays."""
    from . import pipeline
    from .case_io import write_json

    case = os.path.join(job_dir, job.get("case", "input"))
    out = os.path.join(job_dir, job.get("out", "out"))
    os.makedirs(out, exist_ok=True)
    common = dict(model=job.get("model", "bundled"), device=job.get("device", "auto"), progress=progress)
    if job["task"] == "segment":
        summary = pipeline.segment_case(case, out, **common)
    elif job["task"] == "explain":
        region = job.get("region", "tumor")
        if region not in ("tumor", "background"):
            region = os.path.join(case, region)
        summary = pipeline.explain_case(case, out, region=region, cls=job.get("class", "tumor"),
                                        preset=job.get("preset", "recommended"), **common)
    else:
        summary = pipeline.analyze_case(case, out, preset=job.get("preset", "recommended"),
                                        seed=int(job.get("seed", 0)), max_voxels=job.get("max_voxels"), **common)
    summary = {k: v for k, v in summary.items() if not hasattr(v, "shape")}
    outputs = sorted(f for f in os.listdir(out) if not f.startswith("."))
    write_json({"task": job["task"], "summary": summary, "outputs": outputs}, os.path.join(job_dir, RESULT_FILE))
    return summary


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"


def main(argv=None) -> int:
    """``worker JOB_DIR``: run the job; exit code 0 ok, 1 error, 2 bad arguments or job description."""
    import warnings

    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print("usage: python -m LiverTumorLRPLib.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = argv[0]
    try:
        job = read_job(job_dir)
    except ValueError as exc:
        emit(error=str(exc))
        print(f"LiverTumorLRP worker: {exc}", file=sys.stderr)
        return 2

    def progress(fraction, message=""):
        emit(progress=round(float(fraction), 4), message=message)

    def warn(message, category, filename, lineno, file=None, line=None):
        emit(warning=str(message))

    warnings.showwarning = warn
    try:
        run_job(job_dir, job, progress)
    except Exception as exc:  # one line for the user; the parent shows it
        emit(error=_one_line(exc))
        print(f"LiverTumorLRP worker: {_one_line(exc)}", file=sys.stderr)
        return 1
    emit(progress=1.0, message=f"{job['task']}: done", done=RESULT_FILE)
    return 0


class WorkerProcess:
    """A worker process on ``job_dir``: :meth:`start`, then :meth:`poll` from a timer; no threads, no Qt.

    ``python`` is the interpreter (inside Slicer: ``PythonSlicer``; headless: ``sys.executable``).
    The process gets its own process group, so :meth:`cancel` stops it and any children.
    """

    def __init__(self, job_dir: str, python: Optional[str] = None):
        self.job_dir = os.path.abspath(job_dir)
        self.python = python or sys.executable
        self.process: Optional[subprocess.Popen] = None
        self._offset = 0
        self.error: Optional[str] = None
        self.done = False

    def start(self) -> "WorkerProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        kwargs = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        with open(os.path.join(self.job_dir, LOG_FILE), "wb") as out, \
                open(os.path.join(self.job_dir, ERROR_FILE), "wb") as err:
            self.process = subprocess.Popen([self.python, WORKER_SCRIPT, self.job_dir], stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL, cwd=self.job_dir, env=env, **kwargs)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def read_events(self) -> list:
        """The JSON objects the worker printed since the last call (complete lines only; others as text)."""
        path = os.path.join(self.job_dir, LOG_FILE)
        try:
            with open(path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        events = []
        for line in data[:end].decode("utf-8", "replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"message": line}
            if not isinstance(event, dict):
                event = {"message": line}
            if "error" in event:
                self.error = str(event["error"])
            if "done" in event:
                self.done = True
            events.append(event)
        return events

    def finish_error(self) -> Optional[str]:
        """After the process ended: the error (one line) if it failed, else None."""
        code = self.process.poll() if self.process is not None else None
        if code == 0 and self.done and os.path.exists(os.path.join(self.job_dir, RESULT_FILE)):
            return None
        if self.error:
            return self.error
        try:
            with open(os.path.join(self.job_dir, ERROR_FILE), encoding="utf-8", errors="replace") as fh:
                lines = [ln.strip() for ln in fh if ln.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"the worker process ended with exit code {code}"

    def result(self) -> dict:
        with open(os.path.join(self.job_dir, RESULT_FILE), encoding="utf-8") as fh:
            return json.load(fh)

    def kill(self, timeout: float = 10.0) -> None:
        """Stop the process and its children (its process group) and wait for it."""
        p = self.process
        if p is None or p.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(p.pid, signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(p.pid)], capture_output=True, check=False)
                p.kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)

    def remove(self) -> None:
        """Remove the job folder."""
        shutil.rmtree(self.job_dir, ignore_errors=True)


__all__ = ["WorkerProcess", "main", "run_job", "read_job", "JOB_FILE", "RESULT_FILE", "TASKS", "WORKER_SCRIPT"]

if __name__ == "__main__":
    sys.exit(main())

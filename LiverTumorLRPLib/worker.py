"""The worker process: one case-level job (:mod:`pipeline`) on files in a job folder, with progress lines.

Run it as ``python -m LiverTumorLRPLib.worker JOB_DIR`` or ``python .../LiverTumorLRPLib/worker.py JOB_DIR``
(the second form imports the library beside this file, so an installed copy cannot shadow it).

``JOB_DIR/job.json`` describes the job::

    {"task": "segment" | "explain" | "sequence relevance", "case": "input", "out": "out",
     "model": "bundled" | path, "device": "auto" | "cpu" | "cuda", "preset": "recommended", "seed": 0,
     "region": "tumor" | "background" | "<mask file in the case folder>", "class": "tumor" | "background",
     "max_voxels": null, "method": "contribution" | "paper"}

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
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
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
PID_FILE = "worker.json"
TASKS = ("segment", "explain", "sequence relevance")
WORKER_SCRIPT = os.path.abspath(__file__)
JOB_PREFIX = "LiverTumorLRP-"
# the process whose end stops the worker (set by WorkerProcess.start: the Slicer or Python process starting it)
PARENT_ENV = "LIVERTUMORLRP_PARENT_PID"
PARENT_GONE_EXIT = 3
log = logging.getLogger("LiverTumorLRP")


def emit(**fields) -> None:
    """One JSON line on stdout (flushed: the parent reads the log file while this process runs)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# ---- processes: hidden windows, liveness, the parent watch ------------------------------------------------------
def hidden_window() -> dict:
    """``subprocess`` keyword arguments that start a console program without a window on Windows
    (``PythonSlicer.exe``, ``taskkill``: STARTUPINFO with SW_HIDE and CREATE_NO_WINDOW); nothing elsewhere."""
    if os.name != "nt":
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = subprocess.SW_HIDE
    return {"startupinfo": info, "creationflags": subprocess.CREATE_NO_WINDOW}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on Linux a zombie, ended but not reaped, does not)."""
    if pid is None or int(pid) <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, int(pid))       # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.GetLastError() == 5                          # access denied: it exists
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _parent_waiter(pid: int):
    """A function that returns True once process ``pid`` has ended (Windows: a handle held from now on,
    so a reused id cannot look alive)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, int(pid))      # SYNCHRONIZE
        if handle:
            return lambda: kernel32.WaitForSingleObject(handle, 0) == 0  # WAIT_OBJECT_0: ended
    original = os.getppid()
    return lambda: not pid_alive(pid) or (original == pid and os.getppid() != pid)


def watch_parent(pid: int, interval: float = 1.0, on_gone=None) -> threading.Thread:
    """Stop this process once process ``pid`` (the Slicer that started the worker) has ended.

    A daemon thread checks every ``interval`` seconds; when the parent is gone it calls ``on_gone()`` (default:
    one JSON error line, then ``os._exit(3)`` -- whatever the main thread is doing, also inside torch).
    """
    gone = _parent_waiter(pid)

    def stop():
        emit(error=f"the process that started this worker (pid {pid}) has ended; stopping")
        os._exit(PARENT_GONE_EXIT)

    def loop():
        while not gone():
            time.sleep(interval)
        (on_gone or stop)()

    thread = threading.Thread(target=loop, name="LiverTumorLRP parent watch", daemon=True)
    thread.start()
    return thread


# ---- job folders ------------------------------------------------------------------------------------------------
def remove_folder(path: str, attempts: int = 10, delay: float = 0.1) -> bool:
    """Remove a job folder, retrying while files are still in use (Windows: a process just killed may hold its
    log open for a moment); True when it is gone, else a warning names what is left."""
    error = None
    for attempt in range(max(1, attempts)):
        if not os.path.exists(path):
            return True
        try:
            shutil.rmtree(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            error = exc
            time.sleep(delay * (attempt + 1))
    if not os.path.exists(path):
        return True
    log.warning("LiverTumorLRP: could not remove the job folder %s: %s", path, error)
    return False


def _job_pids(folder: str) -> list:
    """The process ids recorded in a job folder (worker and parent), [] when none."""
    try:
        with open(os.path.join(folder, PID_FILE), encoding="utf-8") as fh:
            record = json.load(fh)
        return [int(record[k]) for k in ("pid", "parent") if record.get(k)]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def remove_stale_job_folders(folder: str, prefix: str = JOB_PREFIX, min_age: float = 60.0) -> list:
    """Remove the job folders ``folder/<prefix>*`` left by a worker or a Slicer that has ended (a crash, a kill).

    A folder is stale when it is older than ``min_age`` seconds and neither its worker nor the process that
    started it runs (by the ids in its ``worker.json``; a folder without one only by its age).  Returns the
    folders removed; those that cannot be removed are logged and kept.
    """
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(folder, name)
        if not name.startswith(prefix) or not os.path.isdir(path):
            continue
        try:
            age = now - os.path.getmtime(path)
        except OSError:
            continue
        if age < min_age or any(pid_alive(pid) for pid in _job_pids(path)):
            continue
        log.info("LiverTumorLRP: removing the stale job folder %s", path)
        if remove_folder(path, attempts=3):
            removed.append(path)
    return removed


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
                                        seed=int(job.get("seed", 0)), max_voxels=job.get("max_voxels"),
                                        method=job.get("method", pipeline.DEFAULT_METHOD), **common)
    summary = {k: v for k, v in summary.items() if not hasattr(v, "shape")}
    outputs = sorted(f for f in os.listdir(out) if not f.startswith("."))
    write_json({"task": job["task"], "summary": summary, "outputs": outputs}, os.path.join(job_dir, RESULT_FILE))
    return summary


def main(argv=None) -> int:
    """``worker JOB_DIR``: run the job; exit code 0 ok, 1 error, 2 bad arguments or job description."""
    import warnings

    from .progress import one_line

    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print("usage: python -m LiverTumorLRPLib.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = argv[0]
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        watch_parent(int(parent))
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
        emit(error=one_line(exc))
        print(f"LiverTumorLRP worker: {one_line(exc)}", file=sys.stderr)
        return 1
    emit(progress=1.0, message=f"{job['task']}: done", done=RESULT_FILE)
    return 0


class WorkerProcess:
    """A worker process on ``job_dir``: :meth:`start`, then :meth:`poll` from a timer; no threads, no Qt.

    ``python`` is the interpreter (inside Slicer: ``PythonSlicer``; headless: ``sys.executable``).
    The process gets its own process group, so :meth:`kill` stops it and any children; on Windows it opens no
    console window.  It stops by itself when ``parent_pid`` (default: this process) ends.  ``worker.json`` in the
    job folder records both ids, for :func:`remove_stale_job_folders`.
    """

    def __init__(self, job_dir: str, python: Optional[str] = None, parent_pid: Optional[int] = None):
        self.job_dir = os.path.abspath(job_dir)
        self.python = python or sys.executable
        self.parent_pid = os.getpid() if parent_pid is None else int(parent_pid)
        self.process: Optional[subprocess.Popen] = None
        self._offset = 0
        self.error: Optional[str] = None
        self.done = False

    def start(self) -> "WorkerProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **{PARENT_ENV: str(self.parent_pid)})
        kwargs = hidden_window()
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = kwargs.get("creationflags", 0) | subprocess.CREATE_NEW_PROCESS_GROUP
        with open(os.path.join(self.job_dir, LOG_FILE), "wb") as out, \
                open(os.path.join(self.job_dir, ERROR_FILE), "wb") as err:
            self.process = subprocess.Popen([self.python, WORKER_SCRIPT, self.job_dir], stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL, cwd=self.job_dir, env=env, **kwargs)
        try:
            with open(os.path.join(self.job_dir, PID_FILE), "w", encoding="utf-8") as fh:
                json.dump({"pid": self.process.pid, "parent": self.parent_pid, "started": time.time()}, fh)
        except OSError as exc:  # only the stale-folder clean-up reads it
            log.warning("LiverTumorLRP: could not write %s: %s", PID_FILE, exc)
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
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(p.pid)], capture_output=True, check=False,
                               stdin=subprocess.DEVNULL, timeout=timeout, **hidden_window())
                p.kill()
        except (ProcessLookupError, PermissionError, OSError, subprocess.TimeoutExpired):
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)

    def remove(self) -> bool:
        """Remove the job folder (retried; a failure is logged); True when it is gone."""
        return remove_folder(self.job_dir)


__all__ = ["WorkerProcess", "main", "run_job", "read_job", "hidden_window", "pid_alive", "watch_parent",
           "remove_folder", "remove_stale_job_folders", "JOB_FILE", "RESULT_FILE", "PID_FILE", "JOB_PREFIX", "TASKS",
           "WORKER_SCRIPT"]

if __name__ == "__main__":
    sys.exit(main())

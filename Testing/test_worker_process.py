"""The worker process's life: no console window on Windows, a worker that stops when the process that started it
dies, job folders in a given folder, removal retried and logged, stale folders removed at start-up."""
import ast
import json
import logging
import os
import subprocess
import sys
import time
import types

import pytest

from LiverTumorLRPLib import worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "LiverTumorLRPLib", "worker.py")


def gone(pid: int) -> bool:
    """The process has ended (pid_alive: a zombie that nobody reaps counts as ended)."""
    return not worker.pid_alive(pid)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_hidden_window_on_windows(monkeypatch):
    """On Windows: STARTUPINFO with SW_HIDE and CREATE_NO_WINDOW (simulated here); elsewhere nothing."""
    assert worker.hidden_window() == {} or os.name == "nt"

    class StartupInfo:
        dwFlags = 0
        wShowWindow = 1

    for name, value in (("STARTUPINFO", StartupInfo), ("STARTF_USESHOWWINDOW", 1), ("SW_HIDE", 0),
                        ("CREATE_NO_WINDOW", 0x08000000)):
        monkeypatch.setattr(subprocess, name, value, raising=False)
    monkeypatch.setattr(worker, "os", types.SimpleNamespace(name="nt"))
    kwargs = worker.hidden_window()
    assert kwargs["creationflags"] == 0x08000000
    assert kwargs["startupinfo"].dwFlags & 1 and kwargs["startupinfo"].wShowWindow == 0


def test_worker_and_taskkill_start_hidden():
    """Both processes started on Windows (the worker's Popen and taskkill's run) take hidden_window()."""
    tree = ast.parse(open(WORKER, encoding="utf-8").read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "WorkerProcess")
    start = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "start")
    kill = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "kill")
    assert "kwargs = hidden_window()" in ast.unparse(start) and "CREATE_NEW_PROCESS_GROUP" in ast.unparse(start)
    assert "**kwargs" in ast.unparse(next(n for n in ast.walk(start) if isinstance(n, ast.Call)
                                          and ast.unparse(n.func) == "subprocess.Popen"))
    taskkill = next(n for n in ast.walk(kill) if isinstance(n, ast.Call) and "taskkill" in ast.unparse(n))
    assert "**hidden_window()" in ast.unparse(taskkill)


def test_pid_alive():
    assert worker.pid_alive(os.getpid())
    assert not worker.pid_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while worker.pid_alive(zombie.pid):            # ended, not yet reaped (no wait() until below)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert zombie.wait() == 0
    assert not worker.pid_alive(0) and not worker.pid_alive(-5) and not worker.pid_alive(None)


PARENT = """
import sys, time
from LiverTumorLRPLib.worker import WorkerProcess
w = WorkerProcess(sys.argv[1]).start()
print(w.process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO to keep the worker busy")
def test_worker_stops_when_its_parent_is_killed(tmp_path):
    """A parent process starts a real worker and is killed: the worker (blocked reading its job file, a FIFO that
    nobody writes) notices within seconds, says so in its log and exits."""
    job = tmp_path / "LiverTumorLRP-job"
    job.mkdir()
    os.mkfifo(job / worker.JOB_FILE)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(job)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        time.sleep(1.0)
        assert not gone(pid), "the worker ended before its parent"
        record = json.loads((job / worker.PID_FILE).read_text())
        assert record["pid"] == pid and record["parent"] == parent.pid
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while not gone(pid):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.2)
    events = [json.loads(line) for line in (job / worker.LOG_FILE).read_text().splitlines()]
    assert any(f"(pid {parent.pid}) has ended" in e.get("error", "") for e in events)
    assert worker.remove_stale_job_folders(str(tmp_path), min_age=0) == [str(job)]


def test_watch_parent_calls_back(tmp_path):
    """In-process: the watch thread calls back once the watched process has ended, not before."""
    import threading

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    ended = threading.Event()
    worker.watch_parent(p.pid, interval=0.05, on_gone=ended.set)
    assert not ended.wait(0.5)
    p.wait()
    assert ended.wait(5)


def test_remove_folder_retries_and_logs(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "LiverTumorLRP-x"
    folder.mkdir()
    (folder / "worker.log").write_text("x")
    real_rmtree, calls = worker.shutil.rmtree, []

    def busy_twice(path):
        calls.append(path)
        if len(calls) <= 2:
            raise PermissionError(32, "The process cannot access the file because it is being used", path)
        real_rmtree(path)

    monkeypatch.setattr(worker.shutil, "rmtree", busy_twice)
    assert worker.remove_folder(str(folder), delay=0.01) and not folder.exists() and len(calls) == 3
    folder.mkdir()
    monkeypatch.setattr(worker.shutil, "rmtree", lambda path: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with caplog.at_level(logging.WARNING, logger="LiverTumorLRP"):
        assert not worker.remove_folder(str(folder), attempts=3, delay=0.01)
    assert folder.exists() and str(folder) in caplog.text and "denied" in caplog.text
    assert worker.remove_folder(str(tmp_path / "never-made"))


def test_remove_stale_job_folders(tmp_path):
    dead, old = dead_pid(), time.time() - 3600

    def folder(name, record=None, mtime=old):
        path = tmp_path / name
        path.mkdir()
        if record is not None:
            (path / worker.PID_FILE).write_text(json.dumps(record))
        os.utime(path, (mtime, mtime))
        return str(path)

    stale = folder("LiverTumorLRP-dead", {"pid": dead, "parent": dead})
    no_record = folder("LiverTumorLRP-norecord")
    running = folder("LiverTumorLRP-running", {"pid": os.getpid(), "parent": dead})
    parent_alive = folder("LiverTumorLRP-parent", {"pid": dead, "parent": os.getpid()})
    young = folder("LiverTumorLRP-young", {"pid": dead, "parent": dead}, mtime=time.time())
    other = folder("SomethingElse-dead", {"pid": dead, "parent": dead})
    removed = worker.remove_stale_job_folders(str(tmp_path))
    assert sorted(removed) == sorted([stale, no_record])
    for kept in (running, parent_alive, young, other):
        assert os.path.isdir(kept)
    assert worker.remove_stale_job_folders(str(tmp_path / "missing")) == []


def test_job_folder_in_the_given_folder(tmp_path):
    """WorkerJob writes its folder where told (inside Slicer: slicer.app.temporaryPath), records the worker and its
    parent, and removes the folder on Cancel."""
    from LiverTumorLRPLib import slicer_logic as sl

    with sl.headless_scene():
        nodes = sl.add_phantom_case(0, shape=(8, 24, 24))
        folder = tmp_path / "slicer-temp"
        job = sl.segment_job(nodes, "bundled", "cpu", python=sys.executable, temp_dir=str(folder)).start()
        try:
            assert os.path.dirname(job.job_dir) == str(folder)
            assert os.path.basename(job.job_dir).startswith(worker.JOB_PREFIX)
            record = json.loads(open(os.path.join(job.job_dir, worker.PID_FILE)).read())
            assert record == {"pid": job.worker.process.pid, "parent": os.getpid(), "started": record["started"]}
            assert worker.remove_stale_job_folders(str(folder), min_age=0) == []      # its worker runs
        finally:
            job.cancel()
        assert job.state == "cancelled" and os.listdir(folder) == []

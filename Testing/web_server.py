"""Start ``liver-lrp web`` as the real command on 127.0.0.1 for a test (shared by the web tests)."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, cwd, log_path, env=None, timeout: float = 180.0):
    """``python -m LiverTumorLRPLib web --host 127.0.0.1 --port <free> ARGS``, output to ``log_path``, waited for
    until it answers HTTP; (process, url, open log file).  RuntimeError with the log's end if it does not start."""
    port = free_port()
    env = dict(os.environ if env is None else env, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "LiverTumorLRPLib", "web", "--host", "127.0.0.1", "--port",
                             str(port), *map(str, args)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(cwd))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log.close()
                raise RuntimeError("the web server did not start:\n" + open(log_path).read()[-3000:]) from None
            time.sleep(0.5)

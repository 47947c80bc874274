"""``liver-lrp web``: the LiverTumorLRP page in a browser (trame-slicer: Slicer's own views from the real MRML core).

The page runs the same MRML logic as the Slicer module (:mod:`LiverTumorLRPLib.slicer_logic`); this package only
adds the page (:mod:`.page`), the server side of its buttons (:mod:`.app`) and the background-job runner
(:mod:`.jobs`).  trame and trame-slicer are imported only when the command runs (``pip install -e ".[web]"``).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile

RESULTS_PREFIX = "liver-lrp-web-"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; read the README before "
                        "exposing it)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--case", default=None, metavar="DIR", help="case folder (or case.json) to load at start")
    p.add_argument("--model", default="bundled", help="model weights (.safetensors) or 'bundled' (default)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--phantom-shape", type=int, nargs=3, default=(32, 96, 96), metavar=("Z", "Y", "X"),
                   help="grid of the phantom case that 'Load phantom' generates (default 32 96 96)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="folder for the downloadable result files (default: a new temporary folder, removed when "
                        "the server stops)")


def _torch_first() -> None:
    """Load torch's lazily imported compiler stack (torch._dynamo, triton) before VTK starts Mesa's EGL.

    Loaded the other way round (triton first imported from a job thread after llvmpipe is up) the process
    crashes with a segmentation fault inside triton's import (two LLVMs in one process).
    """
    import torch._dynamo  # noqa: F401


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived (a BaseException, so no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _stopped(exc: BaseException) -> bool:
    """A stop asked for: our handler's, Ctrl-C's, or aiohttp's (its GracefulExit, raised on SIGINT/SIGTERM while
    the server runs)."""
    return isinstance(exc, (Stopped, KeyboardInterrupt)) or type(exc).__name__ == "GracefulExit"


def _exit_now(code: int) -> None:
    """Leave at once after flushing: no interpreter finalisation and no C++ static destructors, which abort the
    process ("terminate called without an active exception") while a job thread is inside torch."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run(args) -> int:
    """Serve the page until SIGTERM or Ctrl-C (at any time: also while starting, also while a job runs); then
    remove the temporary results folder (``liver-lrp-web-*``, patient-derived data; a ``--output`` folder is kept)
    and exit with status 0 -- without the interpreter's finalisation, see :func:`_exit_now`."""
    from ..worker import remove_folder

    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    temporary = args.output is None
    output = tempfile.mkdtemp(prefix=RESULTS_PREFIX) if temporary else args.output
    code, failed = 0, True
    try:
        _torch_first()
        try:
            from .app import serve
        except ImportError as exc:
            raise ValueError(f"the web page needs trame-slicer ({exc}); install it with: pip install -e \".[web]\" "
                             "(see the README, section 'In the browser')") from None
        code = serve(host=args.host, port=args.port, case=args.case, model=args.model, device=args.device,
                     phantom_shape=tuple(args.phantom_shape), output=output)
        failed = False
        print("liver-lrp web: stopped", flush=True)     # the server's own SIGTERM/SIGINT handling returned
    except BaseException as exc:
        if not _stopped(exc):
            raise
        print(f"liver-lrp web: stopped ({exc or type(exc).__name__})", flush=True)
        failed = False
    finally:
        for s in previous:                       # cleaning up is not interrupted by a second signal
            signal.signal(s, signal.SIG_IGN)
        if temporary:
            remove_folder(output)
        if failed:                               # an error on its way to the command line: as before
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
    _exit_now(int(code or 0))
    return int(code or 0)                        # not reached

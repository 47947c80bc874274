"""``liver-lrp web``: the LiverTumorLRP page in a browser (trame-slicer: Slicer's own views from the real MRML core).

The page runs the same MRML logic as the Slicer module (:mod:`LiverTumorLRPLib.slicer_logic`); this package only
adds the page (:mod:`.page`), the server side of its buttons (:mod:`.app`) and the background-job runner
(:mod:`.jobs`).  trame and trame-slicer are imported only when the command runs (``pip install -e ".[web]"``).
"""
from __future__ import annotations

import argparse
import os


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
                   help="folder for the downloadable result files (default: a new temporary folder)")


def _torch_first() -> None:
    """Load torch's lazily imported compiler stack (torch._dynamo, triton) before VTK starts Mesa's EGL.

    Loaded the other way round (triton first imported from a job thread after llvmpipe is up) the process
    crashes with a segmentation fault inside triton's import (two LLVMs in one process).
    """
    import torch._dynamo  # noqa: F401


def run(args) -> int:
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    _torch_first()
    try:
        from .app import serve
    except ImportError as exc:
        raise ValueError(f"the web page needs trame-slicer ({exc}); install it with: pip install -e \".[web]\" "
                         "(see the README, section 'In the browser')") from None
    return serve(host=args.host, port=args.port, case=args.case, model=args.model, device=args.device,
                 phantom_shape=tuple(args.phantom_shape), output=args.output)

"""Device choice: ``auto`` (CUDA when usable, else CPU), ``cpu`` or ``cuda``, with a CPU fallback."""
from __future__ import annotations

import logging
import warnings
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def cuda_usable() -> bool:
    try:
        if not torch.cuda.is_available():
            return False
        torch.zeros(1, device="cuda")
        return True
    except Exception:  # driver present but broken
        return False


def resolve_device(spec="auto") -> torch.device:
    """``"auto"`` -> CUDA when usable else CPU; ``"cuda"``/``"gpu"`` without a usable GPU warns and gives CPU."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("auto", "cuda", "gpu") or spec.startswith("cuda:"):
        if cuda_usable():
            return torch.device("cuda" if spec in ("auto", "gpu") else spec)
        if spec != "auto":
            warnings.warn("CUDA was requested but no usable GPU was found; running on the CPU", stacklevel=2)
        return torch.device("cpu")
    raise ValueError(f"unknown device {spec!r}; use auto, cpu or cuda")


def run_with_cpu_fallback(fn: Callable[[torch.device], T], device) -> T:
    """Run ``fn(device)``; if the GPU runs out of memory, warn and run ``fn`` again on the CPU."""
    device = resolve_device(device)
    try:
        return fn(device)
    except torch.cuda.OutOfMemoryError:
        if device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        warnings.warn("the GPU ran out of memory; running again on the CPU (slower). A smaller patch size "
                      "needs less GPU memory.", stacklevel=2)
        return fn(torch.device("cpu"))

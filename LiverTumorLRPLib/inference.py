"""Sliding-window inference: volumes larger than one patch.

The volume is padded (edge values) to a size the u-net accepts, cut into
overlapping patches, and the patch *logits* are blended with normalised weights
``w_p(v) / sum_q w_q(v)`` (Gaussian by default, as nnU-Net).  Softmax comes after
blending.  Explanations (:mod:`.explain`) assemble relevance with the same weights,
so they explain exactly this prediction; memory is bounded by the patch size.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .device import resolve_device, run_with_cpu_fallback
from .progress import as_progress


@dataclass
class PatchPlan:
    shape: tuple            # original spatial shape (D, H, W)
    padded: tuple           # padded spatial shape
    windows: list           # tuples of slices into the padded volume
    weight: np.ndarray      # blending weight of one patch (patch shape)
    norm: np.ndarray        # sum of the weights over all windows (padded shape)

    @property
    def single(self) -> bool:
        return len(self.windows) == 1

    def normalised_weight(self, window) -> np.ndarray:
        """``w_p / sum_q w_q`` on one window."""
        return self.weight / self.norm[window]


def model_divisor(model) -> int:
    """Spatial sizes the network accepts are multiples of this (``2**depth`` for our u-net)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "divisor"):
        return int(cfg.divisor)
    return int(getattr(model, "size_divisor", 16))


def _gaussian(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    grids = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / max(n * sigma_scale, 1e-6)) ** 2) for n in patch]
    w = grids[0][:, None, None] * grids[1][None, :, None] * grids[2][None, None, :]
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float64)


def plan_patches(shape, divisor: int = 8, patch_size: Optional[Sequence[int]] = None, overlap: float = 0.5,
                 blend: str = "gaussian") -> PatchPlan:
    """Windows covering ``shape``; a single window when ``patch_size`` is None or covers the volume."""
    shape = tuple(int(s) for s in shape)
    fitted = tuple(int(math.ceil(s / divisor) * divisor) for s in shape)
    if patch_size is None or all(p >= f for p, f in zip(patch_size, fitted)):
        weight = np.ones(fitted)
        return PatchPlan(shape, fitted, [tuple(slice(0, f) for f in fitted)], weight, weight.copy())
    patch = tuple(int(p) for p in patch_size)
    if any(p % divisor for p in patch):
        raise ValueError(f"patch size {patch} must be a multiple of {divisor} in every dimension")
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    patch = tuple(min(p, f) for p, f in zip(patch, fitted))
    padded = tuple(max(f, p) for f, p in zip(fitted, patch))
    starts = []
    for n, p in zip(padded, patch):
        step = max(1, int(round(p * (1 - overlap))))
        count = max(1, int(math.ceil((n - p) / step)) + 1)
        starts.append(sorted({min(i * step, n - p) for i in range(count)}))
    windows = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in itertools.product(*starts)]
    weight = _gaussian(patch) if blend == "gaussian" else np.ones(patch)
    norm = np.zeros(padded)
    for w in windows:
        norm[w] += weight
    return PatchPlan(shape, padded, windows, weight, norm)


def pad_image(image: np.ndarray, padded) -> np.ndarray:
    """Pad a (C, D, H, W) stack at the far end with edge values to the padded spatial shape."""
    pad = [(0, 0)] + [(0, p - s) for s, p in zip(image.shape[1:], padded)]
    return np.pad(image, pad, mode="edge") if any(b for _, b in pad) else image


def crop(volume, shape):
    return volume[(Ellipsis,) + tuple(slice(0, s) for s in shape)]


def check_image(image: np.ndarray, channels: int = 6) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != channels:
        raise ValueError(f"expected a ({channels}, D, H, W) image stack in channel order, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("the image contains NaN or infinite values")
    return image


@torch.no_grad()
def predict_logits(model, image: np.ndarray, device="auto", patch_size=None, overlap: float = 0.5,
                   progress=None, cancel=None) -> np.ndarray:
    """Blended class logits (K, D, H, W) of a normalised (C, D, H, W) stack."""
    image = check_image(image, getattr(getattr(model, "config", None), "in_channels", 6))
    prog = as_progress(progress, cancel)

    def run(dev):
        net = model.to(dev).eval()
        plan = plan_patches(image.shape[1:], model_divisor(model), patch_size, overlap)
        x = torch.from_numpy(np.ascontiguousarray(pad_image(image, plan.padded), dtype=np.float32))
        out = None
        for i, win in enumerate(plan.windows):
            prog(i / len(plan.windows), f"segmenting patch {i + 1}/{len(plan.windows)}")
            y = net(x[(slice(None),) + win][None].to(dev))[0].float().cpu().numpy()
            if out is None:
                out = np.zeros((y.shape[0],) + plan.padded, dtype=np.float32)
            out[(slice(None),) + win] += y * plan.normalised_weight(win)
        prog(1.0, "segmentation done")
        return crop(out, plan.shape)

    return run_with_cpu_fallback(run, device)


def predict(model, image: np.ndarray, device="auto", patch_size=None, overlap: float = 0.5, progress=None,
            cancel=None) -> np.ndarray:
    """Tumor probability (D, H, W) float32: softmax of the blended logits, class 1."""
    logits = predict_logits(model, image, device, patch_size, overlap, progress, cancel)
    return torch.softmax(torch.from_numpy(logits), dim=0)[1].numpy().astype(np.float32)


__all__ = ["PatchPlan", "plan_patches", "predict", "predict_logits", "pad_image", "crop", "resolve_device",
           "model_divisor"]

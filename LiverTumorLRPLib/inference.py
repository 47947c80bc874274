"""Sliding-window inference: volumes larger than one patch, exactly as the explanations see them.

A :class:`PatchPlan` pads the volume (centred, to the model's per-axis strides, or to the patch as
nnU-Net does), cuts it into patch-sized windows at nnU-Net's evenly spread steps, and blends the patch
*logits* with normalised Gaussian weights ``w_p(v) / sum_q w_q(v)`` (nnU-Net's ``compute_gaussian``:
sigma = patch / 8).  Softmax comes after blending.  Padding is ``edge`` (border voxels copied) or
``zero`` (nnU-Net), from :class:`~.model_info.ModelInfo`.

Every window's input is built by :meth:`PatchPlan.window_input` from the *unpadded* image, as a
differentiable gather: explanations (:mod:`.explain`) propagate relevance through the same operation,
so relevance that reaches a padded copy of a border voxel is folded back onto that voxel (the adjoint
of the padding) and zero padding receives none.  Memory is bounded by the patch, not the volume.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .device import resolve_device, run_with_cpu_fallback
from .model_info import ModelInfo, model_info
from .progress import as_progress


@dataclass
class Window:
    """One window: where it lies in the padded volume and how its input is gathered from the image."""

    padded: tuple           # slices into the padded volume
    box: tuple              # slices into the unpadded volume: the voxels the window reads
    index: tuple            # per axis: LongTensor of positions inside ``box``, or None (a plain slice)
    valid: Optional[torch.Tensor]  # (1, d, h, w) 1/0 mask of voxels inside the image (zero padding), or None


@dataclass
class PatchPlan:
    shape: tuple            # original spatial shape (D, H, W)
    padded: tuple           # padded spatial shape
    offset: tuple           # voxels padded before each axis
    patch: tuple            # window shape
    windows: list           # list of Window
    weight: np.ndarray      # blending weight of one patch (patch shape)
    norm: np.ndarray        # sum of the weights over all windows (padded shape)
    padding: str = "edge"

    @property
    def single(self) -> bool:
        return len(self.windows) == 1

    def normalised_weight(self, window: Window) -> np.ndarray:
        """``w_p / sum_q w_q`` on one window."""
        return self.weight / self.norm[window.padded]

    def crop(self, volume):
        """The original voxels of a padded (..., D', H', W') volume."""
        return volume[(Ellipsis,) + tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape))]

    def uncrop(self, volume, fill=0):
        """A volume on the original grid placed into the padded grid (``fill`` elsewhere)."""
        is_torch = isinstance(volume, torch.Tensor)
        shape = tuple(volume.shape[:-3]) + self.padded
        out = torch.full(shape, fill, dtype=volume.dtype) if is_torch else np.full(shape, fill, volume.dtype)
        out[(Ellipsis,) + tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape))] = volume
        return out

    def window_input(self, image: torch.Tensor, window: Window) -> torch.Tensor:
        """The window's (C, d, h, w) input gathered from an unpadded (C, D, H, W) tensor ``image`` of
        ``window.box`` (or of the whole volume); differentiable, so its adjoint folds relevance back."""
        if tuple(image.shape[1:]) == self.shape:
            image = image[(slice(None),) + window.box]
        out = image
        for axis, idx in enumerate(window.index):
            if idx is not None:
                out = out.index_select(axis + 1, idx.to(out.device))
        if window.valid is not None:
            out = out * window.valid.to(out)
        return out


def flip(t: torch.Tensor, dims: tuple) -> torch.Tensor:
    """``t`` mirrored along ``dims`` (its own inverse and adjoint); no copy for no dims."""
    return torch.flip(t, dims) if dims else t


def model_divisor(model) -> tuple:
    """Per-axis strides (z, y, x) of a network: every input size must be a multiple of them."""
    return model_info(model).strides


def nnunet_steps(size: int, patch: int, tile_step: float) -> list[int]:
    """Window starts along one axis, as nnU-Net's ``compute_steps_for_sliding_window``."""
    if size <= patch:
        return [0]
    n = int(math.ceil((size - patch) / (patch * tile_step))) + 1
    step = (size - patch) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def gaussian_weight(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """nnU-Net's ``compute_gaussian``: a Gaussian (sigma = patch * sigma_scale) centred at ``patch // 2``,
    scaled to max 1, zeros replaced by the smallest non-zero value."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(patch, dtype=np.float64)
    tmp[tuple(p // 2 for p in patch)] = 1.0
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g = g / g.max()
    if (g == 0).any():
        g[g == 0] = g[g > 0].min()
    return g


def _axis_source(start: int, length: int, offset: int, n: int, padding: str):
    """Source positions of padded coordinates ``start..start+length`` along an axis of ``n`` voxels."""
    src = np.arange(start, start + length) - offset
    inside = (src >= 0) & (src < n)
    clamped = np.clip(src, 0, n - 1)
    lo, hi = int(clamped.min()), int(clamped.max()) + 1
    if inside.all():
        return slice(lo, hi), None, None
    if padding == "edge":
        return slice(lo, hi), torch.from_numpy(clamped - lo), None
    return slice(lo, hi), torch.from_numpy(clamped - lo), inside


def grow_to_budget(patch, fitted) -> tuple:
    """The window shape for a volume of (stride-padded) shape ``fitted`` when the patch sets a voxel budget.

    The patch is first shrunk to the volume along axes where the volume is shorter; the voxels saved let
    the window cover whole axes where the volume is longer, one axis at a time (the one giving the smallest
    window first), as long as the window holds no more voxels than the patch.  An axis is only ever grown
    to its full extent, so the window has no seams along it; peak memory stays that of one patch.
    """
    budget = math.prod(patch)
    window = [min(p, f) for p, f in zip(patch, fitted)]
    while True:
        options = [window[:a] + [fitted[a]] + window[a + 1:] for a in range(3) if window[a] < fitted[a]]
        options = [o for o in options if math.prod(o) <= budget]
        if not options:
            return tuple(window)
        window = min(options, key=math.prod)


def plan_patches(shape, strides=8, patch_size=None, overlap: float = 0.5, padding: str = "edge",
                 pad_to_patch: bool = False, blend: str = "gaussian", budget: bool = False) -> PatchPlan:
    """Windows covering ``shape`` (D, H, W).

    ``strides``: per axis (or one number); ``patch_size`` None: one window of the volume padded to the
    strides; else windows of the patch (shrunk to the padded volume along axes where it is smaller,
    unless ``pad_to_patch``, as nnU-Net) at nnU-Net's steps with step ``patch * (1 - overlap)``.
    ``budget``: the patch is a voxel budget rather than a shape (:func:`grow_to_budget`).
    """
    shape = tuple(int(s) for s in shape)
    strides = tuple(int(s) for s in (strides if not isinstance(strides, int) else (strides,) * 3))
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    fitted = tuple(int(math.ceil(s / k) * k) for s, k in zip(shape, strides))
    if patch_size is None:
        patch = fitted
    else:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 3 or any(p % k for p, k in zip(patch, strides)):
            raise ValueError(f"patch size {patch} must be a multiple of the model's strides {strides} per axis")
        if budget and not pad_to_patch:
            patch = grow_to_budget(patch, fitted)
        elif not pad_to_patch:
            patch = tuple(min(p, f) for p, f in zip(patch, fitted))
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    offset = tuple((p - s) // 2 for p, s in zip(padded, shape))
    starts = [nnunet_steps(n, p, 1.0 - overlap) for n, p in zip(padded, patch)]
    single = all(len(s) == 1 for s in starts)
    weight = gaussian_weight(patch) if blend == "gaussian" and not single else np.ones(patch)
    windows, norm = [], np.zeros(padded)
    for st in itertools.product(*starts):
        pad_sl = tuple(slice(s, s + p) for s, p in zip(st, patch))
        parts = [_axis_source(s, p, o, n, padding) for s, p, o, n in zip(st, patch, offset, shape)]
        valid = None
        if any(m is not None for _, _, m in parts):
            masks = [torch.from_numpy(m if m is not None else np.ones(p, bool)) for (_, _, m), p in zip(parts, patch)]
            valid = (masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :])[None].float()
        windows.append(Window(pad_sl, tuple(b for b, _, _ in parts), tuple(i for _, i, _ in parts), valid))
        norm[pad_sl] += weight
    return PatchPlan(shape, padded, offset, patch, windows, weight, norm, padding)


def plan_for(model, shape, patch_size=None, overlap: Optional[float] = None) -> PatchPlan:
    """The plan a model's :class:`ModelInfo` asks for; ``patch_size`` overrides the model's patch
    (``"whole"``: the whole volume in one window).

    The model's own patch is a voxel budget (:func:`grow_to_budget`: fewer seams, the same peak memory),
    except for models that pad to their patch (nnU-Net), which run exactly on it; a ``patch_size`` given
    here is used as it is.
    """
    info = model if isinstance(model, ModelInfo) else model_info(model)
    patch = info.patch_size if patch_size is None else (None if patch_size == "whole" else patch_size)
    step = 1.0 - info.tile_step if overlap is None else overlap
    return plan_patches(shape, info.strides, patch, step, info.padding, info.pad_to_patch and patch is not None,
                        budget=patch_size is None)


def check_image(image: np.ndarray, channels: int = 6) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != channels:
        raise ValueError(f"expected a ({channels}, D, H, W) image stack in channel order, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("the image contains NaN or infinite values")
    return image


@torch.no_grad()
def predict_logits(model, image: np.ndarray, device="auto", patch_size=None, overlap: Optional[float] = None,
                   progress=None, cancel=None) -> np.ndarray:
    """Blended class logits (K, D, H, W) of a normalised (C, D, H, W) stack on the network grid, averaged
    over the model's test-time mirrors (``ModelInfo.mirrors``) in every window.  A batch of stacks
    (N, C, D, H, W) runs through each window together and gives (N, K, D, H, W)."""
    info = model_info(model)
    batched = np.ndim(image) == 5
    images = [check_image(im, info.n_channels) for im in (image if batched else [image])]
    prog = as_progress(progress, cancel)

    def run(dev):
        net = model.to(dev).eval()
        plan = plan_for(info, images[0].shape[1:], patch_size, overlap)
        p = next(net.parameters(), None)
        xs = [torch.from_numpy(np.ascontiguousarray(im)).to(p.dtype if p is not None else torch.float32)
              for im in images]
        out, mirrors = None, info.mirrors
        for i, win in enumerate(plan.windows):
            prog(i / len(plan.windows), f"segmenting patch {i + 1}/{len(plan.windows)}")
            xw = torch.stack([plan.window_input(x, win) for x in xs]).to(dev)
            if xw.dim() == 5:   # channels-last 3D input: the same logits (to float rounding), ~1.8x faster on CPU
                xw = xw.contiguous(memory_format=torch.channels_last_3d)
            y = sum(flip(net(flip(xw, dims)), dims) for dims in mirrors) / len(mirrors)
            y = y.float().cpu().numpy()
            if out is None:
                out = np.zeros(y.shape[:2] + plan.padded, dtype=np.float32)
            out[(slice(None), slice(None)) + win.padded] += y * plan.normalised_weight(win)
        prog(1.0, "segmentation done")
        out = plan.crop(out)
        return out if batched else out[0]

    return run_with_cpu_fallback(run, device)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (K, ...) as float32."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=0).numpy()


def predict(model, image: np.ndarray, device="auto", patch_size=None, overlap: Optional[float] = None,
            progress=None, cancel=None) -> np.ndarray:
    """Lesion probability (D, H, W) float32: softmax of the blended logits, the model's lesion class."""
    logits = predict_logits(model, image, device, patch_size, overlap, progress, cancel)
    return probabilities(logits)[model_info(model).lesion_index].astype(np.float32)


__all__ = ["PatchPlan", "Window", "plan_patches", "plan_for", "predict", "predict_logits", "probabilities",
           "resolve_device", "model_divisor", "gaussian_weight", "nnunet_steps"]

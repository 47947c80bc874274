"""The paper's explanations: Eq. 1 (one output voxel), Eq. 2 (a region) and Sec. 2.3 (sequences).

* :func:`relevance` -- Eq. 1: input relevance ``M`` of any output relevance ``seed * y``.
* :func:`region_relevance` -- Eq. 2: ``M_A^i = sum_{a in A} M_a^i / sum(M_a^i)``, exact, in three passes
  whatever ``|A|``: because LRP is linear in the seeded relevance, ``M_A^i = M(1_A / S)`` with
  ``S_a = sum(M_a^i)`` for every voxel from one forward-mode pass (:meth:`LRP.forward_with_sums`).
  :func:`region_relevance_loop` is the per-voxel loop the paper's tooling needed, kept as the test oracle.
* :func:`sequence_relevance` -- Sec. 2.3: ``M = M_B^0 + M_T^1`` with equally many predicted-tumor (T) and
  predicted-background (B) voxels; each sequence's share is its channel sum, normalised to sum 1.

Inputs are normalised (C, D, H, W) numpy stacks (or torch tensors, with or without the batch axis).
Volumes larger than ``patch_size`` are processed patch by patch with the blending of
:mod:`.inference`, so the explanation is of the prediction as it was assembled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .device import run_with_cpu_fallback
from .inference import plan_for
from .lrp import LRP, as_lrp
from .model_info import model_info
from .presets import DEFAULT_PRESET
from .progress import as_progress
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS

DEFAULT_THRESHOLD = 1e-3


@dataclass
class RegionRelevance:
    """Eq. 2 relevance of region A for one class."""

    maps: np.ndarray            # (C, D, H, W): M_A^i
    cls: int
    n_voxels: int               # |A|
    n_excluded: int             # voxels of A left out because |S_a| was (near) zero
    sums: np.ndarray = field(repr=False)  # S_a for the voxels of A (in the order of np.nonzero(region))

    @property
    def sequence_sums(self) -> np.ndarray:
        return self.maps.reshape(self.maps.shape[0], -1).sum(axis=1)

    @property
    def sequence_shares(self) -> np.ndarray:
        """Channel sums normalised to sum 1."""
        s = self.sequence_sums
        return s / s.sum()


@dataclass
class SequenceRelevance:
    """Sec. 2.3: relevance of each input sequence, ``M = M_B^0 + M_T^1`` normalised to sum 1."""

    shares: np.ndarray          # (C,) channel sums of M / sum(M)
    positive: np.ndarray        # (C,) positive mass / sum(M)
    negative: np.ndarray        # (C,) negative mass / sum(M)  (shares = positive + negative)
    maps: np.ndarray            # (C, D, H, W): M (unnormalised)
    n_tumor: int                # |T| used
    n_background: int           # |B| used
    n_excluded: int             # voxels of T and B left out because |S_a| was (near) zero
    n_predicted_tumor: int      # all voxels predicted tumor
    tumor_region: np.ndarray = field(repr=False)
    background_region: np.ndarray = field(repr=False)
    channels: tuple = SEQUENCE_KEYS      # the model's channel keys
    display_names: tuple = DISPLAY_NAMES
    lesion: str = "tumor"                # the class T was explained for

    def as_dict(self) -> dict:
        return {"sequences": list(self.channels), "display_names": list(self.display_names),
                "lesion_class": self.lesion,
                "relevance": [float(v) for v in self.shares], "positive": [float(v) for v in self.positive],
                "negative": [float(v) for v in self.negative], "n_tumor": self.n_tumor,
                "n_background": self.n_background, "n_excluded": self.n_excluded,
                "n_predicted_tumor": self.n_predicted_tumor}


# ---- helpers ----------------------------------------------------------------------------------------------------
def _as_image(x) -> tuple[np.ndarray, bool]:
    """(C, D, H, W) numpy and whether the caller gave torch."""
    is_torch = isinstance(x, torch.Tensor)
    a = x.detach().cpu().numpy() if is_torch else np.asarray(x)
    if a.ndim == 5:
        if a.shape[0] != 1:
            raise ValueError(f"one case at a time: got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim != 4:
        raise ValueError(f"expected a (C, D, H, W) image stack, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the image contains NaN or infinite values")
    return a, is_torch


def _dtype(a: np.ndarray):
    return torch.float64 if a.dtype == np.float64 else torch.float32


class _Engine:
    """Runs the LRP passes of one (C, D, H, W) image window by window (one window when it fits).

    Each window's input is gathered from the unpadded image (:meth:`PatchPlan.window_input`), so the
    probe lives on the unpadded voxels: relevance on padded copies is folded back (Eq. 2 conserves
    exactly on any volume size) and zero padding receives none.
    """

    def __init__(self, model, image, preset, device, patch_size, overlap, bounds, progress):
        self.lrp = as_lrp(model, preset)
        self.info = model_info(self.lrp.source)
        self.image, self.device, self.progress = image, device, progress
        self.dtype = _dtype(image)
        self.plan = plan_for(self.info, image.shape[1:], patch_size, overlap)
        self.x = torch.from_numpy(np.ascontiguousarray(image)).to(self.dtype)
        if bounds is None:  # z^B bounds from the whole volume, not the window
            flat = image.reshape(image.shape[0], -1)
            bounds = (flat.min(axis=1), flat.max(axis=1))
        self.bounds = bounds
        self._graph = None

    def _box(self, win):
        """The unpadded voxels a window reads (on the device) and the gather that builds its input."""
        box = self.x[(slice(None),) + win.box][None].to(self.device)
        return box, lambda t: self.plan.window_input(t[0], win)[None]

    def sums(self):
        """Blended output ``y`` and per-voxel relevance sums ``S`` (K, D, H, W), both on the original grid."""
        y_all = S_all = None
        n = len(self.plan.windows)
        for i, win in enumerate(self.plan.windows):
            self.progress(i / n, f"relevance sums, patch {i + 1}/{n}")
            keep = self.plan.single
            box, expand = self._box(win)
            y, S, s = self.lrp.forward_with_sums(box, self.bounds, keep_graph=keep, expand=expand)
            if keep:
                self._graph = (y, s)
            w = torch.from_numpy(self.plan.normalised_weight(win)).to(self.dtype)
            if y_all is None:
                y_all = torch.zeros((y.shape[1],) + self.plan.padded, dtype=self.dtype)
                S_all = torch.zeros_like(y_all)
            y_all[(slice(None),) + win.padded] += y.detach()[0].cpu() * w
            S_all[(slice(None),) + win.padded] += S[0].cpu() * w
        return self.plan.crop(y_all), self.plan.crop(S_all)

    def backward(self, out_weights: torch.Tensor) -> torch.Tensor:
        """Input relevance (C, D, H, W) of output relevance ``out_weights * y`` (both on the original grid)."""
        out_weights = self.plan.uncrop(out_weights.to(self.dtype))
        M = torch.zeros_like(self.x)
        todo = [win for win in self.plan.windows if bool(out_weights[(slice(None),) + win.padded].any())]
        for i, win in enumerate(todo):
            self.progress(i / max(len(todo), 1), f"relevance, patch {i + 1}/{len(todo)}")
            g = out_weights[(slice(None),) + win.padded] * torch.from_numpy(self.plan.normalised_weight(win)).to(
                self.dtype)
            if self._graph is not None:
                (y, s), self._graph = self._graph, None
            else:
                box, expand = self._box(win)
                y, s = self.lrp.forward(box, self.bounds, expand=expand)
            (m,) = torch.autograd.grad(y, s, g[None].to(y))
            M[(slice(None),) + win.box] += m[0].cpu()
        return M


def _exclude(S_A: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask of voxels kept: finite and ``|S_a| > threshold * median |S_A|``."""
    mag = S_A.abs()
    finite = torch.isfinite(S_A)
    if not bool(finite.any()):
        return finite
    ref = float(mag[finite].median())
    return finite & (mag > threshold * ref) & (mag > 0)


def _region_mask(region, shape) -> np.ndarray:
    r = np.asarray(region)
    if r.shape != tuple(shape):
        raise ValueError(f"region shape {r.shape} differs from the image's {tuple(shape)}")
    return r.astype(bool)


def _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel, work):
    prog = as_progress(progress, cancel)

    def on(dev):
        eng = _Engine(model, image, preset, dev, patch_size, overlap, bounds, prog)
        return work(eng)

    return run_with_cpu_fallback(on, device)


# ---- Eq. 1 -----------------------------------------------------------------------------------------------------
def relevance(model, x, seed, preset=DEFAULT_PRESET, device="auto", bounds=None, patch_size=None,
              overlap: Optional[float] = None):
    """Eq. 1: input relevance map ``M`` (same shape as ``x``) of the output relevance ``seed * y``.

    ``seed``: weights over the output (K, D, H, W) -- a one-hot seed explains one output neuron, whose
    relevance is then the model output ``y^i_a`` -- or a tuple ``(class, z, y, x)`` for that one voxel
    (class by index or by the model's class name).  Returns torch for torch input, numpy for numpy input.
    """
    image, is_torch = _as_image(x)

    def work(eng):
        K = eng.info.n_classes
        if isinstance(seed, tuple):
            cls, *idx = seed
            w = torch.zeros((K,) + image.shape[1:], dtype=eng.dtype)
            w[(eng.info.class_index(cls), *idx)] = 1.0
        else:
            s = torch.as_tensor(np.asarray(seed.detach().cpu() if isinstance(seed, torch.Tensor) else seed))
            s = s[0] if s.dim() == 5 else s
            if tuple(s.shape) != (K,) + image.shape[1:]:
                raise ValueError(f"seed shape {tuple(s.shape)} does not match the output {(K,) + image.shape[1:]}")
            w = s.to(eng.dtype)
        return eng.backward(w)

    M = _run(model, image, preset, device, patch_size, overlap, bounds, None, None, work)
    if is_torch:
        return M.reshape(x.shape).to(x)
    return M.numpy()


# ---- Eq. 2 -----------------------------------------------------------------------------------------------------
def _normalised_seed(S: torch.Tensor, weights: torch.Tensor, threshold: float):
    """Eq. 2's seed ``w_{c,a} / S_a^c`` over all classes and voxels with ``w != 0``; voxels whose ``S_a``
    is (near) zero are left out.  Returns the seed and the number left out."""
    seed = torch.zeros_like(S)
    excluded = 0
    for c in range(S.shape[0]):
        sel = weights[c] != 0
        if not bool(sel.any()):
            continue
        S_A = S[c][sel]
        keep = _exclude(S_A, threshold)
        excluded += int((~keep).sum())
        seed[c][sel] = torch.where(keep, weights[c][sel] / torch.where(keep, S_A, torch.ones_like(S_A)),
                                   torch.zeros_like(S_A))
    return seed, excluded


def weighted_region_relevance(model, x, weights, preset=DEFAULT_PRESET, device="auto",
                              threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None,
                              overlap: Optional[float] = None, progress=None, cancel=None, _with_output=False):
    """Eq. 2 with a weight per class and voxel: ``M = sum_{c,a} w_{c,a} M_a^c / sum(M_a^c)``.

    ``weights``: (K, D, H, W); a region A of class i is ``w = 1_A`` on channel i.  Exact, in one
    forward(-mode) pass and one backward pass per window whatever the weights (LRP is linear in the
    seeded relevance).  Returns ``(M, n_excluded, S)`` (and the blended output with ``_with_output``).
    """
    image, _ = _as_image(x)

    def work(eng):
        prog = eng.progress
        eng.progress = prog.part(0.0, 0.5)
        y, S = eng.sums()
        w = torch.as_tensor(np.asarray(weights(y) if callable(weights) else weights)).to(eng.dtype)
        if tuple(w.shape) != tuple(S.shape):
            raise ValueError(f"weights of shape {tuple(w.shape)}; expected {tuple(S.shape)} (classes, D, H, W)")
        seed, excluded = _normalised_seed(S, w, threshold)
        eng.progress = prog.part(0.5, 1.0)
        M = eng.backward(seed)
        prog(1.0, "region relevance done")
        out = (M.numpy(), excluded, S.numpy())
        return out + (y.numpy(), w.numpy()) if _with_output else out

    return _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel, work)


def region_relevance(model, x, region, cls="tumor", preset=DEFAULT_PRESET, device="auto",
                     threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None,
                     overlap: Optional[float] = None, progress=None, cancel=None) -> RegionRelevance:
    """Eq. 2: ``M_A^i = sum_{a in A} M_a^i / sum(M_a^i)`` for region ``A`` (bool (D, H, W)) and class ``cls``.

    Exact, in one forward(-mode) pass and one backward pass per window.  Voxels whose relevance sum
    ``S_a = sum(M_a^i)`` is not finite or ``|S_a| <= threshold * median_A |S_a|`` would dominate the
    normalised sum; they are left out and counted in ``n_excluded``.
    """
    image, _ = _as_image(x)
    mask = _region_mask(region, image.shape[1:])
    if not mask.any():
        raise ValueError("the region is empty")
    c = model_info(getattr(model, "source", model)).class_index(cls)

    def weights(y):
        w = np.zeros(tuple(y.shape), dtype=np.float32)
        w[c][mask] = 1.0
        return w

    M, excluded, S = weighted_region_relevance(model, image, weights, preset, device, threshold, bounds,
                                               patch_size, overlap, progress, cancel)
    return RegionRelevance(M.astype(np.float32), c, int(mask.sum()), excluded, S[c][mask])


def region_relevance_loop(model, x, region, cls="tumor", preset=DEFAULT_PRESET, device="cpu",
                          threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None) -> RegionRelevance:
    """Eq. 2 the slow way: one Eq. 1 pass per voxel of A (the test oracle and benchmark baseline)."""
    image, _ = _as_image(x)
    mask = _region_mask(region, image.shape[1:])
    lrp = as_lrp(model, preset)
    c = model_info(lrp.source).class_index(cls)
    if bounds is None:
        flat = image.reshape(image.shape[0], -1)
        bounds = (flat.min(axis=1), flat.max(axis=1))
    maps = [relevance(lrp, image, (c, *map(int, idx)), device=device, bounds=bounds, patch_size=patch_size)
            for idx in zip(*np.nonzero(mask))]
    S_A = torch.tensor([float(m.sum()) for m in maps], dtype=torch.float64)
    keep = _exclude(S_A, threshold)
    M = np.zeros(image.shape, dtype=np.float64)
    for m, s, k in zip(maps, S_A.tolist(), keep.tolist()):
        if k:
            M += m / s
    return RegionRelevance(M.astype(np.float32), c, int(mask.sum()), int((~keep).sum()), S_A.numpy())


# ---- Sec. 2.3 --------------------------------------------------------------------------------------------------
def choose_background(pred_tumor: np.ndarray, n: int, seed: int = 0, how: str = "random") -> np.ndarray:
    """B: ``n`` predicted-background voxels, chosen reproducibly.

    ``random``: uniformly at random (numpy Generator seeded with ``seed``) among all predicted-background
    voxels; ``shell``: the ``n`` predicted-background voxels nearest to the predicted tumor (ties broken by
    the same seeded random order).
    """
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(~pred_tumor)
    if n > candidates.size:
        raise ValueError(f"only {candidates.size} background voxels for {n} tumor voxels")
    if how == "random":
        chosen = rng.choice(candidates, size=n, replace=False)
    elif how == "shell":
        from scipy.ndimage import distance_transform_edt

        dist = distance_transform_edt(~pred_tumor).ravel()[candidates]
        order = np.lexsort((rng.permutation(candidates.size), dist))
        chosen = candidates[order[:n]]
    else:
        raise ValueError(f"unknown background choice {how!r}; use 'random' or 'shell'")
    out = np.zeros(pred_tumor.size, dtype=bool)
    out[chosen] = True
    return out.reshape(pred_tumor.shape)


def choose_regions(pred_tumor: np.ndarray, seed: int = 0, background: str = "random",
                   max_voxels: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Sec. 2.3's regions (T, B): the predicted tumor (a seeded random subset when it has more than
    ``max_voxels`` voxels or more than the background) and as many predicted-background voxels."""
    n_pred = int(pred_tumor.sum())
    if n_pred == 0:
        raise ValueError("the model predicts no tumor voxels in this case, so there is no tumor region T to "
                         "explain; sequence relevance (Sec. 2.3) needs a predicted tumor")
    n = min(n_pred, int(pred_tumor.size - n_pred), max_voxels or n_pred)
    if n == 0:
        raise ValueError("the model predicts tumor everywhere; there is no background region B")
    tumor = pred_tumor
    if n < n_pred:
        rng = np.random.default_rng(seed + 1)
        idx = rng.choice(np.flatnonzero(pred_tumor), size=n, replace=False)
        tumor = np.zeros(pred_tumor.size, dtype=bool)
        tumor[idx] = True
        tumor = tumor.reshape(pred_tumor.shape)
    return tumor, choose_background(pred_tumor, n, seed, background)


def sequence_relevance(model, x, preset=DEFAULT_PRESET, device="auto", seed: int = 0, background: str = "random",
                       max_voxels: Optional[int] = None, threshold: float = DEFAULT_THRESHOLD, bounds=None,
                       patch_size=None, overlap: Optional[float] = None, progress=None, cancel=None,
                       regions=None) -> SequenceRelevance:
    """Sec. 2.3: share of each sequence in ``M = M_B^0 + M_T^1`` (normalised to sum 1).

    T: the voxels predicted as the model's lesion class (``tumor``; a seeded random subset of ``max_voxels``
    if given, or if there are more T than other voxels), explained for that class; B: as many voxels
    predicted as any other class (:func:`choose_background`), each explained for its predicted class
    (class 0, background, for the paper's two-class model).  ``regions=(T, B)`` gives both regions
    instead (e.g. the original model's, for a randomised model).  Both Eq. 2 maps come from one
    forward(-mode) pass and one backward pass (LRP is linear in the seed).
    """
    image, _ = _as_image(x)
    spatial = image.shape[1:]
    lrp = as_lrp(model, preset)
    info = model_info(lrp.source)
    lesion = info.lesion_index
    chosen = {}

    def weights(y):
        lrp.check_sequence_relevance()
        pred = y.argmax(dim=0).numpy()
        pred_tumor = pred == lesion
        if regions is not None:
            tumor, back = (_region_mask(r, spatial) for r in regions)
            n = int(tumor.sum())
            if n == 0 or int(back.sum()) != n:
                raise ValueError(f"regions T and B must be non-empty and equally large, got {n} and "
                                 f"{int(back.sum())} voxels")
        else:
            tumor, back = choose_regions(pred_tumor, seed, background, max_voxels)
        chosen.update(tumor=tumor, back=back, n_pred=int(pred_tumor.sum()))
        w = np.zeros(tuple(y.shape), dtype=np.float32)
        w[lesion][tumor] = 1.0
        back_cls = np.where(pred == lesion, 0 if lesion != 0 else 1, pred)  # given B: a non-lesion class
        for c in np.unique(back_cls[back]):
            w[c][back & (back_cls == c)] = 1.0
        return w

    M, excluded, _ = weighted_region_relevance(lrp, image, weights, preset, device, threshold, bounds, patch_size,
                                               overlap, progress, cancel)
    flat = M.reshape(M.shape[0], -1)
    total = float(flat.sum())
    if not np.isfinite(total) or abs(total) < 1e-12:
        raise ValueError("the relevance map sums to zero; sequence shares are undefined")
    pos = np.clip(flat, 0, None).sum(axis=1) / total
    neg = np.clip(flat, None, 0).sum(axis=1) / total
    n = int(chosen["tumor"].sum())
    return SequenceRelevance(flat.sum(axis=1) / total, pos, neg, M.astype(np.float32), n, n, excluded,
                             chosen["n_pred"], chosen["tumor"], chosen["back"], info.channels,
                             info.display_names, info.classes[lesion])


__all__ = ["relevance", "region_relevance", "region_relevance_loop", "weighted_region_relevance", "sequence_relevance", "choose_background",
           "choose_regions",
           "RegionRelevance", "SequenceRelevance", "LRP"]

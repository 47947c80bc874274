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
from .inference import crop, model_divisor, pad_image, plan_patches
from .lrp import LRP, as_lrp
from .presets import DEFAULT_PRESET
from .progress import as_progress
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS, class_index

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

    def as_dict(self) -> dict:
        return {"sequences": list(SEQUENCE_KEYS[: len(self.shares)]),
                "display_names": list(DISPLAY_NAMES[: len(self.shares)]),
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
    """Runs the LRP passes of one (C, D, H, W) image patch by patch (one patch when it fits)."""

    def __init__(self, model, image, preset, device, patch_size, overlap, bounds, progress):
        self.lrp = as_lrp(model, preset)
        self.image, self.device, self.progress = image, device, progress
        self.dtype = _dtype(image)
        self.plan = plan_patches(image.shape[1:], model_divisor(self.lrp.source), patch_size, overlap)
        self.x = torch.from_numpy(np.ascontiguousarray(pad_image(image, self.plan.padded))).to(self.dtype)
        if bounds is None:  # z^B bounds from the whole volume, not the patch
            flat = image.reshape(image.shape[0], -1)
            bounds = (flat.min(axis=1), flat.max(axis=1))
        self.bounds = bounds
        self._graph = None

    def _patch(self, win):
        return self.x[(slice(None),) + win][None].to(self.device)

    def sums(self):
        """Blended output ``y`` and per-voxel relevance sums ``S`` (K, D, H, W), both on the padded grid."""
        y_all = S_all = None
        n = len(self.plan.windows)
        for i, win in enumerate(self.plan.windows):
            self.progress(i / n, f"relevance sums, patch {i + 1}/{n}")
            keep = self.plan.single
            y, S, s = self.lrp.forward_with_sums(self._patch(win), self.bounds, keep_graph=keep)
            if keep:
                self._graph = (y, s)
            w = torch.from_numpy(self.plan.normalised_weight(win)).to(self.dtype)
            if y_all is None:
                y_all = torch.zeros((y.shape[1],) + self.plan.padded, dtype=self.dtype)
                S_all = torch.zeros_like(y_all)
            y_all[(slice(None),) + win] += y.detach()[0].cpu() * w
            S_all[(slice(None),) + win] += S[0].cpu() * w
        return y_all, S_all

    def backward(self, out_weights: torch.Tensor) -> torch.Tensor:
        """Input relevance (C, D, H, W) of output relevance ``out_weights * y`` (padded grid)."""
        M = torch.zeros_like(self.x)
        todo = [win for win in self.plan.windows if bool(out_weights[(slice(None),) + win].any())]
        for i, win in enumerate(todo):
            self.progress(i / max(len(todo), 1), f"relevance, patch {i + 1}/{len(todo)}")
            g = out_weights[(slice(None),) + win] * torch.from_numpy(self.plan.normalised_weight(win)).to(self.dtype)
            if self._graph is not None:
                (y, s), self._graph = self._graph, None
            else:
                y, s = self.lrp.forward(self._patch(win), self.bounds)
            (m,) = torch.autograd.grad(y, s, g[None].to(y))
            M[(slice(None),) + win] += m[0].cpu()
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
              overlap: float = 0.5):
    """Eq. 1: input relevance map ``M`` (same shape as ``x``) of the output relevance ``seed * y``.

    ``seed``: weights over the output (K, D, H, W) -- a one-hot seed explains one output neuron, whose
    relevance is then the model output ``y^i_a`` -- or a tuple ``(class, z, y, x)`` for that one voxel.
    Returns torch for torch input, numpy for numpy input.
    """
    image, is_torch = _as_image(x)

    def work(eng):
        K = None
        if isinstance(seed, tuple):
            cls, *idx = seed
            K = getattr(getattr(eng.lrp.source, "config", None), "out_channels", 2)
            w = torch.zeros((K,) + eng.plan.padded, dtype=eng.dtype)
            w[(class_index(cls), *idx)] = 1.0
        else:
            s = torch.as_tensor(np.asarray(seed.detach().cpu() if isinstance(seed, torch.Tensor) else seed))
            s = s[0] if s.dim() == 5 else s
            if tuple(s.shape[1:]) != image.shape[1:]:
                raise ValueError(f"seed shape {tuple(s.shape)} does not match the output grid {image.shape[1:]}")
            w = torch.zeros((s.shape[0],) + eng.plan.padded, dtype=eng.dtype)
            w[(slice(None),) + tuple(slice(0, n) for n in image.shape[1:])] = s.to(eng.dtype)
        return crop(eng.backward(w), image.shape[1:])

    M = _run(model, image, preset, device, patch_size, overlap, bounds, None, None, work)
    if is_torch:
        return M.reshape(x.shape).to(x)
    return M.numpy()


# ---- Eq. 2 -----------------------------------------------------------------------------------------------------
def region_relevance(model, x, region, cls="tumor", preset=DEFAULT_PRESET, device="auto",
                     threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None, overlap: float = 0.5,
                     progress=None, cancel=None) -> RegionRelevance:
    """Eq. 2: ``M_A^i = sum_{a in A} M_a^i / sum(M_a^i)`` for region ``A`` (bool (D, H, W)) and class ``cls``.

    Exact, in one forward(-mode) pass and one backward pass per patch.  Voxels whose relevance sum
    ``S_a = sum(M_a^i)`` is not finite or ``|S_a| <= threshold * median_A |S_a|`` would dominate the
    normalised sum; they are left out and counted in ``n_excluded``.
    """
    image, _ = _as_image(x)
    mask = _region_mask(region, image.shape[1:])
    if not mask.any():
        raise ValueError("the region is empty")
    c = class_index(cls)

    def work(eng):
        prog = eng.progress
        eng.progress = prog.part(0.0, 0.5)
        _, S = eng.sums()
        S = crop(S, image.shape[1:])
        S_A = S[c][torch.from_numpy(mask)]
        keep = _exclude(S_A, threshold)
        w = torch.zeros((S.shape[0],) + eng.plan.padded, dtype=eng.dtype)
        wc = torch.zeros(image.shape[1:], dtype=eng.dtype)
        wc[torch.from_numpy(mask)] = torch.where(keep, 1.0 / torch.where(keep, S_A, torch.ones_like(S_A)),
                                                 torch.zeros_like(S_A))
        w[c][tuple(slice(0, n) for n in image.shape[1:])] = wc
        eng.progress = prog.part(0.5, 1.0)
        M = crop(eng.backward(w), image.shape[1:])
        prog(1.0, "region relevance done")
        return RegionRelevance(M.numpy().astype(np.float32), c, int(mask.sum()), int((~keep).sum()),
                               S_A.numpy())

    return _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel, work)


def region_relevance_loop(model, x, region, cls="tumor", preset=DEFAULT_PRESET, device="cpu",
                          threshold: float = DEFAULT_THRESHOLD, bounds=None) -> RegionRelevance:
    """Eq. 2 the slow way: one LRP backward pass per voxel of A (the test oracle and benchmark baseline)."""
    image, _ = _as_image(x)
    mask = _region_mask(region, image.shape[1:])
    c = class_index(cls)
    lrp = as_lrp(model, preset)
    xt = torch.from_numpy(np.ascontiguousarray(image))[None].to(_dtype(image))
    if bounds is None:
        flat = image.reshape(image.shape[0], -1)
        bounds = (flat.min(axis=1), flat.max(axis=1))
    maps, sums = [], []
    for idx in zip(*np.nonzero(mask)):
        y, s = lrp.forward(xt, bounds)
        seed = torch.zeros_like(y)
        seed[(0, c) + tuple(int(i) for i in idx)] = 1.0
        (m,) = torch.autograd.grad(y, s, seed)
        maps.append(m[0])
        sums.append(m.sum())
    S_A = torch.stack(sums)
    keep = _exclude(S_A, threshold)
    M = sum(m / s for m, s, k in zip(maps, S_A, keep) if k)
    return RegionRelevance(M.numpy().astype(np.float32), c, int(mask.sum()), int((~keep).sum()), S_A.numpy())


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
                       patch_size=None, overlap: float = 0.5, progress=None, cancel=None,
                       regions=None) -> SequenceRelevance:
    """Sec. 2.3: share of each sequence in ``M = M_B^0 + M_T^1`` (normalised to sum 1).

    T: the predicted-tumor voxels (a seeded random subset of ``max_voxels`` if given, or if there are more
    tumor than background voxels); B: as many predicted-background voxels (:func:`choose_background`).
    ``regions=(T, B)`` gives both regions instead (e.g. the original model's, for a randomised model).
    Both Eq. 2 maps come from one forward(-mode) pass and one backward pass (LRP is linear in the seed).
    """
    image, _ = _as_image(x)
    spatial = image.shape[1:]

    def work(eng):
        eng.lrp._ensure(eng._patch(eng.plan.windows[0]))
        eng.lrp.check_sequence_relevance()
        prog = eng.progress
        eng.progress = prog.part(0.0, 0.5)
        y, S = eng.sums()
        y, S = crop(y, spatial), crop(S, spatial)
        pred_tumor = (y[1] > y[0]).numpy()
        n_pred = int(pred_tumor.sum())
        if regions is not None:
            tumor, back = (_region_mask(r, spatial) for r in regions)
            n = int(tumor.sum())
            if n == 0 or int(back.sum()) != n:
                raise ValueError(f"regions T and B must be non-empty and equally large, got {n} and "
                                 f"{int(back.sum())} voxels")
        else:
            tumor, back = choose_regions(pred_tumor, seed, background, max_voxels)
            n = int(tumor.sum())
        w = torch.zeros((S.shape[0],) + eng.plan.padded, dtype=eng.dtype)
        excluded = 0
        for cls, region in ((0, back), (1, tumor)):
            r = torch.from_numpy(region)
            S_A = S[cls][r]
            keep = _exclude(S_A, threshold)
            excluded += int((~keep).sum())
            wc = torch.zeros(spatial, dtype=eng.dtype)
            wc[r] = torch.where(keep, 1.0 / torch.where(keep, S_A, torch.ones_like(S_A)), torch.zeros_like(S_A))
            w[cls][tuple(slice(0, k) for k in spatial)] = wc
        eng.progress = prog.part(0.5, 1.0)
        M = crop(eng.backward(w), spatial).numpy()
        prog(1.0, "sequence relevance done")
        flat = M.reshape(M.shape[0], -1)
        total = float(flat.sum())
        if not np.isfinite(total) or abs(total) < 1e-12:
            raise ValueError("the relevance map sums to zero; sequence shares are undefined")
        pos = np.clip(flat, 0, None).sum(axis=1) / total
        neg = np.clip(flat, None, 0).sum(axis=1) / total
        return SequenceRelevance(flat.sum(axis=1) / total, pos, neg, M.astype(np.float32), n, n, excluded, n_pred,
                                 tumor, back)

    return _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel, work)


# ---- Eq. 2 with per-voxel weights; uncertainty of Sec. 2.3 over the random regions ---------------------------
def _backward_many(eng: _Engine, weight_sets) -> list:
    """Input relevance (padded grid) of each output weighting in ``weight_sets``: one forward per patch, shared
    by one backward pass per weight set (the graph is kept between them)."""
    maps = [torch.zeros_like(eng.x) for _ in weight_sets]
    n = len(eng.plan.windows)
    for i, win in enumerate(eng.plan.windows):
        used = [k for k, w in enumerate(weight_sets) if bool(w[(slice(None),) + win].any())]
        if not used:
            continue
        eng.progress(i / n, f"relevance of {len(used)} weightings, patch {i + 1}/{n}")
        (y, s), eng._graph = eng._graph or eng.lrp.forward(eng._patch(win), eng.bounds), None
        blend = torch.from_numpy(eng.plan.normalised_weight(win)).to(eng.dtype)
        for j, k in enumerate(used):
            g = (weight_sets[k][(slice(None),) + win] * blend)[None].to(y)
            (m,) = torch.autograd.grad(y, s, g, retain_graph=j < len(used) - 1)
            maps[k][(slice(None),) + win] += m[0].cpu()
    return maps


def _weighted_relevance(eng: _Engine, spatial, weight_sets, threshold: float, sums=None):
    """Eq. 2 with per-voxel weights: ``sum_{c,a} w_{c,a} M_a^c / S_a^c`` for each (K, D, H, W) weight set, from one
    forward-mode pass for S (shared by all sets) and one backward pass per set.  Voxels with a non-zero weight in
    any set are excluded per class when ``|S_a^c|`` is near zero (:func:`_exclude` over all of them, so every set
    uses the same rule).  Returns (maps (C, D, H, W) numpy per set, y, S, excluded voxels (K, D, H, W) bool)."""
    y, S = sums if sums is not None else eng.sums()
    y, S = crop(y, spatial), crop(S, spatial)
    factors = torch.zeros_like(S)
    excluded = torch.zeros(S.shape, dtype=torch.bool)
    for c in range(S.shape[0]):
        support = torch.zeros(spatial, dtype=torch.bool)
        for w in weight_sets:
            support |= torch.as_tensor(w[c]) != 0
        keep = _exclude(S[c][support], threshold)
        excluded[c][support] = ~keep
        S_A = S[c][support]
        factors[c][support] = torch.where(keep, 1.0 / torch.where(keep, S_A, torch.ones_like(S_A)),
                                          torch.zeros_like(S_A))
    padded = []
    for w in weight_sets:
        full = torch.zeros((S.shape[0],) + eng.plan.padded, dtype=eng.dtype)
        full[(slice(None),) + tuple(slice(0, k) for k in spatial)] = torch.as_tensor(w).to(eng.dtype) * factors
        padded.append(full)
    maps = [crop(m, spatial).numpy() for m in _backward_many(eng, padded)]
    return maps, y, S, excluded.numpy()


def weighted_relevance(model, x, weights, preset=DEFAULT_PRESET, device="auto", threshold: float = DEFAULT_THRESHOLD,
                       bounds=None, patch_size=None, overlap: float = 0.5, progress=None, cancel=None) -> list:
    """Eq. 2 with per-voxel weights ``w_{c,a}``: ``sum_{c,a} w_{c,a} M_a^c / S_a^c`` (C, D, H, W) for each weight
    set ``(K, D, H, W)`` in ``weights`` (``1_A`` on class i is Eq. 2's ``M_A^i``).  Because M is linear in the
    seed, all sets cost one forward-mode pass and one backward pass each; near-zero ``S_a`` are left out as in
    :func:`region_relevance`."""
    image, _ = _as_image(x)
    sets = [np.asarray(w, dtype=np.float64) for w in weights]
    for w in sets:
        if w.ndim != 4 or w.shape[1:] != image.shape[1:]:
            raise ValueError(f"weight set shape {w.shape} does not match (classes,) + {image.shape[1:]}")
    return _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel,
                lambda eng: _weighted_relevance(eng, image.shape[1:], sets, threshold)[0])


def _shares(M: np.ndarray):
    flat = M.reshape(M.shape[0], -1).astype(np.float64)
    total = float(flat.sum())
    if not np.isfinite(total) or abs(total) < 1e-12:
        raise ValueError("the relevance map sums to zero; sequence shares are undefined")
    return (flat.sum(axis=1) / total, np.clip(flat, 0, None).sum(axis=1) / total,
            np.clip(flat, None, 0).sum(axis=1) / total)


@dataclass
class SequenceRelevanceInterval(SequenceRelevance):
    """Sec. 2.3 with its sampling uncertainty: the fields of :class:`SequenceRelevance` are those of the first
    draw of (T, B) (the one :func:`sequence_relevance` uses with the same seed); in addition the shares of
    ``resamples`` seeded draws, their mean, standard deviation and 2.5/97.5 percentiles, and the shares of the
    exact expectation ``E[M]`` over uniformly random regions (None for ``background='shell'``)."""

    resampled: np.ndarray = field(default=None, repr=False)   # (K, C) shares of each draw
    expected: Optional[np.ndarray] = None                      # (C,) shares of E_{T,B}[M]
    expected_maps: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def mean(self) -> np.ndarray:
        return self.resampled.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.resampled.std(axis=0, ddof=1) if len(self.resampled) > 1 else np.zeros(self.resampled.shape[1])

    @property
    def low(self) -> np.ndarray:
        return np.percentile(self.resampled, 2.5, axis=0)

    @property
    def high(self) -> np.ndarray:
        return np.percentile(self.resampled, 97.5, axis=0)

    def as_dict(self) -> dict:
        out = super().as_dict()
        out.update({"resamples": len(self.resampled), "relevance_mean": self.mean.tolist(),
                    "relevance_std": self.std.tolist(), "relevance_p2.5": self.low.tolist(),
                    "relevance_p97.5": self.high.tolist(),
                    "relevance_expected": None if self.expected is None else self.expected.tolist()})
        return out


def sequence_relevance_interval(model, x, resamples: int = 10, preset=DEFAULT_PRESET, device="auto", seed: int = 0,
                                background: str = "random", max_voxels: Optional[int] = None,
                                threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None,
                                overlap: float = 0.5, progress=None, cancel=None) -> SequenceRelevanceInterval:
    """Sec. 2.3 over ``resamples`` seeded draws of the random regions (draw k: :func:`choose_regions` with seed
    ``seed + k``; B always random, T when it is a subset of the predicted tumor) and its exact expectation.

    M is linear in the seed, so ``E_B[M_B^0] = (n / N) sum_{b in all N predicted-background voxels} M_b / S_b``
    (and likewise for a subsampled T): the expectation is one more weight set, with weight n/N on every
    candidate.  All draws and the expectation share one forward-mode pass for S: K + 1 backward passes in all.
    The same exclusion rule (near-zero ``|S_a|``, median over all candidates) applies to every draw, so the mean
    of the maps over all possible draws is exactly the expected map.  ``expected`` is the share vector of that
    map (the normalisation is a ratio, so it is close to, not equal to, the mean of the draws' shares)."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    image, _ = _as_image(x)
    spatial = image.shape[1:]

    def work(eng):
        eng.lrp._ensure(eng._patch(eng.plan.windows[0]))
        eng.lrp.check_sequence_relevance()
        prog = eng.progress
        eng.progress = prog.part(0.0, 0.3)
        y, S = eng.sums()
        pred = (crop(y, spatial)[1] > crop(y, spatial)[0]).numpy()
        draws = [choose_regions(pred, seed + k, background, max_voxels) for k in range(resamples)]
        n = int(draws[0][0].sum())
        sets = [np.stack([b, t]).astype(np.float64) for t, b in draws]
        if background == "random":
            sets.append(np.stack([(~pred) * (n / (~pred).sum()), pred * (n / pred.sum())]))
        eng.progress = prog.part(0.3, 1.0)
        maps, _, _, excluded = _weighted_relevance(eng, spatial, sets, threshold, (y, S))
        prog(1.0, "sequence relevance intervals done")
        shares = np.array([_shares(m)[0] for m in maps[:resamples]])
        first, pos, neg = _shares(maps[0])
        t0, b0 = draws[0]
        n_excluded = int((excluded[0] & b0).sum() + (excluded[1] & t0).sum())
        expected = _shares(maps[-1])[0] if background == "random" else None
        return SequenceRelevanceInterval(first, pos, neg, maps[0].astype(np.float32), n, n, n_excluded,
                                         int(pred.sum()), t0, b0, shares, expected,
                                         maps[-1].astype(np.float32) if expected is not None else None)

    return _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel, work)


__all__ = ["relevance", "region_relevance", "region_relevance_loop", "sequence_relevance", "choose_background",
           "choose_regions", "weighted_relevance", "sequence_relevance_interval",
           "RegionRelevance", "SequenceRelevance", "SequenceRelevanceInterval", "LRP"]

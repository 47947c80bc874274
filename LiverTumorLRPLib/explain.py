"""The paper's explanations: Eq. 1 (one output voxel), Eq. 2 (a region) and Sec. 2.3 (sequences).

* :func:`relevance` -- Eq. 1: input relevance ``M`` of any output relevance ``output * y``.
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

import functools
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .device import run_with_cpu_fallback
from .inference import flip, plan_for
from .lrp import LRP, as_lrp
from .model_info import model_info
from .lrp.presets import DEFAULT_PRESET
from .progress import as_progress
from .regions import choose_background, choose_regions, sec23_output_weights, sec23_weights  # noqa: F401 (API)
from .shares import shares_of
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS

DEFAULT_THRESHOLD = 1e-3


class Relevance:
    """What every explanation returns: ``maps`` (C, D, H, W), one relevance map per input sequence, and
    ``shares`` (C,), the channel sums normalised to sum 1, with their ``positive`` and ``negative`` parts."""

    maps: np.ndarray
    shares: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


@dataclass
class RegionRelevance(Relevance):
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
    def shares(self) -> np.ndarray:
        """Channel sums normalised to sum 1."""
        s = self.sequence_sums
        return s / s.sum()

    @property
    def positive(self) -> np.ndarray:
        return shares_of(self.maps)[1]

    @property
    def negative(self) -> np.ndarray:
        return shares_of(self.maps)[2]

    @property
    def sequence_shares(self) -> np.ndarray:
        """Deprecated name of :attr:`shares`."""
        warnings.warn("RegionRelevance.sequence_shares is deprecated; use .shares", DeprecationWarning, stacklevel=2)
        return self.shares


@dataclass
class SequenceRelevance(Relevance):
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


def _keyword_options(*old_order: str, renamed: Optional[dict] = None):
    """Options are keyword-only (in one order across the explanation functions).  For one release, calls that pass
    them by position (in the old order ``old_order``) or by an old name (``renamed``: old -> new) still work,
    with a DeprecationWarning."""
    def wrap(fn):
        import inspect

        n_args = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in inspect.signature(fn).parameters.values())

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if len(args) > n_args:
                extra = dict(zip(old_order, args[n_args:]))
                warnings.warn(f"{fn.__name__}: pass {', '.join(extra)} by keyword; options by position are "
                              "deprecated", DeprecationWarning, stacklevel=2)
                clash = set(extra) & set(kwargs)
                if clash:
                    raise TypeError(f"{fn.__name__}() got multiple values for {', '.join(sorted(clash))}")
                kwargs.update(extra)
                args = args[:n_args]
            for old, new in (renamed or {}).items():
                if old in kwargs:
                    warnings.warn(f"{fn.__name__}: {old}= is deprecated; use {new}=", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return wrap


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

    def _box(self, win, dims=()):
        """The unpadded voxels a window reads (on the device) and the gather that builds its input,
        mirrored along ``dims`` (test-time mirroring; the output is flipped back by the caller)."""
        box = self.x[(slice(None),) + win.box][None].to(self.device)
        return box, lambda t: flip(self.plan.window_input(t[0], win)[None], dims)

    def sums(self):
        """Blended output ``y`` and per-voxel relevance sums ``S`` (K, D, H, W), both on the original grid.

        Test-time mirrors are averaged inside every window: ``y = mean_m flip_m(f(flip_m(x)))``, and so are
        the sums (LRP is linear in the seeded relevance: flip, explain, flip back, average)."""
        y_all = S_all = None
        mirrors = self.info.mirrors
        n = len(self.plan.windows)
        keep = self.plan.single and len(mirrors) == 1
        for i, win in enumerate(self.plan.windows):
            self.progress(i / n, f"relevance sums, patch {i + 1}/{n}")
            w = torch.from_numpy(self.plan.normalised_weight(win)).to(self.dtype) / len(mirrors)
            for dims in mirrors:
                box, expand = self._box(win, dims)
                y, S, s = self.lrp.forward_with_sums(box, self.bounds, keep_graph=keep, expand=expand)
                if keep:
                    self._graph = (y, s)
                if y_all is None:
                    y_all = torch.zeros((y.shape[1],) + self.plan.padded, dtype=self.dtype)
                    S_all = torch.zeros_like(y_all)
                y_all[(slice(None),) + win.padded] += flip(y.detach(), dims)[0].cpu() * w
                S_all[(slice(None),) + win.padded] += flip(S, dims)[0].cpu() * w
        return self.plan.crop(y_all), self.plan.crop(S_all)

    def backward(self, out_weights):
        """Input relevance (C, D, H, W) of output relevance ``out_weights * y`` (both on the original grid).

        ``out_weights``: one (K, D, H, W) tensor, or a list of them: one forward per window (and mirror)
        then, shared by one backward pass per weighting (the graph is kept between them)."""
        many = isinstance(out_weights, (list, tuple))
        sets = [self.plan.uncrop(torch.as_tensor(w).to(self.dtype)) for w in (out_weights if many else [out_weights])]
        maps = [torch.zeros_like(self.x) for _ in sets]
        mirrors = self.info.mirrors
        todo = [win for win in self.plan.windows if any(bool(w[(slice(None),) + win.padded].any()) for w in sets)]
        for i, win in enumerate(todo):
            self.progress(i / max(len(todo), 1), f"relevance, patch {i + 1}/{len(todo)}")
            blend = torch.from_numpy(self.plan.normalised_weight(win)).to(self.dtype) / len(mirrors)
            used = [k for k, w in enumerate(sets) if bool(w[(slice(None),) + win.padded].any())]
            for dims in mirrors:
                if self._graph is not None:
                    (y, s), self._graph = self._graph, None
                else:
                    box, expand = self._box(win, dims)
                    y, s = self.lrp.forward(box, self.bounds, expand=expand)
                for j, k in enumerate(used):
                    g = flip((sets[k][(slice(None),) + win.padded] * blend)[None], dims).to(y)
                    (m,) = torch.autograd.grad(y, s, g, retain_graph=j < len(used) - 1)
                    maps[k][(slice(None),) + win.box] += m[0].cpu()
        return maps if many else maps[0]


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
@_keyword_options("preset", "device", "bounds", "patch_size", "overlap", renamed={"seed": "output"})
def relevance(model, x, output=None, *, preset=DEFAULT_PRESET, device="auto", bounds=None, patch_size=None,
              overlap: Optional[float] = None):
    """Eq. 1: input relevance map ``M`` (same shape as ``x``) of the output relevance ``output * y``.

    ``output`` selects what is explained: weights over the output (K, D, H, W) -- one-hot explains one output
    neuron, whose relevance is then the model output ``y^i_a`` -- or a tuple ``(class, z, y, x)`` for that one
    voxel (class by index or by the model's class name).  Returns torch for torch input, numpy for numpy input.
    """
    if output is None:
        raise TypeError("relevance() needs output=: a (class, z, y, x) tuple or weights over the output")
    image, is_torch = _as_image(x)

    def work(eng):
        K = eng.info.n_classes
        if isinstance(output, tuple):
            cls, *idx = output
            w = torch.zeros((K,) + image.shape[1:], dtype=eng.dtype)
            w[(eng.info.class_index(cls), *idx)] = 1.0
        else:
            s = torch.as_tensor(np.asarray(output.detach().cpu() if isinstance(output, torch.Tensor) else output))
            s = s[0] if s.dim() == 5 else s
            if tuple(s.shape) != (K,) + image.shape[1:]:
                raise ValueError(f"output weights of shape {tuple(s.shape)} do not match the output "
                                 f"{(K,) + image.shape[1:]}")
            w = s.to(eng.dtype)
        return eng.backward(w)

    M = _run(model, image, preset, device, patch_size, overlap, bounds, None, None, work)
    if is_torch:
        return M.reshape(x.shape).to(x)
    return M.numpy()


# ---- Eq. 2 -----------------------------------------------------------------------------------------------------
def _normalised_seeds(S: torch.Tensor, weight_sets, threshold: float):
    """Eq. 2's seeds ``w_{c,a} / S_a^c`` for each weight set; voxels whose ``S_a`` is (near) zero are left
    out, by one rule for all sets (:func:`_exclude` over every voxel any set weights, per class).
    Returns the seeds and, per set, the number of weighted voxels left out."""
    seeds = [torch.zeros_like(S) for _ in weight_sets]
    excluded = [0] * len(weight_sets)
    for c in range(S.shape[0]):
        support = torch.zeros(S.shape[1:], dtype=torch.bool)
        for w in weight_sets:
            support |= w[c] != 0
        if not bool(support.any()):
            continue
        S_A = S[c][support]
        keep = _exclude(S_A, threshold)
        inv = torch.zeros_like(S[c])
        inv[support] = torch.where(keep, 1.0 / torch.where(keep, S_A, torch.ones_like(S_A)), torch.zeros_like(S_A))
        dropped = torch.zeros(S.shape[1:], dtype=torch.bool)
        dropped[support] = ~keep
        for n, w in enumerate(weight_sets):
            seeds[n][c] = w[c] * inv
            excluded[n] += int((dropped & (w[c] != 0)).sum())
    return seeds, excluded


def _weighted(model, image, weights, preset, device, threshold, bounds, patch_size, overlap, progress, cancel):
    """Eq. 2 with per-voxel weights for several weight sets: ``(maps, excluded, S, y)``, maps and counts per set.

    ``weights``: a list of (K, D, H, W) arrays, or ``weights(y)`` giving one from the blended output ``y``.
    One forward(-mode) pass for every ``S_a``, then one backward pass per set (LRP is linear in the seed)."""
    def work(eng):
        prog = eng.progress
        eng.progress = prog.part(0.0, 0.5)
        y, S = eng.sums()
        sets = weights(y) if callable(weights) else weights
        sets = [torch.as_tensor(np.asarray(w)).to(eng.dtype) for w in sets]
        for w in sets:
            if tuple(w.shape) != tuple(S.shape):
                raise ValueError(f"weight set shape {tuple(w.shape)} does not match (classes, D, H, W) "
                                 f"{tuple(S.shape)}")
        seeds, excluded = _normalised_seeds(S, sets, threshold)
        eng.progress = prog.part(0.5, 1.0)
        maps = [m.numpy() for m in eng.backward(seeds)]
        prog(1.0, "region relevance done")
        return maps, excluded, S.numpy(), y.numpy()

    return _run(model, image, preset, device, patch_size, overlap, bounds, progress, cancel, work)


@_keyword_options("preset", "device", "threshold", "bounds", "patch_size", "overlap", "progress", "cancel")
def weighted_relevance(model, x, weights, *, preset=DEFAULT_PRESET, device="auto",
                       threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None,
                       overlap: Optional[float] = None, progress=None, cancel=None) -> list:
    """Eq. 2 with per-voxel weights ``w_{c,a}``: ``sum_{c,a} w_{c,a} M_a^c / sum(M_a^c)`` (C, D, H, W) for each
    weight set ``(K, D, H, W)`` in ``weights`` (``1_A`` on class i is Eq. 2's ``M_A^i``).  All sets cost one
    forward-mode pass and one backward pass each; near-zero ``S_a`` are left out as in :func:`region_relevance`."""
    image, _ = _as_image(x)
    return _weighted(model, image, list(weights), preset, device, threshold, bounds, patch_size, overlap, progress,
                     cancel)[0]


@_keyword_options("cls", "preset", "device", "threshold", "bounds", "patch_size", "overlap", "progress", "cancel")
def region_relevance(model, x, region, *, cls="tumor", preset=DEFAULT_PRESET, device="auto",
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
        return [w]

    maps, excluded, S, _ = _weighted(model, image, weights, preset, device, threshold, bounds, patch_size, overlap,
                                     progress, cancel)
    return RegionRelevance(maps[0].astype(np.float32), c, int(mask.sum()), excluded[0], S[c][mask])


@_keyword_options("cls", "preset", "device", "threshold", "bounds", "patch_size")
def region_relevance_loop(model, x, region, *, cls="tumor", preset=DEFAULT_PRESET, device="cpu",
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
def _sequence_relevance(model, x, preset, device, seed, background, max_voxels, threshold, bounds, patch_size,
                        overlap, progress, cancel, regions=None, resamples: int = 0):
    """Sec. 2.3 for the first draw of (T, B) and, with ``resamples``, K draws and the exact expectation."""
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
            draws = [(tumor, back)]
        else:
            draws = [choose_regions(pred_tumor, seed + k, background, max_voxels) for k in range(max(resamples, 1))]
        chosen.update(draws=draws, n_pred=int(pred_tumor.sum()), expected=False)
        sets = [sec23_weights(pred, lesion, t, b, info.n_classes) for t, b in draws]
        if resamples and regions is None and background == "random":
            # E[M] over uniformly random regions: weight n/N on every candidate (M is linear in the seed)
            n = int(draws[0][0].sum())
            t = pred_tumor * (n / pred_tumor.sum())
            b = ~pred_tumor * (n / (~pred_tumor).sum())
            sets.append(sec23_weights(pred, lesion, t, b, info.n_classes))
            chosen["expected"] = True
        return sets

    maps, excluded, _, _ = _weighted(lrp, image, weights, preset, device, threshold, bounds, patch_size, overlap,
                                     progress, cancel)
    tumor, back = chosen["draws"][0]
    n = int(tumor.sum())
    shares, pos, neg = shares_of(maps[0])
    fields = (shares, pos, neg, maps[0].astype(np.float32), n, n, excluded[0], chosen["n_pred"], tumor, back,
              info.channels, info.display_names, info.classes[lesion])
    if not resamples:
        return SequenceRelevance(*fields)
    draws = np.array([shares_of(m)[0] for m in maps[:resamples]])
    expected = maps[-1] if chosen["expected"] else None
    return SequenceRelevanceInterval(*fields, draws, None if expected is None else shares_of(expected)[0],
                                     None if expected is None else expected.astype(np.float32))


@_keyword_options("preset", "device", "seed", "background", "max_voxels", "threshold", "bounds", "patch_size",
                  "overlap", "progress", "cancel", "regions")
def sequence_relevance(model, x, *, preset=DEFAULT_PRESET, device="auto", seed: int = 0, background: str = "random",
                       max_voxels: Optional[int] = None, regions=None, threshold: float = DEFAULT_THRESHOLD,
                       bounds=None, patch_size=None, overlap: Optional[float] = None, progress=None,
                       cancel=None) -> SequenceRelevance:
    """Sec. 2.3: share of each sequence in ``M = M_B^0 + M_T^1`` (normalised to sum 1).

    T: the voxels predicted as the model's lesion class (``tumor``; a seeded random subset of ``max_voxels``
    if given, or if there are more T than other voxels), explained for that class; B: as many voxels
    predicted as any other class (:func:`choose_background`), each explained for its predicted class
    (class 0, background, for the paper's two-class model).  ``regions=(T, B)`` gives both regions
    instead (e.g. the original model's, for a randomised model).  Both Eq. 2 maps come from one
    forward(-mode) pass and one backward pass (LRP is linear in the seed).
    """
    return _sequence_relevance(model, x, preset, device, seed, background, max_voxels, threshold, bounds, patch_size,
                               overlap, progress, cancel, regions)


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


@_keyword_options("resamples", "preset", "device", "seed", "background", "max_voxels", "threshold", "bounds",
                  "patch_size", "overlap", "progress", "cancel")
def sequence_relevance_interval(model, x, *, preset=DEFAULT_PRESET, device="auto", seed: int = 0,
                                background: str = "random", max_voxels: Optional[int] = None, resamples: int = 10,
                                threshold: float = DEFAULT_THRESHOLD, bounds=None, patch_size=None,
                                overlap: Optional[float] = None, progress=None,
                                cancel=None) -> SequenceRelevanceInterval:
    """Sec. 2.3 over ``resamples`` seeded draws of the random regions (draw k: :func:`choose_regions` with seed
    ``seed + k``) and its exact expectation.

    M is linear in the seed, so ``E_B[M_B] = (n / N) sum_{b in all N predicted non-lesion voxels} M_b / S_b``
    (and likewise for a subsampled T): the expectation is one more weight set, with weight n/N on every
    candidate.  All draws and the expectation share one forward-mode pass for S: K + 1 backward passes in all.
    One exclusion rule (near-zero ``|S_a|``, median over all candidates) applies to every draw, so the mean of
    the maps over all possible draws is exactly the expected map."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    return _sequence_relevance(model, x, preset, device, seed, background, max_voxels, threshold, bounds, patch_size,
                               overlap, progress, cancel, None, resamples)


__all__ = ["relevance", "region_relevance", "region_relevance_loop", "weighted_relevance", "sequence_relevance",
           "sequence_relevance_interval", "sec23_output_weights", "choose_background", "choose_regions", "RegionRelevance",
           "SequenceRelevance", "SequenceRelevanceInterval", "Relevance", "shares_of", "LRP"]

"""Region perturbation (Samek et al. 2017) in 3D: AOPC of LRP presets and of non-LRP methods.

Cubes are replaced by zero most-relevant-first (MoRF), least-relevant-first (LeRF) and at random; the score is
the tumor evidence ``g(x) = mean_{a in T} y^1_a`` (:func:`.cases.tumor_evidence`) and AOPC is the mean drop
``g(x0) - g(x_k)`` over the first ``fraction`` of cubes, divided by ``|g(x0)|``.  LRP presets (Eq. 2 map of T,
tumor class) vs gradient x input, integrated gradients and occlusion of ``g``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..explain import region_relevance
from .cases import ValidationCase, logits, tumor_evidence
from .checks import CONTRIBUTION, contribution

BASELINE_METHODS = ("gradient-x-input", "integrated-gradients", "occlusion")


def _evidence_grad(model, x: torch.Tensor, case: ValidationCase) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tumor_evidence(model(x), case).sum(), x)
    return g


def heatmap(method: str, model, case: ValidationCase, device="cpu", cube=(4, 12, 12), ig_steps: int = 16) -> np.ndarray:
    """Voxel relevance (D, H, W) for the tumor evidence of T: an LRP preset's Eq. 2 map (summed over
    sequences), gradient x input, integrated gradients (zero baseline) or occlusion (per cube)."""
    if method == CONTRIBUTION:     # the default sequence relevance's maps (of f), summed over sequences
        return contribution(model, case, device).maps.sum(0)
    if method not in BASELINE_METHODS:
        return region_relevance(model, case.image, case.tumor, cls="tumor", preset=method, device=device).maps.sum(0)
    net = model.to(device).eval()
    x = torch.from_numpy(case.image)[None].to(device)
    if method == "gradient-x-input":
        return (_evidence_grad(net, x, case) * x)[0].sum(0).cpu().numpy()
    if method == "integrated-gradients":
        total = torch.zeros_like(x)
        for a in (np.arange(ig_steps) + 0.5) / ig_steps:
            total += _evidence_grad(net, x * float(a), case)
        return (x * total / ig_steps)[0].sum(0).cpu().numpy()
    # occlusion: drop of g when one cube is zeroed, spread evenly over the cube
    g0 = float(tumor_evidence(logits(net, case.image, device), case)[0])
    cubes = _cubes(case.image.shape[1:], cube)
    heat = np.zeros(case.image.shape[1:], np.float32)
    for i in range(0, len(cubes), 4):
        batch = [_remove(case.image, [c]) for c in cubes[i:i + 4]]
        drops = g0 - tumor_evidence(logits(net, np.stack(batch), device), case).numpy()
        for c, d in zip(cubes[i:i + 4], drops):
            heat[c] = d / np.prod([s.stop - s.start for s in c])
    return heat


def _cubes(shape, cube) -> list[tuple]:
    grid = [range(0, n, c) for n, c in zip(shape, cube)]
    return [tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, cube, shape))
            for start in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 3)]


def _remove(image: np.ndarray, cubes) -> np.ndarray:
    x = image.copy()
    for c in cubes:
        x[(slice(None),) + c] = 0.0
    return x


def perturbation_curve(model, case: ValidationCase, order: Sequence[tuple], steps: Sequence[int],
                       device="cpu") -> np.ndarray:
    """``g(x0) - g(x_k)`` after removing the first ``k`` cubes of ``order``, for each ``k`` in ``steps``."""
    xs = [_remove(case.image, order[:k]) for k in steps]
    g = np.concatenate([tumor_evidence(logits(model, np.stack(xs[i:i + 4]), device), case).numpy()
                        for i in range(0, len(xs), 4)])
    g0 = float(tumor_evidence(logits(model, case.image, device), case)[0])
    return g0 - g


def aopc(model, case: ValidationCase, methods: Sequence[str], cube=(4, 12, 12), fraction: float = 0.25,
         points: int = 13, n_random: int = 3, device="cpu", seed: int = 0) -> dict:
    """AOPC (mean drop over the first ``fraction`` of cubes, / |g(x0)|) for MoRF and LeRF of each method,
    and for random orders.  Returns {method: {"morf", "lerf", "morf_curve", "lerf_curve"}, "random": ...}."""
    cubes = _cubes(case.image.shape[1:], cube)
    steps = np.unique(np.linspace(0, max(1, int(fraction * len(cubes))), points).astype(int))
    g0 = abs(float(tumor_evidence(logits(model, case.image, device), case)[0])) or 1.0
    result = {"steps": steps.tolist(), "n_cubes": len(cubes)}
    for method in methods:
        heat = heatmap(method, model, case, device, cube)
        score = np.array([heat[c].sum() for c in cubes])
        morf = [cubes[i] for i in np.argsort(-score, kind="stable")]
        morf_curve = perturbation_curve(model, case, morf, steps, device) / g0
        lerf_curve = perturbation_curve(model, case, morf[::-1], steps, device) / g0
        result[method] = {"morf": float(morf_curve.mean()), "lerf": float(lerf_curve.mean()),
                          "morf_curve": morf_curve.tolist(), "lerf_curve": lerf_curve.tolist()}
    rng = np.random.default_rng(seed)
    curves = [perturbation_curve(model, case, [cubes[i] for i in rng.permutation(len(cubes))], steps, device) / g0
              for _ in range(n_random)]
    result["random"] = {"morf": float(np.mean(curves)), "morf_curve": np.mean(curves, axis=0).tolist()}
    return result

"""``liver-lrp validate``: are the explanations faithful?  Sanity checks and known-truth tests.

Every check explains the same model output as the paper's Sec. 2.3, with T (predicted tumor) and
B (as many predicted-background voxels) fixed from the original prediction:

    f(x) = mean_{a in T} y^1_a(x) + mean_{a in B} y^0_a(x)        (y: class logits)

1. Known truth (:func:`known_truth`): models trained on phantom variants whose tumor contrast lives
   only in some sequences (``liver-lrp train --informative KEY``); sequence relevance must rank those first.
2. Cascading model-parameter randomisation (:func:`randomisation_cascade`, Adebayo et al. 2018): the
   linear layers are re-initialised from the output down; Spearman correlation of the Sec. 2.3 map
   and of its six-sequence vector with the original's, per step.
3. Class sensitivity (:func:`class_sensitivity`): tumor-class vs background-class Eq. 2 maps of T.
4. Sequence ablation and exact Shapley values (:func:`sequence_ablation`, :func:`shapley_values`): a
   sequence is "absent" when replaced by a baseline (zero = the sequence's mean foreground intensity
   after normalisation, its volume mean, or a blurred copy); Shapley values of ``f`` over all 2^6
   subsets, rank-correlated with LRP sequence relevance.
5. Region perturbation (:func:`aopc`, Samek et al. 2017) in 3D: cubes are replaced by zero
   most-relevant-first (MoRF), least-relevant-first (LeRF) and at random; the score is the tumor
   evidence ``g(x) = mean_{a in T} y^1_a`` and AOPC is the mean drop ``g(x0) - g(x_k)`` over the
   first ``fraction`` of cubes, divided by ``|g(x0)|``.  LRP presets (Eq. 2 map of T, tumor class)
   vs gradient x input, integrated gradients and occlusion of ``g``.

Cases are whole phantom volumes (48 x 128 x 128 voxels), as users run the analysis; ``crop`` (e.g.
24 x 64 x 64 voxels around the tumor, ``--crop``) is a named fast mode whose numbers describe crops, not
what users get.  Every rate (known-truth share, share of cases meeting a goal) comes with its 95 % Wilson
interval, and the JSON holds the per-case results.
"""
from __future__ import annotations

import argparse
import copy
import csv
import html
import io
import math
import os
from dataclasses import dataclass, field
from itertools import combinations
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage, stats

from .explain import choose_regions, region_relevance, relevance, sequence_relevance
from .lrp import LINEAR_TYPES
from .presets import DEFAULT_PRESET
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS

CHECKS = ("known-truth", "randomisation", "class-sensitivity", "shapley", "aopc")
AOPC_PRESETS = ("recommended", "paper", "epsilon", "epsilon-gamma-box", "alpha2-beta1", "reference-blur")
BASELINE_METHODS = ("gradient-x-input", "integrated-gradients", "occlusion")
RANDOMISATION_STEPS = (1, 2, 3, 6, 10)  # layers randomised from the output down (and finally all)
VALIDATION_SEED = 200000  # phantom seeds used neither by training (seed * 10000 + i) nor by the model card (100000+)


@dataclass
class ValidationCase:
    """One (whole or cropped) normalised case with the regions of Sec. 2.3 fixed from the model's prediction."""

    name: str
    image: np.ndarray          # (C, D, H, W) normalised
    tumor: np.ndarray          # T: predicted tumor (bool)
    background: np.ndarray     # B: as many predicted-background voxels
    informative: Optional[list] = None
    label: Optional[np.ndarray] = field(default=None, repr=False)


# ---- cases and the explained output --------------------------------------------------------------------------
def crop_around(image: np.ndarray, centre, size) -> tuple:
    """Slices of ``size`` voxels (clipped to the image) centred on ``centre``."""
    sl = []
    for c, s, n in zip(centre, size, image.shape[-3:]):
        s = min(s, n)
        start = int(np.clip(round(c - s / 2), 0, n - s))
        sl.append(slice(start, start + s))
    return tuple(sl)


@torch.no_grad()
def logits(model, x: np.ndarray, device="cpu") -> torch.Tensor:
    """Class logits (N, K, D, H, W) of a (C, D, H, W) image or an (N, C, D, H, W) batch."""
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    t = t[None] if t.dim() == 4 else t
    return model.to(device).eval()(t.to(device)).float().cpu()


def make_case(model, image: np.ndarray, name: str, label=None, seed: int = 0, max_voxels: int = 2000,
              informative=None, device="cpu") -> ValidationCase:
    """Fix T and B (Sec. 2.3) from the model's prediction on ``image``."""
    y = logits(model, image, device)[0]
    tumor, back = choose_regions((y[1] > y[0]).numpy(), seed, "random", max_voxels)
    return ValidationCase(name, image.astype(np.float32), tumor, back, informative, label)


def phantom_cases(model, n: int, seed: int = VALIDATION_SEED, crop=None, informative=None,
                  device="cpu", skipped: Optional[list] = None) -> list[ValidationCase]:
    """``n`` whole phantom volumes (or, with ``crop``, crops of that size around their largest tumor); cases
    without predicted tumor are skipped (their names are appended to ``skipped``)."""
    from .train import case_arrays

    kw = {"informative": list(informative)} if informative else {}
    out, i = [], 0
    while len(out) < n and i < 3 * n:
        image, label = case_arrays(seed + i, (48, 128, 128), (4.0, 3.0, 3.0), **kw)
        name = f"phantom_{seed + i}"
        i += 1
        comps, k = ndimage.label(label > 0)
        if k == 0:
            continue
        largest = 1 + int(np.argmax(ndimage.sum(label > 0, comps, range(1, k + 1))))
        sl = crop_around(image, ndimage.center_of_mass(comps == largest), crop) if crop else \
            (slice(None),) * 3
        try:
            out.append(make_case(model, image[(slice(None),) + sl], name, label[sl], seed, informative=informative,
                                 device=device))
        except ValueError:
            if skipped is not None:
                skipped.append(name)
    return out


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> list:
    """95 % Wilson score interval ``[low, high]`` of a rate ``hits / n`` (``[nan, nan]`` when ``n = 0``)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = hits / n
    centre, denom = p + z * z / (2 * n), 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)]


def rate(flags) -> dict:
    """A rate with its count and 95 % Wilson interval."""
    flags = [bool(f) for f in flags]
    return {"hits": sum(flags), "cases": len(flags), "share": float(np.mean(flags)) if flags else float("nan"),
            "ci95": wilson_interval(sum(flags), len(flags))}


def median_interval(values, level: float = 0.95) -> list:
    """Distribution-free interval ``[low, high]`` of the median: order statistics ``x_(k)`` and ``x_(n+1-k)``
    with the largest ``k`` whose binomial coverage ``P(k <= Bin(n, 1/2) <= n - k)`` is at least ``level``
    (``[nan, nan]`` when there are too few values for that coverage)."""
    x = np.sort(np.asarray([v for v in values if not np.isnan(v)], float))
    n = len(x)
    k = 0
    while k + 1 <= n // 2 and stats.binom.cdf(n - k - 1, n, 0.5) - stats.binom.cdf(k, n, 0.5) >= level:
        k += 1
    if k == 0:
        return [float("nan"), float("nan")]
    return [float(x[k - 1]), float(x[n - k])]


def median_with_interval(values) -> dict:
    """The median with its 95 % interval (:func:`median_interval`) and the number of cases."""
    v = [x for x in values if not np.isnan(x)]
    return {"median": float(np.median(v)) if v else float("nan"), "ci95": median_interval(v), "cases": len(v)}


def target(y: torch.Tensor, case: ValidationCase) -> torch.Tensor:
    """Sec. 2.3's explained output per batch item: mean tumor logit over T + mean background logit over B."""
    t, b = torch.from_numpy(case.tumor), torch.from_numpy(case.background)
    return y[:, 1][:, t].mean(dim=1) + y[:, 0][:, b].mean(dim=1)


def tumor_evidence(y: torch.Tensor, case: ValidationCase) -> torch.Tensor:
    """``g``: mean tumor logit over T, per batch item."""
    return y[:, 1][:, torch.from_numpy(case.tumor)].mean(dim=1)


def spearman(a, b) -> float:
    """Spearman rank correlation (0 when either input is constant)."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b)[0])


def _lrp_sequence(model, case: ValidationCase, preset, device="cpu"):
    return sequence_relevance(model, case.image, preset=preset, device=device, regions=(case.tumor, case.background))


def _lrp_tumor_class(model, case: ValidationCase, preset, device="cpu") -> np.ndarray:
    """Sequence shares of the tumor-class half of Sec. 2.3's map alone, M_T^1 (Eq. 2)."""
    return region_relevance(model, case.image, case.tumor, "tumor", preset=preset, device=device).sequence_shares


def lrp_of_target(model, case: ValidationCase, preset, device="cpu") -> np.ndarray:
    """Per-sequence Eq. 1 relevance of ``f`` itself (seed 1/|T| on the tumor logit over T, 1/|B| on the
    background logit over B): the quantity the Shapley values distribute, without Eq. 2's per-voxel
    normalisation."""
    seeds = np.zeros((2,) + case.tumor.shape, np.float32)
    seeds[1][case.tumor] = 1.0 / case.tumor.sum()
    seeds[0][case.background] = 1.0 / case.background.sum()
    M = relevance(model, case.image, seeds, preset=preset, device=device)
    return M.reshape(M.shape[0], -1).sum(axis=1)


# ---- 4. ablation and Shapley values ------------------------------------------------------------------------
def baseline_image(image: np.ndarray, kind: str = "zero") -> np.ndarray:
    """What replaces an absent sequence: ``zero`` (its normalised foreground mean), ``mean`` (its volume
    mean) or ``blur`` (Gaussian, sigma 3 voxels: anatomy without lesion detail)."""
    if kind == "zero":
        return np.zeros_like(image)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(1, 2, 3), keepdims=True), image.shape).astype(image.dtype)
    if kind == "blur":
        return np.stack([ndimage.gaussian_filter(c, 3.0) for c in image]).astype(image.dtype)
    raise ValueError(f"unknown baseline {kind!r}; use 'zero', 'mean' or 'blur'")


def _subset_values(model, case: ValidationCase, subsets, baseline: str, device, batch: int = 4) -> np.ndarray:
    """``f`` with only the sequences in each subset present (the others replaced by the baseline)."""
    base = baseline_image(case.image, baseline)
    values = []
    for i in range(0, len(subsets), batch):
        xs = np.stack([np.where(np.isin(np.arange(len(case.image)), list(s))[:, None, None, None], case.image, base)
                       for s in subsets[i:i + batch]])
        values.extend(target(logits(model, xs, device), case).tolist())
    return np.array(values)


def shapley_values(model, case: ValidationCase, baseline: str = "zero", device="cpu") -> np.ndarray:
    """Exact Shapley values of ``f`` for the C sequences: 2^C forward passes.

    ``phi_i = sum_{S without i} |S|! (C - |S| - 1)! / C! * (f(S + i) - f(S))``; they sum to f(all) - f(none).
    """
    C = case.image.shape[0]
    subsets = [frozenset(s) for r in range(C + 1) for s in combinations(range(C), r)]
    v = dict(zip(subsets, _subset_values(model, case, subsets, baseline, device)))
    phi = np.zeros(C)
    for s in subsets:
        for i in range(C):
            if i not in s:
                w = math.factorial(len(s)) * math.factorial(C - len(s) - 1) / math.factorial(C)
                phi[i] += w * (v[s | {i}] - v[s])
    return phi


def sequence_ablation(model, case: ValidationCase, baseline: str = "zero", device="cpu") -> np.ndarray:
    """Drop of ``f`` when one sequence at a time is replaced by the baseline: f(all) - f(all without i)."""
    C = case.image.shape[0]
    subsets = [frozenset(range(C))] + [frozenset(range(C)) - {i} for i in range(C)]
    v = _subset_values(model, case, subsets, baseline, device)
    return v[0] - v[1:]


# ---- 2. randomisation ----------------------------------------------------------------------------------------
def linear_layers_in_order(model, x: np.ndarray) -> list[str]:
    """Names of the linear layers (conv, transposed conv, linear) in execution order."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, LINEAR_TYPES):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: order.append(n) if n not in order else None))
    try:
        logits(model, x)
    finally:
        for h in hooks:
            h.remove()
    return order


def randomisation_cascade(model, case: ValidationCase, preset=DEFAULT_PRESET, device="cpu", seed: int = 0,
                          max_voxels: int = 200_000, steps: Optional[Sequence[int]] = None) -> list[dict]:
    """Re-initialise the linear layers from the output down, cumulatively; after each step in ``steps``
    (number of layers randomised; default: every step) the Spearman correlation of the Sec. 2.3 map
    (signed and absolute) and of its six-sequence vector with the original's."""
    original = _lrp_sequence(model, case, preset, device)
    rng = np.random.default_rng(seed)
    n = original.maps.size
    pick = rng.choice(n, size=min(n, max_voxels), replace=False)
    ref = original.maps.ravel()[pick]
    layers = linear_layers_in_order(model, case.image)
    randomised = copy.deepcopy(model).cpu()
    modules = dict(randomised.named_modules())
    torch.manual_seed(seed)
    rows = [{"step": 0, "layer": "(original)", "map": 1.0, "abs_map": 1.0, "sequences": 1.0,
             "shares": original.shares.tolist()}]
    for step, name in enumerate(reversed(layers), 1):
        modules[name].reset_parameters()
        if steps is not None and step not in steps and step != len(layers):
            continue
        try:
            r = _lrp_sequence(randomised, case, preset, device)
            m = r.maps.ravel()[pick]
            rows.append({"step": step, "layer": name, "map": spearman(ref, m), "abs_map": spearman(np.abs(ref), np.abs(m)),
                         "sequences": spearman(original.shares, r.shares), "shares": r.shares.tolist()})
        except ValueError as exc:  # e.g. the randomised map sums to zero
            rows.append({"step": step, "layer": name, "map": float("nan"), "abs_map": float("nan"),
                         "sequences": float("nan"), "error": str(exc)})
    return rows


# ---- 3. class sensitivity -----------------------------------------------------------------------------------
def class_sensitivity(model, case: ValidationCase, preset=DEFAULT_PRESET, device="cpu") -> dict:
    """Tumor-class vs background-class explanations of T: Spearman correlation of the Eq. 1 maps of the
    summed logits over T (``raw_map``: -1 when the two logits carry opposite evidence) and of the Eq. 2
    maps (``map``: each voxel's map divided by its sum, which cancels a sign flip, so two antisymmetric
    logits give 1), and the L1 distance of the Eq. 2 sequence shares."""
    seeds = np.zeros((2,) + case.tumor.shape, np.float32)
    raw = []
    for c in (1, 0):
        seeds[:] = 0
        seeds[c][case.tumor] = 1.0
        raw.append(relevance(model, case.image, seeds, preset=preset, device=device))
    tumor = region_relevance(model, case.image, case.tumor, "tumor", preset=preset, device=device)
    back = region_relevance(model, case.image, case.tumor, "background", preset=preset, device=device)
    return {"raw_map": spearman(*raw), "map": spearman(tumor.maps, back.maps),
            "shares_l1": float(np.abs(tumor.sequence_shares - back.sequence_shares).sum()),
            "tumor_shares": tumor.sequence_shares.tolist(), "background_shares": back.sequence_shares.tolist()}


# ---- 5. region perturbation ---------------------------------------------------------------------------------
def _evidence_grad(model, x: torch.Tensor, case: ValidationCase) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tumor_evidence(model(x), case).sum(), x)
    return g


def heatmap(method: str, model, case: ValidationCase, device="cpu", cube=(4, 12, 12), ig_steps: int = 16) -> np.ndarray:
    """Voxel relevance (D, H, W) for the tumor evidence of T: an LRP preset's Eq. 2 map (summed over
    sequences), gradient x input, integrated gradients (zero baseline) or occlusion (per cube)."""
    if method not in BASELINE_METHODS:
        return region_relevance(model, case.image, case.tumor, "tumor", preset=method, device=device).maps.sum(0)
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


# ---- 1. known truth -----------------------------------------------------------------------------------------
def informative_ranked_first(shares, informative: Sequence[str]) -> bool:
    """Are the ``k`` informative sequences the ``k`` with the largest relevance?"""
    k = len(informative)
    top = {SEQUENCE_KEYS[i] for i in np.argsort(-np.asarray(shares), kind="stable")[:k]}
    return top == set(informative)


def known_truth(model, cases: Sequence[ValidationCase], presets: Sequence[str], device="cpu",
                shapley_baselines: Sequence[str] = ("zero", "mean", "blur")) -> dict:
    """Per preset: the share of cases whose informative sequences are ranked first by Sec. 2.3's
    ``M = M_B^0 + M_T^1`` (``share``) and by its tumor-class half ``M_T^1`` alone (``tumor_class_share``).

    The same for exact Shapley values of ``f`` with each absent-sequence baseline (``"shapley"``): the
    reference for what "the model uses a sequence" means.  A model that finds the tumor by its contrast in
    one sequence still needs the others to see the liver around it, so a baseline that also removes the
    anatomy (zero, mean) credits them too; a blurred baseline removes only lesion detail."""
    out = {}
    for preset in presets:
        shares = [_lrp_sequence(model, c, preset, device).shares for c in cases]
        tumor = [_lrp_tumor_class(model, c, preset, device) for c in cases]
        hits = [informative_ranked_first(s, c.informative) for s, c in zip(shares, cases)]
        hits_t = [informative_ranked_first(s, c.informative) for s, c in zip(tumor, cases)]
        out[preset] = {**rate(hits), "tumor_class_hits": int(sum(hits_t)),
                       "tumor_class_share": rate(hits_t)["share"], "tumor_class_ci95": rate(hits_t)["ci95"],
                       "per_case": [{"case": c.name, "shares": s.tolist(), "tumor_class_shares": t.tolist(),
                                     "hit": bool(h), "tumor_class_hit": bool(ht)}
                                    for c, s, t, h, ht in zip(cases, shares, tumor, hits, hits_t)]}
    out["shapley"] = {}
    for b in shapley_baselines:
        phis = [shapley_values(model, c, b, device) for c in cases]
        hits = [informative_ranked_first(phi, c.informative) for phi, c in zip(phis, cases)]
        out["shapley"][b] = {**rate(hits), "per_case": [{"case": c.name, "shapley": phi.tolist(), "hit": bool(h)}
                                                         for c, phi, h in zip(cases, phis, hits)]}
    return out


# ---- the report ---------------------------------------------------------------------------------------------
def run_validation(out: str, model="bundled", cases: int = 20, presets: Sequence[str] = AOPC_PRESETS,
                   checks: Sequence[str] = CHECKS, known_truth_models: Sequence[str] = (), crop=None,
                   detail_cases: int = 5, baseline: str = "zero", device="cpu", seed: int = VALIDATION_SEED,
                   known_truth_cases: int = 30, log=print,
                   baseline_methods: Sequence[str] = BASELINE_METHODS,
                   known_truth_shapley: Sequence[str] = ("zero", "mean", "blur"),
                   randomisation_steps: Sequence[int] = RANDOMISATION_STEPS) -> dict:
    """Run the checks and write ``validation.json``, ``presets.csv``, figures and ``report.html`` to ``out``.

    Whole phantom volumes unless ``crop`` (fast mode).  Shapley values use ``cases`` cases; class sensitivity,
    randomisation and AOPC (slow) the first ``detail_cases`` of them; known truth ``known_truth_cases`` cases per
    model in ``known_truth_models``.  Rates (``per_preset[p]["rates"]``) carry 95 % Wilson intervals; every
    check's JSON entry lists its per-case results under the case's name.
    """
    from .case_io import write_json
    from .models import load_model

    net = load_model(model) if not isinstance(model, torch.nn.Module) else model
    net = net.cpu().eval()
    skipped: list = []
    pool = phantom_cases(net, cases, seed, crop, device=device, skipped=skipped) if set(checks) - {"known-truth"} else []
    log(f"validation: {len(pool)} phantom cases ({'crop ' + str(list(crop)) if crop else 'whole volumes'}, "
        f"{len(skipped)} without predicted tumor skipped)")
    res: dict = {"cases": [c.name for c in pool], "skipped": skipped, "crop": list(crop) if crop else None,
                 "whole_volumes": not crop, "baseline": baseline, "presets": list(presets),
                 "baseline_methods": list(baseline_methods)}
    if "shapley" in checks:
        rows = []
        for c in pool:
            phi = shapley_values(net, c, baseline, device)
            abl = {b: sequence_ablation(net, c, b, device).tolist() for b in ("zero", "mean", "blur")}
            lrp = {p: _lrp_sequence(net, c, p, device).shares.tolist() for p in presets}
            lrp_f = {p: lrp_of_target(net, c, p, device).tolist() for p in presets}
            rows.append({"case": c.name, "shapley": phi.tolist(), "ablation": abl, "lrp": lrp, "lrp_of_f": lrp_f,
                         "rho": {p: spearman(phi, lrp[p]) for p in presets},
                         "rho_f": {p: spearman(phi, lrp_f[p]) for p in presets}})
            rho = ", ".join(f"{p} {rows[-1]['rho'][p]:+.2f} / {rows[-1]['rho_f'][p]:+.2f}" for p in presets)
            log(f"  shapley {c.name}: rho with Sec. 2.3 shares / with LRP of f: {rho}")
        res["shapley"] = rows
    detail = pool[:detail_cases]
    if "class-sensitivity" in checks:
        res["class_sensitivity"] = {p: [{"case": c.name, **class_sensitivity(net, c, p, device)} for c in detail]
                                    for p in presets}
    if "randomisation" in checks:
        res["randomisation"] = {p: [[{"case": c.name, **row} for row in
                                     randomisation_cascade(net, c, p, device, steps=randomisation_steps)]
                                    for c in detail] for p in presets}
        log("  randomisation done")
    if "aopc" in checks:
        res["aopc"] = [{"case": c.name, **aopc(net, c, list(presets) + list(baseline_methods), device=device)}
                       for c in detail]
        log("  AOPC done")
    if "known-truth" in checks and known_truth_models:
        res["known_truth"] = {}
        for path in known_truth_models:
            kt_net = load_model(path).cpu().eval()
            informative = _informative_of(path)
            kt_cases = phantom_cases(kt_net, known_truth_cases, seed, crop, informative=informative, device=device)
            res["known_truth"][path] = {"informative": informative,
                                        **known_truth(kt_net, kt_cases, presets, device, known_truth_shapley)}
        log("  known truth done")
    summarise(res)
    os.makedirs(out, exist_ok=True)
    write_json(res, os.path.join(out, "validation.json"))
    _write_tables_and_figures(out, res)
    return res


GOALS = (  # (what, the goal) for the default preset (issue 15)
    ("known truth: the one informative sequence first", ">= 0.95"),
    ("known truth: both informative sequences in the top two", ">= 0.80"),
    ("median Spearman rho with blurred-baseline Shapley values", ">= 0.8"),
    ("median map rho after randomising the top three layers", "< 0.3"),
    ("AOPC (MoRF) minus gradient x input's, mean over cases", "> 0"),
)


def summarise(res: dict) -> dict:
    """Derive ``per_preset`` (medians with intervals, rates with Wilson intervals), ``aopc_summary``,
    ``known_truth_shapley`` and ``goals`` from the per-case results of each check in ``res`` -- also for a
    ``res`` merged from several runs (:func:`merge_results`).  Returns ``res``, updated in place."""
    presets = res["presets"]
    per = res["per_preset"] = {p: {"rates": {}} for p in presets}
    if res.get("shapley"):
        rows = res["shapley"]
        for p in [p for p in presets if p in rows[0]["rho"]]:
            for key, col in (("rho", "shapley_rho"), ("rho_f", "shapley_f_rho")):
                m = median_with_interval([r[key][p] for r in rows])
                per[p][col + "_median"], per[p][col + "_median_ci95"] = m["median"], m["ci95"]
            per[p]["rates"]["shapley_rho_ge_0.8"] = rate([r["rho"][p] >= 0.8 for r in rows])
    for p, rows in (res.get("class_sensitivity") or {}).items():
        for k in ("raw_map", "map"):
            per[p][f"class_{k}_rho_median"] = float(np.median([r[k] for r in rows]))
    for p, runs in (res.get("randomisation") or {}).items():
        top3 = [next(r for r in rows if r["step"] >= 3) for rows in runs]
        for key, col in (("map", "randomised_top3_map_rho"), ("sequences", "randomised_top3_sequence_rho")):
            m = median_with_interval([r[key] for r in top3])
            per[p][col + "_median"], per[p][col + "_median_ci95"] = m["median"], m["ci95"]
        per[p]["rates"]["randomised_top3_map_rho_lt_0.3"] = rate([r["map"] < 0.3 for r in top3])
    if res.get("aopc"):
        rows = res["aopc"]
        res["aopc_summary"] = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in ("morf", "lerf") if k in rows[0][m]}
                               for m in [*presets, *res["baseline_methods"], "random"] if m in rows[0]}
        for p in [p for p in presets if p in rows[0]]:
            per[p]["aopc_morf"], per[p]["aopc_lerf"] = res["aopc_summary"][p]["morf"], res["aopc_summary"][p]["lerf"]
            if "gradient-x-input" in rows[0]:
                per[p]["rates"]["aopc_above_gradient_x_input"] = rate(
                    [r[p]["morf"] > r["gradient-x-input"]["morf"] for r in rows])
    kt = res.get("known_truth") or {}
    for p in presets:
        if not kt or not all(p in v for v in kt.values()):
            continue
        for v in kt.values():
            per[p]["rates"][f"known_truth {'+'.join(v['informative'])}"] = rate([c["hit"] for c in v[p]["per_case"]])
        n = sum(v[p]["cases"] for v in kt.values())
        for key, col in (("hits", "known_truth_share"), ("tumor_class_hits", "known_truth_tumor_class_share")):
            hits = sum(v[p][key] for v in kt.values())
            per[p][col], per[p][col + "_ci95"] = float(hits / max(n, 1)), wilson_interval(hits, n)
        for v in kt.values():
            if "blur" in v.get("shapley", {}):
                per[p].setdefault("known_truth_shapley_agreement", {})["+".join(v["informative"])] = \
                    _agreement(v[p]["per_case"], v["shapley"]["blur"]["per_case"], len(v["informative"]))
    baselines = sorted({b for v in kt.values() for b in v.get("shapley", {})})
    flags = {b: [c["hit"] for v in kt.values() for c in v.get("shapley", {}).get(b, {}).get("per_case", [])]
             for b in baselines}
    if baselines:
        res["known_truth_shapley"] = {b: rate(flags[b])["share"] for b in baselines}
        res["known_truth_shapley_ci95"] = {b: rate(flags[b])["ci95"] for b in baselines}
    res["goals"] = {p: _goals(res, p) for p in presets}
    return res


def _agreement(lrp_cases, shapley_cases, k: int) -> dict:
    """Per known-truth case, a preset's shares (Sec. 2.3's M and its tumor-class half) against the exact
    blurred-baseline Shapley values of the same case: median Spearman rho with its interval, and the rate of
    cases whose top ``k`` sequences are the Shapley values' top ``k``."""
    phi = {c["case"]: np.asarray(c["shapley"]) for c in shapley_cases}
    pairs = [(c, phi[c["case"]]) for c in lrp_cases if c["case"] in phi]
    top = lambda v: set(np.argsort(-np.asarray(v), kind="stable")[:k].tolist())  # noqa: E731
    out = {}
    for key, name in (("shares", "sec23"), ("tumor_class_shares", "tumor_class")):
        out[name + "_rho"] = median_with_interval([spearman(c[key], f) for c, f in pairs])
        out[name + "_same_top"] = rate([top(c[key]) == top(f) for c, f in pairs])
    return out


def _goals(res: dict, preset: str) -> list:
    """The five goals of :data:`GOALS` for one preset: value, 95 % interval, ``met`` (the value meets the goal)
    and ``certain`` (the whole interval does); ``None`` where the run lacks the check."""
    rates = res["per_preset"][preset]["rates"]
    kt = {len(v["informative"]): f"known_truth {'+'.join(v['informative'])}" for v in (res.get("known_truth") or {}).values()}
    entries = [_rate_entry(rates.get(kt.get(1))), _rate_entry(rates.get(kt.get(2))),
               _median_entry(res, preset, "shapley_rho") if res.get("baseline") == "blur" else None,
               _median_entry(res, preset, "randomised_top3_map_rho"), _aopc_entry(res, preset)]
    out = []
    for (name, goal), e in zip(GOALS, entries):
        row = {"goal": name, "target": goal, "value": None, "ci95": None, "met": None, "certain": None}
        if e is not None:
            op, bound = goal.split()
            bound = e.pop("bound") if "bound" in e else float(bound)
            ok = {">=": lambda v: v >= bound, ">": lambda v: v > bound, "<": lambda v: v < bound}[op]
            row.update(e, met=bool(ok(e["value"])), certain=bool(ok(e["ci95"][0]) and ok(e["ci95"][1])))
        out.append(row)
    return out


def goal_cell(g: dict) -> str:
    """One goal as text: ``0.93 (0.79-0.98) no / no``; ``not run`` without its check."""
    if g["value"] is None:
        return "not run"
    yes = {True: "yes", False: "no"}
    low, high = g["ci95"]
    interval = "no interval" if np.isnan(low) else f"{low:.2f} to {high:.2f}"
    return f"{g['value']:.2f} ({interval}) {yes[g['met']]} / {yes[g['certain']]}"


def _rate_entry(r):
    return None if r is None else {"value": r["share"], "ci95": r["ci95"], "hits": r["hits"], "cases": r["cases"]}


def _median_entry(res, preset, col):
    row = res["per_preset"][preset]
    if col + "_median" not in row:
        return None
    cases = len(res["shapley"]) if col == "shapley_rho" else len(res["randomisation"][preset])
    return {"value": row[col + "_median"], "ci95": row[col + "_median_ci95"], "cases": cases}


def _aopc_entry(res, preset):
    """Mean AOPC (MoRF) of the preset minus gradient x input's, with the 95 % t-interval of the paired
    per-case differences; the goal is a difference above 0."""
    if not res.get("aopc") or "gradient-x-input" not in res["aopc"][0] or preset not in res["aopc"][0]:
        return None
    d = np.array([r[preset]["morf"] - r["gradient-x-input"]["morf"] for r in res["aopc"]])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"value": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "cases": len(d),
            "bound": 0.0}


def merge_results(parts: Sequence[dict]) -> dict:
    """One result from several ``validation.json`` of the same cases and settings but different checks or presets
    (e.g. the known-truth presets and the known-truth Shapley values run apart): per-case results are combined,
    everything derived is recomputed by :func:`summarise`."""
    res: dict = {"presets": [], "baseline_methods": [], "cases": [], "skipped": []}
    for part in parts:
        for key in ("presets", "baseline_methods", "cases", "skipped"):
            res[key] += [x for x in part.get(key, []) if x not in res[key]]
        for key in ("crop", "whole_volumes"):
            res.setdefault(key, part.get(key))
        if part.get("shapley"):
            res["baseline"] = part["baseline"]
        for key in ("shapley", "aopc"):
            if part.get(key):
                if res.get(key):
                    raise ValueError(f"two runs both have the {key!r} check; merge runs of different checks")
                res[key] = part[key]
        for key in ("class_sensitivity", "randomisation"):
            res.setdefault(key, {}).update(part.get(key) or {})
        for path, v in (part.get("known_truth") or {}).items():
            mine = res.setdefault("known_truth", {}).setdefault(path, {"informative": v["informative"], "shapley": {}})
            mine.update({k: x for k, x in v.items() if k != "shapley"})
            mine["shapley"].update(v.get("shapley", {}))
    res.setdefault("baseline", "zero")
    return summarise(res)


def _informative_of(model_path: str) -> list:
    import json

    cfg = json.loads(open(os.path.splitext(model_path)[0] + ".json").read())
    if not cfg.get("informative"):
        raise ValueError(f"{model_path}: its model.json records no 'informative' sequences; train known-truth models "
                         "with `liver-lrp train --informative KEY`")
    return list(cfg["informative"])


PRESET_COLUMNS = ("known_truth_share", "known_truth_tumor_class_share", "shapley_rho_median", "shapley_f_rho_median",
                  "randomised_top3_map_rho_median", "randomised_top3_sequence_rho_median", "class_raw_map_rho_median",
                  "class_map_rho_median", "aopc_morf", "aopc_lerf")


def _write_tables_and_figures(out: str, res: dict) -> None:
    from .case_io import write_text
    from .figures import png_data_uri, pyplot, save_figure

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["preset", *PRESET_COLUMNS])
    for p, row in res["per_preset"].items():
        w.writerow([p, *[f"{row[c]:.3f}" if c in row else "" for c in PRESET_COLUMNS]])
    if "aopc_summary" in res:
        for m in (*res["baseline_methods"], "random"):
            s = res["aopc_summary"][m]
            w.writerow([m, *[""] * (len(PRESET_COLUMNS) - 2), f"{s['morf']:.3f}",
                        f"{s['lerf']:.3f}" if "lerf" in s else ""])
    for b, share in res.get("known_truth_shapley", {}).items():
        w.writerow([f"shapley-{b}", f"{share:.3f}", *[""] * (len(PRESET_COLUMNS) - 1)])
    write_text(buf.getvalue(), os.path.join(out, "presets.csv"))
    rates = [(p, name, r) for p, row in res["per_preset"].items() for name, r in row["rates"].items()]
    for b in res.get("known_truth_shapley", {}):
        flags = [c["hit"] for v in res["known_truth"].values() for c in v["shapley"][b]["per_case"]]
        rates.append((f"shapley-{b}", "known_truth", rate(flags)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["preset", "rate", "hits", "cases", "share", "ci95_low", "ci95_high"])
    w.writerows([p, name, r["hits"], r["cases"], f"{r['share']:.3f}", *(f"{v:.3f}" for v in r["ci95"])]
                for p, name, r in rates)
    write_text(buf.getvalue(), os.path.join(out, "rates.csv"))
    plt = pyplot()
    figs = []

    def figure(title, name, xlabel, ylabel, draw):
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        draw(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        figs.append((title, save_figure(fig, os.path.join(out, name))))

    def randomisation(ax):
        for p, runs in res["randomisation"].items():
            steps = [r["step"] for r in runs[0]]
            ax.plot(steps, np.nanmedian([[r["map"] for r in run] for run in runs], axis=0), marker="o", ms=3, label=p)
        ax.axhline(0.3, color="grey", ls=":", lw=1)
        ax.legend(fontsize=7)

    def perturbation(ax):
        steps = res["aopc"][0]["steps"]
        for m in [*res["presets"], *res["baseline_methods"], "random"]:
            ax.plot(steps, np.mean([r[m]["morf_curve"] for r in res["aopc"]], axis=0), label=m,
                    ls="--" if m in BASELINE_METHODS else ("-" if m != "random" else ":"))
        ax.legend(fontsize=7)

    def shapley(ax):
        n = len(res["presets"])
        for k, (key, colour, label) in enumerate((("rho", "C0", "Sec. 2.3 shares"), ("rho_f", "C1", "LRP of f"))):
            data = [[r[key][p] for r in res["shapley"]] for p in res["presets"]]
            box = ax.boxplot(data, positions=np.arange(n) * 3 + k, widths=0.8, patch_artist=True)
            for b in box["boxes"]:
                b.set_facecolor(colour)
            ax.plot([], [], color=colour, lw=6, label=label)
        ax.set_xticks(np.arange(n) * 3 + 0.5, res["presets"], rotation=15)
        ax.legend(fontsize=7)

    if "randomisation" in res:
        figure("Cascading parameter randomisation", "randomisation.png", "layers randomised (from the output)",
               "Spearman rho with original map", randomisation)
    if "aopc" in res:
        figure("Region perturbation (MoRF)", "aopc.png", "cubes removed (most relevant first)",
               "drop of tumor evidence / |g(x0)|", perturbation)
    if "shapley" in res:
        figure("LRP sequence relevance vs exact Shapley values", "shapley.png", "preset",
               "Spearman rho with Shapley values", shapley)
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ("preset", *PRESET_COLUMNS))
    body = "".join("<tr>" + f"<td>{e(p)}</td>" + "".join(f"<td>{row[c]:.3f}</td>" if c in row else "<td></td>"
                                                        for c in PRESET_COLUMNS) + "</tr>"
                   for p, row in res["per_preset"].items())
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>LiverTumorLRP validation</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head><body>",
             "<h1>LiverTumorLRP validation</h1>",
             f"<p>{len(res['cases'])} phantom cases "
             f"({'crop ' + str(res['crop']) + ' (fast mode)' if res['crop'] else 'whole volumes'}), "
             f"baseline '{e(res['baseline'])}'. "
             "Columns: known-truth share (informative sequences ranked first by Sec. 2.3's M, and by its tumor-class "
             "half M_T^1 alone), median Spearman rho of exact Shapley values of f with Sec. 2.3 sequence relevance "
             "and with the LRP (Eq. 1) of f itself, median rho of map and sequence vector with the original after "
             "randomising the top 3 layers, "
             "median rho between tumor- and background-class maps of T (Eq. 1 and Eq. 2), AOPC most- and "
             "least-relevant first.</p>",
             f"<table><tr>{head}</tr>{body}</table>",
             "<h2>Rates with 95 % Wilson intervals</h2><table><tr><th>preset</th><th>rate</th><th>hits / cases</th>"
             "<th>share</th><th>95 % interval</th></tr>" + "".join(
                 f"<tr><td>{e(p)}</td><td>{e(n)}</td><td>{r['hits']} / {r['cases']}</td><td>{r['share']:.2f}</td>"
                 f"<td>{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}</td></tr>" for p, n, r in rates) + "</table>"]
    parts.append("<h2>Goals for the default preset (value, 95 % interval; met / whole interval meets it)</h2>"
                 "<table><tr><th>preset</th>" + "".join(f"<th>{e(g)} ({e(t)})</th>" for g, t in GOALS) + "</tr>" + "".join(
                     f"<tr><td>{e(p)}</td>" + "".join(f"<td>{e(goal_cell(g))}</td>" for g in goals) + "</tr>"
                     for p, goals in res["goals"].items()) + "</table>")
    parts += [f"<h2>{e(t)}</h2><img src='{png_data_uri(p)}'>" for t, p in figs]
    if "known_truth_shapley" in res:
        parts.append("<h2>Known truth: exact Shapley values as the reference</h2><p>Share of known-truth cases whose "
                     "informative sequences the Shapley values of f rank first, per absent-sequence baseline.</p>"
                     "<table><tr><th>baseline</th><th>share</th></tr>" + "".join(
                         f"<tr><td>{e(b)}</td><td>{v:.3f}</td></tr>" for b, v in res["known_truth_shapley"].items())
                     + "</table>")
    if "aopc_summary" in res:
        parts.append("<h2>AOPC</h2><table><tr><th>method</th><th>MoRF</th><th>LeRF</th></tr>" + "".join(
            f"<tr><td>{e(m)}</td><td>{s['morf']:.3f}</td><td>{s.get('lerf', float('nan')):.3f}</td></tr>"
            for m, s in res["aopc_summary"].items()) + "</table>")
    parts.append("</body></html>")
    write_text("\n".join(parts), os.path.join(out, "report.html"))


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--out", required=True, help="folder for validation.json, presets.csv, figures and report.html")
    p.add_argument("--model", default="bundled", help="'bundled' or a .safetensors file with its .json config")
    p.add_argument("--cases", type=int, default=20, help="phantom cases for Shapley, class sensitivity, known truth")
    p.add_argument("--detail-cases", type=int, default=5, help="cases for randomisation and AOPC (slow)")
    p.add_argument("--presets", nargs="*", default=list(AOPC_PRESETS),
                   help="LRP presets to check (none: e.g. only the known-truth Shapley values)")
    p.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    p.add_argument("--known-truth", nargs="*", default=[], metavar="MODEL",
                   help="models trained with `liver-lrp train --informative KEY ...`")
    p.add_argument("--known-truth-cases", type=int, default=30, help="phantom cases per known-truth model")
    p.add_argument("--known-truth-shapley", nargs="*", default=["zero", "mean", "blur"],
                   choices=["zero", "mean", "blur"], metavar="BASELINE",
                   help="baselines of the exact Shapley values computed beside the presets on known-truth cases "
                        "(64 forward passes each per case; none: only the presets)")
    p.add_argument("--crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="fast mode: crops of this size around the tumor instead of whole volumes (e.g. 24 64 64)")
    p.add_argument("--baseline-methods", nargs="*", default=list(BASELINE_METHODS), choices=list(BASELINE_METHODS),
                   help="non-LRP methods in the AOPC comparison (occlusion is slow on whole volumes)")
    p.add_argument("--randomisation-steps", type=int, nargs="+", default=list(RANDOMISATION_STEPS), metavar="N",
                   help="layers randomised (from the output) after which the map is compared; all layers always")
    p.add_argument("--baseline", default="zero", choices=["zero", "mean", "blur"], help="absent-sequence baseline")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=VALIDATION_SEED)


def run(args) -> int:
    from .device import resolve_device

    res = run_validation(args.out, args.model, args.cases, args.presets, args.checks, args.known_truth,
                         tuple(args.crop) if args.crop else None, args.detail_cases, args.baseline,
                         resolve_device(args.device), args.seed, args.known_truth_cases,
                         baseline_methods=args.baseline_methods, known_truth_shapley=args.known_truth_shapley,
                         randomisation_steps=args.randomisation_steps)
    with open(os.path.join(args.out, "presets.csv")) as fh:
        print(fh.read().strip())
    print(f"report -> {os.path.join(args.out, 'report.html')}")
    return 0 if res["cases"] or res.get("known_truth") else 1


__all__ = ["run_validation", "wilson_interval", "rate", "shapley_values", "sequence_ablation", "randomisation_cascade", "class_sensitivity",
           "aopc", "known_truth", "informative_ranked_first", "lrp_of_target", "phantom_cases", "make_case", "spearman"]

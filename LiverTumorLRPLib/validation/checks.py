"""The checks on explanations of Sec. 2.3's output ``f`` (:func:`.cases.target`).

* Known truth (:func:`known_truth`): models trained on phantom variants whose tumor contrast lives only in some
  sequences (``liver-lrp train --informative KEY``); sequence relevance must rank those first.
* Cascading model-parameter randomisation (:func:`randomisation_cascade`, Adebayo et al. 2018): the linear layers
  are re-initialised from the output down; Spearman correlation of the Sec. 2.3 map and of its six-sequence
  vector with the original's, per step.
* Class sensitivity (:func:`class_sensitivity`): tumor-class vs background-class Eq. 2 maps of T.
* Sequence ablation and exact Shapley values (:func:`sequence_ablation`, :func:`shapley_values`): a sequence is
  "absent" when replaced by a baseline (zero = the sequence's mean foreground intensity after normalisation, its
  volume mean, or a blurred copy); Shapley values of ``f`` over all 2^6 subsets, rank-correlated with LRP
  sequence relevance.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..explain import region_relevance, relevance, sequence_relevance
from ..lrp import LINEAR_TYPES
from ..lrp.presets import DEFAULT_PRESET
from ..necessity import all_subsets, calibrated_maps, reference_image, with_only
from ..necessity import shapley_values as shapley_from_values
from ..sequences import SEQUENCE_KEYS
from .cases import ValidationCase, logits, target
from .statistics import rate, spearman

RANDOMISATION_STEPS = (1, 2, 3, 6, 10)  # layers randomised from the output down (and finally all)


# ---- LRP of the explained output -----------------------------------------------------------------------------
CONTRIBUTION = "contribution"   # the default method (:func:`..analysis.sequence_contribution`), checked as a preset


def lrp_sequence(model, case: ValidationCase, preset, device="cpu"):
    """Sec. 2.3's sequence relevance of the case with its fixed T and B (or, for ``contribution``, the Shapley
    values of f with the shifted reference-based LRP maps)."""
    if preset == CONTRIBUTION:
        return contribution(model, case, device)
    return sequence_relevance(model, case.image, preset=preset, device=device, regions=(case.tumor, case.background))


def lrp_tumor_class(model, case: ValidationCase, preset, device="cpu") -> np.ndarray:
    """Sequence shares of the tumor-class half of Sec. 2.3's map alone, M_T^1 (Eq. 2)."""
    return region_relevance(model, case.image, case.tumor, cls="tumor", preset=preset, device=device).shares


def target_seeds(case: ValidationCase) -> np.ndarray:
    """``f``'s seed: 1/|T| on the tumor logit over T, 1/|B| on the background logit over B."""
    seeds = np.zeros((2,) + case.tumor.shape, np.float32)
    seeds[1][case.tumor] = 1.0 / case.tumor.sum()
    seeds[0][case.background] = 1.0 / case.background.sum()
    return seeds


def lrp_of_target(model, case: ValidationCase, preset, device="cpu") -> np.ndarray:
    """Per-sequence Eq. 1 relevance of ``f`` itself: the quantity the Shapley values distribute, without Eq. 2's
    per-voxel normalisation."""
    M = relevance(model, case.image, target_seeds(case), preset=preset, device=device)
    return M.reshape(M.shape[0], -1).sum(axis=1)


@dataclass
class Contribution:
    maps: np.ndarray       # (C, D, H, W) reference-based LRP of f, shifted to sum to the Shapley values
    sums: np.ndarray       # the Shapley values of f
    shares: np.ndarray     # normalised to sum 1


def contribution(model, case: ValidationCase, device="cpu") -> Contribution:
    """The default sequence relevance with the case's fixed T and B: exact blurred-baseline Shapley values of f
    and reference-based LRP of f against the same blur, each sequence's map shifted onto its Shapley value."""
    from ..analysis import reference_lrp

    phi = shapley_values(model, case, "blur", device)
    M = relevance(reference_lrp(model, "blur", case.image), case.image, target_seeds(case), device=device)
    return Contribution(calibrated_maps(M, phi), phi, phi / phi.sum())


# ---- ablation and Shapley values -----------------------------------------------------------------------------
def baseline_image(image: np.ndarray, kind: str = "zero") -> np.ndarray:
    """What replaces an absent sequence (:func:`..necessity.reference_image`): ``zero`` (its normalised foreground
    mean), ``mean`` (its volume mean) or ``blur`` (Gaussian, sigma 3 voxels: anatomy without lesion detail)."""
    return reference_image(image, kind, "baseline")


def _subset_values(model, case: ValidationCase, subsets, baseline: str, device, batch: int = 4) -> np.ndarray:
    """``f`` with only the sequences in each subset present (the others replaced by the baseline)."""
    base = baseline_image(case.image, baseline)
    values = []
    for i in range(0, len(subsets), batch):
        xs = np.stack([with_only(case.image, base, s) for s in subsets[i:i + batch]])
        values.extend(target(logits(model, xs, device), case).tolist())
    return np.array(values)


def shapley_values(model, case: ValidationCase, baseline: str = "zero", device="cpu") -> np.ndarray:
    """Exact Shapley values of ``f`` for the C sequences: 2^C forward passes.

    ``phi_i = sum_{S without i} |S|! (C - |S| - 1)! / C! * (f(S + i) - f(S))``; they sum to f(all) - f(none).
    """
    C = case.image.shape[0]
    subsets = all_subsets(C)
    return shapley_from_values(dict(zip(subsets, _subset_values(model, case, subsets, baseline, device))), C)


def sequence_ablation(model, case: ValidationCase, baseline: str = "zero", device="cpu") -> np.ndarray:
    """Drop of ``f`` when one sequence at a time is replaced by the baseline: f(all) - f(all without i)."""
    C = case.image.shape[0]
    subsets = [frozenset(range(C))] + [frozenset(range(C)) - {i} for i in range(C)]
    v = _subset_values(model, case, subsets, baseline, device)
    return v[0] - v[1:]


def shapley_check(model, cases: Sequence[ValidationCase], presets: Sequence[str], baseline: str = "zero",
                  device="cpu", log=print) -> list[dict]:
    """Per case: exact Shapley values of ``f``, one-sequence ablation with every baseline, each preset's Sec. 2.3
    shares and LRP of ``f``, and the Spearman rho of the Shapley values with both."""
    rows = []
    for c in cases:
        phi = shapley_values(model, c, baseline, device)
        abl = {b: sequence_ablation(model, c, b, device).tolist() for b in ("zero", "mean", "blur")}
        lrp, lrp_f = {}, {}
        for p in presets:
            if p == CONTRIBUTION:      # its maps sum to its Shapley values of f: one computation gives both
                con = contribution(model, c, device)
                lrp[p], lrp_f[p] = con.shares.tolist(), con.sums.tolist()
            else:
                lrp[p] = lrp_sequence(model, c, p, device).shares.tolist()
                lrp_f[p] = lrp_of_target(model, c, p, device).tolist()
        rows.append({"case": c.name, "shapley": phi.tolist(), "ablation": abl, "lrp": lrp, "lrp_of_f": lrp_f,
                     "rho": {p: spearman(phi, lrp[p]) for p in presets},
                     "rho_f": {p: spearman(phi, lrp_f[p]) for p in presets}})
        rho = ", ".join(f"{p} {rows[-1]['rho'][p]:+.2f} / {rows[-1]['rho_f'][p]:+.2f}" for p in presets)
        log(f"  shapley {c.name}: rho with Sec. 2.3 shares / with LRP of f: {rho}")
    return rows


# ---- randomisation ---------------------------------------------------------------------------------------------
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
    original = lrp_sequence(model, case, preset, device)
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
            r = lrp_sequence(randomised, case, preset, device)
            m = r.maps.ravel()[pick]
            rows.append({"step": step, "layer": name, "map": spearman(ref, m), "abs_map": spearman(np.abs(ref), np.abs(m)),
                         "sequences": spearman(original.shares, r.shares), "shares": r.shares.tolist()})
        except ValueError as exc:  # e.g. the randomised map sums to zero
            rows.append({"step": step, "layer": name, "map": float("nan"), "abs_map": float("nan"),
                         "sequences": float("nan"), "error": str(exc)})
    return rows


# ---- class sensitivity ---------------------------------------------------------------------------------------
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
    tumor = region_relevance(model, case.image, case.tumor, cls="tumor", preset=preset, device=device)
    back = region_relevance(model, case.image, case.tumor, cls="background", preset=preset, device=device)
    return {"raw_map": spearman(*raw), "map": spearman(tumor.maps, back.maps),
            "shares_l1": float(np.abs(tumor.shares - back.shares).sum()),
            "tumor_shares": tumor.shares.tolist(), "background_shares": back.shares.tolist()}


# ---- known truth ---------------------------------------------------------------------------------------------
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
        shares = [lrp_sequence(model, c, preset, device).shares for c in cases]
        # ``contribution`` has no class halves: its shares stand for both
        tumor = shares if preset == CONTRIBUTION else [lrp_tumor_class(model, c, preset, device) for c in cases]
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

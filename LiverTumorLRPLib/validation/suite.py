"""``run_validation``: every check on phantom cases, written to a folder (``validation.json``, tables, figures,
``report.html``)."""
from __future__ import annotations

import json
import os
from typing import Sequence

import torch

from ..case_io import write_json
from .cases import VALIDATION_SEED, phantom_cases
from .checks import (CONTRIBUTION, RANDOMISATION_STEPS, class_sensitivity, known_truth, randomisation_cascade,
                     shapley_check)
from .perturbation import BASELINE_METHODS, aopc
from .report import write_report
from .summary import summarise

CHECKS = ("known-truth", "randomisation", "class-sensitivity", "shapley", "aopc")
AOPC_PRESETS = ("recommended", "paper", "epsilon", "epsilon-gamma-box", "alpha2-beta1", "reference-blur")


def informative_of(model_path: str) -> list:
    """The informative sequences a known-truth model was trained with (its ``.json``'s ``informative``)."""
    cfg = json.loads(open(os.path.splitext(model_path)[0] + ".json").read())
    if not cfg.get("informative"):
        raise ValueError(f"{model_path}: its model.json records no 'informative' sequences; train known-truth models "
                         "with `liver-lrp train --informative KEY`")
    return list(cfg["informative"])


def known_truth_check(models: Sequence[str], n_cases: int, presets: Sequence[str], seed: int = VALIDATION_SEED,
                      crop=None, device="cpu", shapley_baselines: Sequence[str] = ("zero", "mean", "blur")) -> dict:
    """:func:`.checks.known_truth` of each known-truth model (a path) on ``n_cases`` phantom cases of its variant."""
    from ..models import load_model

    out = {}
    for path in models:
        kt_net = load_model(path).cpu().eval()
        informative = informative_of(path)
        kt_cases = phantom_cases(kt_net, n_cases, seed, crop, informative=informative, device=device)
        out[path] = {"informative": informative, **known_truth(kt_net, kt_cases, presets, device, shapley_baselines)}
    return out


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
    from ..models import load_model

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
        res["shapley"] = shapley_check(net, pool, presets, baseline, device, log)
    detail = pool[:detail_cases]
    if "class-sensitivity" in checks:
        res["class_sensitivity"] = {p: [{"case": c.name, **class_sensitivity(net, c, p, device)} for c in detail]
                                    for p in presets if p != CONTRIBUTION}   # no class halves to compare
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
        res["known_truth"] = known_truth_check(known_truth_models, known_truth_cases, presets, seed, crop, device,
                                               known_truth_shapley)
        log("  known truth done")
    summarise(res)
    os.makedirs(out, exist_ok=True)
    write_json(res, os.path.join(out, "validation.json"))
    write_report(out, res)
    return res

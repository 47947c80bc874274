"""``liver-lrp validate``: the options and the command."""
from __future__ import annotations

import argparse
import os

from .cases import VALIDATION_SEED
from .checks import RANDOMISATION_STEPS
from .perturbation import BASELINE_METHODS
from .suite import AOPC_PRESETS, CHECKS, run_validation


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
    from ..device import resolve_device

    res = run_validation(args.out, args.model, args.cases, args.presets, args.checks, args.known_truth,
                         tuple(args.crop) if args.crop else None, args.detail_cases, args.baseline,
                         resolve_device(args.device), args.seed, args.known_truth_cases,
                         baseline_methods=args.baseline_methods, known_truth_shapley=args.known_truth_shapley,
                         randomisation_steps=args.randomisation_steps)
    with open(os.path.join(args.out, "presets.csv")) as fh:
        print(fh.read().strip())
    print(f"report -> {os.path.join(args.out, 'report.html')}")
    return 0 if res["cases"] or res.get("known_truth") else 1

"""Sec. 2.3 over K resampled background regions B and the exact expectation (issue 15), on one whole phantom
volume with the bundled model; with ``--compare``, also the wall time of K separate Sec. 2.3 runs, side by side.

    .venv/bin/python bench/bench_sequence_interval.py [--resamples 10] [--seed 200000] [--compare]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from LiverTumorLRPLib.explain import sequence_relevance, sequence_relevance_interval
from LiverTumorLRPLib.models import load_model
from LiverTumorLRPLib.sequences import DISPLAY_NAMES
from LiverTumorLRPLib.train import case_arrays


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--resamples", type=int, default=10)
    p.add_argument("--seed", type=int, default=200000, help="phantom seed")
    p.add_argument("--preset", default="recommended")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128])
    p.add_argument("--compare", action="store_true", help="also time K separate sequence_relevance calls")
    args = p.parse_args()
    net = load_model("bundled").eval()
    image, _ = case_arrays(args.seed, tuple(args.shape), (4.0, 3.0, 3.0))
    t0 = time.perf_counter()
    iv = sequence_relevance_interval(net, image, resamples=args.resamples, preset=args.preset, device="cpu")
    t_iv = time.perf_counter() - t0
    print(f"{args.resamples} draws + expectation: {t_iv:.1f} s; |T| = |B| = {iv.n_tumor}, "
          f"{iv.n_predicted_tumor} predicted tumor voxels")
    print(f"{'sequence':<12}{'draw 0':>8}{'mean':>8}{'std':>8}{'p2.5':>8}{'p97.5':>8}{'expected':>10}")
    for c, name in enumerate(DISPLAY_NAMES):
        print(f"{name:<12}{iv.shares[c]:8.3f}{iv.mean[c]:8.3f}{iv.std[c]:8.3f}{iv.low[c]:8.3f}{iv.high[c]:8.3f}"
              f"{iv.expected[c]:10.3f}")
    if args.compare:
        t0 = time.perf_counter()
        diff = max(float(np.abs(sequence_relevance(net, image, preset=args.preset, device="cpu", seed=k).shares
                                - iv.resampled[k]).max()) for k in range(args.resamples))
        t_sep = time.perf_counter() - t0
        print(f"{args.resamples} separate sequence_relevance calls: {t_sep:.1f} s; ratio {t_sep / t_iv:.2f}; "
              f"largest share difference {diff:.1e} (exclusion median over B instead of all candidates)")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()

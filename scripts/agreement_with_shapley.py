"""Does a sequence ranking agree with the model's exact Shapley values?  Issue 22's evidence, per case.

    python scripts/agreement_with_shapley.py MODEL N OUT.json

On N whole phantom volumes of MODEL's variant (known-truth models: their ``informative`` sequences; seeds from
200000, as ``liver-lrp validate``), the exact blurred-baseline Shapley values of Sec. 2.3's output
``f = mean_T y^tumor + mean_B y^background`` (64 forward passes) against three rankings: ``f_reference-blur``,
reference-based LRP (``reference-blur``) of f itself, without Eq. 2's per-voxel normalisation;
``sec23_reference-blur`` and ``sec23_recommended``, Sec. 2.3's shares.  Prints and writes per case the Spearman
rho and whether the top sequence is the same, then the medians and counts.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import stats

from LiverTumorLRPLib.models import load_model
from LiverTumorLRPLib.validation import informative_of, phantom_cases
from LiverTumorLRPLib.validation.checks import lrp_of_target, lrp_sequence, shapley_values

METHODS = {
    "f_reference-blur": lambda net, c: lrp_of_target(net, c, "reference-blur"),
    "sec23_reference-blur": lambda net, c: lrp_sequence(net, c, "reference-blur").shares,
    "sec23_recommended": lambda net, c: lrp_sequence(net, c, "recommended").shares,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("cases", type=int)
    ap.add_argument("out")
    args = ap.parse_args()
    net = load_model(args.model).cpu().eval()
    cases = phantom_cases(net, args.cases, 200000, None, informative=informative_of(args.model), device="cpu")
    rows = []
    for c in cases:
        phi = shapley_values(net, c, "blur")
        row = {"case": c.name, "shapley": phi.tolist()}
        for name, method in METHODS.items():
            v = np.asarray(method(net, c))
            row[name] = {"rho": float(stats.spearmanr(phi, v)[0]), "same_top": bool(np.argmax(phi) == np.argmax(v))}
        rows.append(row)
        print(c.name, {k: v for k, v in row.items() if k in METHODS}, flush=True)
    for name in METHODS:
        rho, top = [r[name]["rho"] for r in rows], [r[name]["same_top"] for r in rows]
        print(f"{args.model} {name}: median rho {np.median(rho):.2f}, same top {sum(top)}/{len(top)}")
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

"""Issue 22's evidence for the default sequence relevance, per case, as users run it.

    python scripts/contribution_evidence.py MODEL N OUT.json

N whole phantom volumes (48 x 128 x 128 at 4 x 3 x 3 mm, seeds from 200000 as ``liver-lrp validate``; the
known-truth models' variant from their ``model.json``; cases without a label or a predicted tumor skipped), each
through :func:`LiverTumorLRPLib.analysis.sequence_relevance` with the default method (``contribution``: exact
Shapley values of Sec. 2.3's f, reference-based LRP maps, necessity) and with ``--method paper`` (recommended
preset, 10 draws of B).  Per case: both shares, the Shapley values of f, the LRP maps' own sums before they are
shifted onto the Shapley values, the necessity and the agreement with the Shapley values of Dice.  Prints the
per-case line and writes everything to OUT.json; ``scripts/contribution_tables.py`` makes the README's table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from LiverTumorLRPLib import analysis
from LiverTumorLRPLib.phantom import generate_case, write_case
from LiverTumorLRPLib.validation import informative_of
from LiverTumorLRPLib.validation.cases import VALIDATION_SEED


def one_case(net, folder: str, name: str) -> dict:
    p = analysis.prepare(analysis.as_case(folder, net), net)
    seg = analysis.segment(p, "cpu")
    if not seg.network_lesion.any():
        raise ValueError("no predicted tumor")
    e = analysis.sequence_relevance(p, device="cpu", seg=seg)
    paper = analysis.sequence_relevance(p, device="cpu", seg=seg, method="paper", necessity_reference=None)
    d = e.details
    return {"case": name, "channels": list(e.channels), "dice": seg.summary().get("dice"),
            "contribution": e.shares.tolist(), "shapley_f": [d["shapley_f"][k] for k in e.channels],
            "lrp_sums": [d["lrp_sums"][k] for k in e.channels], "lrp_spearman": d["lrp_spearman"],
            "calibration_moved": d["calibration_moved"], "paper_recommended": paper.shares.tolist(),
            "necessity": e.necessity.as_dict(), "agreement": e.agreement}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="'bundled' or a known-truth model's .safetensors (its .json names the informative "
                                  "sequences)")
    ap.add_argument("cases", type=int, help="whole phantom volumes with a label and a predicted tumor")
    ap.add_argument("out", help="the per-case results (JSON)")
    args = ap.parse_args()
    net = analysis.load(args.model)
    try:
        informative = informative_of(args.model)
    except (OSError, ValueError):   # the bundled model: no known truth
        informative = None
    rows, seed = [], VALIDATION_SEED
    with tempfile.TemporaryDirectory() as tmp:
        while len(rows) < args.cases and seed < VALIDATION_SEED + 3 * args.cases:
            name, folder = f"phantom_{seed}", os.path.join(tmp, f"phantom_{seed}")
            c = generate_case(seed, (48, 128, 128), (4.0, 3.0, 3.0), list(informative) if informative else None)
            seed += 1
            if not c.label.any():
                continue
            write_case(c, folder)
            try:
                rows.append(one_case(net, folder, name))
            except ValueError as exc:
                print(name, "skipped:", exc, flush=True)
                continue
            r = rows[-1]
            print(name, "contribution", np.round(r["contribution"], 3), "lrp rho", round(r["lrp_spearman"] or 0, 2),
                  "moved", round(r["calibration_moved"], 3), "agreement", r["agreement"]["spearman"], flush=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump({"model": args.model, "informative": informative, "cases": rows}, fh, indent=1)


if __name__ == "__main__":
    main()

"""The README's table for issue 22: each sequence relevance method against the model's own exact Shapley values.

    python scripts/contribution_tables.py docs/validation_results/contribution_{bundled,kt_T1_120s,kt_T2_T1_20s}.json

Reads the per-case results of ``scripts/contribution_evidence.py`` and prints, per model (30 whole volumes each),
for the default (``contribution``), its LRP maps' own sums before the shift, and ``--method paper``: the median
Spearman rho with the exact Shapley values of Sec. 2.3's f (95 % interval), the cases whose top sequence is the
Shapley values' top one (95 % Wilson interval); the known truth (the informative sequence first, both in the top
two); the agreement with the Shapley values of Dice; and how much of the relevance the maps' shift moved.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from LiverTumorLRPLib.necessity import spearman
from LiverTumorLRPLib.validation.statistics import median_with_interval, rate

RANKINGS = {"contribution (default)": "contribution", "its LRP maps' own sums": "lrp_sums",
            "Sec. 2.3, `--method paper`": "paper_recommended"}


def fmt_median(values) -> str:
    m = median_with_interval(values)
    low, high = m["ci95"]
    return f"{m['median']:+.2f} ({low:+.2f} to {high:+.2f})"


def fmt_rate(flags) -> str:
    r = rate(flags)
    low, high = r["ci95"]
    return f"{r['hits']}/{r['cases']} = {100 * r['share']:.0f} % ({100 * low:.0f}-{100 * high:.0f})"


def top_k(values, k: int) -> set:
    return set(np.argsort(-np.asarray(values), kind="stable")[:k].tolist())


def model_rows(path: str) -> list:
    with open(path, encoding="utf-8") as fh:
        d = json.load(fh)
    cases, informative = d["cases"], d.get("informative")
    name = os.path.basename(path).replace("contribution_", "").replace(".json", "")
    rows = []
    for label, key in RANKINGS.items():
        phi = [c["shapley_f"] for c in cases]
        # the default's shares as analyze normalises them: over |f(all) - f(none)| (the stored ones of runs made
        # before that fix were over the signed total, which inverts the ranking where it is negative)
        v = [np.asarray(p) / abs(sum(p)) for p in phi] if key == "contribution" else [c[key] for c in cases]
        dice = [[c["necessity"]["shapley_dice"][k] for k in c["channels"]] for c in cases]
        row = [name, label, fmt_median([spearman(a, b) or 0.0 for a, b in zip(v, phi)]),
               fmt_rate([np.argmax(a) == np.argmax(b) for a, b in zip(v, phi)])]
        if informative:
            idx = {cases[0]["channels"].index(k) for k in informative}
            row.append(fmt_rate([top_k(a, len(idx)) == idx for a in v]))
        else:
            row.append("")
        row.append(fmt_median([spearman(a, b) or 0.0 for a, b in zip(v, dice)]))
        row.append(fmt_rate([np.argmax(a) == np.argmax(b) for a, b in zip(v, dice)]))
        rows.append(row)
    moved = [c["calibration_moved"] for c in cases]
    rows[0].append(f"{np.median(moved):.2f} (max {np.max(moved):.2f})")
    return rows


def main(paths) -> None:
    head = ["model", "sequence relevance", "rho with the Shapley values of f", "same top sequence",
            "known truth: informative sequence(s) on top", "rho with the Shapley values of Dice",
            "same top as Dice's", "relevance moved by the shift (median)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for path in paths:
        for row in model_rows(path):
            print("| " + " | ".join(row + [""] * (len(head) - len(row))) + " |")
    print(f"\ncommand: .venv/bin/python scripts/contribution_tables.py {' '.join(paths)}")


if __name__ == "__main__":
    main(sys.argv[1:])

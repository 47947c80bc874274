"""The README's validation tables (issue 15), from one or more ``validation.json`` of `liver-lrp validate`.

Runs of different checks on the same cases (e.g. the bundled-model Shapley check, its randomisation and AOPC
checks, the known-truth presets and the known-truth Shapley values, each run apart) are merged with
``validation.merge_results`` and summarised once; every rate has its 95 % Wilson interval, every median its
distribution-free 95 % interval, the AOPC difference its paired t-interval.

    .venv/bin/python scripts/validation_tables.py OUT_A/validation.json [OUT_B/validation.json ...]
"""
from __future__ import annotations

import json
import sys

from LiverTumorLRPLib.validation import GOALS, goal_cell, merge_results


def _pct(r) -> str:
    lo, hi = r["ci95"]
    return f"{r['hits']}/{r['cases']} = {100 * r['share']:.0f} % ({100 * lo:.0f}-{100 * hi:.0f})"


def _median_cell(median, ci95) -> str:
    return f"{median:+.2f} ({ci95[0]:+.2f} to {ci95[1]:+.2f})"


def _median(row, col) -> str:
    return _median_cell(row[col + "_median"], row[col + "_median_ci95"]) if col + "_median" in row else ""


def known_truth_table(res) -> list[str]:
    kt = res.get("known_truth") or {}
    if not kt:
        return []
    models = list(kt.values())
    head = [f"{'+'.join(m['informative'])} {'first' if len(m['informative']) == 1 else 'top two'}"
            for m in models]
    lines = ["| | " + " | ".join(f"{h} (Sec. 2.3) | {h} (tumor half)" for h in head) + " |",
             "|---|" + "---|---|" * len(models)]
    for p in res["presets"]:
        if not all(p in m for m in models):
            continue
        cells = []
        for m in models:
            r = m[p]
            cells += [_pct(r), _pct({"hits": r["tumor_class_hits"], "cases": r["cases"],
                                     "share": r["tumor_class_share"], "ci95": r["tumor_class_ci95"]})]
        lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    for b in sorted({b for m in models for b in m.get("shapley", {})}):
        lines.append(f"| exact Shapley values, {b} baseline | " + " | ".join(
            f"{_pct(m['shapley'][b])} | " if b in m.get("shapley", {}) else " | " for m in models) + " |")
    return lines


def agreement_table(res) -> list[str]:
    """Known-truth cases: each preset against the exact blurred-baseline Shapley values of the same case."""
    rows = [(p, res["per_preset"][p]["known_truth_shapley_agreement"]) for p in res["presets"]
            if "known_truth_shapley_agreement" in res["per_preset"][p]]
    if not rows:
        return []
    models = list(rows[0][1])
    lines = ["| | " + " | ".join(f"{m}: rho, Sec. 2.3 | {m}: rho, tumor half | {m}: same top sequences, Sec. 2.3 "
                                 f"| {m}: same, tumor half" for m in models) + " |",
             "|---|" + "---|---|---|---|" * len(models)]
    for p, agree in rows:
        cells = []
        for m in models:
            a = agree[m]
            cells += [_median_cell(a["sec23_rho"]["median"], a["sec23_rho"]["ci95"]),
                      _median_cell(a["tumor_class_rho"]["median"], a["tumor_class_rho"]["ci95"]),
                      _pct(a["sec23_same_top"]), _pct(a["tumor_class_same_top"])]
        lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    return lines


def bundled_table(res) -> list[str]:
    if not (res.get("shapley") or res.get("randomisation") or res.get("aopc")):
        return []
    n_s, n_r = len(res.get("shapley") or []), len(next(iter((res.get("randomisation") or {"": []}).values())))
    n_a = len(res.get("aopc") or [])
    lines = [f"| | Shapley rho, Sec. 2.3 shares ({n_s} cases) | Shapley rho, LRP of f | cases with rho >= 0.8 "
             f"| map rho, top 3 layers randomised ({n_r} cases) | sequence rho, same | AOPC MoRF ({n_a} cases) "
             "| AOPC LeRF |", "|---|---|---|---|---|---|---|---|"]
    for p in res["presets"]:
        row = res["per_preset"][p]
        r = row["rates"].get("shapley_rho_ge_0.8")
        lines.append(f"| `{p}` | {_median(row, 'shapley_rho')} | {_median(row, 'shapley_f_rho')} | "
                     f"{_pct(r) if r else ''} | {_median(row, 'randomised_top3_map_rho')} | "
                     f"{_median(row, 'randomised_top3_sequence_rho')} | "
                     + (f"{row['aopc_morf']:.2f} | {row['aopc_lerf']:.2f} |" if "aopc_morf" in row else " | |"))
    for m, s in (res.get("aopc_summary") or {}).items():
        if m not in res["presets"]:
            lines.append(f"| {m} | | | | | | {s['morf']:.2f} | {s['lerf']:.2f} |" if "lerf" in s
                         else f"| {m} | | | | | | {s['morf']:.2f} | |")
    return lines


def goals_table(res) -> list[str]:
    lines = ["| preset | " + " | ".join(f"{g} ({t})" for g, t in GOALS) + " |", "|---|" + "---|" * len(GOALS)]
    for p, goals in res["goals"].items():
        lines.append(f"| `{p}` | " + " | ".join(goal_cell(g) for g in goals) + " |")
    return lines


def main(paths) -> None:
    res = merge_results([json.load(open(p, encoding="utf-8")) for p in paths])
    print(f"# from: {' '.join(paths)}; {'crops ' + str(res['crop']) if res.get('crop') else 'whole volumes'}\n")
    for title, lines in (("Known truth", known_truth_table(res)),
                         ("Known truth: agreement with the exact blurred-baseline Shapley values", agreement_table(res)),
                         ("Bundled model", bundled_table(res)),
                         ("Goals (value, 95 % interval, met / whole interval meets it)", goals_table(res))):
        if lines:
            print(f"## {title}\n")
            print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or sys.exit(__doc__))

"""What the per-case results of the checks say: medians and rates with their intervals, the goals of the default
preset, and the merge of several runs."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

from .statistics import median_with_interval, rate, spearman, wilson_interval


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
        _summarise_shapley(res["shapley"], presets, per)
    for p, rows in (res.get("class_sensitivity") or {}).items():
        for k in ("raw_map", "map"):
            per[p][f"class_{k}_rho_median"] = float(np.median([r[k] for r in rows]))
    for p, runs in (res.get("randomisation") or {}).items():
        top3 = [next(r for r in rows if r["step"] >= 3) for rows in runs]
        for key, col in (("map", "randomised_top3_map_rho"), ("sequences", "randomised_top3_sequence_rho")):
            _put_median(per[p], col, [r[key] for r in top3])
        per[p]["rates"]["randomised_top3_map_rho_lt_0.3"] = rate([r["map"] < 0.3 for r in top3])
    if res.get("aopc"):
        _summarise_aopc(res, presets, per)
    kt = res.get("known_truth") or {}
    for p in presets:
        if kt and all(p in v for v in kt.values()):
            _summarise_known_truth(kt, p, per[p])
    baselines = sorted({b for v in kt.values() for b in v.get("shapley", {})})
    flags = {b: [c["hit"] for v in kt.values() for c in v.get("shapley", {}).get(b, {}).get("per_case", [])]
             for b in baselines}
    if baselines:
        res["known_truth_shapley"] = {b: rate(flags[b])["share"] for b in baselines}
        res["known_truth_shapley_ci95"] = {b: rate(flags[b])["ci95"] for b in baselines}
    res["goals"] = {p: _goals(res, p) for p in presets}
    return res


def _put_median(row: dict, col: str, values) -> None:
    m = median_with_interval(values)
    row[col + "_median"], row[col + "_median_ci95"] = m["median"], m["ci95"]


def _summarise_shapley(rows: list, presets: Sequence[str], per: dict) -> None:
    for p in [p for p in presets if p in rows[0]["rho"]]:
        for key, col in (("rho", "shapley_rho"), ("rho_f", "shapley_f_rho")):
            _put_median(per[p], col, [r[key][p] for r in rows])
        per[p]["rates"]["shapley_rho_ge_0.8"] = rate([r["rho"][p] >= 0.8 for r in rows])


def _summarise_aopc(res: dict, presets: Sequence[str], per: dict) -> None:
    rows = res["aopc"]
    res["aopc_summary"] = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in ("morf", "lerf") if k in rows[0][m]}
                           for m in [*presets, *res["baseline_methods"], "random"] if m in rows[0]}
    for p in [p for p in presets if p in rows[0]]:
        per[p]["aopc_morf"], per[p]["aopc_lerf"] = res["aopc_summary"][p]["morf"], res["aopc_summary"][p]["lerf"]
        if "gradient-x-input" in rows[0]:
            per[p]["rates"]["aopc_above_gradient_x_input"] = rate(
                [r[p]["morf"] > r["gradient-x-input"]["morf"] for r in rows])


def _summarise_known_truth(kt: dict, p: str, row: dict) -> None:
    """Preset ``p``'s known-truth rates per model, pooled shares with Wilson intervals, and its agreement with
    the blurred-baseline Shapley values."""
    for v in kt.values():
        row["rates"][f"known_truth {'+'.join(v['informative'])}"] = rate([c["hit"] for c in v[p]["per_case"]])
    n = sum(v[p]["cases"] for v in kt.values())
    for key, col in (("hits", "known_truth_share"), ("tumor_class_hits", "known_truth_tumor_class_share")):
        hits = sum(v[p][key] for v in kt.values())
        row[col], row[col + "_ci95"] = float(hits / max(n, 1)), wilson_interval(hits, n)
    for v in kt.values():
        if "blur" in v.get("shapley", {}):
            row.setdefault("known_truth_shapley_agreement", {})["+".join(v["informative"])] = \
                _agreement(v[p]["per_case"], v["shapley"]["blur"]["per_case"], len(v["informative"]))


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

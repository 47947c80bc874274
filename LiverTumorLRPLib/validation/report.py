"""The files of a validation run besides ``validation.json``: ``presets.csv``, ``rates.csv``, the figures and
``report.html``."""
from __future__ import annotations

import csv
import html
import io
import os

import numpy as np

from ..case_io import write_text
from ..report import html_page
from .perturbation import BASELINE_METHODS
from .statistics import rate
from .summary import GOALS, goal_cell

PRESET_COLUMNS = ("known_truth_share", "known_truth_tumor_class_share", "shapley_rho_median", "shapley_f_rho_median",
                  "randomised_top3_map_rho_median", "randomised_top3_sequence_rho_median", "class_raw_map_rho_median",
                  "class_map_rho_median", "aopc_morf", "aopc_lerf")
TITLE = "LiverTumorLRP validation"


def write_report(out: str, res: dict) -> None:
    """Write ``presets.csv``, ``rates.csv``, the figures and ``report.html`` of the summarised ``res`` to ``out``."""
    rates = rate_rows(res)
    write_text(_csv(preset_rows(res)), os.path.join(out, "presets.csv"))
    write_text(_csv([["preset", "rate", "hits", "cases", "share", "ci95_low", "ci95_high"]]
                    + [[p, name, r["hits"], r["cases"], f"{r['share']:.3f}", *(f"{v:.3f}" for v in r["ci95"])]
                       for p, name, r in rates]), os.path.join(out, "rates.csv"))
    figs = draw_figures(out, res)
    write_text(html_page(TITLE, report_parts(res, rates, figs)), os.path.join(out, "report.html"))


def _csv(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


# ---- tables --------------------------------------------------------------------------------------------------
def preset_rows(res: dict) -> list[list]:
    """``presets.csv``: a row per preset (:data:`PRESET_COLUMNS`), the AOPC of the other methods, and the
    known-truth share of the Shapley values per baseline."""
    rows = [["preset", *PRESET_COLUMNS]]
    for p, row in res["per_preset"].items():
        rows.append([p, *[f"{row[c]:.3f}" if c in row else "" for c in PRESET_COLUMNS]])
    if "aopc_summary" in res:
        for m in (*res["baseline_methods"], "random"):
            s = res["aopc_summary"][m]
            rows.append([m, *[""] * (len(PRESET_COLUMNS) - 2), f"{s['morf']:.3f}",
                         f"{s['lerf']:.3f}" if "lerf" in s else ""])
    for b, share in res.get("known_truth_shapley", {}).items():
        rows.append([f"shapley-{b}", f"{share:.3f}", *[""] * (len(PRESET_COLUMNS) - 1)])
    return rows


def rate_rows(res: dict) -> list[tuple]:
    """``(preset, rate name, rate)`` of every rate, the known-truth Shapley values' per baseline last."""
    rates = [(p, name, r) for p, row in res["per_preset"].items() for name, r in row["rates"].items()]
    for b in res.get("known_truth_shapley", {}):
        flags = [c["hit"] for v in res["known_truth"].values() for c in v["shapley"][b]["per_case"]]
        rates.append((f"shapley-{b}", "known_truth", rate(flags)))
    return rates


# ---- figures -------------------------------------------------------------------------------------------------
def _draw_randomisation(ax, res: dict) -> None:
    for p, runs in res["randomisation"].items():
        steps = [r["step"] for r in runs[0]]
        ax.plot(steps, np.nanmedian([[r["map"] for r in run] for run in runs], axis=0), marker="o", ms=3, label=p)
    ax.axhline(0.3, color="grey", ls=":", lw=1)
    ax.legend(fontsize=7)


def _draw_perturbation(ax, res: dict) -> None:
    steps = res["aopc"][0]["steps"]
    for m in [*res["presets"], *res["baseline_methods"], "random"]:
        ax.plot(steps, np.mean([r[m]["morf_curve"] for r in res["aopc"]], axis=0), label=m,
                ls="--" if m in BASELINE_METHODS else ("-" if m != "random" else ":"))
    ax.legend(fontsize=7)


def _draw_shapley(ax, res: dict) -> None:
    n = len(res["presets"])
    for k, (key, colour, label) in enumerate((("rho", "C0", "Sec. 2.3 shares"), ("rho_f", "C1", "LRP of f"))):
        data = [[r[key][p] for r in res["shapley"]] for p in res["presets"]]
        box = ax.boxplot(data, positions=np.arange(n) * 3 + k, widths=0.8, patch_artist=True)
        for b in box["boxes"]:
            b.set_facecolor(colour)
        ax.plot([], [], color=colour, lw=6, label=label)
    ax.set_xticks(np.arange(n) * 3 + 0.5, res["presets"], rotation=15)
    ax.legend(fontsize=7)


FIGURES = (  # (check in the results, title, file, x label, y label, drawing)
    ("randomisation", "Cascading parameter randomisation", "randomisation.png", "layers randomised (from the output)",
     "Spearman rho with original map", _draw_randomisation),
    ("aopc", "Region perturbation (MoRF)", "aopc.png", "cubes removed (most relevant first)",
     "drop of tumor evidence / |g(x0)|", _draw_perturbation),
    ("shapley", "LRP sequence relevance vs exact Shapley values", "shapley.png", "preset",
     "Spearman rho with Shapley values", _draw_shapley),
)


def draw_figures(out: str, res: dict) -> list[tuple]:
    """The figures of the checks in ``res``, saved to ``out``: ``(title, path)`` of each."""
    from ..figures import pyplot, save_figure

    plt = pyplot()
    figs = []
    for check, title, name, xlabel, ylabel, draw in FIGURES:
        if check not in res:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        draw(ax, res)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        figs.append((title, save_figure(fig, os.path.join(out, name))))
    return figs


# ---- the HTML page -------------------------------------------------------------------------------------------
def report_parts(res: dict, rates: list[tuple], figs: list[tuple]) -> list[str]:
    """The HTML parts of ``report.html`` below its title: the preset table, the rates, the goals, the figures,
    the known-truth Shapley shares and the AOPC table."""
    from ..figures import png_data_uri

    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ("preset", *PRESET_COLUMNS))
    body = "".join("<tr>" + f"<td>{e(p)}</td>" + "".join(f"<td>{row[c]:.3f}</td>" if c in row else "<td></td>"
                                                        for c in PRESET_COLUMNS) + "</tr>"
                   for p, row in res["per_preset"].items())
    parts = [f"<p>{len(res['cases'])} phantom cases "
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
    return parts

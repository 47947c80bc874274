"""``liver-lrp cohort ROOT --out DIR``: the paper's analysis over a cohort (its Fig. 1), resumable.

Per case (a folder under ROOT): the Sec. 2.3 analysis (:func:`pipeline.analyze_case`), and where a
label exists, Dice and tumor-class Eq. 2 relevance of each true-positive and false-negative
tumor component (the poster's figures).  ``result.json`` is written last in each case folder,
so re-running skips finished cases and a run killed at any moment loses none.  A case that
fails is reported with its reason (``error.txt``) and skipped; the exit code is 1 if any failed.
Then: ``cohort.csv`` (one row per case, one column per sequence), ``cohort_relevance.png`` (Fig. 1)
and ``report.html`` (self-contained: every figure embedded).
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Optional

import numpy as np

from .case_io import find_cases, read_case, write_json, write_text
from .presets import PRESETS
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS

RESULT = "result.json"
ERROR = "error.txt"


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("root", help="folder whose sub-folders are cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="bundled")
    p.add_argument("--preset", default="recommended", choices=list(PRESETS))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=1, help="cases run in parallel (capped by cores and memory)")
    p.add_argument("--memory-per-case", type=float, default=3.0, help="GB one case needs (caps --workers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--background", default="random", choices=["random", "shell"])
    p.add_argument("--max-voxels", type=int, default=None)
    p.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--max-components", type=int, default=3, help="TP and FN components explained per case")


def _available_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def effective_workers(requested: int, memory_per_case: float) -> int:
    """``requested`` capped by the CPU count and by the available memory."""
    n = max(1, min(requested, os.cpu_count() or 1))
    avail = _available_gb()
    if avail is not None:
        n = max(1, min(n, int(avail // max(memory_per_case, 0.1))))
    return n


def explain_components(case, net, segmentation: np.ndarray, out: str, preset, device, max_components: int,
                       patch_size=None) -> list[dict]:
    """Tumor-class Eq. 2 relevance of the largest true-positive and false-negative label components."""
    from scipy import ndimage

    from .explain import region_relevance
    from .figures import most_relevant_slices, overlay_slice

    comps, n = ndimage.label(case.label > 0)
    sizes = ndimage.sum(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    found = {"true positive": [], "false negative": []}
    for idx in np.argsort(sizes)[::-1]:
        region = comps == idx + 1
        kind = "true positive" if (segmentation & region).any() else "false negative"
        if len(found[kind]) < max_components:
            found[kind].append(region)
    results = []
    display = case.raw if case.raw is not None else case.image
    for kind, regions in found.items():
        for i, region in enumerate(regions):
            res = region_relevance(net, case.image, region, "tumor", preset=preset, device=device,
                                   patch_size=patch_size)
            tag = kind.replace(" ", "_")
            z = int(np.argmax(region.sum(axis=(1, 2))))
            z = z if region[z].any() else most_relevant_slices(res.maps, 1)[0]
            png = overlay_slice(display, res.maps, z, os.path.join(out, f"{tag}_{i}.png"), segmentation, region,
                                title=f"{case.name}: tumor-class relevance of a {kind} ({int(region.sum())} voxels)")
            results.append({"kind": kind, "voxels": int(region.sum()), "png": png,
                            "relevance": [float(v) for v in res.sequence_shares], "n_excluded": res.n_excluded})
    return results


def run_case(case_dir: str, out: str, model, preset, device, seed, background, max_voxels, patch_size,
             max_components: int, threads: Optional[int] = None) -> dict:
    """One case of a cohort; writes ``result.json`` last.  Runs in a worker process when ``--workers > 1``."""
    import torch

    from . import pipeline
    from .models import load_model

    if threads:
        torch.set_num_threads(threads)
    case = read_case(case_dir)
    net = load_model(model, device="cpu")
    summary = pipeline.analyze_case(case, out, net, preset, device, seed, background, max_voxels, patch_size,
                                    finalize=False)
    if case.label is not None and case.label.any():
        seg = read_seg(out)
        summary["components"] = explain_components(case, net, seg, out, preset, device, max_components,
                                                   patch_size)
    write_json(summary, os.path.join(out, RESULT))
    if os.path.exists(os.path.join(out, ERROR)):
        os.remove(os.path.join(out, ERROR))
    return summary


def read_seg(out: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "tumor_segmentation.nii.gz"))).astype(bool)


def run_cohort(root: str, out: str, model="bundled", preset="recommended", device="auto", workers: int = 1,
               seed: int = 0, background: str = "random", max_voxels=None, patch_size=None, max_components: int = 3,
               memory_per_case: float = 3.0, progress=None) -> dict:
    """Run every case under ``root``; returns ``{"results": {name: summary}, "failures": {name: reason}}``."""
    from .models import load_model

    cases = find_cases(root)
    if not cases:
        raise ValueError(f"{root}: no case folders found (a case folder holds T1_15min and the other sequences, "
                         "or a case.json)")
    load_model(model, device="cpu")  # fail early on a bad model, before any case
    os.makedirs(out, exist_ok=True)
    results, failures, todo = {}, {}, []
    for case_dir in cases:
        name = os.path.basename(os.path.normpath(case_dir))
        done = os.path.join(out, name, RESULT)
        if os.path.exists(done):
            import json

            with open(done) as f:
                results[name] = json.load(f)
        else:
            todo.append((name, case_dir))
    n_workers = effective_workers(workers, memory_per_case)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    args = (model, preset, device, seed, background, max_voxels, patch_size, max_components)

    def finished(name, summary=None, error=None):
        if error is None:
            results[name] = summary
        else:
            failures[name] = error
            write_text(error + "\n", os.path.join(out, name, ERROR))
        if progress:
            progress(len(results) + len(failures), len(cases), name, error)

    if n_workers == 1:
        for name, case_dir in todo:
            try:
                finished(name, run_case(case_dir, os.path.join(out, name), *args))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a bad case is reported and skipped
                finished(name, error=_reason(exc))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_case, case_dir, os.path.join(out, name), *args, threads=threads): name
                       for name, case_dir in todo}
            for fut in as_completed(futures):
                try:
                    finished(futures[fut], fut.result())
                except Exception as exc:
                    finished(futures[fut], error=_reason(exc))
    write_cohort_outputs(out, results, failures)
    return {"results": results, "failures": failures, "skipped": len(cases) - len(todo), "workers": n_workers}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return f"{type(exc).__name__}: {exc}"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def write_cohort_outputs(out: str, results: dict, failures: dict) -> None:
    """``cohort.csv``, Fig. 1 (``cohort_relevance.png``) and ``report.html``."""
    from .figures import cohort_figure, png_data_uri

    names = sorted(results)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "status", "dice", "tumor_voxels", *SEQUENCE_KEYS])
    for name in names:
        r = results[name]
        w.writerow([name, "ok", f"{r['dice']:.4f}" if "dice" in r else "", r.get("tumor_voxels", ""),
                    *[f"{v:.6f}" for v in r["relevance"]]])
    for name in sorted(failures):
        w.writerow([name, "failed", "", "", *[""] * len(SEQUENCE_KEYS)])
    write_text(buf.getvalue(), os.path.join(out, "cohort.csv"))
    fig = None
    if names:
        shares = np.array([results[n]["relevance"] for n in names])
        spread = all("relevance_p2.5" in results[n] for n in names)  # resampled regions B
        low, high = ([results[n][k] for n in names] for k in ("relevance_p2.5", "relevance_p97.5")) if spread \
            else (None, None)
        fig = cohort_figure(names, shares, os.path.join(out, "cohort_relevance.png"),
                            title=f"Normalised relevance per sequence, {len(names)} cases"
                                  + (" (bars: 95 % of resampled B)" if spread else ""), low=low, high=high)
    write_text(_report_html(out, names, results, failures, fig, png_data_uri), os.path.join(out, "report.html"))


def _report_html(out, names, results, failures, fig, uri) -> str:
    e = html.escape
    rows = []
    for n in names:
        r = results[n]
        cells = "".join(f"<td>{v:+.3f}</td>" for v in r["relevance"])
        dice = f"{r['dice']:.3f}" if "dice" in r else "&ndash;"
        rows.append(f"<tr><td>{e(n)}</td><td>{dice}</td><td>{r.get('tumor_voxels', '')}</td>{cells}</tr>")
    head = "".join(f"<th>{e(d)}</th>" for d in DISPLAY_NAMES)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>LiverTumorLRP cohort report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head><body>",
             "<h1>LiverTumorLRP cohort report</h1>",
             f"<p>{len(names)} cases analysed, {len(failures)} failed. Sequence relevance as in Chlebus et al. "
             "(Sec. 2.3): M = M<sub>B</sub><sup>0</sup> + M<sub>T</sub><sup>1</sup>, normalised to sum 1.</p>"]
    if names:
        mean = np.mean([results[n]["relevance"] for n in names], axis=0)
        parts.append(f"<table><tr><th>case</th><th>Dice</th><th>tumor voxels</th>{head}</tr>{''.join(rows)}"
                     f"<tr><th>mean</th><td></td><td></td>{''.join(f'<th>{v:+.3f}</th>' for v in mean)}</tr></table>")
    if fig:
        parts.append(f"<h2>Figure 1: relevance per sequence</h2><img src='{uri(fig)}'>")
    if failures:
        parts.append("<h2>Failed cases</h2><ul>" + "".join(f"<li><b>{e(n)}</b>: {e(m)}</li>"
                                                           for n, m in sorted(failures.items())) + "</ul>")
    for n in names:
        r = results[n]
        parts.append(f"<h2>{e(n)}</h2>")
        bar = os.path.join(out, n, "sequence_relevance.png")
        if os.path.exists(bar):
            parts.append(f"<img src='{uri(bar)}'>")
        for comp in r.get("components", []):
            if os.path.exists(comp["png"]):
                parts.append(f"<p>{e(comp['kind'])}, {comp['voxels']} voxels</p><img src='{uri(comp['png'])}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def run(args) -> int:
    from tqdm import tqdm

    bar = tqdm(total=len(find_cases(args.root)), desc="cohort", unit="case")

    def progress(done, total, name, error):
        bar.n = done
        bar.set_postfix_str(f"{name}: {'FAILED' if error else 'ok'}")
        bar.refresh()
        if error:
            tqdm.write(f"case {name} failed: {error}")

    try:
        res = run_cohort(args.root, args.out, args.model, args.preset, args.device, args.workers, args.seed,
                         args.background, args.max_voxels, tuple(args.patch) if args.patch else None,
                         args.max_components, args.memory_per_case, progress)
    finally:
        bar.close()
    print(f"{len(res['results'])} cases done ({res['skipped']} already finished), {len(res['failures'])} failed, "
          f"{res['workers']} worker(s) -> {args.out}/report.html")
    for name, reason in sorted(res["failures"].items()):
        print(f"FAILED {name}: {reason}")
    return 1 if res["failures"] else 0

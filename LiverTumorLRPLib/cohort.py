"""``liver-lrp cohort ROOT --out DIR``: the paper's analysis over a cohort (its Fig. 1), resumable.

Every folder under ROOT holding a sequence file or a case.json is a case (:func:`case_io.find_cases`);
per case: the Sec. 2.3 analysis (:func:`pipeline.analyze_case`), and where a label exists, Dice and
tumor-class Eq. 2 relevance of each true-positive and false-negative tumor component (the poster's
figures).  ``result.json`` is written last in each case folder, so re-running skips finished cases and a
run killed at any moment loses none.  A case that fails (a missing, unreadable or mismatched sequence...)
is reported with its reason (``error.txt``, the CSV, the report) and skipped; the exit code is 1 if any
failed.  Then, once, by this process: ``cohort.csv`` (one row per case, one column per sequence),
``cohort_relevance.png`` (Fig. 1) and ``report.html`` (self-contained: every figure embedded).

Cases run one after another in this process, or as one Dask task each (``--workers N``: a LocalCluster
of N processes on 127.0.0.1; ``--scheduler ADDRESS``: an existing cluster whose workers share the output
folder).  A worker loads the model once and writes the case's outputs itself, atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import html
import io
import json
import os
from typing import Optional

import numpy as np

from .analysis import DEFAULT_METHOD, DEFAULT_RESAMPLES, as_case
from .case_io import find_cases, write_json, write_text
from .commands import (add_dicom_arguments, add_labels_argument, add_model_arguments, add_sequence_relevance_arguments,
                       model_spec, necessity_reference, patch_from_args)
from .models import cached_model
from .necessity import REFERENCE
from .progress import one_line
from .report import html_page
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS

RESULT = "result.json"
ERROR = "error.txt"


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("root", help="folder whose sub-folders are cases")
    p.add_argument("--out", required=True, help="output folder")
    add_model_arguments(p)
    add_sequence_relevance_arguments(p)
    add_labels_argument(p)
    add_dicom_arguments(p)
    p.add_argument("--workers", type=int, default=None,
                   help="N > 1: cases run in parallel on a Dask LocalCluster of N processes on 127.0.0.1 (capped by "
                        "cores and memory); 1 (default): one after another in this process")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the cases on a Dask cluster (tcp://HOST:PORT of `dask scheduler`); its workers must see "
                        "ROOT, the model and --out at the same paths")
    p.add_argument("--memory-per-case", type=float, default=3.0, help="GB one case needs (caps --workers)")
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


def _remove_temporaries(out: str) -> None:
    """Hidden temporaries of the atomic writers left by a process killed mid-write (never a visible file)."""
    import shutil

    if os.path.isdir(out):
        for entry in os.listdir(out):
            if entry.startswith(".") and ".tmp-" in entry:
                path = os.path.join(out, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(path)


def run_case(case_dir: str, out: str, model, preset, device, seed, background, max_voxels, patch_size,
             max_components: int, resamples: int = DEFAULT_RESAMPLES, necessity_reference: Optional[str] = REFERENCE,
             labels: Optional[str] = None, method: str = DEFAULT_METHOD, threads: Optional[int] = None,
             dicom_out: Optional[str] = None) -> dict:
    """One case of a cohort (:func:`pipeline.analyze_case` with its label components); writes ``result.json``
    last.  Raises on a bad case."""
    import torch

    from . import pipeline

    _remove_temporaries(out)
    if threads:
        torch.set_num_threads(threads)
    net = cached_model(model)
    case = as_case(case_dir, net, labels)
    summary = pipeline.analyze_case(case, out, net, preset, device, seed, background, max_voxels, patch_size,
                                    finalize=False, max_components=max_components, resamples=resamples,
                                    necessity_reference=necessity_reference, dicom_out=dicom_out, method=method)
    write_json(summary, os.path.join(out, RESULT))
    if os.path.exists(os.path.join(out, ERROR)):
        os.remove(os.path.join(out, ERROR))
    return summary


def _read_result(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def case_names(root: str, cases: list[str]) -> list[str]:
    """Output sub-folder of each case: its path under ``root`` (``centre_a/p001``), so equal names never collide."""
    names = [os.path.relpath(c, root).replace(os.sep, "/") for c in cases]
    return [os.path.basename(os.path.abspath(root)) if n == "." else n for n in names]


def run_cohort(root: str, out: str, model="bundled", preset="recommended", device="auto", workers: int = 1,
               seed: int = 0, background: str = "random", max_voxels=None, patch_size=None, max_components: int = 3,
               memory_per_case: float = 3.0, progress=None, scheduler: Optional[str] = None,
               resamples: int = DEFAULT_RESAMPLES, necessity_reference: Optional[str] = REFERENCE,
               labels: Optional[str] = None, dicom_out: Optional[str] = None, method: str = DEFAULT_METHOD) -> dict:
    """Run every case under ``root``; returns ``{"results": {name: summary}, "failures": {name: reason}, ...}``.

    ``workers > 1`` runs the cases on a Dask LocalCluster, ``scheduler`` on an existing Dask cluster
    (see :func:`run_on_dask`); otherwise one after another in this process.
    """
    root, out = os.path.abspath(root), os.path.abspath(out)  # the same paths on every worker
    cases = find_cases(root, exclude=[out])
    if not cases:
        raise ValueError(f"{root}: no case folders found (a case folder holds the sequence files "
                         "T2, T1_plain, T1_20s, T1_60s, T1_120s, T1_15min, or DICOM folders so named, or a case.json; "
                         "or an nnU-Net imagesTs/imagesTr folder of CASE_0000.nii.gz ... files)")
    if isinstance(model, (str, os.PathLike)) and os.path.exists(model):
        model = os.path.abspath(model)
    elif isinstance(model, dict) and os.path.exists(model.get("path", "")):
        model = {**model, "path": os.path.abspath(model["path"])}
    cached_model(model)  # fail early on a bad model, before any case
    os.makedirs(out, exist_ok=True)
    results, failures, todo = {}, {}, []
    for name, case_dir in zip(case_names(root, cases), cases):
        done = os.path.join(out, name, RESULT)
        if os.path.exists(done):
            results[name] = _read_result(done)
        else:
            todo.append((name, case_dir))
    args = (model, preset, device, seed, background, max_voxels, patch_size, max_components, resamples,
            necessity_reference, labels, method)
    if progress:
        progress(len(results), len(cases), None, None)

    def finished(name, summary=None, error=None):
        if error is None:
            results[name] = summary
        else:
            failures[name] = error
            write_text(error + "\n", os.path.join(out, name, ERROR))
        if progress:
            progress(len(results) + len(failures), len(cases), name, error)

    if scheduler or (workers or 1) > 1:
        n_workers = run_on_dask(todo, out, args, finished, scheduler=scheduler, dicom_out=dicom_out,
                                workers=None if scheduler else effective_workers(workers, memory_per_case))
    else:
        n_workers = 1
        for name, case_dir in todo:
            try:
                finished(name, run_case(case_dir, os.path.join(out, name), *args,
                                        dicom_out=dicom_out and os.path.join(dicom_out, name)))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a bad case is reported and skipped
                finished(name, error=_reason(exc))
    write_cohort_outputs(out, results, failures)
    return {"results": results, "failures": failures, "skipped": len(cases) - len(todo), "workers": n_workers}


# --------------------------------------------------------------------------- Dask distributed

ALLOWED_FAILURES = 2  # a case whose worker dies is retried at most twice, then reported (KilledWorker)
RETRIES = 2           # the same for an unexpected exception (bad input fails at once, without retry)


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError("--workers N > 1 and --scheduler run the cases on Dask distributed, which is not "
                         "installed: pip install 'LiverTumorLRP[dask]'") from None
    return distributed


def local_cluster(n_workers: int, device: str = "auto", **kwargs):
    """A Dask LocalCluster on 127.0.0.1: ``n_workers`` processes of one thread (one case at a time each);
    with ``device="cuda"`` each worker offers the resource ``GPU=1`` that every case task asks for."""
    import logging

    distributed = _distributed()
    options = dict(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                   dashboard_address="127.0.0.1:0", memory_limit=0, silence_logs=logging.ERROR,
                   scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES, "dashboard": False},
                   resources={"GPU": 1} if device == "cuda" else None)
    return distributed.LocalCluster(**{**options, **kwargs})


def _case_task(case_dir: str, out: str, args: tuple, threads_per_host: dict, dicom_out: Optional[str] = None) -> dict:
    """One case on a Dask worker: ``{"summary": ...}`` or ``{"error": reason}`` for bad input (not retried).

    A case already finished (its worker died after ``result.json``) is returned as is.  Other exceptions
    propagate, so Dask retries the case.  Torch gets the worker's cores divided by the cases running at once
    on its host (``threads_per_host``).
    """
    done = os.path.join(out, RESULT)
    if os.path.exists(done):
        return {"summary": _read_result(done)}
    from distributed import get_worker
    from distributed.comm import get_address_host

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // threads_per_host.get(get_address_host(get_worker().address), 1))
    try:
        return {"summary": run_case(case_dir, out, *args, threads=threads, dicom_out=dicom_out)}
    except (ValueError, FileNotFoundError) as exc:
        return {"error": _reason(exc)}


def run_on_dask(todo, out: str, args: tuple, finished, scheduler: Optional[str] = None,
                workers: Optional[int] = None, dicom_out: Optional[str] = None) -> int:
    """One Dask task per case of ``todo`` (``[(name, case_dir)]``); ``finished(name, summary, error)`` is called
    as each task completes (it drives the progress bar).  Returns the number of workers.

    The workers write each case's outputs into ``out`` themselves (atomically; the folder must be shared)
    and return the summary.  A task needs the resource ``GPU=1`` when the device is ``cuda``.  Ctrl-C
    cancels every task (outputs written so far are complete files; the case's ``result.json`` is not).
    """
    distributed = _distributed()
    device = args[2]
    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(distributed.Client(scheduler, timeout="20s"))
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        else:
            cluster = stack.enter_context(local_cluster(workers, device))
            client = stack.enter_context(distributed.Client(cluster))
            client.wait_for_workers(workers)
        resources = {"GPU": 1} if device == "cuda" else None
        info = client.scheduler_info()["workers"]
        if resources and info and not any(w.get("resources", {}).get("GPU") for w in info.values()):
            raise ValueError(f"--device cuda: no worker of {scheduler or 'the cluster'} offers the resource GPU; "
                             "start them with `dask worker ADDRESS --nthreads 1 --resources GPU=1`")
        per_host: dict = {}  # cases that can run at once on each host
        for address, w in info.items():
            slots = min(w["nthreads"], int(w.get("resources", {}).get("GPU", 0))) if resources else w["nthreads"]
            host = distributed.comm.get_address_host(address)
            per_host[host] = per_host.get(host, 0) + max(slots, 1)
        futures = {client.submit(_case_task, case_dir, os.path.join(out, name), args, per_host,
                                 dicom_out and os.path.join(dicom_out, name),
                                 key=f"liver-lrp-case-{name}-{os.urandom(4).hex()}", retries=RETRIES,
                                 resources=resources, pure=False): name
                   for name, case_dir in todo}
        try:
            for fut in distributed.as_completed(futures):
                name = futures.pop(fut)
                if fut.status == "finished":
                    r = fut.result()
                    finished(name, r.get("summary"), r.get("error"))
                else:
                    finished(name, error=_reason(fut.exception()))
                fut.release()
        except BaseException:
            client.cancel(list(futures))
            raise
        return len(info)


def _reason(exc: BaseException) -> str:
    """Why a case failed, in one line."""
    if type(exc).__name__ == "KilledWorker":
        return f"the worker died while running this case, {ALLOWED_FAILURES + 1} times (KilledWorker)"
    return one_line(exc)


def _channels(results: dict) -> tuple[list, list]:
    """The model's channel keys and display names, as the case summaries record them."""
    for r in results.values():
        rows = r.get("sequences")
        if rows:
            return [row["sequence"] for row in rows], [row["display_name"] for row in rows]
    return list(SEQUENCE_KEYS), list(DISPLAY_NAMES)


def write_cohort_outputs(out: str, results: dict, failures: dict) -> None:
    """``cohort.csv``, Fig. 1 (``cohort_relevance.png``, with how much each sequence is needed beside it) and
    ``report.html``."""
    from .figures import cohort_figure, png_data_uri

    names = sorted(results)
    keys, display = _channels(results)
    need = [n for n in names if results[n].get("necessity")]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "status", "dice", "tumor_voxels", *keys, *[f"shapley_dice_{k}" for k in keys],
                *[f"dice_without_{k}" for k in keys], "agreement_spearman", "agreement_same_top", "warning",
                "reason"])
    for name in names:
        r = results[name]
        nec, agr = r.get("necessity") or {}, r.get("agreement") or {}
        w.writerow([name, "ok", f"{r['dice']:.4f}" if "dice" in r else "", r.get("tumor_voxels", ""),
                    *[f"{v:.6f}" for v in r["relevance"]],
                    *[f"{nec['shapley_dice'][k]:.6f}" if nec else "" for k in keys],
                    *[f"{nec['dice_without'][k]:.6f}" if nec else "" for k in keys],
                    "" if agr.get("spearman") is None else f"{agr['spearman']:.4f}",
                    "" if agr.get("same_top") is None else agr["same_top"], agr.get("warning") or "", ""])
    for name in sorted(failures):
        w.writerow([name, "failed", "", "", *[""] * (3 * len(keys) + 3), failures[name]])
    write_text(buf.getvalue(), os.path.join(out, "cohort.csv"))
    fig = None
    if names:
        shares = np.array([results[n]["relevance"] for n in names])
        spread = all("relevance_p2.5" in results[n] for n in names)  # resampled regions B
        low, high = ([results[n][k] for n in names] for k in ("relevance_p2.5", "relevance_p97.5")) if spread \
            else (None, None)
        necessity = [[results[n]["necessity"]["shapley_dice"][k] for k in keys] for n in names] \
            if len(need) == len(names) else None
        fig = cohort_figure(names, shares, os.path.join(out, "cohort_relevance.png"),
                            title=f"{_what(results)[0]}, {len(names)} cases"
                                  + (" (bars: 95 % of resampled B)" if spread else ""), low=low, high=high,
                            sequence_names=display, necessity=necessity)
    write_text(_report_html(out, names, results, failures, fig, png_data_uri), os.path.join(out, "report.html"))


def _what(results: dict) -> tuple:
    """(figure title, report sentence) for the cohort's sequence relevance method."""
    methods = {r.get("method", "paper") for r in results.values()}
    if methods == {"contribution"}:
        return ("Sequence contribution (Shapley values of Sec. 2.3's f, sum 1)",
                "Sequence contribution: the exact Shapley values of Sec. 2.3's explained output f over the "
                "sequences (a sequence absent = replaced by its reference), normalised to sum 1; voxel maps by "
                "reference-based LRP of f.")
    return ("Normalised relevance per sequence", "Sequence relevance as in Chlebus et al. (Sec. 2.3): "
            "M = M<sub>B</sub><sup>0</sup> + M<sub>T</sub><sup>1</sup>, normalised to sum 1."
            + (" (Cases analysed with different methods.)" if len(methods) > 1 else ""))


def _report_html(out, names, results, failures, fig, uri) -> str:
    e = html.escape
    rows = []
    for n in names:
        r = results[n]
        cells = "".join(f"<td>{v:+.3f}</td>" for v in r["relevance"])
        dice = f"{r['dice']:.3f}" if "dice" in r else "&ndash;"
        rows.append(f"<tr><td>{e(n)}</td><td>{dice}</td><td>{r.get('tumor_voxels', '')}</td>{cells}</tr>")
    head = "".join(f"<th>{e(d)}</th>" for d in _channels(results)[1])
    parts = [f"<p>{len(names)} cases analysed, {len(failures)} failed. {_what(results)[1]}</p>"]
    warned = [n for n in names if (results[n].get("agreement") or {}).get("warning")]
    if warned:
        parts.append(f"<p><b>{len(warned)} of {len(names)} cases: the relevance ranking disagrees with what the model "
                     f"needs</b> (Spearman rho &lt; 0.5 with the Shapley values of Dice, or another top sequence): "
                     f"{e(', '.join(warned))}. Read their relevance with the necessity panel beside it.</p>")
    if names:
        mean = np.mean([results[n]["relevance"] for n in names], axis=0)
        parts.append(f"<table><tr><th>case</th><th>Dice</th><th>tumor voxels</th>{head}</tr>{''.join(rows)}"
                     f"<tr><th>mean</th><td></td><td></td>{''.join(f'<th>{v:+.3f}</th>' for v in mean)}</tr></table>")
    if fig:
        parts.append(f"<h2>Figure 1: relevance per sequence (and the Shapley values of Dice, when computed)</h2>"
                     f"<img src='{uri(fig)}'>")
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
    return html_page("LiverTumorLRP cohort report", parts)


def run(args) -> int:
    from tqdm import tqdm

    if args.scheduler and args.workers:
        raise ValueError("use either --scheduler (an existing Dask cluster) or --workers (a local one)")
    bar = tqdm(total=0, desc="cohort", unit="case")

    def progress(done, total, name, error):
        bar.total, bar.n = total, done
        if name is not None:
            bar.set_postfix_str(f"{name}: {'FAILED' if error else 'ok'}")
        bar.refresh()
        if error:
            tqdm.write(f"case {name} failed: {error}")

    try:
        res = run_cohort(args.root, args.out, model_spec(args), args.preset, args.device, args.workers, args.seed,
                         args.background, args.max_voxels, patch_from_args(args), args.max_components,
                         args.memory_per_case, progress, args.scheduler, args.resamples,
                         necessity_reference(args), args.labels, args.dicom_out, args.method)
    finally:
        bar.close()
    print(f"{len(res['results'])} done, {len(res['failures'])} failed ({res['skipped']} already finished), "
          f"{res['workers']} worker(s) -> {args.out}/report.html")
    for name, reason in sorted(res["failures"].items()):
        print(f"FAILED {name}: {reason}")
    return 1 if res["failures"] else 0

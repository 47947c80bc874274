"""Case-level jobs shared by the command line, cohort runs and the Slicer module's background process.

Each job reads a case, runs the library and writes its outputs on the case's reference grid
into an output folder; every file is written atomically, and ``result.json`` is written last,
so a folder with ``result.json`` is complete.
"""
from __future__ import annotations

import csv
import io
import os
import time
from typing import Optional

import numpy as np

from .analysis import (DEFAULT_METHOD, DEFAULT_RESAMPLES, Explanation, Prepared, Segmentation, explain_components, explain_region,
                       load, prepare, segment, sequence_relevance)
from .case_io import write_image, write_json, write_text
from .necessity import REFERENCE, Necessity
from .progress import as_progress

RESULT = "result.json"


def write_segmentation_files(seg: Segmentation, out: str) -> dict:
    """``tumor_probability`` and ``tumor_segmentation`` (the lesion class) on the case grid, ``labels`` (every
    class) for models with more than two classes, and for a DICOM study ``sequences.json`` (which series is
    which sequence, and why); returns the segmentation summary."""
    case, info = seg.prepared.case, seg.prepared.info
    write_image(seg.probability, case.reference, os.path.join(out, "tumor_probability.nii.gz"), dtype=np.float32)
    write_image(seg.segmentation, case.reference, os.path.join(out, "tumor_segmentation.nii.gz"), dtype=np.uint8)
    if info.n_classes > 2:
        write_image(seg.labels, case.reference, os.path.join(out, "labels.nii.gz"), dtype=np.uint8)
    if case.dicom:
        from .dicom.study import write_sequences_json

        write_sequences_json(case.dicom, os.path.join(out, "sequences.json"))
    return seg.summary()


def write_dicom_files(seg: Segmentation, e: Optional[Explanation], dicom_out: str) -> list:
    """The tumor segmentation as DICOM SEG and each sequence's relevance as a DICOM Parametric Map, on the case's
    reference grid, referencing the study's series (:func:`.dicom.write.write_dicom_outputs`; for a case read
    from files, a source series of the reference image is made for them to reference)."""
    from .dicom.study import source_datasets
    from .dicom.write import write_dicom_outputs

    p = seg.prepared
    maps = {} if e is None else dict(zip(e.channels, e.maps))
    model = os.path.basename(str(p.info.source)) if p.info.source else "bundled u-net"
    return write_dicom_outputs(dicom_out, p.case.reference, seg.segmentation, maps, model,
                               source_datasets(p.case.dicom) if p.case.dicom else None, case_name=p.case.name)


def segment_case(case, out: str, model="bundled", device="auto", progress=None, cancel=None,
                 patch_size=None, dicom_out: Optional[str] = None) -> dict:
    """Lesion probability and segmentation on the case's reference grid (:func:`.analysis.segment`), as files
    (``dicom_out``: also as DICOM SEG there)."""
    prog = as_progress(progress, cancel)
    net = load(model)
    p = prepare(case, net)
    seg = segment(p, device, patch_size, prog.part(0, 0.95))
    summary = write_segmentation_files(seg, out)
    if dicom_out:
        summary["dicom_files"] = write_dicom_files(seg, None, dicom_out)
    prog(1.0, "segmentation written")
    return {"segmentation": seg.segmentation, "probability": seg.probability, "labels": seg.labels,
            "network_labels": seg.network_labels, **summary}


def sequence_rows(e: Explanation) -> list:
    """One row per sequence: key, display name, share, positive and negative mass (and the spread over B, or the
    Shapley value of f and the map's own sum; the necessity)."""
    rows = [{"sequence": k, "display_name": d, "relevance": float(s), "positive": float(a), "negative": float(b)}
            for k, d, s, a, b in zip(e.channels, e.display_names, e.shares, e.positive, e.negative)]
    for key, values in e.interval.items():
        if key.startswith(("relevance_", "shapley_f")) and values is not None:
            for c, row in enumerate(rows):
                row[key] = float(values[c])
    for key, column in (("shapley_f", "shapley_f"), ("lrp_sums", "lrp_sum")):   # method "contribution"
        if key in e.details:
            for row in rows:
                row[column] = float(e.details[key][row["sequence"]])
    if e.necessity is not None:
        for row in rows:
            row["dice_without"] = e.necessity.dice_without[row["sequence"]]
            row["shapley_dice"] = e.necessity.shapley_dice[row["sequence"]]
    return rows


def write_explanation_files(e: Explanation, p: Prepared, out: str, meta: dict,
                            tumor: Optional[np.ndarray] = None, n_slices: int = 3) -> dict:
    """Relevance per sequence on the case grid (NIfTI), shares (JSON/CSV; with the spread over resampled regions B
    when computed), bar chart and overlays of the most relevant slices; returns the summary."""
    from .figures import bar_chart, most_relevant_slices, overlay_slice

    case = p.case
    files = {}
    for c, key in enumerate(e.channels):
        files[f"relevance_{key}"] = write_image(e.maps[c], case.reference,
                                                os.path.join(out, f"relevance_{key}.nii.gz"), dtype=np.float32)
    rows = sequence_rows(e)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    files["csv"] = write_text(buf.getvalue(), os.path.join(out, "sequence_relevance.csv"))
    spread = e.interval.get("relevance_p2.5")
    need = None if e.necessity is None else (
        [e.necessity.dice_full - e.necessity.dice_without[k] for k in e.channels],
        [e.necessity.shapley_dice[k] for k in e.channels])
    files["bar_chart"] = bar_chart(e.shares, os.path.join(out, "sequence_relevance.png"),
                                   title=f"{case.name}: {e.title}", positive=e.positive, negative=e.negative,
                                   names=e.display_names,
                                   interval=None if spread is None else (spread, e.interval["relevance_p97.5"]),
                                   necessity=need)
    display = case.raw if case.raw is not None else case.image
    files["overlays"] = [overlay_slice(display, e.maps, z, os.path.join(out, f"overlay_slice{z:03d}.png"), tumor,
                                       e.region, title=f"{case.name}, axial slice {z}: {e.title}",
                                       names=e.display_names)
                         for z in most_relevant_slices(e.maps, n_slices)]
    summary = {**meta, "case": case.name, "model_classes": list(p.info.classes), "sequences": rows, "files": files}
    if e.necessity is not None:
        summary.update(necessity=e.necessity.as_dict(), agreement=e.agreement)
    files["json"] = write_json(summary, os.path.join(out, "sequence_relevance.json"))
    return summary


DETAILS = ("region", "class", "preset", "n_voxels", "n_excluded", "background_choice", "seed", "n_tumor",
           "n_background", "n_predicted_tumor", "kind", "analysis", "method", "reference", "lesion_class",
           "shapley_f", "lrp_sums", "lrp_spearman", "calibration_moved", "f_full", "f_reference", "exact",
           "forward_passes")


def read_explanation_files(out: str) -> Explanation:
    """The :class:`Explanation` that :func:`write_explanation_files` wrote to ``out`` (maps on the case grid)."""
    import json

    import SimpleITK as sitk

    with open(os.path.join(out, "sequence_relevance.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    rows = summary["sequences"]
    maps = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, f"relevance_{r['sequence']}.nii.gz")))
                     for r in rows]).astype(np.float32)
    column = {k: np.array([r[k] for r in rows], dtype=float) for k in ("relevance", "positive", "negative")
              if k in rows[0]}
    spread = [k for k in rows[0] if k.startswith("relevance_") or k == "shapley_f_stderr"]
    interval = {k: np.array([r[k] for r in rows], dtype=float) for k in spread}
    necessity = Necessity.from_dict(summary["necessity"]) if "necessity" in summary else None
    return Explanation(summary.get("title", ""), maps, column["relevance"], column["positive"], column["negative"],
                       tuple(r["sequence"] for r in rows), tuple(r["display_name"] for r in rows),
                       {k: summary[k] for k in DETAILS if k in summary}, None, interval, necessity,
                       summary.get("agreement"))


def _meta(e: Explanation, seg_summary: dict, keys) -> dict:
    """The summary fields of an explanation: its details, title, shares and the segmentation's numbers."""
    meta = {**e.details, "title": e.title, "relevance": [float(v) for v in e.shares]}
    meta.update({k: seg_summary[k] for k in keys if k in seg_summary})
    return meta


def analyze_case(case, out: str, model="bundled", preset="recommended", device="auto", seed: int = 0,
                 background: str = "random", max_voxels: Optional[int] = None, patch_size=None, progress=None,
                 cancel=None, finalize: bool = True, resamples: int = DEFAULT_RESAMPLES,
                 max_components: int = 0, necessity_reference: Optional[str] = REFERENCE,
                 dicom_out: Optional[str] = None, method: str = DEFAULT_METHOD) -> dict:
    """Sequence relevance of one case (:func:`.analysis.sequence_relevance`, ``method`` ``contribution`` or
    ``paper``): segmentation, the relevance per sequence, JSON/CSV, bar chart, overlays.

    Computed on the network grid (where Eq. 2 holds exactly); maps are written on the case grid.
    ``resamples``: draws of the random region B for the shares' spread and the exact expectation
    (:func:`.explain.sequence_relevance_interval`; 0: one draw only).  ``max_components``: also explain that
    many of the largest true-positive and false-negative label components (cases with a label).
    ``necessity_reference``: what replaces a sequence for the Dice without it and the Shapley values of Dice
    (:mod:`.necessity`; None: not computed).  ``dicom_out``: also the segmentation as DICOM SEG and the maps as
    Parametric Maps there.  ``finalize``: write ``result.json`` (the marker of a complete folder) at the end."""
    t0 = time.time()
    prog = as_progress(progress, cancel)
    p = prepare(case, load(model))
    seg = segment(p, device, patch_size, prog.part(0.0, 0.2))
    seg_summary = write_segmentation_files(seg, out)
    e = sequence_relevance(p, preset, device, seed, background, max_voxels, resamples, patch_size,
                           prog.part(0.2, 0.9 if max_components else 0.95), seg, necessity_reference, method)
    meta = _meta(e, seg_summary, ("tumor_voxels", "tumor_volume_ml", "network_grid", "network_spacing", "windows",
                                  "window_shape", "dice"))
    meta.update({k: v if k == "resamples" else [float(x) for x in v] if v is not None else None
                 for k, v in e.interval.items()})
    summary = write_explanation_files(e, p, out, meta, seg.segmentation.astype(bool))
    if max_components and p.case.label is not None and p.case.label.any():
        summary["components"] = write_component_files(p, seg, out, preset, device, max_components, patch_size)
    if dicom_out:
        summary["dicom_files"] = write_dicom_files(seg, e, dicom_out)
    summary["seconds"] = round(time.time() - t0, 2)
    if finalize:
        write_json(summary, os.path.join(out, RESULT))
    prog(1.0, "analysis written")
    return summary


def write_component_files(p: Prepared, seg: Segmentation, out: str, preset, device, max_components: int,
                          patch_size=None) -> list:
    """Overlays and shares of the largest true-positive and false-negative label components
    (:func:`.analysis.explain_components`)."""
    from .figures import most_relevant_slices, overlay_slice

    results, count = [], {}
    display = p.case.raw if p.case.raw is not None else p.case.image
    for e in explain_components(p, seg, preset, device, max_components, patch_size):
        kind = e.details["kind"]
        i = count[kind] = count.get(kind, -1) + 1
        z = int(np.argmax(e.region.sum(axis=(1, 2))))
        z = z if e.region[z].any() else most_relevant_slices(e.maps, 1)[0]
        png = overlay_slice(display, e.maps, z, os.path.join(out, f"{kind.replace(' ', '_')}_{i}.png"),
                            seg.segmentation.astype(bool), e.region, title=f"{p.case.name}: {e.title}")
        results.append({"kind": kind, "voxels": int(e.region.sum()), "png": png,
                        "relevance": [float(v) for v in e.shares], "n_excluded": e.details["n_excluded"]})
    return results


def explain_case(case, out: str, model="bundled", region="tumor", cls="tumor", preset="recommended",
                 device="auto", patch_size=None, progress=None, cancel=None, dicom_out: Optional[str] = None) -> dict:
    """Eq. 2 for one region and class: relevance per sequence (NIfTI), shares (JSON/CSV), bar chart, overlays.

    ``region``: ``tumor`` / ``background`` (predicted) or a mask file on the case's reference grid; it is mapped
    to the network grid, explained there, and the maps mapped back."""
    t0 = time.time()
    prog = as_progress(progress, cancel)
    p = prepare(case, load(model))
    seg = segment(p, device, patch_size, prog.part(0.0, 0.2))
    seg_summary = write_segmentation_files(seg, out)
    e = explain_region(p, region, cls, preset, device, seg, patch_size, prog.part(0.2, 0.95))
    meta = {"analysis": "region relevance (Eq. 2)",
            **_meta(e, seg_summary, ("tumor_voxels", "network_grid", "windows", "window_shape", "dice"))}
    summary = write_explanation_files(e, p, out, meta, seg.segmentation.astype(bool))
    if dicom_out:
        summary["dicom_files"] = write_dicom_files(seg, e, dicom_out)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(summary, os.path.join(out, RESULT))
    return summary

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

from .case_io import Case, read_case, write_image, write_json, write_text
from .progress import as_progress
from .sequences import DISPLAY_NAMES, SEQUENCE_KEYS, class_index

RESULT = "result.json"


def _load(model, device):
    from .models import load_model

    return load_model(model, device="cpu") if not hasattr(model, "forward") else model


def _case(case) -> Case:
    return case if isinstance(case, Case) else read_case(case)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def segment_case(case, out: str, model="bundled", device="auto", progress=None, cancel=None,
                 patch_size=None) -> dict:
    """Tumor probability and segmentation (probability > 0.5) on the reference grid."""
    from .inference import predict

    prog = as_progress(progress, cancel)
    case = _case(case)
    net = _load(model, device)
    prob = predict(net, case.image, device=device, patch_size=patch_size, progress=prog.part(0, 0.95))
    seg = (prob > 0.5).astype(np.uint8)
    write_image(prob, case.reference, os.path.join(out, "tumor_probability.nii.gz"), dtype=np.float32)
    write_image(seg, case.reference, os.path.join(out, "tumor_segmentation.nii.gz"), dtype=np.uint8)
    info = {"case": case.name, "tumor_voxels": int(seg.sum()),
            "tumor_volume_ml": float(seg.sum() * case.voxel_volume_mm3 / 1000.0)}
    if case.label is not None:
        info["dice"] = dice(seg, case.label > 0)
    prog(1.0, "segmentation written")
    return {"segmentation": seg, "probability": prob, **info}


def _write_relevance_outputs(case: Case, out: str, maps: np.ndarray, shares, positive, negative, meta: dict,
                             tumor: Optional[np.ndarray], region: Optional[np.ndarray], n_slices: int = 3,
                             interval=None) -> dict:
    from .figures import bar_chart, most_relevant_slices, overlay_slice

    files = {}
    for c, key in enumerate(SEQUENCE_KEYS):
        files[f"relevance_{key}"] = write_image(maps[c], case.reference, os.path.join(out, f"relevance_{key}.nii.gz"),
                                                dtype=np.float32)
    rows = [{"sequence": k, "display_name": d, "relevance": float(s), "positive": float(p), "negative": float(n)}
            for k, d, s, p, n in zip(SEQUENCE_KEYS, DISPLAY_NAMES, shares, positive, negative)]
    if interval is not None:  # spread over resampled regions B (SequenceRelevanceInterval)
        for c, row in enumerate(rows):
            row.update({k: float(v[c]) for k, v in _interval_fields(interval).items() if v is not None})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    files["csv"] = write_text(buf.getvalue(), os.path.join(out, "sequence_relevance.csv"))
    files["bar_chart"] = bar_chart(shares, os.path.join(out, "sequence_relevance.png"),
                                   title=f"{case.name}: {meta.get('title', 'sequence relevance')}",
                                   positive=positive, negative=negative,
                                   interval=None if interval is None else (interval.low, interval.high))
    display = case.raw if case.raw is not None else case.image
    files["overlays"] = [overlay_slice(display, maps, z, os.path.join(out, f"overlay_slice{z:03d}.png"), tumor, region,
                                       title=f"{case.name}, axial slice {z}: {meta.get('title', '')}")
                         for z in most_relevant_slices(maps, n_slices)]
    summary = {**meta, "case": case.name, "sequences": rows, "files": files}
    files["json"] = write_json(summary, os.path.join(out, "sequence_relevance.json"))
    return summary


def _interval_fields(res) -> dict:
    return {"relevance_mean": res.mean, "relevance_std": res.std, "relevance_p2.5": res.low,
            "relevance_p97.5": res.high, "relevance_expected": res.expected}


def analyze_case(case, out: str, model="bundled", preset="recommended", device="auto", seed: int = 0,
                 background: str = "random", max_voxels: Optional[int] = None, patch_size=None, progress=None,
                 cancel=None, finalize: bool = True, resamples: int = 10) -> dict:
    """Sec. 2.3 for one case: segmentation, ``M = M_B^0 + M_T^1`` per sequence, JSON/CSV, bar chart, overlays.

    ``resamples``: draws of the random region B for the shares' spread and the exact expectation
    (:func:`.explain.sequence_relevance_interval`; 0: one draw only).
    ``finalize``: write ``result.json`` (the marker of a complete folder) at the end."""
    from .explain import sequence_relevance, sequence_relevance_interval

    t0 = time.time()
    prog = as_progress(progress, cancel)
    case = _case(case)
    net = _load(model, device)
    seg = segment_case(case, out, net, device, prog.part(0.0, 0.2), patch_size=patch_size)
    kw = dict(preset=preset, device=device, seed=seed, background=background, max_voxels=max_voxels,
              patch_size=patch_size, progress=prog.part(0.2, 0.9))
    res = sequence_relevance_interval(net, case.image, resamples, **kw) if resamples else \
        sequence_relevance(net, case.image, **kw)
    meta = {"analysis": "sequence relevance (Sec. 2.3): M = M_B^0 + M_T^1", "title": "sequence relevance",
            "preset": preset if isinstance(preset, str) else repr(preset), "background_choice": background,
            "seed": seed, **{k: v for k, v in res.as_dict().items() if k.startswith("n_")},
            "relevance": [float(v) for v in res.shares], "tumor_voxels": seg["tumor_voxels"],
            "tumor_volume_ml": seg["tumor_volume_ml"]}
    if "dice" in seg:
        meta["dice"] = seg["dice"]
    if resamples:
        meta.update({"resamples": resamples, **{k: None if v is None else [float(x) for x in v]
                                                for k, v in _interval_fields(res).items()}})
    summary = _write_relevance_outputs(case, out, res.maps, res.shares, res.positive, res.negative, meta,
                                       seg["segmentation"].astype(bool), None, interval=res if resamples else None)
    summary["seconds"] = round(time.time() - t0, 2)
    if finalize:
        write_json(summary, os.path.join(out, RESULT))
    prog(1.0, "analysis written")
    return summary


def region_from_spec(spec, case: Case, segmentation: np.ndarray) -> tuple[np.ndarray, str]:
    """``tumor`` / ``background`` (predicted) or a mask file on the reference grid."""
    if spec in (None, "tumor"):
        return segmentation.astype(bool), "predicted tumor"
    if spec == "background":
        return ~segmentation.astype(bool), "predicted background"
    from .case_io import _label_array, read_image

    mask = _label_array(read_image(str(spec), "region mask"), case.reference, str(spec)) > 0
    if not mask.any():
        raise ValueError(f"region mask {spec}: no voxel is set")
    return mask, f"mask {os.path.basename(str(spec))}"


def explain_case(case, out: str, model="bundled", region="tumor", cls="tumor", preset="recommended",
                 device="auto", patch_size=None, progress=None, cancel=None) -> dict:
    """Eq. 2 for one region and class: relevance per sequence (NIfTI), shares (JSON/CSV), bar chart, overlays."""
    from .explain import region_relevance

    t0 = time.time()
    prog = as_progress(progress, cancel)
    case = _case(case)
    net = _load(model, device)
    seg = segment_case(case, out, net, device, prog.part(0.0, 0.2), patch_size=patch_size)
    mask, desc = region_from_spec(region, case, seg["segmentation"])
    if not mask.any():
        raise ValueError(f"{case.name}: the region ({desc}) is empty")
    c = class_index(cls)
    res = region_relevance(net, case.image, mask, c, preset=preset, device=device, patch_size=patch_size,
                           progress=prog.part(0.2, 0.9))
    flat = res.maps.reshape(res.maps.shape[0], -1)
    total = float(flat.sum())
    pos = np.clip(flat, 0, None).sum(axis=1) / total
    neg = np.clip(flat, None, 0).sum(axis=1) / total
    meta = {"analysis": "region relevance (Eq. 2)", "title": f"{['background', 'tumor'][c]}-class relevance of {desc}",
            "region": desc, "class": ["background", "tumor"][c], "preset": preset, "n_voxels": res.n_voxels,
            "n_excluded": res.n_excluded, "relevance": [float(v) for v in res.sequence_shares],
            "tumor_voxels": seg["tumor_voxels"]}
    if "dice" in seg:
        meta["dice"] = seg["dice"]
    summary = _write_relevance_outputs(case, out, res.maps, res.sequence_shares, pos, neg, meta,
                                       seg["segmentation"].astype(bool), mask)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(summary, os.path.join(out, RESULT))
    return summary

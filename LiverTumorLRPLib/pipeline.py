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
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .case_io import Case, read_case, write_image, write_json, write_text
from .geometry import GridMap, grid_map
from .model_info import ModelInfo, model_info
from .progress import as_progress

RESULT = "result.json"


def _load(model, device):
    from .models import load_model

    return load_model(model, device="cpu") if not hasattr(model, "forward") else model


def _case(case, net=None) -> Case:
    if isinstance(case, Case):
        return case
    return read_case(case, sequences=model_info(net).channels if net is not None else None)


@dataclass
class Prepared:
    """A case as the network sees it: the normalised image on the network grid and the way back."""

    case: Case
    net: object
    info: ModelInfo
    grid: GridMap
    image: np.ndarray   # (C, d, h, w) on the network grid


def prepare(case, net) -> Prepared:
    """Bring ``case`` onto ``net``'s grid (its spacing, or nnU-Net's own preprocessing)."""
    info = model_info(net)
    case = _case(case, net)
    if tuple(case.channels) != tuple(info.channels):
        raise ValueError(f"case {case.name} has the sequences {', '.join(case.channels)} but the model expects "
                         f"{', '.join(info.channels)} in that order")
    grid = net.grid_map_for(case) if hasattr(net, "grid_map_for") else grid_map(info, case)
    src = case.raw if getattr(grid, "wants_raw", False) else case.image
    if src is None:
        raise ValueError(f"case {case.name}: the model needs the un-normalised images (read the case with keep_raw)")
    return Prepared(case, net, info, grid, grid.image_to_network(src))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def segment_case(case, out: str, model="bundled", device="auto", progress=None, cancel=None,
                 patch_size=None) -> dict:
    """Lesion probability and segmentation on the case's reference grid.

    The network runs on its own grid (:func:`prepare`); probabilities come back linearly interpolated,
    the label map by nearest neighbour.  Writes ``tumor_probability`` and ``tumor_segmentation`` (the
    lesion class), and ``labels`` (every class) for models with more than two classes."""
    from .inference import predict_logits, probabilities

    prog = as_progress(progress, cancel)
    net = _load(model, device)
    p = case if isinstance(case, Prepared) else prepare(case, net)
    case, info = p.case, p.info
    logits = predict_logits(net, p.image, device=device, patch_size=patch_size, progress=prog.part(0, 0.9))
    probs = probabilities(logits)
    labels_net = probs.argmax(axis=0).astype(np.uint8)
    lesion = info.lesion_index
    prob = p.grid.to_case(probs[lesion], "probability").astype(np.float32)
    # nnU-Net's export resamples the logits and takes the argmax there; other models: nearest neighbour
    labels = p.grid.to_case(logits if getattr(p.grid, "wants_raw", False) else labels_net,
                            "segmentation").astype(np.uint8)
    seg = (labels == lesion).astype(np.uint8)
    write_image(prob, case.reference, os.path.join(out, "tumor_probability.nii.gz"), dtype=np.float32)
    write_image(seg, case.reference, os.path.join(out, "tumor_segmentation.nii.gz"), dtype=np.uint8)
    if info.n_classes > 2:
        write_image(labels, case.reference, os.path.join(out, "labels.nii.gz"), dtype=np.uint8)
    info_out = {"case": case.name, "tumor_voxels": int(seg.sum()),
                "tumor_volume_ml": float(seg.sum() * case.voxel_volume_mm3 / 1000.0),
                "lesion_class": info.classes[lesion], "network_grid": list(p.image.shape[1:]),
                "network_spacing": list(p.grid.network_spacing) if p.grid.network_spacing else None,
                **_windows(info, p.image.shape[1:], patch_size)}
    if case.label is not None:
        info_out["dice"] = dice(seg, case.label > 0)
    prog(1.0, "segmentation written")
    return {"segmentation": seg, "probability": prob, "labels": labels, "network_labels": labels_net, **info_out}


def _windows(info, shape, patch_size) -> dict:
    """How many sliding windows of which shape the network ran on (for the result files)."""
    from .inference import plan_for

    plan = plan_for(info, shape, patch_size)
    return {"windows": len(plan.windows), "window_shape": list(plan.patch)}


def _mass(maps: np.ndarray):
    """Per-channel positive and negative mass of a relevance map, over its total."""
    flat = maps.reshape(maps.shape[0], -1)
    total = float(flat.sum())
    return np.clip(flat, 0, None).sum(axis=1) / total, np.clip(flat, None, 0).sum(axis=1) / total


def _write_relevance_outputs(p: Prepared, out: str, maps_net: np.ndarray, shares, meta: dict,
                             tumor: Optional[np.ndarray], region: Optional[np.ndarray], n_slices: int = 3,
                             interval=None) -> dict:
    """Relevance per sequence on the case grid (NIfTI), shares (JSON/CSV, computed on the network grid; with
    ``interval``, their spread over resampled regions B), bar chart and overlays of the most relevant slices."""
    from .figures import bar_chart, most_relevant_slices, overlay_slice

    case, info = p.case, p.info
    positive, negative = _mass(maps_net)
    maps = p.grid.to_case(maps_net, "relevance")
    files = {}
    for c, key in enumerate(info.channels):
        files[f"relevance_{key}"] = write_image(maps[c], case.reference, os.path.join(out, f"relevance_{key}.nii.gz"),
                                                dtype=np.float32)
    rows = [{"sequence": k, "display_name": d, "relevance": float(s), "positive": float(a), "negative": float(b)}
            for k, d, s, a, b in zip(info.channels, info.display_names, shares, positive, negative)]
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
                                   positive=positive, negative=negative, names=info.display_names,
                                   interval=None if interval is None else (interval.low, interval.high))
    display = case.raw if case.raw is not None else case.image
    files["overlays"] = [overlay_slice(display, maps, z, os.path.join(out, f"overlay_slice{z:03d}.png"), tumor, region,
                                       title=f"{case.name}, axial slice {z}: {meta.get('title', '')}",
                                       names=info.display_names)
                         for z in most_relevant_slices(maps, n_slices)]
    summary = {**meta, "case": case.name, "model_classes": list(info.classes), "sequences": rows, "files": files}
    files["json"] = write_json(summary, os.path.join(out, "sequence_relevance.json"))
    return summary


def _interval_fields(res) -> dict:
    return {"relevance_mean": res.mean, "relevance_std": res.std, "relevance_p2.5": res.low,
            "relevance_p97.5": res.high, "relevance_expected": res.expected}


def analyze_case(case, out: str, model="bundled", preset="recommended", device="auto", seed: int = 0,
                 background: str = "random", max_voxels: Optional[int] = None, patch_size=None, progress=None,
                 cancel=None, finalize: bool = True, resamples: int = 10) -> dict:
    """Sec. 2.3 for one case: segmentation, ``M = M_B^0 + M_T^1`` per sequence, JSON/CSV, bar chart, overlays.

    Computed on the network grid (where Eq. 2 holds exactly); maps are written on the case grid.
    ``resamples``: draws of the random region B for the shares' spread and the exact expectation
    (:func:`.explain.sequence_relevance_interval`; 0: one draw only).
    ``finalize``: write ``result.json`` (the marker of a complete folder) at the end."""
    from .explain import sequence_relevance, sequence_relevance_interval

    t0 = time.time()
    prog = as_progress(progress, cancel)
    net = _load(model, device)
    p = prepare(case, net)
    seg = segment_case(p, out, net, device, prog.part(0.0, 0.2), patch_size=patch_size)
    kw = dict(preset=preset, device=device, seed=seed, background=background, max_voxels=max_voxels,
              patch_size=patch_size, progress=prog.part(0.2, 0.9))
    res = sequence_relevance_interval(net, p.image, resamples, **kw) if resamples else \
        sequence_relevance(net, p.image, **kw)
    meta = {"analysis": "sequence relevance (Sec. 2.3): M = M_B^0 + M_T^1", "title": "sequence relevance",
            "preset": preset if isinstance(preset, str) else repr(preset), "background_choice": background,
            "seed": seed, **{k: v for k, v in res.as_dict().items() if k.startswith("n_")},
            "lesion_class": res.lesion, "relevance": [float(v) for v in res.shares],
            "tumor_voxels": seg["tumor_voxels"], "tumor_volume_ml": seg["tumor_volume_ml"],
            "network_grid": seg["network_grid"], "network_spacing": seg["network_spacing"],
            "windows": seg["windows"], "window_shape": seg["window_shape"]}
    if "dice" in seg:
        meta["dice"] = seg["dice"]
    if resamples:
        meta.update({"resamples": resamples, **{k: None if v is None else [float(x) for x in v]
                                                for k, v in _interval_fields(res).items()}})
    summary = _write_relevance_outputs(p, out, res.maps, res.shares, meta, seg["segmentation"].astype(bool), None,
                                       interval=res if resamples else None)
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
    """Eq. 2 for one region and class: relevance per sequence (NIfTI), shares (JSON/CSV), bar chart, overlays.

    The region (on the case grid) is mapped to the network grid, explained there, and the maps mapped back."""
    from .explain import region_relevance

    t0 = time.time()
    prog = as_progress(progress, cancel)
    net = _load(model, device)
    p = prepare(case, net)
    case = p.case
    seg = segment_case(p, out, net, device, prog.part(0.0, 0.2), patch_size=patch_size)
    if region in (None, "tumor", "background"):  # the predicted region, taken on the network grid itself
        lesion = seg["network_labels"] == p.info.lesion_index
        mask_net = lesion if region != "background" else ~lesion
        mask = seg["segmentation"].astype(bool) if region != "background" else ~seg["segmentation"].astype(bool)
        desc = f"predicted {'background' if region == 'background' else p.info.lesion}"
    else:
        mask, desc = region_from_spec(region, case, seg["segmentation"])
        mask_net = p.grid.mask_to_network(mask)
    if not mask_net.any():
        raise ValueError(f"{case.name}: the region ({desc}) is empty")
    c = p.info.class_index(cls)
    res = region_relevance(net, p.image, mask_net, c, preset=preset, device=device, patch_size=patch_size,
                           progress=prog.part(0.2, 0.9))
    name = p.info.classes[c]
    meta = {"analysis": "region relevance (Eq. 2)", "title": f"{name}-class relevance of {desc}",
            "region": desc, "class": name, "preset": preset, "n_voxels": res.n_voxels,
            "n_excluded": res.n_excluded, "relevance": [float(v) for v in res.sequence_shares],
            "tumor_voxels": seg["tumor_voxels"], "network_grid": seg["network_grid"],
            "windows": seg["windows"], "window_shape": seg["window_shape"]}
    if "dice" in seg:
        meta["dice"] = seg["dice"]
    summary = _write_relevance_outputs(p, out, res.maps, res.sequence_shares, meta,
                                       seg["segmentation"].astype(bool), mask)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(summary, os.path.join(out, RESULT))
    return summary

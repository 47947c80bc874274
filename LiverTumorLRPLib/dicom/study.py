"""Reading a DICOM study (a folder of files, nested any way) as the model's sequences.

``read_dicom_study(folder)`` finds the series by their headers (:mod:`.headers`), identifies the model's
sequences (:mod:`.identify`) and reads each chosen series or phase with SimpleITK's ImageSeriesReader, its
files sorted along the slice normal.  It returns the images, the ground-truth label where the study holds a
manual tumor DICOM SEG, and the mapping (``sequences.json``).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import SimpleITK as sitk

from ..sequences import REFERENCE_KEY, SEQUENCE_KEYS
from .headers import scan_study
from .identify import choose, classify, record

SPACING_TOLERANCE = 0.01   # relative deviation of a slice gap from the median gap


def read_phase(phase, where: str = "") -> sitk.Image:
    """One phase as a float32 SimpleITK image (rescale slope and intercept applied); ValueError naming the series
    for fewer than two slices, mixed orientations or sizes, or missing slices / uneven spacing."""
    name = f"{where}: series {phase.label()}" if where else f"series {phase.label()}"
    if len(phase.files) < 2:
        raise ValueError(f"{name}: {len(phase.files)} slice(s), not a volume")
    iops = {tuple(round(float(v), 4) for v in h.ImageOrientationPatient) for h in phase.headers}
    sizes = {(int(h.get("Rows") or 0), int(h.get("Columns") or 0)) for h in phase.headers}
    if len(iops) > 1 or len(sizes) > 1:
        raise ValueError(f"{name}: slices of different orientations or sizes")
    gaps = np.diff(phase.positions())
    median = float(np.median(gaps))
    if median <= 0 or np.any(np.abs(gaps - median) > SPACING_TOLERANCE * median + 1e-3):
        shown = ", ".join(f"{g:.2f}" for g in sorted(set(np.round(gaps, 2))))
        raise ValueError(f"{name}: missing slices or uneven slice spacing (gaps {shown} mm)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([os.fspath(f) for f in phase.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        return reader.Execute()
    except RuntimeError as e:
        line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name}: cannot be read ({line})") from None


def is_ground_truth(path: str) -> bool:
    """True for a DICOM SEG whose segments are drawn by hand (MANUAL or SEMIAUTOMATIC) and one of which is a
    neoplasm (SNOMED 108369006) or labelled tumor/lesion: a reference label, not a model's output."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    segments = list(ds.get("SegmentSequence") or [])
    if not segments or any(str(s.get("SegmentAlgorithmType", "")) == "AUTOMATIC" for s in segments):
        return False
    for s in segments:
        codes = [c.get("CodeValue") for c in (s.get("SegmentedPropertyTypeCodeSequence") or [])]
        label = str(s.get("SegmentLabel", "")).lower()
        if "108369006" in codes or any(w in label for w in ("tumor", "tumour", "lesion")):
            return True
    return False


def read_ground_truth(series_list: list, reference: sitk.Image, where: str = "") -> "sitk.Image | None":
    """The study's manual tumor SEG (:func:`is_ground_truth`) on the reference grid (uint8, 1 tumor), or None
    when there is none; two of them are ambiguous and give None with a warning."""
    from .write import read_dicom_volume

    segs = [s for s in series_list if s.modality == "SEG" and is_ground_truth(s.files[0])]
    if len(segs) != 1:
        if segs:
            warnings.warn(f"{where}: {len(segs)} ground-truth SEG series; no label read", stacklevel=2)
        return None
    image = read_dicom_volume(segs[0].files[0])
    on_grid = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Cast(on_grid > 0, sitk.sitkUInt8)


def one_study(series_list: list, study_uid: "str | None", where: str) -> list:
    """The series of one study: ``study_uid``'s, or the only study's; ValueError listing the studies when the
    folder holds several image studies and none is named."""
    def uid(s):
        return str(s.headers[0].get("StudyInstanceUID", "") or "")
    if study_uid:
        chosen = [s for s in series_list if uid(s) == study_uid]
        if not chosen:
            raise ValueError(f"{where}: no series of study {study_uid}")
        return chosen
    studies = {}
    for s in series_list:
        if s.phases and s.modality == "MR":
            h = s.headers[0]
            studies.setdefault(uid(s), f"{uid(s)} '{h.get('StudyDescription', '')}' {h.get('StudyDate', '')}")
    if len(studies) > 1:
        raise ValueError(f"{where}: {len(studies)} studies in one folder ({' | '.join(studies.values())}); "
                         f"name one (study_uid=) or read each study's folder")
    return series_list


def read_dicom_study(folder: str, sequences=SEQUENCE_KEYS, overrides: "dict | None" = None,
                     study_uid: "str | None" = None):
    """``(images, label, mapping)`` of the DICOM study under ``folder``.

    ``images``: sequence key -> float32 SimpleITK image of the chosen series or phase (its own grid);
    ``label``: the study's manual tumor SEG on the T1 15 min grid (uint8 SimpleITK image), else None;
    ``mapping``: one dict per key (:func:`.identify.record`: key, series_uid, phase, description, protocol,
    time_after_contrast_s, time_source, contrast_agent, why, files).  ``overrides``: key -> ``SERIES_UID``
    or ``SERIES_UID:PHASE``; ``study_uid``: the study to read where the folder holds several.  ValueError
    (one line) for an empty, ambiguous or incomplete study.
    """
    folder = os.fspath(folder)
    series_list, unreadable = scan_study(folder)
    if not any(s.phases for s in series_list):
        raise ValueError(f"{folder}: no DICOM image series found"
                         + (f" ({len(unreadable)} unreadable file(s))" if unreadable else ""))
    series_list = one_study(series_list, study_uid, folder)
    if unreadable:
        warnings.warn(f"{folder}: {len(unreadable)} unreadable DICOM file(s) skipped, e.g. "
                      f"{os.path.relpath(unreadable[0], folder)}", stacklevel=2)
    chosen = choose(classify(series_list), sequences, overrides, folder)
    images = {}
    for key, p in chosen.items():
        try:
            images[key] = read_phase(p.phase, folder)
        except ValueError as e:
            hint = f" ({len(unreadable)} unreadable file(s) in the study)" if unreadable else ""
            raise ValueError(f"{e}{hint}") from None
    reference = images[REFERENCE_KEY] if REFERENCE_KEY in images else next(iter(images.values()))
    label = read_ground_truth(series_list, reference, folder)
    return images, label, [record(k, p) for k, p in chosen.items()]


def sequences_record(mapping: list) -> list:
    """The mapping as written to ``sequences.json``: every field except the file lists."""
    return [{k: v for k, v in m.items() if k != "files"} for m in mapping]


def write_sequences_json(mapping: list, path: str) -> str:
    """``sequences.json`` (atomic): the chosen series per key and why."""
    from ..case_io.writing import write_json

    return write_json({"sequences": sequences_record(mapping)}, path)


def describe_mapping(mapping: list) -> str:
    """The mapping as printed lines: ``T1_20s <- 1.2.3 'dyn' phase 2/4, 21 s after contrast (why)``."""
    lines = []
    for m in mapping:
        phase = f" phase {m['phase']}/{m['phases']}" if m.get("phase") else ""
        t = m.get("time_after_contrast_s")
        when = f", {t:.0f} s after contrast" if t is not None else ""
        lines.append(f"{m['key']} <- {m['series_uid']} '{m['description']}'{phase}{when} ({m['why']})")
    return "\n".join(lines)


def source_datasets(mapping: list) -> dict:
    """Sequence key -> the headers (pydicom datasets, no pixels) of its chosen series or phase, in slice order:
    the ``source_datasets`` of :func:`.write.write_dicom_outputs`."""
    import pydicom

    return {m["key"]: [pydicom.dcmread(f, stop_before_pixels=True) for f in m["files"]] for m in mapping}

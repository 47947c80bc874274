"""A phantom case (:func:`..phantom.generate_case`) as a DICOM study as a scanner would send it
(``liver-lrp phantom OUT --dicom``).

Series, in acquisition order, with Siemens-like names and parameters: a three-plane localiser (ignored by the
reader), T2 HASTE, ONE dynamic T1 VIBE series holding four phases (TemporalPositionIdentifier 1-4: the
pre-contrast mask, then 20 s, 60 s and 120 s after ContrastBolusStartTime), a diffusion series (ignored),
the T1 VIBE hepatobiliary phase 15 min after the bolus, and the ground truth as a manual DICOM SEG.
Post-contrast images carry ContrastBolusAgent "Primovist".  Every image series lies on the phantom's grid,
which SimpleITK reads back exactly; pixels are 16-bit with a power-of-two RescaleSlope
(:func:`.mr.quantise`).  UIDs derive from the seed and grid, so the same phantom gives the same study.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

from ..sequences import SEQUENCE_KEYS
from .mr import mr_series, save_dataset, stored_values

STUDY_DATE = "20240312"
START = 9 * 3600 + 30 * 60            # 09:30:00
BOLUS = START + 6 * 60 + 40           # 09:36:40
DYNAMIC = (("T1_plain", -40.0), ("T1_20s", 20.0), ("T1_60s", 60.0), ("T1_120s", 120.0))
AGENT = dict(ContrastBolusAgent="Primovist", ContrastBolusIngredient="GADOLINIUM", ContrastBolusRoute="IV",
             ContrastBolusVolume=7.0)
T2_SEQUENCE = dict(ScanningSequence="SE", SequenceVariant=["SK", "SP"], ScanOptions="FS", MRAcquisitionType="2D",
                   SequenceName="*h2d1_256", EchoTime=92.0, RepetitionTime=1400.0, FlipAngle=160.0,
                   EchoTrainLength=128)
T1_SEQUENCE = dict(ScanningSequence="GR", SequenceVariant=["SP", "SS"], ScanOptions="FS", MRAcquisitionType="3D",
                   SequenceName="*fl3d1", EchoTime=1.29, RepetitionTime=3.87, FlipAngle=9.0, EchoTrainLength=1)


@dataclass
class PhantomStudy:
    folder: str
    series: dict                     # sequence key -> SERIES_UID or SERIES_UID:PHASE
    images: dict                     # sequence key -> float32 (z, y, x) as stored (the quantised phantom)
    files: list = field(default_factory=list)
    ignored: list = field(default_factory=list)   # series UIDs the reader must ignore


def tm(seconds: float) -> str:
    """Seconds of the day as a DICOM TM."""
    h, rest = divmod(float(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def _uid(seed_text: str, *what) -> str:
    return generate_uid(entropy_srcs=["LiverTumorLRP phantom", seed_text, *map(str, what)])


def _study_attributes(case, seed_text: str) -> dict:
    seed = case.info.get("seed", 0)
    return dict(
        PatientName=f"Phantom^Case{seed:03d}", PatientID=f"LRP-PHANTOM-{seed:03d}", PatientBirthDate="",
        PatientSex="O", PatientAge="060Y", PatientWeight=70.0, StudyInstanceUID=_uid(seed_text, "study"),
        StudyID="1", AccessionNumber=f"PH{seed:06d}", ReferringPhysicianName="", StudyDate=STUDY_DATE,
        StudyTime=tm(START), StudyDescription="MR Leber Primovist (LiverTumorLRP phantom)",
        FrameOfReferenceUID=_uid(seed_text, "frame"), PositionReferenceIndicator="", Manufacturer="LiverTumorLRP",
        ManufacturerModelName="phantom", InstitutionName="LiverTumorLRP", MagneticFieldStrength=1.5,
        BodyPartExamined="LIVER", PatientPosition="FFS", SpecificCharacterSet="ISO_IR 100")


def _series(common: dict, seed_text: str, number: int, description: str, extra: dict, time: float) -> dict:
    out = dict(common)
    out.update(SeriesInstanceUID=_uid(seed_text, "series", number), SeriesNumber=number,
               SeriesDescription=description, ProtocolName=description, SeriesDate=STUDY_DATE, SeriesTime=tm(time),
               ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "NORM"], AcquisitionNumber=1)
    out.update(extra)
    return out


def _timed(time: float, contrast: bool):
    def per_slice(k):
        d = dict(AcquisitionDate=STUDY_DATE, AcquisitionTime=tm(time), ContentDate=STUDY_DATE, ContentTime=tm(time))
        if contrast:
            d.update(AGENT, ContrastBolusStartTime=tm(BOLUS))
        return d
    return per_slice


def _plane(ref: sitk.Image, size, spacing, row, col, corner) -> sitk.Image:
    """A one-slice grid: rows along ``row``, columns along ``col``, first pixel at index ``corner`` of ``ref``."""
    normal = np.cross(row, col)
    grid = sitk.Image([int(size[0]), int(size[1]), 1], sitk.sitkFloat32)
    grid.SetDirection([float(v) for v in np.stack([row, col, normal], axis=1).ravel()])
    grid.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    grid.SetOrigin(ref.TransformIndexToPhysicalPoint([int(i) for i in corner]))
    return grid


def _localiser(case, common: dict, seed_text: str) -> list:
    """Three single-slice planes (axial, coronal, sagittal) through the centre of the grid, one series."""
    ref, arr = case.reference(), case.images["T1_plain"]
    nz, ny, nx = arr.shape
    sx, sy, sz = ref.GetSpacing()
    x, y, feet = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]
    planes = [  # (grid, pixels (1, rows, columns)): coronal and sagittal from head to feet
        (_plane(ref, (nx, ny), (sx, sy), x, y, (0, 0, nz // 2)), arr[nz // 2][None]),
        (_plane(ref, (nx, nz), (sx, sz), x, feet, (0, ny // 2, nz - 1)), arr[::-1, ny // 2, :][None]),
        (_plane(ref, (ny, nz), (sy, sz), y, feet, (nx // 2, 0, nz - 1)), arr[::-1, :, nx // 2][None]),
    ]
    attrs = _series(common, seed_text, 1, "localizer",
                    dict(T1_SEQUENCE, MRAcquisitionType="2D", SequenceName="*fl2d1"), START + 5)
    out = []
    for i, (grid, pixels) in enumerate(planes):
        ds = mr_series(pixels, grid, attrs, _timed(START + 5 + i, False))[0]
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed_text, "localiser", i)
        out.append(ds)
    return out


def _image_series(case, common: dict, seed_text: str) -> "tuple[list, dict, list]":
    """(datasets, key -> SERIES_UID[:PHASE], ignored series UIDs) of T2, the dynamic series, diffusion and
    the hepatobiliary phase."""
    ref, images = case.reference(), case.images
    out, refs = [], {}
    t2 = _series(common, seed_text, 2, "t2_haste_tra_mbh", T2_SEQUENCE, START + 130)
    out += mr_series(images["T2"], ref, t2, _timed(START + 130, False))
    refs["T2"] = t2["SeriesInstanceUID"]
    dyn = _series(common, seed_text, 3, "t1_vibe_fs_tra_dyn", dict(T1_SEQUENCE, NumberOfTemporalPositions=4),
                  BOLUS + DYNAMIC[0][1])
    for position, (key, after) in enumerate(DYNAMIC, start=1):
        # one series, four phases: SOP instances per phase, TemporalPositionIdentifier 1-4
        phase = dict(dyn, SeriesInstanceUID=_uid(seed_text, "dynamic phase", position))
        temporal = dict(TemporalPositionIdentifier=position, TriggerTime=1000.0 * (after - DYNAMIC[0][1]))
        timed = _timed(BOLUS + after, after > 0)
        for ds in mr_series(images[key], ref, phase, lambda k, t=timed, extra=temporal: dict(t(k), **extra)):
            ds.SeriesInstanceUID = dyn["SeriesInstanceUID"]
            ds.InstanceNumber = (position - 1) * images[key].shape[0] + int(ds.InstanceNumber)
            out.append(ds)
        refs[key] = f"{dyn['SeriesInstanceUID']}:{position}"
    diff = _series(common, seed_text, 4, "ep2d_diff_b50_800_tra", dict(
        ScanningSequence="EP", SequenceVariant=["SK", "SP"], MRAcquisitionType="2D", SequenceName="*ep_b800t",
        EchoTime=59.0, RepetitionTime=5600.0, ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"],
        DiffusionBValue=800.0), BOLUS + 240)
    out += mr_series(0.3 * images["T2"], ref, diff, _timed(BOLUS + 240, True))
    hbp = _series(common, seed_text, 5, "t1_vibe_fs_tra_15min", dict(T1_SEQUENCE, FlipAngle=10.0), BOLUS + 900)
    out += mr_series(images["T1_15min"], ref, hbp, _timed(BOLUS + 900, True))
    refs["T1_15min"] = hbp["SeriesInstanceUID"]
    return out, refs, [diff["SeriesInstanceUID"]]


def _path(folder: str, ds) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "_", str(ds.get("SeriesDescription", "series"))).strip("_")
    return os.path.join(folder, "DICOM", f"SE{int(ds.SeriesNumber):04d}_{name}", f"IM{int(ds.InstanceNumber):04d}.dcm")


def write_phantom_study(case, folder: str, ground_truth: bool = True) -> PhantomStudy:
    """Write ``case`` (a :class:`..phantom.PhantomCase`) as a DICOM study under ``folder/DICOM/`` (one folder
    per series) with ``lesions.json`` beside it; the ground truth as a manual DICOM SEG (series 6) unless
    ``ground_truth=False``."""
    from ..case_io.writing import write_json

    seed_text = f"{case.info.get('seed', 0)} {tuple(case.label.shape)} {tuple(case.spacing)}"
    common = _study_attributes(case, seed_text)
    localiser = _localiser(case, common, seed_text)
    datasets, refs, ignored = _image_series(case, common, seed_text)
    files = [save_dataset(ds, _path(folder, ds)) for ds in localiser + datasets]
    if ground_truth:
        from .write import tumor_segmentation

        source = [ds for ds in datasets if ds.SeriesInstanceUID == refs["T1_15min"]]
        seg = tumor_segmentation(case.label, case.reference(), source, "phantom", algorithm_type="MANUAL",
                                 description="Ground truth tumor (phantom)", series_number=6)
        files.append(save_dataset(seg, os.path.join(folder, "DICOM", "SE0006_ground_truth", "SEG0001.dcm")))
    write_json({"lesions": case.lesions, "motion_mm_xyz": case.motion, **case.info,
                "spacing_zyx_mm": list(case.spacing), "series": refs}, os.path.join(folder, "lesions.json"))
    stored = {k: stored_values(case.images[k]) for k in SEQUENCE_KEYS}
    return PhantomStudy(folder, refs, stored, files, ignored + [localiser[0].SeriesInstanceUID])


def write_phantom_studies(out: str, cases) -> list:
    """``out/case_000/``, ... each a DICOM study (the ``liver-lrp phantom OUT --dicom`` writer)."""
    return [write_phantom_study(case, os.path.join(out, f"case_{i:03d}")).folder for i, case in enumerate(cases)]

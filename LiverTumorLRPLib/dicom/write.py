"""Results as DICOM, with highdicom: the tumor segmentation as a DICOM SEG and each sequence's relevance as a
DICOM Parametric Map, both on the reference (T1 15 min) grid and referencing the source series; sent to a PACS
with DICOMweb STOW-RS.

Where the case came from DICOM, the outputs join its study and reference its series (``source_datasets``,
:func:`.study.source_datasets`).  For a NIfTI case there is no source series, but highdicom derives every
SEG and Parametric Map from source images (patient, study, frame of reference): a minimal MR series of the
reference image (T1 15 min, DERIVED\\SECONDARY, new study and frame of reference) is synthesised, written
with the outputs (``source_T1_15min/``) and referenced, so a viewer or PACS has the images to show them on.
"""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ..sequences import REFERENCE_KEY, SEQUENCE_KEYS, display_name
from .mr import grid_planes, mr_series, save_dataset

MANUFACTURER = "LiverTumorLRP"
SEG_SERIES_NUMBER = 9001          # the relevance maps follow (9002 ... in channel order)
SOURCE_SERIES_NUMBER = 9000


def _version() -> str:
    from .. import __version__

    return str(__version__)


def grid_geometry(reference: sitk.Image):
    """highdicom's (plane positions, plane orientation, pixel measures) of the reference grid."""
    import highdicom as hd

    iop, positions, pixel_spacing, slice_spacing = grid_planes(reference)
    planes = [hd.PlanePositionSequence("PATIENT", p) for p in positions]
    orientation = hd.PlaneOrientationSequence("PATIENT", iop)
    measures = hd.PixelMeasuresSequence(pixel_spacing, slice_spacing, slice_spacing)
    return planes, orientation, measures


def _common(reference: sitk.Image, source: list, model_name: str, series_number: int) -> dict:
    """The arguments every SEG and Parametric Map shares: sources, geometry, equipment, new UIDs."""
    planes, orientation, measures = grid_geometry(reference)
    return dict(source_images=source, plane_positions=planes, plane_orientation=orientation,
                pixel_measures=measures, series_instance_uid=generate_uid(), series_number=series_number,
                sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
                manufacturer_model_name=str(model_name)[:64] or "model", software_versions=_version(),
                device_serial_number="LiverTumorLRPLib")


def tumor_segmentation(mask: np.ndarray, reference: sitk.Image, source: list, model_name: str, *,
                       further=None, algorithm_type: str = "AUTOMATIC", description: "str | None" = None,
                       series_number: int = SEG_SERIES_NUMBER):
    """A binary DICOM SEG with one segment "Tumor" (SNOMED 108369006 Neoplasm, in the liver) on the reference
    grid; ``algorithm_type`` AUTOMATIC (identified as LiverTumorLRP with the model) or MANUAL (ground truth)."""
    import highdicom as hd

    mask = np.asarray(mask)
    _check_shape(mask, reference, "segmentation")
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(name=f"LiverTumorLRP {model_name}"[:64],
                                                       family=codes.cid7162.ArtificialIntelligence,
                                                       version=_version(), source=MANUFACTURER)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Tumor",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=algorithm_type,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Liver])
    return hd.seg.Segmentation(
        pixel_array=(mask > 0).astype(np.uint8), segmentation_type="BINARY", segment_descriptions=[segment],
        omit_empty_frames=False, further_source_images=list(further or []) or None,
        series_description=(description or f"Tumor segmentation (LiverTumorLRP {model_name})")[:64],
        content_label="TUMOR", content_description="Liver tumor segmentation"[:64],
        **_common(reference, source, model_name, series_number))


def relevance_map(values: np.ndarray, reference: sitk.Image, source: list, key: str, model_name: str, *,
                  further=None, series_number: int = SEG_SERIES_NUMBER + 1):
    """A DICOM Parametric Map of one sequence's LRP relevance (float32 pixels; real-world value mapping:
    identity, no units) on the reference grid; the sequence is named in the SeriesDescription."""
    import highdicom as hd

    values = np.asarray(values, np.float32)
    _check_shape(values, reference, f"relevance of {key}")
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="LRP", lut_explanation=f"LRP relevance of {display_name(key)}"[:64],
        unit=codes.UCUM.NoUnits, value_range=(low, high), slope=1.0, intercept=0.0)
    window = hd.VOILUTTransformation(window_center=0.0, window_width=max(2.0 * max(abs(low), abs(high)), 1e-12))
    return hd.pm.ParametricMap(
        pixel_array=values, contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[window], further_source_images=list(further or []) or None,
        series_description=f"LRP relevance {display_name(key)}"[:64], content_label="RELEVANCE",
        content_description=f"LRP relevance of {display_name(key)} (LiverTumorLRP {model_name})"[:64],
        **_common(reference, source, model_name, series_number))


def _check_shape(array: np.ndarray, reference: sitk.Image, what: str) -> None:
    if array.shape != tuple(reference.GetSize()[::-1]):
        raise ValueError(f"{what}: shape {array.shape} is not the reference grid's {tuple(reference.GetSize()[::-1])}")


def synthesise_source(reference: sitk.Image, case_name: "str | None" = None) -> list:
    """A minimal MR series of the reference image for a case without DICOM (new patient-level identifiers
    from the case name, new study, series and frame of reference)."""
    name = (case_name or "LiverTumorLRP case")[:64]
    attributes = dict(
        PatientName=f"{name}^", PatientID=name, PatientBirthDate="", PatientSex="",  # "name^": a family name
        StudyInstanceUID=generate_uid(), StudyID="1", AccessionNumber="", ReferringPhysicianName="",
        StudyDate="", StudyTime="", SeriesInstanceUID=generate_uid(), SeriesNumber=SOURCE_SERIES_NUMBER,
        SeriesDescription=f"{display_name(REFERENCE_KEY)} (from NIfTI, LiverTumorLRP)"[:64],
        FrameOfReferenceUID=generate_uid(), PositionReferenceIndicator="", Manufacturer=MANUFACTURER,
        ImageType=["DERIVED", "SECONDARY"], ScanningSequence="RM", SequenceVariant="NONE", ScanOptions="",
        MRAcquisitionType="3D", EchoTime=None, RepetitionTime=None, EchoTrainLength=None,
        PatientPosition="", BodyPartExamined="ABDOMEN")
    array = sitk.GetArrayFromImage(sitk.Cast(reference, sitk.sitkFloat32))
    return mr_series(array, reference, attributes)


def _sources(source_datasets, reference: sitk.Image, case_name):
    """(reference series datasets, key -> datasets, synthesised or not) from what the caller passed."""
    if source_datasets is None:
        ref = synthesise_source(reference, case_name)
        return ref, {REFERENCE_KEY: ref}, True
    if isinstance(source_datasets, dict):
        if REFERENCE_KEY not in source_datasets:
            raise ValueError(f"source_datasets has no {REFERENCE_KEY} (the reference series)")
        return list(source_datasets[REFERENCE_KEY]), dict(source_datasets), False
    ref = list(source_datasets)
    return ref, {REFERENCE_KEY: ref}, False


def write_dicom_outputs(out_dir: str, reference: sitk.Image, segmentation: np.ndarray, relevance_maps: dict,
                        model_name: str, source_datasets=None, case_name: "str | None" = None) -> list:
    """Write the DICOM outputs of one case into ``out_dir`` (each file atomically); returns their paths.

    ``reference``: the case grid (the T1 15 min image); ``segmentation``: (z, y, x) tumor mask on it;
    ``relevance_maps``: key -> (z, y, x) float relevance on it; ``source_datasets``: the source series' headers,
    key -> datasets (:func:`.study.source_datasets`) or the reference series' datasets alone, or None for a
    case without DICOM (a source series of the reference image is synthesised and written first).
    Files: ``source_T1_15min/IM0001.dcm ...`` (synthesised only), ``seg_tumor.dcm``, ``relevance_<key>.dcm``.
    """
    ref, by_key, synthesised = _sources(source_datasets, reference, case_name)
    paths = []
    if synthesised:
        folder = os.path.join(out_dir, f"source_{REFERENCE_KEY}")
        paths += [save_dataset(ds, os.path.join(folder, f"IM{i + 1:04d}.dcm")) for i, ds in enumerate(ref)]
    others = [ds for k, group in by_key.items() if k != REFERENCE_KEY for ds in group]
    seg = tumor_segmentation(segmentation, reference, ref, model_name, further=others)
    paths.append(save_dataset(seg, os.path.join(out_dir, "seg_tumor.dcm")))
    ordered = sorted(relevance_maps, key=lambda k: SEQUENCE_KEYS.index(k) if k in SEQUENCE_KEYS else 99)
    for i, key in enumerate(ordered):
        further = by_key.get(key) if key != REFERENCE_KEY else None
        pm = relevance_map(relevance_maps[key], reference, ref, key, model_name, further=further,
                           series_number=SEG_SERIES_NUMBER + 1 + i)
        paths.append(save_dataset(pm, os.path.join(out_dir, f"relevance_{key}.dcm")))
    return paths


def volume_image(volume) -> sitk.Image:
    """A highdicom Volume (slices, rows, columns; affine to LPS) as a SimpleITK image (z, y, x)."""
    affine = np.asarray(volume.affine, float)
    array = np.asarray(volume.array)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)          # per array axis: slice, row, column
    direction = np.stack([axes[:, 2] / spacing[2], axes[:, 1] / spacing[1], axes[:, 0] / spacing[0]], axis=1)
    origin = affine[:3, 3]
    if np.linalg.det(direction) < 0:                # slices stacked against the normal: as SimpleITK reads DICOM
        origin = origin + (array.shape[0] - 1) * axes[:, 0]
        direction[:, 2] *= -1
        array = array[::-1]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def read_dicom_volume(path: str) -> sitk.Image:
    """A SEG (uint8, the segment numbers) or Parametric Map (float32 real-world values) as a SimpleITK image
    on its own grid."""
    import highdicom as hd
    import pydicom

    ds = pydicom.dcmread(path)
    if ds.get("Modality") == "SEG":
        seg = hd.seg.Segmentation.from_dataset(ds)
        volume = seg.get_volume(combine_segments=True)
        return sitk.Cast(volume_image(volume), sitk.sitkUInt8)
    image = hd.imread(path)
    volume = image.get_volume(apply_real_world_transform=True, dtype=np.float32)
    return sitk.Cast(volume_image(volume), sitk.sitkFloat32)

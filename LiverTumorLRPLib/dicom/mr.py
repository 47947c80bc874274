"""MR image series as pydicom datasets on a SimpleITK grid: one single-frame MR Image Storage instance per
slice, with the grid's geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, SpacingBetweenSlices) so that SimpleITK reads the series back onto exactly that grid, and the
float pixels stored as 16-bit integers with a power-of-two RescaleSlope (the readback is the stored
quantisation, exactly: :func:`quantise`)."""
from __future__ import annotations

import math
import os

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

MAX_STORED = 65535
MIN_SLOPE_EXPONENT = -12      # 2**-12 = 0.000244140625 still fits the 16 characters of a DS


def quantise(array: np.ndarray) -> "tuple[np.ndarray, float, float]":
    """(stored uint16, slope, intercept) with ``stored * slope + intercept`` the closest such value to
    ``array``; slope a power of two, intercept an integer, so the readback is exact in float32."""
    a = np.asarray(array, np.float64)
    low = float(np.floor(min(a.min(), 0.0))) if a.size else 0.0
    span = float(a.max() - low) if a.size else 0.0
    exponent = math.ceil(math.log2(span / MAX_STORED)) if span > 0 else 0
    slope = 2.0 ** max(exponent, MIN_SLOPE_EXPONENT)
    stored = np.clip(np.round((a - low) / slope), 0, MAX_STORED).astype(np.uint16)
    return stored, slope, low


def stored_values(array: np.ndarray) -> np.ndarray:
    """What a series written by :func:`mr_series` holds for ``array`` (float32): its quantisation."""
    stored, slope, intercept = quantise(array)
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def grid_planes(grid: sitk.Image) -> "tuple[list, list, tuple, float]":
    """(ImageOrientationPatient, [ImagePositionPatient per slice], PixelSpacing (row, column), slice spacing)
    of a SimpleITK grid: rows along its x axis, columns along y, slices along z."""
    d = np.asarray(grid.GetDirection(), float).reshape(3, 3)
    iop = [float(v) for v in (*d[:, 0], *d[:, 1])]
    nz = grid.GetSize()[2]
    positions = [[float(v) for v in grid.TransformIndexToPhysicalPoint((0, 0, k))] for k in range(nz)]
    sx, sy, sz = (float(s) for s in grid.GetSpacing())
    return iop, positions, (sy, sx), sz


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def mr_series(array: np.ndarray, grid: sitk.Image, attributes: dict, per_slice=None) -> list:
    """One MR Image Storage dataset per slice of the (z, y, x) ``array`` on ``grid``.

    ``attributes``: DICOM keyword -> value for every slice (patient, study, series, frame of reference,
    sequence parameters; must include SeriesInstanceUID); ``per_slice(k)`` -> dict of keyword -> value for
    slice k (acquisition times, ...).  SOP Instance UIDs derive from the series UID and the slice.
    """
    array = np.asarray(array)
    if array.shape != tuple(grid.GetSize()[::-1]):
        raise ValueError(f"array {array.shape} does not match the grid {tuple(grid.GetSize()[::-1])}")
    stored, slope, intercept = quantise(array)
    iop, positions, pixel_spacing, slice_spacing = grid_planes(grid)
    normal = np.cross(iop[:3], iop[3:])
    series_uid = attributes["SeriesInstanceUID"]
    out = []
    for k in range(array.shape[0]):
        sop = generate_uid(entropy_srcs=[series_uid, "slice", str(k)])
        ds = Dataset()
        ds.file_meta = _file_meta(sop)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop, "MR"
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = positions[k]
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = float(np.dot(normal, positions[k]))
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_spacing
        ds.SpacingBetweenSlices = slice_spacing
        ds.set_pixel_data(np.ascontiguousarray(stored[k]), "MONOCHROME2", 16)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
        for keyword, value in (per_slice(k) if per_slice else {}).items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


def save_dataset(ds: Dataset, path: str) -> str:
    """Write one dataset as a DICOM Part 10 file, atomically (temporary name, then rename)."""
    from ..case_io.writing import atomic_output

    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return os.fspath(path)

"""Reading one image: a file SimpleITK reads or a DICOM series folder, checked to be one usable 3D volume."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import SimpleITK as sitk

from .grid import single_volume


def itk_message(error: Exception) -> str:
    """The last line of a SimpleITK/ITK error (the part that says what went wrong)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def read_dicom_folder(folder: str) -> sitk.Image:
    """The one DICOM series in ``folder``; ValueError when there is none or more than one."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not ids:
        raise ValueError("no DICOM series in the folder")
    if len(ids) > 1:
        counts = [f"{i} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, i))} files)" for i in ids]
        raise ValueError(f"{len(ids)} DICOM series in the folder ({', '.join(counts)}); keep one series per folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, ids[0]))
    return reader.Execute()


def read_file_or_series(path: str) -> sitk.Image:
    """The image in a file, or the DICOM series in a folder, as stored (unchecked)."""
    return read_dicom_folder(path) if os.path.isdir(path) else sitk.ReadImage(path)


def _nifti_nonfinite(path: str) -> int:
    """NaN/inf voxels stored in a float NIfTI-1 file (ITK's reader silently turns them into 0)."""
    low = path.lower()
    if not (low.endswith(".nii") or low.endswith(".nii.gz")):
        return 0
    try:
        opener = gzip.open if low.endswith(".gz") else open
        with opener(path, "rb") as fh:
            data = fh.read()
        for endian in ("<", ">"):
            if struct.unpack(endian + "i", data[:4])[0] == 348:
                break
        else:
            return 0
        datatype = struct.unpack(endian + "h", data[70:72])[0]
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        if dtype is None:
            return 0
        offset = int(struct.unpack(endian + "f", data[108:112])[0])
        values = np.frombuffer(data, dtype=endian + dtype, offset=offset)
        return int(values.size - np.isfinite(values).sum())
    except (OSError, EOFError, struct.error, ValueError):
        return 0


def read_image(path: str, what: str = "image") -> sitk.Image:
    """Read one 3D scalar image (file or DICOM series folder) as float32, checking it; ``what`` names it in errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} ({path}): file does not exist")
    try:
        image = read_file_or_series(path)
    except RuntimeError as e:
        raise ValueError(f"{what} ({path}): cannot be read ({itk_message(e)})") from None
    except ValueError as e:
        raise ValueError(f"{what} ({path}): {e}") from None
    image = check_image(image, what, path)
    bad = _nifti_nonfinite(path)
    if bad:
        raise ValueError(f"{what} ({path}): contains {bad} NaN or infinite voxels")
    return image


def read_channels(path: str, what: str = "image") -> list:
    """The 3D volumes of a multi-channel image file (an MSD 4D NIfTI: channels in the 4th dimension; or a vector
    image: one channel per component), as stored (unchecked); ValueError when it cannot be read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} ({path}): file does not exist")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ValueError(f"{what} ({path}): cannot be read ({itk_message(e)})") from None
    bad = _nifti_nonfinite(path)
    if bad:
        raise ValueError(f"{what} ({path}): contains {bad} NaN or infinite voxels")
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [sitk.VectorIndexSelectionCast(image, c) for c in range(image.GetNumberOfComponentsPerPixel())]
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        return [sitk.Extract(image, size[:3] + [0], [0, 0, 0, t]) for t in range(size[3])]
    return [image]


def check_image(image: sitk.Image, what: str = "image", path: str = "in-memory image") -> sitk.Image:
    """A 3D scalar float32 copy of ``image``; ValueError (naming ``what`` and ``path``) if it is unusable."""
    where = f"{what} ({path})"
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{where}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "expected a scalar (grey-value) image")
    dim = image.GetDimension()
    image = single_volume(image)
    if image.GetDimension() != 3:
        raise ValueError(f"{where}: is a {dim}D image of size {image.GetSize()}; expected one 3D volume")
    size = image.GetSize()
    if min(size) == 0:
        raise ValueError(f"{where}: the image is empty (size {size})")
    if min(size) < 2:
        raise ValueError(f"{where}: has a single slice (size {size}); expected a 3D volume")
    image = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{where}: contains {int(arr.size - finite.sum())} NaN or infinite voxels")
    if float(arr.max()) == float(arr.min()):
        raise ValueError(f"{where}: the image is empty/constant (every voxel is {float(arr.min()):g})")
    return image

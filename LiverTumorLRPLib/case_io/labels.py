"""Reading the tumor label (0 background, 1 tumor; or the lesion class of a multi-class label) and bringing it
onto the reference grid."""
from __future__ import annotations

import warnings
from typing import Mapping, Optional

import numpy as np
import SimpleITK as sitk

from ..sequences import REFERENCE_KEY
from .names import LABEL_KEY
from .grid import GeometryWarning, describe_extent, overlap_fraction, same_grid, single_volume
from .images import itk_message, read_file_or_series


def read_label(path: str) -> sitk.Image:
    """The label image in a file or DICOM folder, as stored; ValueError when it cannot be read."""
    where = f"{LABEL_KEY} ({path})"
    try:
        return read_file_or_series(path)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{where}: cannot be read ({itk_message(e)})") from None


def _onto_reference(image: sitk.Image, reference: sitk.Image, where: str) -> sitk.Image:
    """The label on the reference grid: as it is, voxel for voxel (same size, lost header) or resampled
    (nearest neighbour); ValueError when it does not overlap the reference."""
    if same_grid(image, reference):
        return image
    if tuple(image.GetSize()) == tuple(reference.GetSize()) and overlap_fraction(image, reference) < 0.5:
        warnings.warn(f"{where}: has the {REFERENCE_KEY} size but another geometry (lost header?); "
                      "used voxel for voxel", GeometryWarning, stacklevel=5)
        image = sitk.Image(image)
        image.CopyInformation(reference)
        return image
    if overlap_fraction(image, reference) <= 0.0:
        raise ValueError(f"{where}: size {image.GetSize()} differs from the {REFERENCE_KEY} size "
                         f"{reference.GetSize()} and its extent ({describe_extent(image)}) does not overlap the "
                         f"reference ({describe_extent(reference)}); cannot resample it")
    warnings.warn(f"{where}: grid differs from {REFERENCE_KEY}; resampled (nearest neighbour)",
                  GeometryWarning, stacklevel=5)
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def label_on_grid(image: sitk.Image, reference: sitk.Image, path: str, lesion=None,
                  classes: Optional[Mapping[int, str]] = None) -> np.ndarray:
    """The label ``image`` (read from ``path``, which names it in errors) as a uint8 (z, y, x) 0/1 array on
    ``reference``'s grid; ValueError unless it is a 3D scalar map of integers that overlaps the reference.

    ``lesion`` None (a case folder's ``label.*``): the map must hold only 0 and 1.  A multi-class label (nnU-Net,
    MSD, BraTS) is read only when asked for explicitly: ``lesion`` is the label values that are the lesion (a
    tuple) or ``"nonzero"`` (every non-zero value); the map may then hold any non-negative integers (only
    those of ``classes``, value -> class name, when given) and the result is the lesion mask."""
    if isinstance(lesion, str) and lesion != "nonzero":
        raise ValueError(f"lesion must be label values or 'nonzero', got {lesion!r}")
    where = f"{LABEL_KEY} ({path})"
    expected = "0 (background) and 1 (tumor)" if lesion is None else "non-negative integer labels"
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{where}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         f"expected a scalar label map ({expected})")
    image = single_volume(image)
    if image.GetDimension() != 3:
        raise ValueError(f"{where}: is a {image.GetDimension()}D image of size {image.GetSize()}; "
                         f"expected a 3D label map on the {REFERENCE_KEY} grid")
    arr = sitk.GetArrayFromImage(_onto_reference(image, reference, where))
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: contains NaN or infinite voxels")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{where}: has non-integer values; expected {expected}")
    values = np.unique(arr).tolist()
    if lesion is None:
        allowed = (0, 1)
    elif classes:
        allowed = tuple(classes)
    else:
        allowed = tuple(v for v in values if v >= 0)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{where}: has values {', '.join(f'{v:g}' for v in bad[:10])}; expected only "
                         + (expected if lesion is None or not classes else
                            ", ".join(f"{v} ({n})" for v, n in sorted(classes.items()))))
    if lesion is None:
        return arr.astype(np.uint8)
    mask = arr != 0 if isinstance(lesion, str) and lesion == "nonzero" else np.isin(arr, list(lesion))
    return mask.astype(np.uint8)

"""Image-grid geometry: same grid, physical extent and overlap, arrays onto a reference grid."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..sequences import REFERENCE_KEY


class GeometryWarning(UserWarning):
    """A series or label was not on the reference grid and was resampled."""


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` share size, spacing, origin and direction (within ``tol`` of a voxel)."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    sa, sb = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=tol, atol=0):
        return False
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tol * float(sa.min()) * 10):
        return False
    return bool(np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol))


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) corners (x, y, z mm) of the axis-aligned box around the image's voxels."""
    size = np.asarray(image.GetSize(), dtype=float)
    corners = []
    for i in range(8):
        idx = [(-0.5 if not (i >> d) & 1 else size[d] - 0.5) for d in range(3)]
        corners.append(image.TransformContinuousIndexToPhysicalPoint(idx))
    c = np.asarray(corners)
    return c.min(axis=0), c.max(axis=0)


def overlap_fraction(image: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference's bounding box covered by the image's bounding box (0 = disjoint)."""
    lo_a, hi_a = physical_bounds(image)
    lo_r, hi_r = physical_bounds(reference)
    inter = np.clip(np.minimum(hi_a, hi_r) - np.maximum(lo_a, lo_r), 0, None)
    return float(np.prod(inter) / max(np.prod(hi_r - lo_r), 1e-12))


def describe_extent(image: sitk.Image) -> str:
    """The image's physical extent as text: ``x -10..10, y ..., z ... mm``."""
    lo, hi = physical_bounds(image)
    return "x {:.0f}..{:.0f}, y {:.0f}..{:.0f}, z {:.0f}..{:.0f} mm".format(*np.stack([lo, hi], 1).ravel())


def require_overlap(image: sitk.Image, reference: sitk.Image, where: str) -> None:
    """ValueError (naming ``where`` and both extents) when ``image`` does not overlap ``reference`` at all."""
    if overlap_fraction(image, reference) <= 0.0:
        raise ValueError(f"{where}: does not overlap the {REFERENCE_KEY} reference (its extent "
                         f"{describe_extent(image)}; reference {describe_extent(reference)}); check its origin, "
                         "spacing and orientation")


def single_volume(image: sitk.Image) -> sitk.Image:
    """A 4D image with a single time point as the 3D volume it holds; any other image as it is."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        return sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    return image


def array_to_image(array: np.ndarray, reference: sitk.Image, dtype=None) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array with ``reference``'s geometry (bool->uint8, float64->float32)."""
    a = np.asarray(array)
    if dtype is not None:
        a = a.astype(dtype)
    elif a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype == np.float64:
        a = a.astype(np.float32)
    elif a.dtype in (np.int64, np.uint64) and (a.size == 0 or (a.min() >= -2**31 and a.max() < 2**31)):
        a = a.astype(np.int32)
    expected = tuple(reference.GetSize())[::-1]
    if a.shape != expected:
        raise ValueError(f"array of shape {a.shape} does not match the reference grid (z, y, x) {expected}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(a))
    image.CopyInformation(reference)
    return image

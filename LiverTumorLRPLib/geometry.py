"""The case grid and the network grid: resampling to the model's spacing and back.

A model trained at a spacing (``ModelInfo.spacing``) sees every case resampled to it; its outputs are
mapped back to the case's reference grid:

* images: linear (per channel), the network grid covering the same physical extent as the case;
* region masks: nearest neighbour, plus the network voxel holding the centre of every case voxel of the
  mask, so that no region (a single clicked voxel) vanishes;
* probabilities: linear; segmentations: nearest neighbour;
* relevance: positive and negative parts resampled linearly as densities and each rescaled so that every
  sequence keeps its positive, negative and total relevance exactly (sequence shares are computed on the
  network grid, where Eq. 2 holds exactly).

:class:`GridMap` is the interface (an nnU-Net model brings its own, with nnU-Net's cropping and
resampling); :class:`IdentityMap` is used when the model has no spacing or the case is already on it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

KINDS = ("probability", "segmentation", "relevance")


class GridMap:
    """Maps arrays between a case's reference grid and the grid the network runs on."""

    network_shape: tuple = ()
    network_spacing: Optional[tuple] = None   # (z, y, x) mm

    def image_to_network(self, image: np.ndarray) -> np.ndarray:
        """(C, case grid) -> (C, network grid) float32."""
        raise NotImplementedError

    def mask_to_network(self, mask: np.ndarray) -> np.ndarray:
        """bool (case grid) -> bool (network grid); a non-empty mask stays non-empty."""
        raise NotImplementedError

    def to_case(self, array: np.ndarray, kind: str) -> np.ndarray:
        """(..., network grid) -> (..., case grid); ``kind`` is one of :data:`KINDS`."""
        raise NotImplementedError


class IdentityMap(GridMap):
    """The network runs on the case grid itself."""

    def __init__(self, shape, spacing=None):
        self.network_shape = tuple(int(s) for s in shape)
        self.network_spacing = tuple(spacing) if spacing is not None else None

    def image_to_network(self, image):
        return np.asarray(image, dtype=np.float32)

    def mask_to_network(self, mask):
        return np.asarray(mask, dtype=bool)

    def to_case(self, array, kind):
        check_kind(kind)
        return np.asarray(array)


def check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def grid_at_spacing(reference: sitk.Image, spacing_zyx) -> sitk.Image:
    """An empty image on ``reference``'s physical extent with spacing ``spacing_zyx`` (same direction)."""
    sp_old = np.array(reference.GetSpacing(), dtype=float)
    sp_new = np.array(spacing_zyx[::-1], dtype=float)
    size_old = np.array(reference.GetSize(), dtype=float)
    size_new = np.maximum(1, np.round(size_old * sp_old / sp_new)).astype(int)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    # keep the grid centred on the same extent: first corner c0 = origin - sp_old / 2
    extent_old, extent_new = size_old * sp_old, size_new * sp_new
    shift = 0.5 * (sp_new - sp_old) + 0.5 * (extent_old - extent_new)
    origin = np.array(reference.GetOrigin()) + direction @ shift
    grid = sitk.Image([int(s) for s in size_new], sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in sp_new))
    grid.SetOrigin(tuple(float(o) for o in origin))
    grid.SetDirection(reference.GetDirection())
    return grid


def _resample(array: np.ndarray, source: sitk.Image, target: sitk.Image, interpolator) -> np.ndarray:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.CopyInformation(source)
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(target)
    f.SetInterpolator(interpolator)
    f.SetUseNearestNeighborExtrapolator(True)
    f.SetOutputPixelType(img.GetPixelID())
    return sitk.GetArrayFromImage(f.Execute(img))


class SpacingMap(GridMap):
    """Resample from the case's reference grid to the model's spacing, and back."""

    def __init__(self, reference: sitk.Image, spacing_zyx):
        self.case_grid = reference
        self.network_grid = grid_at_spacing(reference, spacing_zyx)
        self.network_shape = tuple(self.network_grid.GetSize()[::-1])
        self.network_spacing = tuple(float(s) for s in spacing_zyx)
        self.case_shape = tuple(reference.GetSize()[::-1])

    def _down(self, vol, interp):
        return _resample(vol, self.case_grid, self.network_grid, interp)

    def _up(self, vol, interp):
        return _resample(vol, self.network_grid, self.case_grid, interp)

    def image_to_network(self, image):
        image = np.asarray(image, dtype=np.float32)
        return np.stack([self._down(ch, sitk.sitkLinear) for ch in image])

    def mask_to_network(self, mask):
        mask = np.asarray(mask, dtype=bool)
        out = self._down(mask.astype(np.uint8), sitk.sitkNearestNeighbor).astype(bool)
        idx = np.argwhere(mask)
        if len(idx):  # the network voxel holding each case voxel's centre
            case_img, net = self.case_grid, self.network_grid
            pts = [case_img.TransformContinuousIndexToPhysicalPoint([float(v) for v in p[::-1]]) for p in idx]
            ijk = np.array([net.TransformPhysicalPointToContinuousIndex(p) for p in pts])[:, ::-1]
            ijk = np.clip(np.round(ijk).astype(int), 0, np.array(self.network_shape) - 1)
            out[tuple(ijk.T)] = True
        return out

    def to_case(self, array, kind):
        check_kind(kind)
        array = np.asarray(array)
        lead = array.shape[:-3]
        flat = array.reshape((-1,) + array.shape[-3:])
        if kind == "probability":
            res = [self._up(v.astype(np.float32), sitk.sitkLinear) for v in flat]
        elif kind == "segmentation":
            res = [self._up(v, sitk.sitkNearestNeighbor) for v in flat]
        else:
            res = [preserve_totals(v, self._up) for v in flat]
        return np.stack(res).reshape(lead + self.case_shape)


def preserve_totals(volume: np.ndarray, resample) -> np.ndarray:
    """Resample a relevance volume so that its positive and negative mass (hence its total) are kept exactly."""
    volume = np.asarray(volume, dtype=np.float64)
    out = None
    for part in (np.clip(volume, 0, None), np.clip(volume, None, 0)):
        mass = float(part.sum())
        up = resample(part.astype(np.float32), sitk.sitkLinear).astype(np.float64)
        got = float(up.sum())
        if mass != 0.0 and got != 0.0:
            up *= mass / got
        elif mass != 0.0:  # all of it fell between samples: put it on the nearest voxels
            up = resample(part.astype(np.float32), sitk.sitkNearestNeighbor).astype(np.float64)
            got = float(up.sum())
            up = up * (mass / got) if got != 0.0 else up
        out = up if out is None else out + up
    return out.astype(np.float32)


def grid_map(info, case) -> GridMap:
    """The map for ``case`` (a :class:`case_io.Case`) under a model's :class:`ModelInfo`."""
    if info.spacing is None or np.allclose(case.spacing_zyx, info.spacing, rtol=1e-3):
        return IdentityMap(case.shape, case.spacing_zyx)
    return SpacingMap(case.reference, info.spacing)


__all__ = ["GridMap", "IdentityMap", "SpacingMap", "grid_at_spacing", "grid_map", "preserve_totals", "KINDS"]

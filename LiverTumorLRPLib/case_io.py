"""Reading six-sequence cases and writing outputs atomically.

A case is a folder holding one image per sequence, named by its key
(``T2.nii.gz``, ``T1_plain.nrrd``, ... any format SimpleITK reads), or a DICOM
series sub-folder per sequence (``T1_20s/``), or a ``case.json`` mapping keys
(and optionally ``"label"`` and ``"name"``) to paths relative to the json.  An
optional ``label.*`` (0 background, 1 tumor) is the tumor mask.

Every sequence is brought onto the T1 15 min grid (the reference), normalised with
:func:`intensity.normalise_sequence` and stacked in the channel order of
:mod:`sequences`.  All writers here write to a temporary name in the target folder
and ``os.replace`` it, so no output is ever half-written.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import shutil
import struct
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .intensity import normalise_sequence
from .progress import as_progress
from .sequences import REFERENCE_KEY, SEQUENCE_KEYS, guess_sequence

IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CASE_JSON = "case.json"
LABEL_KEY = "label"


class GeometryWarning(UserWarning):
    """A series or label was not on the reference grid and was resampled."""


# --------------------------------------------------------------------------- the case

@dataclass
class Case:
    """One case: the (6, z, y, x) float32 stack in channel order and its reference geometry.

    ``spacing``, ``origin`` and ``direction`` are SimpleITK's (x, y, z) LPS values of
    ``reference``; ``spacing_zyx`` matches the numpy axes of ``image``.
    """

    name: str
    image: np.ndarray
    reference: sitk.Image
    files: dict = field(default_factory=dict)
    raw: Optional[np.ndarray] = None
    label: Optional[np.ndarray] = None
    transforms: dict = field(default_factory=dict)
    channels: tuple = SEQUENCE_KEYS   # the channel keys of ``image``, in order

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.reference.GetSpacing())

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.reference.GetSpacing()[::-1])

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(self.reference.GetOrigin())

    @property
    def direction(self) -> tuple[float, ...]:
        return tuple(self.reference.GetDirection())

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.reference.GetSpacing()))

    def sequence(self, key: str) -> np.ndarray:
        """The (z, y, x) channel of sequence ``key``."""
        return self.image[self.channels.index(_check_key(key, self.channels))]

    def to_image(self, array: np.ndarray, dtype=None) -> sitk.Image:
        """A SimpleITK image of a (z, y, x) array with this case's geometry."""
        return array_to_image(array, self.reference, dtype)


def reference_key(keys=SEQUENCE_KEYS) -> str:
    """The sequence every other one is brought onto: T1 15 min when the model takes it, else the first."""
    return REFERENCE_KEY if REFERENCE_KEY in keys else keys[0]


def _check_key(key: str, keys=SEQUENCE_KEYS) -> str:
    if key not in keys:
        raise ValueError(f"unknown sequence {key!r}; expected one of {', '.join(keys)}")
    return key


# --------------------------------------------------------------------------- finding files

def _split_ext(name: str) -> tuple[str, str]:
    """(stem, extension) with a known image extension (longest first), else ('', '')."""
    low = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return "", ""


def _folder_entries(folder: str) -> list[str]:
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


def _find_in_folder(folder: str, keys=SEQUENCE_KEYS) -> dict[str, str]:
    """key -> path of the sequence files / DICOM folders (and the label) of a case folder."""
    found: dict[str, list[str]] = {}
    wanted = {k.lower(): k for k in (*keys, LABEL_KEY)}
    for entry in _folder_entries(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            key = wanted.get(entry.lower())
        else:
            stem, _ = _split_ext(entry)
            key = wanted.get(stem.lower()) if stem else None
        if key is not None:
            found.setdefault(key, []).append(path)
    files = {}
    for key, paths in found.items():
        if len(paths) > 1:
            raise ValueError(f"case folder {folder}: sequence {key} is ambiguous, found "
                             f"{', '.join(os.path.basename(p) for p in paths)}; keep one")
        files[key] = paths[0]
    return files


def _find_from_json(json_path: str, keys=SEQUENCE_KEYS) -> tuple[dict[str, str], Optional[str]]:
    try:
        with open(json_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{json_path}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: expected an object mapping sequence keys to paths")
    base = os.path.dirname(os.path.abspath(json_path))
    name = data.get("name")
    files = {}
    for key, value in data.items():
        if key == "name":
            continue
        if key not in keys and key != LABEL_KEY:
            raise ValueError(f"{json_path}: unknown key {key!r}; expected {', '.join(keys)}, "
                             f"'{LABEL_KEY}' or 'name'")
        if not isinstance(value, str) or not value:
            raise ValueError(f"{json_path}: {key} must be a path string, got {value!r}")
        path = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{json_path}: {key} file {path} does not exist")
        files[key] = path
    return files, (str(name) if name is not None else None)


def case_files(path: str, sequences=None) -> tuple[str, dict[str, str]]:
    """(case name, key -> path) of a case folder or ``case.json``; FileNotFoundError lists what is missing."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"case {path} does not exist")
    keys = tuple(sequences or SEQUENCE_KEYS)
    json_path = path if os.path.isfile(path) else os.path.join(path, CASE_JSON)
    folder = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else path
    name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
    if os.path.isfile(path) and not path.lower().endswith(".json"):
        raise ValueError(f"{path}: a case is a folder or a case.json file, not a single image")
    if os.path.isfile(json_path):
        files, json_name = _find_from_json(json_path, keys)
        name = json_name or name
        where = json_path
    else:
        files = _find_in_folder(folder, keys)
        where = f"case folder {folder}"
    missing = [k for k in keys if k not in files]
    if missing:
        entries = _folder_entries(folder)
        hints = []
        for e in entries:
            guess = guess_sequence(_split_ext(e)[0] or e)
            if guess in missing:
                hints.append(f"{e!r} looks like {guess} (rename it to {guess}{_split_ext(e)[1]} or use {CASE_JSON})")
        msg = (f"{where}: missing sequence(s) {', '.join(missing)}; found: "
               f"{', '.join(k for k in keys if k in files) or 'none'}; "
               f"files in {folder}: {', '.join(entries) or 'none'}")
        if hints:
            msg += "; " + "; ".join(hints)
        raise FileNotFoundError(msg)
    return name, files


def _names_a_sequence(folder: str, entry: str) -> bool:
    """True for an image file or DICOM folder named by a sequence key, or a name ``guess_sequence`` recognises.

    A guessed sub-folder name counts only for a leaf folder (files, no sub-folders: a DICOM series), so a
    cohort folder called e.g. ``native_study`` is searched, not taken for a case."""
    path = os.path.join(folder, entry)
    if os.path.isdir(path):
        if entry.lower() in {k.lower() for k in SEQUENCE_KEYS}:
            return True
        try:
            inner = _folder_entries(path)
        except OSError:
            return False
        leaf = bool(inner) and not any(os.path.isdir(os.path.join(path, e)) for e in inner)
        return leaf and guess_sequence(entry) is not None
    stem, _ = _split_ext(entry)
    return bool(stem) and guess_sequence(stem) is not None


def find_cases(root: str, exclude=()) -> list[str]:
    """Every case folder under ``root``, sorted: a folder holding a ``case.json`` or any sequence file or DICOM
    folder (by key or a name :func:`sequences.guess_sequence` recognises), so that a case missing some
    sequences is found (and then fails with its reason) rather than dropped.  A case's own sub-folders are
    not searched; folders in ``exclude`` (e.g. the output folder) are skipped."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder")
    skip = {os.path.realpath(os.fspath(e)) for e in exclude}
    cases = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) not in skip)
        visible = [n for n in names if not n.startswith(".")]
        if CASE_JSON in visible or any(_names_a_sequence(folder, e) for e in (*visible, *dirs)):
            cases.append(folder)
            dirs[:] = []
    return sorted(cases)


# --------------------------------------------------------------------------- reading images

def _read_dicom_folder(folder: str) -> sitk.Image:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not ids:
        raise ValueError("no DICOM series in the folder")
    if len(ids) > 1:
        counts = [f"{i} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, i))} files)" for i in ids]
        raise ValueError(f"{len(ids)} DICOM series in the folder ({', '.join(counts)}); keep one series per folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, ids[0]))
    return reader.Execute()


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
        image = _read_dicom_folder(path) if os.path.isdir(path) else sitk.ReadImage(path)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise ValueError(f"{what} ({path}): cannot be read ({lines[-1] if lines else 'unknown error'})") from None
    except ValueError as e:
        raise ValueError(f"{what} ({path}): {e}") from None
    image = check_image(image, what, path)
    bad = _nifti_nonfinite(path)
    if bad:
        raise ValueError(f"{what} ({path}): contains {bad} NaN or infinite voxels")
    return image


def check_image(image: sitk.Image, what: str = "image", path: str = "in-memory image") -> sitk.Image:
    """A 3D scalar float32 copy of ``image``; ValueError (naming ``what`` and ``path``) if it is unusable."""
    where = f"{what} ({path})"
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{where}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "expected a scalar (grey-value) image")
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    elif dim != 3:
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


# --------------------------------------------------------------------------- geometry

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


def _fmt_box(image: sitk.Image) -> str:
    lo, hi = physical_bounds(image)
    return "x {:.0f}..{:.0f}, y {:.0f}..{:.0f}, z {:.0f}..{:.0f} mm".format(*np.stack([lo, hi], 1).ravel())


def _require_overlap(image: sitk.Image, reference: sitk.Image, where: str) -> None:
    if overlap_fraction(image, reference) <= 0.0:
        raise ValueError(f"{where}: does not overlap the {REFERENCE_KEY} reference (its extent {_fmt_box(image)}; "
                         f"reference {_fmt_box(reference)}); check its origin, spacing and orientation")


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


# --------------------------------------------------------------------------- building a case

def case_from_images(images: Mapping[str, Any], name: str = "case", label: Any = None, normalise: bool = True,
                     register: bool = False, progress=None, files: Optional[Mapping[str, str]] = None,
                     keep_raw: bool = True, orient: Optional[str] = None, bspline: bool = True,
                     sequences=None) -> Case:
    """Build a :class:`Case` from in-memory images: key -> SimpleITK image (or (z, y, x) numpy array).

    Numpy arrays take the geometry of the T1_15min SimpleITK image when there is one
    (else unit spacing); ``label`` likewise.  ``files`` (key -> path) only names the
    sources in errors and in ``Case.files``.  ``orient`` (e.g. ``"LPS"``) reorients every
    image with ``sitk.DICOMOrient`` first.  See :func:`read_case` for the rest.
    """
    progress = as_progress(progress)
    files = dict(files or {})
    keys = tuple(sequences or SEQUENCE_KEYS)
    ref_key = reference_key(keys)
    unknown = [k for k in images if k not in keys]
    if unknown:
        raise ValueError(f"unknown sequence(s) {', '.join(map(str, unknown))}; expected {', '.join(keys)}")
    missing = [k for k in keys if k not in images or images[k] is None]
    if missing:
        raise ValueError(f"case {name}: missing sequence(s) {', '.join(missing)}; "
                         f"found: {', '.join(k for k in keys if k not in missing) or 'none'}")
    geometry = images[ref_key] if isinstance(images[ref_key], sitk.Image) else None

    def as_image(value, what: str) -> sitk.Image:
        src = files.get(what, "in-memory image")
        if isinstance(value, sitk.Image):
            img = value
        else:
            arr = np.asarray(value)
            if arr.ndim != 3:
                raise ValueError(f"{what} ({src}): array of shape {arr.shape}; expected a 3D (z, y, x) volume")
            img = sitk.GetImageFromArray(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
            if geometry is not None and tuple(geometry.GetSize()) == tuple(img.GetSize()):
                img.CopyInformation(geometry)
        img = check_image(img, what, src) if what != LABEL_KEY else img
        if orient and img.GetDimension() == 3:
            img = sitk.DICOMOrient(img, orient)
        return img

    checked = {k: as_image(images[k], k) for k in keys}
    reference = checked[ref_key]
    raws, transforms = [], {}
    n_moving = len(keys) - 1
    done = 0
    for key in keys:
        img = checked[key]
        where = f"{key} ({files.get(key, 'in-memory image')})"
        if key != ref_key:
            _require_overlap(img, reference, where)
            grid_differs = not same_grid(img, reference)
            if grid_differs:
                warnings.warn(f"{where}: grid (size {img.GetSize()}, spacing "
                              f"{tuple(round(s, 3) for s in img.GetSpacing())}) differs from {ref_key}; "
                              f"resampled onto the {ref_key} grid", GeometryWarning, stacklevel=3)
            if register:
                progress(0.1 + 0.8 * done / n_moving, f"registering {key} to {ref_key}")
                from .registration import register_to_reference
                img, transforms[key] = register_to_reference(img, reference, bspline=bspline)
                done += 1
            elif grid_differs:
                lo = float(sitk.GetArrayViewFromImage(img).min())
                img = sitk.Resample(img, reference, sitk.Transform(), sitk.sitkLinear, lo, sitk.sitkFloat32)
        raws.append(sitk.GetArrayFromImage(img).astype(np.float32, copy=False))
    progress(0.9, "normalising")
    raw = np.stack(raws)
    if normalise:
        stack = np.empty_like(raw)
        for c, key in enumerate(keys):
            try:
                stack[c] = normalise_sequence(raw[c], f"{key} ({files.get(key, 'in-memory image')})")
            except ValueError as e:
                msg = str(e)
                if "constant" in msg and key != ref_key:
                    msg += f" on the {ref_key} grid"
                raise ValueError(msg) from None
    else:
        stack = raw
    lab = None
    if label is not None:
        lab = _label_array(as_image(label, LABEL_KEY), reference, files.get(LABEL_KEY, "in-memory image"))
    progress(1.0, "case read")
    return Case(name=name, image=stack, reference=reference, files=files,
                raw=(raw if keep_raw else None) if normalise else raw, label=lab, transforms=transforms,
                channels=keys)


load_case_arrays = case_from_images


def _label_array(image: sitk.Image, reference: sitk.Image, path: str) -> np.ndarray:
    where = f"{LABEL_KEY} ({path})"
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{where}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "expected a scalar label map (0 background, 1 tumor)")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise ValueError(f"{where}: is a {image.GetDimension()}D image of size {image.GetSize()}; "
                         f"expected a 3D label map on the {REFERENCE_KEY} grid")
    if not same_grid(image, reference):
        if tuple(image.GetSize()) == tuple(reference.GetSize()) and overlap_fraction(image, reference) < 0.5:
            warnings.warn(f"{where}: has the {REFERENCE_KEY} size but another geometry (lost header?); "
                          "used voxel for voxel", GeometryWarning, stacklevel=4)
            image = sitk.Image(image)
            image.CopyInformation(reference)
        elif overlap_fraction(image, reference) <= 0.0:
            raise ValueError(f"{where}: size {image.GetSize()} differs from the {REFERENCE_KEY} size "
                             f"{reference.GetSize()} and its extent ({_fmt_box(image)}) does not overlap the "
                             f"reference ({_fmt_box(reference)}); cannot resample it")
        else:
            warnings.warn(f"{where}: grid differs from {REFERENCE_KEY}; resampled (nearest neighbour)",
                          GeometryWarning, stacklevel=4)
            image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                  image.GetPixelID())
    arr = sitk.GetArrayFromImage(image)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: contains NaN or infinite voxels")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{where}: has non-integer values; expected 0 (background) and 1 (tumor)")
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in (0, 1)]
    if bad:
        raise ValueError(f"{where}: has values {', '.join(f'{v:g}' for v in bad[:10])}; "
                         "expected only 0 (background) and 1 (tumor)")
    return arr.astype(np.uint8)


def read_case(path: str, normalise: bool = True, register: bool = False, progress=None, *,
              keep_raw: bool = True, orient: Optional[str] = None, bspline: bool = True, sequences=None) -> Case:
    """Read a case folder (or its ``case.json``) into a :class:`Case`.

    Sequences on another grid than T1_15min are resampled onto it (linear, with a
    :class:`GeometryWarning`); ``register=True`` instead registers every sequence to
    T1_15min (rigid + B-spline, see :mod:`registration`).  ``normalise`` applies
    :func:`intensity.normalise_sequence` per sequence; ``raw`` keeps the un-normalised
    stack.  ``progress(fraction, message)`` is called along the way.
    """
    progress = as_progress(progress)
    keys = tuple(sequences or SEQUENCE_KEYS)
    name, files = case_files(path, keys)
    images = {}
    for i, key in enumerate(keys):
        progress(0.1 * i / len(keys), f"reading {key}")
        images[key] = read_image(files[key], key)
    label = None
    if LABEL_KEY in files:
        label = _read_label(files[LABEL_KEY])
    return case_from_images(images, name=name, label=label, normalise=normalise, register=register,
                            progress=progress, files=files, keep_raw=keep_raw, orient=orient, bspline=bspline,
                            sequences=keys)


def _read_label(path: str) -> sitk.Image:
    where = f"{LABEL_KEY} ({path})"
    try:
        return _read_dicom_folder(path) if os.path.isdir(path) else sitk.ReadImage(path)
    except (RuntimeError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise ValueError(f"{where}: cannot be read ({lines[-1] if lines else 'unknown error'})") from None


# --------------------------------------------------------------------------- atomic writing

def _temp_name(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = _split_ext(base)
    if not stem:
        stem, ext = os.path.splitext(base)
    return os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:8]}{ext}")


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """``with atomic_output(p) as tmp: write(tmp)``: ``tmp`` (same folder and extension) replaces ``p`` on success."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"{path}: nothing was written")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_image(array: Any, reference: sitk.Image, path: str, dtype=None, compress: bool = True) -> str:
    """Write a (z, y, x) array (or a SimpleITK image) with ``reference``'s geometry to ``path`` atomically.

    The file is written under its final name in a hidden temporary folder next to
    ``path`` (so detached headers such as .mhd/.raw stay consistent) and moved into
    place with ``os.replace``; a failed write leaves nothing behind.  Returns ``path``.
    """
    path = os.fspath(path)
    if isinstance(array, sitk.Image):
        reference = reference if reference is not None else array
        array = sitk.GetArrayFromImage(array)
    try:
        image = array_to_image(array, reference, dtype)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=folder)
    try:
        try:
            sitk.WriteImage(image, os.path.join(tmpdir, base), useCompression=compress)
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            raise ValueError(f"{path}: cannot be written ({lines[-1] if lines else 'unknown error'})") from None
        produced = sorted(os.listdir(tmpdir), key=lambda n: n == base)  # data files first, the header last
        for name in produced:
            os.replace(os.path.join(tmpdir, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(obj: Any, path: str, indent: int = 2) -> str:
    """Write ``obj`` as JSON atomically (numpy values converted, NaN/inf written as null)."""
    text = json.dumps(_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    return write_text(text + "\n", path)


def write_text(text: str, path: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
    return os.fspath(path)


def write_bytes(data: bytes, path: str) -> str:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return os.fspath(path)

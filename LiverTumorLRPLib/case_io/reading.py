"""Building a :class:`.Case`: from a case on disk (:func:`read_case`, which finds its files with
:func:`case_source`) or from images in memory (:func:`case_from_images`): every sequence onto the reference
grid, normalised, stacked in channel order."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from ..dicom.files import dicom_module, is_dicom_study
from ..intensity import normalise_sequence
from ..progress import as_progress
from ..sequences import SEQUENCE_KEYS
from .case import Case, CaseSource, reference_key
from .channels import brats_file
from .datasets import dataset_cases, dataset_source, is_images_folder, label_file, lesion_label
from .folders import case_files
from .grid import GeometryWarning, require_overlap, same_grid
from .images import check_image, read_channels, read_image
from .labels import label_on_grid, read_label
from .names import LABEL_KEY, split_image_ext


def _check_sequences(images: Mapping[str, Any], keys: tuple, name: str) -> None:
    unknown = [k for k in images if k not in keys]
    if unknown:
        raise ValueError(f"unknown sequence(s) {', '.join(map(str, unknown))}; expected {', '.join(keys)}")
    missing = [k for k in keys if k not in images or images[k] is None]
    if missing:
        raise ValueError(f"case {name}: missing sequence(s) {', '.join(missing)}; "
                         f"found: {', '.join(k for k in keys if k not in missing) or 'none'}")


def _as_image(value, what: str, src: str, geometry: Optional[sitk.Image], orient: Optional[str]) -> sitk.Image:
    """A SimpleITK image of ``value`` (an image, or a (z, y, x) array that takes ``geometry`` when its size
    matches), checked unless it is the label, reoriented to ``orient``."""
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


def _onto_reference(checked: dict, keys: tuple, ref_key: str, files: Mapping[str, str], register: bool,
                    bspline: bool, progress) -> tuple[list, dict]:
    """The (z, y, x) float32 arrays of every sequence on the reference grid (resampled or registered), and
    the registration transforms."""
    reference = checked[ref_key]
    raws, transforms = [], {}
    n_moving = len(keys) - 1
    done = 0
    for key in keys:
        img = checked[key]
        where = f"{key} ({files.get(key, 'in-memory image')})"
        if key != ref_key:
            require_overlap(img, reference, where)
            grid_differs = not same_grid(img, reference)
            if grid_differs:
                warnings.warn(f"{where}: grid (size {img.GetSize()}, spacing "
                              f"{tuple(round(s, 3) for s in img.GetSpacing())}) differs from {ref_key}; "
                              f"resampled onto the {ref_key} grid", GeometryWarning, stacklevel=4)
            if register:
                progress(0.1 + 0.8 * done / n_moving, f"registering {key} to {ref_key}")
                from ..registration import register_to_reference
                img, transforms[key] = register_to_reference(img, reference, bspline=bspline)
                done += 1
            elif grid_differs:
                lo = float(sitk.GetArrayViewFromImage(img).min())
                img = sitk.Resample(img, reference, sitk.Transform(), sitk.sitkLinear, lo, sitk.sitkFloat32)
        raws.append(sitk.GetArrayFromImage(img).astype(np.float32, copy=False))
    return raws, transforms


def _normalised(raw: np.ndarray, keys: tuple, ref_key: str, files: Mapping[str, str]) -> np.ndarray:
    stack = np.empty_like(raw)
    for c, key in enumerate(keys):
        try:
            stack[c] = normalise_sequence(raw[c], f"{key} ({files.get(key, 'in-memory image')})")
        except ValueError as e:
            msg = str(e)
            if "constant" in msg and key != ref_key:
                msg += f" on the {ref_key} grid"
            raise ValueError(msg) from None
    return stack


def case_from_images(images: Mapping[str, Any], name: str = "case", label: Any = None, normalise: bool = True,
                     register: bool = False, progress=None, files: Optional[Mapping[str, str]] = None,
                     keep_raw: bool = True, orient: Optional[str] = None, bspline: bool = True,
                     sequences=None, lesion=None, classes: Optional[Mapping[int, str]] = None) -> Case:
    """Build a :class:`Case` from in-memory images: key -> SimpleITK image (or (z, y, x) numpy array).

    Numpy arrays take the geometry of the T1_15min SimpleITK image when there is one
    (else unit spacing); ``label`` likewise.  ``files`` (key -> path) only names the
    sources in errors and in ``Case.files``.  ``orient`` (e.g. ``"LPS"``) reorients every
    image with ``sitk.DICOMOrient`` first.  ``lesion`` and ``classes``: ``label`` is a multi-class map, of which
    the lesion values are the mask (:func:`.labels.label_on_grid`; None: a 0/1 mask).  See :func:`read_case`
    for the rest.
    """
    progress = as_progress(progress)
    files = dict(files or {})
    keys = tuple(sequences or SEQUENCE_KEYS)
    ref_key = reference_key(keys)
    _check_sequences(images, keys, name)
    geometry = images[ref_key] if isinstance(images[ref_key], sitk.Image) else None
    checked = {k: _as_image(images[k], k, files.get(k, "in-memory image"), geometry, orient) for k in keys}
    reference = checked[ref_key]
    raws, transforms = _onto_reference(checked, keys, ref_key, files, register, bspline, progress)
    progress(0.9, "normalising")
    raw = np.stack(raws)
    stack = _normalised(raw, keys, ref_key, files) if normalise else raw
    lab = None
    if label is not None:
        src = files.get(LABEL_KEY, "in-memory image")
        lab = label_on_grid(_as_image(label, LABEL_KEY, src, geometry, orient), reference, src, lesion, classes)
    progress(1.0, "case read")
    return Case(name=name, image=stack, reference=reference, files=files,
                raw=(raw if keep_raw else None) if normalise else raw, label=lab, transforms=transforms,
                channels=keys)


load_case_arrays = case_from_images


def dicom_source(path: str, keys: tuple, overrides=None) -> CaseSource:
    """A DICOM study folder: the model's sequences found among its series by their headers
    (:func:`..dicom.read_dicom_study`; ``overrides``: key -> series UID), its manual tumor SEG as the label."""
    study = dicom_module("study", path)
    images, label, mapping = study.read_dicom_study(path, sequences=keys, overrides=overrides)
    print(f"{path}: DICOM study, sequences chosen:\n{study.describe_mapping(mapping)}", file=sys.stderr)
    files = {m["key"]: m["files"][0] for m in mapping}
    return CaseSource(os.path.basename(os.path.normpath(path)), files, reader=images.__getitem__,
                      kind="DICOM study", label_image=label, dicom=mapping)


def case_source(path: str, sequences=None, *, labels: Optional[str] = None, lesion=None,
                model_classes=None, dicom_overrides=None) -> CaseSource:
    """Where the case ``path`` names keeps its channels and label, for a model with channels ``sequences``.

    ``path``: a case folder or its ``case.json`` (BraTS file names for a BraTS model), or an nnU-Net / MSD case:
    its first channel file, ``FOLDER/CASE`` or its 4D file (:mod:`.datasets`).  ``labels``: a folder of
    ``CASE.*`` labels instead of the dataset's ``labelsTs``/``labelsTr`` (or a case folder's ``label.*``);
    ``lesion`` and ``model_classes``: the model's lesion class and class names, which pick the lesion out of a
    multi-class label.  A folder of DICOM files from one study (nested any way, no file named by a sequence key)
    is read by its headers (:func:`dicom_source`; ``dicom_overrides``: key -> series UID).
    FileNotFoundError / ValueError in one line naming the file."""
    keys = tuple(sequences or SEQUENCE_KEYS)
    path = os.fspath(path)
    if is_dicom_study(path):
        return dicom_source(path, keys, dicom_overrides)
    src = dataset_source(path, keys, labels, lesion, model_classes)
    if src is not None:
        return src
    if os.path.isdir(path) and is_images_folder(path):
        cases = [os.path.basename(c) for c in dataset_cases(path)]
        raise ValueError(f"{path}: an nnU-Net dataset folder of {len(cases)} cases ({', '.join(cases[:3])}"
                         f"{', ...' if len(cases) > 3 else ''}); give one case ({os.path.join(path, 'CASE')} or its "
                         "first file CASE_0000.nii.gz), or run liver-lrp cohort on the folder")
    name, files = case_files(path, keys)
    src = CaseSource(name, files)
    if labels is not None:
        src.files[LABEL_KEY] = label_file(labels, name, explicit=True)
    if LABEL_KEY in src.files:
        stem = split_image_ext(os.path.basename(src.files[LABEL_KEY]))[0]
        if brats_file(stem, keys) == LABEL_KEY:
            src.lesion = "nonzero"  # BraTS: every tumor sub-region (the whole tumor)
        elif labels is not None:
            src.lesion, src.classes = lesion_label({}, lesion, model_classes)
    return src


def _read_images(src: CaseSource, keys: tuple, progress) -> dict:
    """key -> image of every channel of ``src`` (a multi-channel file is read once)."""
    images, split = {}, {}
    for i, key in enumerate(keys):
        progress(0.1 * i / len(keys), f"reading {key}")
        path = src.files[key]
        if src.reader is not None:
            images[key] = check_image(src.reader(key), key, path)
        elif key in src.volumes:
            if path not in split:
                split[path] = read_channels(path, key)
            images[key] = check_image(split[path][src.volumes[key]], key, f"{path}, channel {src.volumes[key]}")
        else:
            images[key] = read_image(path, key)
    return images


def read_case(path: str, normalise: bool = True, register: bool = False, progress=None, *,
              keep_raw: bool = True, orient: Optional[str] = None, bspline: bool = True, sequences=None,
              labels: Optional[str] = None, lesion=None, model_classes=None, dicom_overrides=None) -> Case:
    """Read a case into a :class:`Case`: a case folder (or its ``case.json``), or an nnU-Net / MSD case (its first
    channel file ``imagesTs/CASE_0000.nii.gz``, ``imagesTs/CASE`` or an MSD 4D file); see :func:`case_source`
    for ``labels``, ``lesion`` and ``model_classes`` (the model's lesion class and class names).

    Sequences on another grid than T1_15min are resampled onto it (linear, with a
    :class:`GeometryWarning`); ``register=True`` instead registers every sequence to
    T1_15min (rigid + B-spline, see :mod:`registration`).  ``normalise`` applies
    :func:`intensity.normalise_sequence` per sequence; ``raw`` keeps the un-normalised
    stack.  ``progress(fraction, message)`` is called along the way.
    """
    progress = as_progress(progress)
    keys = tuple(sequences or SEQUENCE_KEYS)
    src = case_source(path, keys, labels=labels, lesion=lesion, model_classes=model_classes,
                      dicom_overrides=dicom_overrides)
    images = _read_images(src, keys, progress)
    label = read_label(src.files[LABEL_KEY]) if LABEL_KEY in src.files else src.label_image
    case = case_from_images(images, name=src.name, label=label, normalise=normalise, register=register,
                            progress=progress, files=src.files, keep_raw=keep_raw, orient=orient, bspline=bspline,
                            sequences=keys, lesion=src.lesion, classes=src.classes)
    case.dicom = src.dicom
    return case

"""Finding a case's files: case folders (one image or DICOM folder per sequence, named by its key, or BraTS
file names for a BraTS model), ``case.json``, and every case under a folder (nnU-Net and MSD datasets: one
case per case id, see :mod:`.datasets`)."""
from __future__ import annotations

import json
import os
from typing import Optional

from ..dicom.files import dicom_module, is_dicom_study
from ..sequences import SEQUENCE_KEYS, guess_sequence
from .channels import brats_file, looks_like_brats_file
from .datasets import dataset_cases, is_images_folder, is_labels_folder
from .names import CASE_JSON, LABEL_KEY, folder_entries, split_image_ext


def _find_in_folder(folder: str, keys=SEQUENCE_KEYS) -> dict[str, str]:
    """key -> path of the sequence files / DICOM folders (and the label) of a case folder."""
    found: dict[str, list[str]] = {}
    wanted = {k.lower(): k for k in (*keys, LABEL_KEY)}
    for entry in folder_entries(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            key = wanted.get(entry.lower())
        else:
            stem, _ = split_image_ext(entry)
            key = (wanted.get(stem.lower()) or brats_file(stem, keys)) if stem else None
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
        entries = folder_entries(folder)
        hints = []
        for e in entries:
            guess = guess_sequence(split_image_ext(e)[0] or e)
            if guess in missing:
                hints.append(f"{e!r} looks like {guess} (rename it to {guess}{split_image_ext(e)[1]} or use {CASE_JSON})")
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
            inner = folder_entries(path)
        except OSError:
            return False
        leaf = bool(inner) and not any(os.path.isdir(os.path.join(path, e)) for e in inner)
        return leaf and guess_sequence(entry) is not None
    stem, _ = split_image_ext(entry)
    return bool(stem) and (guess_sequence(stem) is not None or looks_like_brats_file(stem))


def find_cases(root: str, exclude=()) -> list[str]:
    """Every case under ``root``, sorted: a folder holding a ``case.json`` or any sequence file or DICOM
    folder (by key, a name :func:`sequences.guess_sequence` recognises or a BraTS file name), so that a case
    missing some sequences is found (and then fails with its reason) rather than dropped; and in an nnU-Net or
    MSD images folder (``imagesTs``, ``imagesTr``, or a folder of ``CASE_0000.nii.gz`` files) each case as
    ``FOLDER/CASE`` (:func:`.datasets.dataset_cases`; the ``labelsTs``/``labelsTr`` beside it are not
    searched); and every DICOM study (a folder of DICOM files nested any way, found by StudyInstanceUID).  A case's own sub-folders are not searched; folders in ``exclude`` (e.g. the output folder) are
    skipped."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder")
    skip = {os.path.realpath(os.fspath(e)) for e in exclude}
    cases = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) not in skip)
        visible = [n for n in names if not n.startswith(".")]
        if is_images_folder(folder, visible):
            cases.extend(dataset_cases(folder))
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not is_labels_folder(folder, d)]
        if CASE_JSON in visible or any(_names_a_sequence(folder, e) for e in (*visible, *dirs)):
            cases.append(folder)
            dirs[:] = []
        elif is_dicom_study(folder):
            cases.extend(dicom_study_folders(folder))
            dirs[:] = []
    return sorted(cases)


def dicom_study_folders(folder: str) -> list:
    """The folder of each DICOM study under ``folder`` (the deepest one holding all its files); files of two
    studies in one folder give that folder once, which then fails as a case naming both studies."""
    headers = dicom_module("headers", folder)
    return sorted({entry["folder"] for entry in headers.dicom_studies(folder).values()})

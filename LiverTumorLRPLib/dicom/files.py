"""Finding DICOM files in a folder nested any way, without reading them (no pydicom needed here): a DICOM
Part 10 file has ``DICM`` at byte 128."""
from __future__ import annotations

import os

MAGIC_OFFSET = 128


def is_dicom_file(path: str) -> bool:
    """True when ``path`` is a DICOM Part 10 file (the ``DICM`` preamble marker), whatever its name."""
    try:
        with open(path, "rb") as fh:
            fh.seek(MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: str) -> list:
    """Every DICOM file under ``folder`` (any depth, hidden and temporary files skipped), sorted by path."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or ".tmp-" in name or name.upper() == "DICOMDIR":
                continue
            path = os.path.join(root, name)
            if is_dicom_file(path):
                found.append(path)
    return found


def is_dicom_study(folder: str, min_files: int = 2) -> bool:
    """True when ``folder`` holds DICOM files at any depth (at least ``min_files``) and no image named by a
    sequence key at its top level -- a study straight from a scanner or PACS, not a case folder with one
    DICOM sub-folder per sequence (``T1_20s/``), which the case reader reads as before."""
    from ..sequences import SEQUENCE_KEYS

    if not os.path.isdir(folder):
        return False
    top = {os.path.splitext(os.path.splitext(n)[0])[0] for n in os.listdir(folder)}
    if top & set(SEQUENCE_KEYS):
        return False
    count = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if not name.startswith(".") and is_dicom_file(os.path.join(root, name)):
                count += 1
                if count >= min_files:
                    return True
    return False


def dicom_module(name: str, where: str):
    """``LiverTumorLRPLib.dicom.<name>``, or one ValueError line naming ``where`` when the ``dicom`` extra
    (pydicom, highdicom) is not installed."""
    import importlib

    try:
        return importlib.import_module(f"LiverTumorLRPLib.dicom.{name}")
    except ImportError as exc:
        raise ValueError(f"{where}: a DICOM study; reading it needs the dicom extra (pip install "
                         f"'LiverTumorLRP[dicom]'): {exc}") from None

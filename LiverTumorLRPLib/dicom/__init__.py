"""DICOM studies in, DICOM SEG and Parametric Maps out, a PACS through DICOMweb.

- :mod:`.files`: finding DICOM files (``is_dicom_study``; no pydicom needed).
- :mod:`.headers`: series by their headers, multi-phase series split into phases.
- :mod:`.identify`: which phase is which of the model's sequences, and why.
- :mod:`.study`: ``read_dicom_study`` (images, ground-truth label, ``sequences.json`` mapping).
- :mod:`.mr`: MR image series as pydicom datasets on a SimpleITK grid.
- :mod:`.phantom`: a phantom case as a realistic study (``liver-lrp phantom --dicom``).
- :mod:`.write`: ``write_dicom_outputs`` (DICOM SEG, Parametric Maps, with highdicom).
- :mod:`.pacs`: a study in by its UID (``retrieve_study``, WADO-RS), results back (``store``, STOW-RS).

Only :mod:`.files` is imported here; the others need the ``dicom`` extra (pydicom, highdicom,
dicomweb-client) and are imported on first use of their names.
"""
from __future__ import annotations

import importlib

from .files import dicom_files, is_dicom_file, is_dicom_study

_LAZY = {
    "read_dicom_study": "study", "dicom_studies": "headers", "read_phase": "study", "source_datasets": "study",
    "sequences_record": "study", "write_sequences_json": "study", "describe_mapping": "study",
    "write_phantom_study": "phantom", "write_phantom_studies": "phantom", "PhantomStudy": "phantom",
    "write_dicom_outputs": "write", "read_dicom_volume": "write", "store": "pacs",
    "tumor_segmentation": "write", "relevance_map": "write", "retrieve_study": "pacs",
}

__all__ = ["dicom_files", "is_dicom_file", "is_dicom_study", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""File names shared by every case layout: image extensions, ``case.json``, the label key, listing a folder."""
from __future__ import annotations

import os

IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CASE_JSON = "case.json"
LABEL_KEY = "label"


def split_image_ext(name: str) -> tuple[str, str]:
    """(stem, extension) with a known image extension (longest first), else ('', '')."""
    low = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return "", ""


def folder_entries(folder: str) -> list[str]:
    """The visible entries of ``folder`` (no dot files), sorted."""
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))

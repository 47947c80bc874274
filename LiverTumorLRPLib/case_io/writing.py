"""Writing outputs atomically: every writer writes to a temporary name in the target folder and ``os.replace``s
it, so no output is ever half-written."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from .names import split_image_ext
from .grid import array_to_image
from .images import itk_message


def _temp_name(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = split_image_ext(base)
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
            raise ValueError(f"{path}: cannot be written ({itk_message(e)})") from None
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

"""nnU-Net and Medical Segmentation Decathlon datasets: cases in an ``imagesTs``/``imagesTr`` folder.

nnU-Net: one file per channel, ``CASE_0000.nii.gz`` ... ``CASE_000N.nii.gz`` (channel i is ``_000i``), the
label ``CASE.nii.gz`` in the sibling ``labelsTs``/``labelsTr`` (or an explicit labels folder).  MSD: one 4D
file per case, ``CASE.nii.gz``, the channels in its 4th dimension.  A case is named by its first file
(``imagesTs/CASE_0000.nii.gz``), by ``FOLDER/CASE`` (its id) or, for MSD, by its file.

Channel numbers become the model's channel names through the dataset's own ``dataset.json`` (in the images
folder or the folder above it: ``channel_names``, or MSD's ``modality``), each name matched to a model
channel by :func:`.channels.match_channel`; without one, channel i is the model's i-th channel.  Labels are
multi-class (0 background, 1 liver, 2 tumor, ...): the lesion is the model's lesion class, found by name in the
dataset.json ``labels`` (else by a lesion word such as tumour, lesion, cancer), or without a dataset.json the
model's lesion index.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from typing import Optional

import SimpleITK as sitk

from .case import CaseSource
from .channels import match_channel
from .names import LABEL_KEY, folder_entries, split_image_ext

DATASET_JSON = "dataset.json"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_IMAGES_FOLDER = re.compile(r"^images(?P<part>tr|ts)$", re.IGNORECASE)
_LABELS_FOLDER = re.compile(r"^labels(?P<part>tr|ts)$", re.IGNORECASE)
# names of the lesion class when a dataset's labels do not name the model's own
LESION_WORDS = ("tumor", "tumour", "tumors", "tumours", "lesion", "lesions", "cancer", "carcinoma", "hcc",
                "metastasis", "metastases", "mass", "neoplasm")


def channel_file(entry: str) -> Optional[tuple[str, int]]:
    """(case id, channel) of an nnU-Net channel file name (``CASE_0003.nii.gz`` -> ("CASE", 3)), else None."""
    stem, _ = split_image_ext(entry)
    m = _CHANNEL_FILE.match(stem) if stem else None
    return (m.group("case"), int(m.group("channel"))) if m else None


def is_images_folder(folder: str, files=None) -> bool:
    """True for an ``imagesTr``/``imagesTs`` folder, or a folder whose image files all are nnU-Net channel files
    (``CASE_0000.nii.gz``, ...) with at least one ``_0000``; ``files``: its file names, if already listed."""
    if _IMAGES_FOLDER.match(os.path.basename(os.path.normpath(folder))):
        return True
    if files is None:
        files = [e for e in folder_entries(folder) if os.path.isfile(os.path.join(folder, e))]
    images = [e for e in files if split_image_ext(e)[0]]
    parsed = [channel_file(e) for e in images]
    return bool(images) and None not in parsed and any(p[1] == 0 for p in parsed)


def is_labels_folder(parent: str, entry: str) -> bool:
    """True for ``labelsTr``/``labelsTs`` in ``parent`` beside its ``imagesTr``/``imagesTs``."""
    m = _LABELS_FOLDER.match(entry)
    return bool(m) and any(_IMAGES_FOLDER.match(e) and e[6:].lower() == m.group("part").lower()
                           for e in folder_entries(parent))


def dataset_cases(folder: str) -> list[str]:
    """``FOLDER/CASE`` of every case in an images folder: nnU-Net channel files grouped by case, and every other
    image file an MSD case."""
    ids = set()
    for entry in folder_entries(folder):
        stem, _ = split_image_ext(entry)
        if stem and os.path.isfile(os.path.join(folder, entry)):
            parsed = channel_file(entry)
            ids.add(parsed[0] if parsed else stem)
    return [os.path.join(folder, i) for i in sorted(ids)]


def _case_entries(folder: str, case_id: str) -> tuple[dict, list]:
    """channel -> paths of the case's nnU-Net channel files, and its single (MSD) files."""
    channels, single = {}, []
    for entry in folder_entries(folder):
        stem, _ = split_image_ext(entry)
        if not stem or not os.path.isfile(os.path.join(folder, entry)):
            continue
        parsed = channel_file(entry)
        if parsed and parsed[0] == case_id:
            channels.setdefault(parsed[1], []).append(os.path.join(folder, entry))
        elif stem == case_id:
            single.append(os.path.join(folder, entry))
    return channels, single


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        from .images import itk_message

        raise ValueError(f"{path}: cannot be read ({itk_message(e)})") from None
    return reader


def volume_count(path: str) -> int:
    """How many channels an image file holds: the 4th dimension of a 4D image, the components of a vector image,
    else 1."""
    header = _header(path)
    if header.GetDimension() == 4:
        return int(header.GetSize()[3])
    return max(1, int(header.GetNumberOfComponents()))


def locate(path: str) -> Optional[tuple[str, str]]:
    """(images folder, case id) when ``path`` names an nnU-Net or MSD case (a channel file, ``FOLDER/CASE``, a
    multi-channel file or any image in an images folder); None for anything else."""
    if os.path.isfile(path):
        folder, entry = os.path.split(os.path.abspath(path))
        parsed = channel_file(entry)
        if parsed:
            return folder, parsed[0]
        stem, _ = split_image_ext(entry)
        if stem and (_IMAGES_FOLDER.match(os.path.basename(folder)) or volume_count(path) > 1):
            return folder, stem
        return None
    if os.path.exists(path) or not path:
        return None
    folder, case_id = os.path.split(os.path.abspath(path))
    if os.path.isdir(folder) and any(_case_entries(folder, case_id)):
        return folder, case_id
    return None


def dataset_json(folder: str) -> tuple[Optional[str], dict]:
    """(path, content) of the dataset's own ``dataset.json``, in the images folder or the folder above it."""
    for where in (folder, os.path.dirname(os.path.abspath(folder))):
        path = os.path.join(where, DATASET_JSON)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot be read as JSON ({e})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object")
            return path, data
    return None, {}


def _numbered(table, json_path: str, what: str) -> list:
    """The values of a ``{"0": ..., "1": ...}`` table in number order; ValueError unless numbered 0, 1, ..."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{json_path}: {what} must be an object {{\"0\": name, ...}}")
    try:
        numbered = {int(k): v for k, v in table.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{json_path}: {what} keys must be 0, 1, ..., got {', '.join(map(str, table))}") from None
    if sorted(numbered) != list(range(len(numbered))):
        raise ValueError(f"{json_path}: {what} keys must be 0, 1, ... without gaps, got {', '.join(map(str, table))}")
    return [str(numbered[i]) for i in range(len(numbered))]


def channel_order(keys: tuple, json_path: Optional[str], data: dict) -> list:
    """The model channel of each dataset channel, in channel-number order (see the module)."""
    names = data.get("channel_names", data.get("modality"))
    if names is None:
        return list(keys)
    what = "channel_names" if "channel_names" in data else "modality"
    ordered = _numbered(names, json_path, what)
    model = ", ".join(keys)
    if len(ordered) != len(keys):
        raise ValueError(f"{json_path}: the dataset has {len(ordered)} channels ({', '.join(ordered)}) but the "
                         f"model takes {len(keys)} ({model})")
    mapped = [match_channel(n, keys) for n in ordered]
    if None not in mapped and len(set(mapped)) == len(mapped):
        return mapped
    if not any(mapped):
        warnings.warn(f"{json_path}: no channel name ({', '.join(ordered)}) names a model channel ({model}); "
                      "channel i is taken for the model's i-th", UserWarning, stacklevel=3)
        return list(keys)
    pairs = ", ".join(f"{i} {n!r} -> {m or '?'}" for i, (n, m) in enumerate(zip(ordered, mapped)))
    raise ValueError(f"{json_path}: the dataset's channel names ({what}) do not match the model's channels "
                     f"({model}) one to one: {pairs}")


def _channel_files(folder: str, case_id: str, channels: dict, order: list, ending: str) -> dict:
    """key -> file of each channel; ValueError / FileNotFoundError naming an extra, doubled or missing file."""
    n = len(order)
    for i, paths in sorted(channels.items()):
        if len(paths) > 1:
            raise ValueError(f"case {case_id}: channel {i} is ambiguous: {', '.join(paths)}; keep one")
    extra = [channels[i][0] for i in sorted(channels) if i >= n]
    if extra:
        raise ValueError(f"{extra[0]}: case {case_id} has {len(channels)} channel files but the model takes {n} "
                         f"({', '.join(order)}: {case_id}_0000 to {case_id}_{n - 1:04d})")
    missing = [i for i in range(n) if i not in channels]
    if missing:
        i = missing[0]
        raise FileNotFoundError(f"{os.path.join(folder, f'{case_id}_{i:04d}{ending}')}: missing channel file "
                                f"({order[i]}); case {case_id} has {len(channels)} of the model's {n} channels "
                                f"(missing {', '.join(f'_{m:04d} ({order[m]})' for m in missing)})")
    return {order[i]: channels[i][0] for i in range(n)}


def _single_file(path: str, case_id: str, order: list) -> tuple[dict, dict]:
    n = volume_count(path)
    if n != len(order):
        raise ValueError(f"{path}: case {case_id} holds {n} channel{'s' if n != 1 else ''} but the model takes "
                         f"{len(order)} ({', '.join(order)})")
    return {key: path for key in order}, {key: i for i, key in enumerate(order)}


def labels_folder(images: str) -> Optional[str]:
    """The ``labelsTr``/``labelsTs`` beside an ``imagesTr``/``imagesTs`` folder, if there is one."""
    images = os.path.abspath(images)
    m = _IMAGES_FOLDER.match(os.path.basename(images))
    if not m:
        return None
    parent = os.path.dirname(images)
    hits = [e for e in folder_entries(parent)
            if e.lower() == f"labels{m.group('part').lower()}" and os.path.isdir(os.path.join(parent, e))]
    return os.path.join(parent, hits[0]) if hits else None


def label_file(labels: Optional[str], case_id: str, explicit: bool) -> Optional[str]:
    """The label ``CASE.*`` of a case in a labels folder; an explicit folder must hold it."""
    if labels is None:
        return None
    if not os.path.isdir(labels):
        raise FileNotFoundError(f"labels folder {labels} does not exist")
    hits = [os.path.join(labels, e) for e in folder_entries(labels) if split_image_ext(e)[0] == case_id]
    if len(hits) > 1:
        raise ValueError(f"case {case_id}: the label is ambiguous: {', '.join(hits)}; keep one")
    if not hits and explicit:
        raise FileNotFoundError(f"labels folder {labels}: no label {case_id}.nii.gz (or another image format) "
                                f"for case {case_id}")
    return hits[0] if hits else None


def label_classes(json_path: Optional[str], data: dict) -> dict:
    """label value -> class name from dataset.json ``labels`` (nnU-Net's name -> value, or MSD's value -> name)."""
    table = data.get("labels")
    if table is None:
        return {}
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{json_path}: 'labels' must be an object of class names and values")
    if all(str(k).isdigit() for k in table) and not all(str(v).isdigit() for v in table.values()):
        return dict(enumerate(_numbered(table, json_path, "labels")))
    if any(isinstance(v, (list, tuple)) for v in table.values()):
        raise ValueError(f"{json_path}: region-based labels are not supported")
    try:
        return {int(v): str(k) for k, v in table.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{json_path}: label values must be integers") from None


def lesion_label(classes: dict, lesion=None, model_classes=None, where: str = "") -> tuple:
    """(lesion values, value -> class name) of a multi-class label, or (None, None) for a 0/1 tumor mask.

    ``classes``: the dataset's labels (value -> name; empty without a dataset.json); ``lesion``: the model's
    lesion class (name or index; None: ``tumor``); ``model_classes``: the model's class names."""
    name = lesion if isinstance(lesion, str) else (
        model_classes[lesion] if isinstance(lesion, int) and model_classes else "tumor")
    if classes:
        by_name = {n.lower(): v for v, n in classes.items()}
        if name.lower() in by_name:
            return (by_name[name.lower()],), classes
        hits = sorted({v for n, v in by_name.items() if n in LESION_WORDS})
        if len(hits) == 1:
            return (hits[0],), classes
        raise ValueError(f"{where}: no label is the lesion class {name!r}: "
                         f"{', '.join(f'{n} {v}' for v, n in sorted(classes.items()))}")
    if isinstance(lesion, int) and not model_classes:
        return (lesion,), None
    if model_classes:
        low = [c.lower() for c in model_classes]
        index = lesion if isinstance(lesion, int) else low.index(name.lower()) if name.lower() in low else None
        if index is not None:
            return (index,), dict(enumerate(model_classes))
    return None, None


def dataset_source(path: str, keys: tuple, labels: Optional[str] = None, lesion=None,
                   model_classes=None) -> Optional[CaseSource]:
    """The :class:`CaseSource` of an nnU-Net or MSD case named by ``path`` (see :func:`locate`), else None."""
    found = locate(path)
    if found is None:
        return None
    folder, case_id = found
    json_path, data = dataset_json(folder)
    order = channel_order(keys, json_path, data)
    channels, single = _case_entries(folder, case_id)
    if channels and single:
        raise ValueError(f"case {case_id} in {folder} is ambiguous: channel files "
                         f"({os.path.basename(channels[min(channels)][0])}, ...) and {os.path.basename(single[0])}")
    if len(single) > 1:
        raise ValueError(f"case {case_id} is ambiguous: {', '.join(single)}; keep one")
    volumes = {}
    if channels:
        ending = str(data.get("file_ending") or split_image_ext(os.path.basename(channels[min(channels)][0]))[1])
        files = _channel_files(folder, case_id, channels, order, ending)
    else:
        files, volumes = _single_file(single[0], case_id, order)
    label = label_file(labels if labels is not None else labels_folder(folder), case_id, labels is not None)
    src = CaseSource(case_id, files, volumes, kind="nnU-Net case" if channels else "MSD case")
    if label is not None:
        src.files[LABEL_KEY] = label
        src.lesion, src.classes = lesion_label(label_classes(json_path, data), lesion, model_classes,
                                               json_path or label)
    return src

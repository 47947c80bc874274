"""The case: the (6, z, y, x) stack in channel order and its reference geometry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..sequences import REFERENCE_KEY, SEQUENCE_KEYS
from .grid import array_to_image


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
    dicom: Optional[list] = None      # read from a DICOM study: the series chosen per sequence (sequences.json)

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


@dataclass
class CaseSource:
    """Where one case's images and label come from, before anything is read (see :func:`.reading.case_source`).

    ``files``: channel key (and ``"label"``) -> the file or DICOM folder holding it; ``volumes``: channel key ->
    its index in a multi-channel file (MSD 4D NIfTI); ``lesion``: None when the label is a 0/1 tumor mask, else
    the label values that are the lesion (or ``"nonzero"``: every non-zero value), see
    :func:`.labels.label_on_grid`; ``classes``: label value -> class name of a multi-class label (those it may
    hold); ``reader``: key -> image, for sources that are not one file per channel (e.g. DICOM studies);
    ``kind`` names the layout in messages."""

    name: str
    files: dict
    volumes: dict = field(default_factory=dict)
    lesion: Union[None, str, tuple] = None
    classes: Optional[Mapping[int, str]] = None
    reader: Optional[Callable[[str], sitk.Image]] = None
    kind: str = "case folder"
    label_image: Optional[sitk.Image] = None    # a label already read (a DICOM study's ground-truth SEG)
    dicom: Optional[list] = None                # a DICOM study: which series is which sequence, and why


def reference_key(keys=SEQUENCE_KEYS) -> str:
    """The sequence every other one is brought onto: T1 15 min when the model takes it, else the first."""
    return REFERENCE_KEY if REFERENCE_KEY in keys else keys[0]


def _check_key(key: str, keys=SEQUENCE_KEYS) -> str:
    if key not in keys:
        raise ValueError(f"unknown sequence {key!r}; expected one of {', '.join(keys)}")
    return key

"""Reading six-sequence cases and writing outputs atomically.

A case is a folder holding one image per sequence, named by its key
(``T2.nii.gz``, ``T1_plain.nrrd``, ... any format SimpleITK reads), or a DICOM
series sub-folder per sequence (``T1_20s/``), or a ``case.json`` mapping keys
(and optionally ``"label"`` and ``"name"``) to paths relative to the json.  An
optional ``label.*`` (0 background, 1 tumor) is the tumor mask.  nnU-Net and MSD datasets (an ``imagesTs``/
``imagesTr`` folder of ``CASE_0000.nii.gz`` ... files or 4D files, labels in ``labelsTs``/``labelsTr``) and
BraTS file names are read too (:mod:`.datasets`, :mod:`.channels`).

Every sequence is brought onto the T1 15 min grid (the reference), normalised with
:func:`intensity.normalise_sequence` and stacked in the channel order of
:mod:`sequences`.  All writers here write to a temporary name in the target folder
and ``os.replace`` it, so no output is ever half-written.

Modules: :mod:`.case` (the :class:`Case`, the :class:`CaseSource`), :mod:`.names` (file names),
:mod:`.channels` (channel names, BraTS aliases), :mod:`.datasets` (nnU-Net and MSD datasets), :mod:`.folders`
(finding a case's files and every case under a folder), :mod:`.images` (reading one image or DICOM series),
:mod:`.labels` (the tumor label on the reference grid), :mod:`.reading` (:func:`read_case`,
:func:`case_source`, :func:`case_from_images`), :mod:`.grid` (image-grid geometry) and :mod:`.writing`
(atomic outputs).
"""
from __future__ import annotations

from .case import Case, CaseSource, reference_key
from .channels import BRATS_ALIASES, match_channel
from .folders import case_files, find_cases
from .names import CASE_JSON, IMAGE_EXTENSIONS, LABEL_KEY, split_image_ext
from .grid import (GeometryWarning, array_to_image, describe_extent, overlap_fraction, physical_bounds,
                   require_overlap, same_grid, single_volume)
from .images import check_image, itk_message, read_channels, read_dicom_folder, read_file_or_series, read_image
from .labels import label_on_grid, read_label
from .reading import case_from_images, case_source, load_case_arrays, read_case
from .writing import atomic_output, write_bytes, write_image, write_json, write_text

__all__ = ["Case", "CaseSource", "reference_key", "BRATS_ALIASES", "match_channel", "CASE_JSON",
           "IMAGE_EXTENSIONS", "LABEL_KEY", "case_files", "find_cases", "split_image_ext", "GeometryWarning",
           "array_to_image", "describe_extent", "overlap_fraction", "physical_bounds", "require_overlap",
           "same_grid", "single_volume", "check_image", "itk_message", "read_channels", "read_dicom_folder",
           "read_file_or_series", "read_image", "label_on_grid", "read_label", "case_from_images", "case_source",
           "load_case_arrays", "read_case", "atomic_output", "write_bytes", "write_image", "write_json",
           "write_text"]

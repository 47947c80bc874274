"""Inputs from the scene: sequence assignment, the normalised (6, z, y, x) stack, the phantom case, regions."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import slicer
import vtk

from ..sequences import DISPLAY_NAMES, REFERENCE_KEY, SEQUENCE_KEYS, SEQUENCES, guess_sequence
from .scene import (LPS, add_volume, current_scene, ijk_to_ras, label_color_table, node_array, resample_to,
                    same_grid, unique_name)

REGION_KINDS = ("segment", "predicted tumor", "predicted background", "point")


# ---- inputs -----------------------------------------------------------------------------------------------------
def scalar_volume_nodes(scene=None) -> list:
    """Scalar (not labelmap) volume nodes of the scene, in scene order."""
    scene = current_scene(scene)
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    return [n for n in nodes if not n.IsA("vtkMRMLLabelMapVolumeNode")]


def assign_sequences(nodes=None, scene=None, strict: bool = False) -> dict:
    """Sequence key -> node from node names (:func:`guess_sequence`); the first match wins.

    ``strict``: ValueError when two nodes claim the same sequence.
    """
    out: dict = {}
    for node in (scalar_volume_nodes(scene) if nodes is None else nodes):
        if node is None or node.GetAttribute("LiverTumorLRP.Output"):
            continue
        key = guess_sequence(node.GetName() or "")
        if key is None:
            continue
        if key in out:
            if strict:
                raise ValueError(f"both {out[key].GetName()!r} and {node.GetName()!r} look like the "
                                 f"{DISPLAY_NAMES[SEQUENCE_KEYS.index(key)]} sequence; assign the inputs explicitly")
            continue
        out[key] = node
    return out


def resolve_inputs(inputs=None, scene=None) -> dict:
    """All six inputs as key -> node from a dict (keys of SEQUENCE_KEYS), a list of nodes or None (the scene).

    ValueError names the missing sequences.
    """
    if isinstance(inputs, dict):
        unknown = [k for k in inputs if k not in SEQUENCE_KEYS]
        if unknown:
            raise ValueError(f"unknown sequence key(s) {', '.join(map(str, unknown))}; "
                             f"expected {', '.join(SEQUENCE_KEYS)}")
        nodes = {k: v for k, v in inputs.items() if v is not None}
    else:
        nodes = assign_sequences(inputs, scene, strict=inputs is not None)
    missing = [s for s in SEQUENCES if s.key not in nodes]
    if missing:
        raise ValueError("missing input sequence(s): " + ", ".join(f"{s.display_name} ({s.key})" for s in missing))
    return {k: nodes[k] for k in SEQUENCE_KEYS}


@dataclass
class Inputs:
    """The normalised (6, z, y, x) stack on the reference (T1 15 min) node's grid."""

    image: np.ndarray
    nodes: dict                     # key -> input node
    reference: Any                  # the T1 15 min node
    ijk_to_ras: np.ndarray          # 4x4 of the reference
    messages: list = field(default_factory=list)  # warnings (resampled inputs)


def stack_inputs(inputs=None, scene=None, normalise: bool = True) -> Inputs:
    """Read the six inputs onto the T1 15 min grid (resampling others, with a warning) and normalise them."""
    from ..intensity import normalise_image

    nodes = resolve_inputs(inputs, scene)
    ref = nodes[REFERENCE_KEY]
    ref_array = node_array(ref)
    arrays, messages = [], []
    for key in SEQUENCE_KEYS:
        node = nodes[key]
        if node is ref:
            arrays.append(ref_array.astype(np.float32))
            continue
        node_array(node)  # errors naming the node
        if same_grid(node, ref):
            arrays.append(node_array(node).astype(np.float32))
        else:
            msg = (f"{node.GetName()!r} ({DISPLAY_NAMES[SEQUENCE_KEYS.index(key)]}) is on another grid than "
                   f"{ref.GetName()!r}; resampled (linear) onto the {DISPLAY_NAMES[-1]} grid")
            warnings.warn(msg, stacklevel=2)
            messages.append(msg)
            arrays.append(resample_to(node, ref))
    image = np.stack(arrays)
    if normalise:
        names = [f"{nodes[k].GetName()} ({d})" for k, d in zip(SEQUENCE_KEYS, DISPLAY_NAMES)]
        image = normalise_image(image, names)
    return Inputs(image.astype(np.float32), nodes, ref, ijk_to_ras(ref), messages)


# ---- phantom case -----------------------------------------------------------------------------------------------
PHANTOM_NAMES = {"T2": "T2", "T1_plain": "T1 plain", "T1_20s": "T1 arterial", "T1_60s": "T1 portal venous",
                 "T1_120s": "T1 transitional", "T1_15min": "T1 hepatobiliary"}


def phantom_ijk_to_ras(case) -> np.ndarray:
    """IJK-to-RAS of a phantom case (its geometry is LPS, spacing (z, y, x))."""
    direction = np.asarray(case.direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS @ direction @ np.diag(np.asarray(case.spacing, dtype=float)[::-1])
    m[:3, 3] = LPS @ np.asarray(case.origin, dtype=float)
    return m


def add_phantom_case(seed: int = 0, shape=(32, 96, 96), spacing=(4.0, 3.0, 3.0), scene=None,
                     prefix: str = "Phantom") -> dict:
    """Generate a phantom case and add its six sequences (named for auto-assignment) and its reference tumor
    segmentation (``"<prefix> reference"``) to the scene; key -> volume node."""
    from ..phantom import generate_case

    scene = current_scene(scene)
    case = generate_case(seed, shape=shape, spacing=spacing)
    m = phantom_ijk_to_ras(case)
    nodes = {k: add_volume(scene, case.images[k], m, f"{prefix} {PHANTOM_NAMES[k]}") for k in SEQUENCE_KEYS}
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", unique_name(scene, f"{prefix} reference"))
    seg.SetReferenceImageGeometryParameterFromVolumeNode(nodes[REFERENCE_KEY])
    labelmap = add_volume(scene, (case.label > 0).astype(np.uint8), m, "phantom label", "vtkMRMLLabelMapVolumeNode")
    try:
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(label_color_table(scene).GetID())
        if case.label.any():
            slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    finally:
        scene.RemoveNode(labelmap)
    seg.CreateDefaultDisplayNodes()
    return nodes


# ---- regions ----------------------------------------------------------------------------------------------------
@dataclass
class Region:
    """What to explain: a segment, the predicted tumor/background, or one markup point (a single voxel)."""

    kind: str                       # one of REGION_KINDS
    node: Any = None                # segmentation node or markups node
    segment_id: Optional[str] = None
    point_index: int = 0

    def __post_init__(self):
        if self.kind not in REGION_KINDS:
            raise ValueError(f"unknown region {self.kind!r}; choose one of {', '.join(REGION_KINDS)}")

    @property
    def label(self) -> str:
        if self.kind == "segment":
            seg = self.node.GetSegmentation().GetSegment(self.segment_id) if self.node else None
            return f"segment {seg.GetName() if seg else self.segment_id}"
        if self.kind == "point":
            return f"point {self.node.GetNthControlPointLabel(self.point_index)}" if self.node else "point"
        return self.kind


def segment_mask(segmentation_node, segment_id: str, reference) -> np.ndarray:
    """Bool (z, y, x) mask of one segment on ``reference``'s grid (exported through a temporary labelmap)."""
    if segmentation_node is None:
        raise ValueError("no segmentation node selected for the region")
    segmentation = segmentation_node.GetSegmentation()
    if not segment_id or segmentation.GetSegment(segment_id) is None:
        raise ValueError(f"segmentation {segmentation_node.GetName()!r} has no segment {segment_id!r}")
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "LiverTumorLRP region (temporary)")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference):
            raise ValueError(f"could not export segment {segment_id!r} of {segmentation_node.GetName()!r}")
        mask = node_array(labelmap) > 0
    finally:
        scene.RemoveNode(labelmap)
    if mask.shape != node_array(reference).shape:
        raise ValueError("the exported segment does not match the reference grid")
    if not mask.any():
        raise ValueError(f"segment {segmentation.GetSegment(segment_id).GetName()!r} is empty on the "
                         f"{reference.GetName()!r} grid")
    return mask


def point_mask(markups_node, index: int, reference) -> np.ndarray:
    """Bool (z, y, x) mask of the single reference voxel nearest to markup control point ``index``."""
    if markups_node is None or markups_node.GetNumberOfControlPoints() <= index:
        raise ValueError("the markup has no control point to explain; place a point first")
    ras = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(index, ras)
    ijk = np.linalg.inv(ijk_to_ras(reference)) @ np.array([*ras, 1.0])
    i, j, k = (int(round(v)) for v in ijk[:3])
    shape = node_array(reference).shape
    if not (0 <= k < shape[0] and 0 <= j < shape[1] and 0 <= i < shape[2]):
        raise ValueError(f"point at RAS ({ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}) lies outside "
                         f"{reference.GetName()!r}")
    mask = np.zeros(shape, dtype=bool)
    mask[k, j, i] = True
    return mask



# ---- explanations -----------------------------------------------------------------------------------------------
def region_array(region, stacked: Inputs):
    """Bool mask now for segment/point/array regions; None for predicted regions (computed later)."""
    if isinstance(region, np.ndarray):
        mask = region.astype(bool)
        if mask.shape != stacked.image.shape[1:]:
            raise ValueError(f"region shape {mask.shape} differs from the reference grid {stacked.image.shape[1:]}")
        return mask
    if isinstance(region, str):
        region = Region(region)
    if region.kind == "segment":
        return segment_mask(region.node, region.segment_id, stacked.reference)
    if region.kind == "point":
        return point_mask(region.node, region.point_index, stacked.reference)
    return None



"""MRML side of the Slicer module: volume nodes in, segmentation and relevance nodes out.

Everything here works with the real Slicer core headless (``slicer-core`` from PyPI) as
well as inside Slicer: it needs ``slicer.mrmlScene`` (or an explicit ``scene``) and
never Qt.  Every operation is split into

* ``prepare`` (caller's thread): read the input nodes into a normalised (6, z, y, x) stack;
* ``compute`` (any thread): the library call (torch), with progress and cancel callbacks;
* ``apply`` (caller's thread): write the result nodes.

:class:`Job` runs a :class:`Task` either blocking (scripts, tests) or in a background
thread whose results are applied to MRML when the caller polls (the GUI's QTimer).
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import slicer
import vtk

from .progress import Cancelled, Progress
from .sequences import CLASS_NAMES, DISPLAY_NAMES, REFERENCE_KEY, SEQUENCE_KEYS, SEQUENCES, guess_sequence

SEGMENT_NAME = "Tumor"
COLOR_TABLE_NAME = "LiverTumorLRP relevance"
LABEL_COLOR_TABLE_NAME = "LiverTumorLRP labels"
TUMOR_COLOR = (0.95, 0.75, 0.1)
REGION_KINDS = ("segment", "predicted tumor", "predicted background", "point")
SERIES_COLORS = ((0.55, 0.35, 0.65), (0.5, 0.5, 0.5), (0.85, 0.2, 0.15), (0.95, 0.55, 0.1), (0.2, 0.6, 0.3),
                 (0.15, 0.4, 0.8))
_LPS = np.diag([-1.0, -1.0, 1.0])


# ---- scene and geometry helpers ---------------------------------------------------------------------------------
def _scene(scene=None):
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise RuntimeError("no MRML scene: pass scene= or set slicer.mrmlScene")
    return scene


def ijk_to_ras(node) -> np.ndarray:
    """4x4 IJK-to-world (RAS) matrix of a volume node, including a linear parent transform."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    a = slicer.util.arrayFromVTKMatrix(m)
    tnode = node.GetParentTransformNode()
    if tnode is not None:
        if not tnode.IsTransformToWorldLinear():
            raise ValueError(f"volume {node.GetName()!r} is under a non-linear transform; harden it first")
        t = vtk.vtkMatrix4x4()
        tnode.GetMatrixTransformToWorld(t)
        a = slicer.util.arrayFromVTKMatrix(t) @ a
    return a


def _vtk_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    return slicer.util.vtkMatrixFromArray(np.asarray(a, dtype=float))


def node_array(node) -> np.ndarray:
    """The voxels of a scalar volume node (z, y, x); ValueError naming the node if it has none or is not scalar."""
    name = node.GetName() if node is not None else "None"
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"{name}: not a scalar volume node")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"volume {name!r} has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume {name!r} has {image.GetNumberOfScalarComponents()} components; "
                         "a single-component scalar volume is needed")
    return np.asarray(slicer.util.arrayFromVolume(node))


def same_grid(a, b, tol: float = 1e-4) -> bool:
    """Same voxel grid (dimensions and IJK-to-world matrix within ``tol`` mm)."""
    if a.GetImageData().GetDimensions() != b.GetImageData().GetDimensions():
        return False
    return bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tol))


def sitk_image(array: np.ndarray, ijk2ras: np.ndarray):
    """A SimpleITK image (LPS) of a (z, y, x) array on the grid of an IJK-to-RAS matrix."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    cols = np.asarray(ijk2ras, dtype=float)[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (_LPS @ (cols / spacing)).ravel()])
    img.SetOrigin([float(v) for v in _LPS @ np.asarray(ijk2ras, dtype=float)[:3, 3]])
    return img


def resample_to(node, reference) -> np.ndarray:
    """``node``'s voxels resampled (linear) onto ``reference``'s grid; ValueError if they do not overlap."""
    import SimpleITK as sitk

    from .case_io import overlap_fraction

    moving = sitk_image(node_array(node).astype(np.float32), ijk_to_ras(node))
    ref = sitk_image(np.zeros(node_array(reference).shape, np.float32), ijk_to_ras(reference))
    if overlap_fraction(moving, ref) <= 0.0:
        raise ValueError(f"volume {node.GetName()!r} does not overlap the reference {reference.GetName()!r}; "
                         "check its origin, spacing and orientation")
    out = sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


# ---- headless scene ---------------------------------------------------------------------------------------------
MODULE_LOGICS = (("Colors", "colors", "vtkSlicerColorLogic"), ("Volumes", "volumes", "vtkSlicerVolumesLogic"),
                 ("Segmentations", "segmentations", "vtkSlicerSegmentationsModuleLogic"),
                 ("Plots", "plots", "vtkSlicerPlotsLogic"))


class headless_scene:
    """Context manager for the Slicer core without ``slicer.app``: a scene, an application logic, the colors,
    volumes, segmentations and plots logics, ``slicer.mrmlScene`` and a small ``slicer.modules``; restored on exit.

    Inside Slicer (``slicer.app`` exists) it uses the application's scene and changes nothing.
    """

    def __init__(self):
        self.scene = self.app_logic = None
        self.logics: dict = {}
        self._saved: dict = {}

    def __enter__(self):
        import types

        if getattr(slicer, "app", None) is not None:
            self.scene = slicer.mrmlScene
            return self
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        for name, attr, cls in MODULE_LOGICS:
            logic = getattr(slicer, cls)()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[attr] = logic
        self._saved = {k: getattr(slicer, k) for k in ("mrmlScene", "modules") if hasattr(slicer, k)}
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**{k: types.SimpleNamespace(logic=(lambda lg=lg: lg))
                                                  for k, lg in self.logics.items()})
        return self

    def __exit__(self, *exc):
        if self.app_logic is None:
            return False
        for k in ("mrmlScene", "modules"):
            if k in self._saved:
                setattr(slicer, k, self._saved[k])
            elif hasattr(slicer, k):
                delattr(slicer, k)
        self.scene.Clear(1)
        return False


# ---- inputs -----------------------------------------------------------------------------------------------------
def scalar_volume_nodes(scene=None) -> list:
    """Scalar (not labelmap) volume nodes of the scene, in scene order."""
    scene = _scene(scene)
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
    from .intensity import normalise_image

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
    m[:3, :3] = _LPS @ direction @ np.diag(np.asarray(case.spacing, dtype=float)[::-1])
    m[:3, 3] = _LPS @ np.asarray(case.origin, dtype=float)
    return m


def add_phantom_case(seed: int = 0, shape=(32, 96, 96), spacing=(4.0, 3.0, 3.0), scene=None,
                     prefix: str = "Phantom") -> dict:
    """Generate a phantom case and add its six sequences (named for auto-assignment) and its reference tumor
    segmentation (``"<prefix> reference"``) to the scene; key -> volume node."""
    from .phantom import generate_case

    scene = _scene(scene)
    case = generate_case(seed, shape=shape, spacing=spacing)
    m = phantom_ijk_to_ras(case)
    nodes = {k: _add_volume(scene, case.images[k], m, f"{prefix} {PHANTOM_NAMES[k]}") for k in SEQUENCE_KEYS}
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", _unique_name(scene, f"{prefix} reference"))
    seg.SetReferenceImageGeometryParameterFromVolumeNode(nodes[REFERENCE_KEY])
    labelmap = _add_volume(scene, (case.label > 0).astype(np.uint8), m, "phantom label", "vtkMRMLLabelMapVolumeNode")
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


# ---- models -----------------------------------------------------------------------------------------------------
_MODEL_CACHE: dict = {}


def get_model(spec="bundled"):
    """A model (cached by path and modification time); ``spec``: "bundled"/""/None, a path, or an nn.Module."""
    import os

    from .models import bundled_model_path, load_model

    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        return spec
    path = str(bundled_model_path() if spec in (None, "", "bundled") else spec)
    key = (path, os.path.getmtime(path) if os.path.exists(path) else None)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(path, "cpu")
    return _MODEL_CACHE[key]


# ---- tasks and jobs ---------------------------------------------------------------------------------------------
@dataclass
class Task:
    """``compute(progress)`` may run in any thread (no MRML); ``apply(result)`` runs on the caller's thread."""

    name: str
    compute: Callable[[Progress], Any]
    apply: Callable[[Any], Any]
    messages: list = field(default_factory=list)


class Job:
    """Runs a :class:`Task` blocking (:meth:`run`) or in a background thread (:meth:`start` + :meth:`poll`)."""

    def __init__(self, task: Task, callback: Optional[Callable[[float, str], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None):
        self.task, self.callback, self._user_cancel = task, callback, cancel
        self.state = "pending"          # pending | running | computed | done | failed | cancelled
        self.fraction, self.message = 0.0, ""
        self.result = self.error = None
        self._raw = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._log: list = list(task.messages)
        self._thread: Optional[threading.Thread] = None

    # progress from the worker
    def _progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self.fraction = float(fraction)
            if message and message != self.message:
                self._log.append(message)
            self.message = message or self.message

    def _compute(self, progress: Progress):
        try:
            self._raw = self.task.compute(progress)
            self.state = "computed"
        except Cancelled as exc:
            self.error, self.state = exc, "cancelled"
        except Exception as exc:  # reported on poll
            self.error, self.state = exc, "failed"

    def cancel(self) -> None:
        """Ask the computation to stop at its next progress report."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set() or bool(self._user_cancel and self._user_cancel())

    def take_messages(self) -> list:
        """Log lines since the last call."""
        with self._lock:
            out, self._log = self._log, []
        return out

    def run(self):
        """Blocking: compute and apply on this thread; raises the error (Cancelled when cancelled)."""
        self.state = "running"
        self._compute(Progress(self._report, lambda: self.cancelled))
        self._finish()
        if self.error is not None:
            raise self.error
        return self.result

    def _report(self, fraction, message):
        self._progress(fraction, message)
        if self.callback is not None:
            self.callback(fraction, message)

    def start(self) -> "Job":
        """Start the computation in a daemon thread; call :meth:`poll` from the caller's thread."""
        self.state = "running"
        self._thread = threading.Thread(target=self._compute, args=(Progress(self._progress, lambda: self.cancelled),),
                                        name=f"LiverTumorLRP {self.task.name}", daemon=True)
        self._thread.start()
        return self

    def poll(self) -> bool:
        """True once finished; the first call after the computation ends applies the result to MRML here."""
        if self.state == "running":
            return False
        if self.state == "computed":
            self._finish()
        return self.state in ("done", "failed", "cancelled")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Join the thread, then :meth:`poll`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def _finish(self) -> None:
        if self.state != "computed":
            return
        try:
            self.result = self.task.apply(self._raw)
            self.state = "done"
            self._progress(1.0, f"{self.task.name}: done")
        except Exception as exc:
            self.error, self.state = exc, "failed"
        finally:
            self._raw = None


# ---- segmentation -----------------------------------------------------------------------------------------------
@dataclass
class SegmentResult:
    segmentation: Any               # vtkMRMLSegmentationNode with the "Tumor" segment
    probability: Any                # vtkMRMLScalarVolumeNode: tumor probability
    n_tumor: int
    tumor_ml: float


def _unique_name(scene, base: str) -> str:
    return scene.GenerateUniqueName(base) if scene.GetFirstNodeByName(base) is not None else base


def label_color_table(scene=None):
    """The small color table naming label 1 "Tumor" (created once)."""
    scene = _scene(scene)
    node = scene.GetFirstNodeByName(LABEL_COLOR_TABLE_NAME)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", LABEL_COLOR_TABLE_NAME)
        node.SetTypeToUser()
        node.SetNumberOfColors(2)
        node.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        node.SetColor(1, SEGMENT_NAME, *TUMOR_COLOR, 1.0)
        node.SetAttribute("LiverTumorLRP.Output", "1")
    return node


def _tag(node, kind: str):
    node.SetAttribute("LiverTumorLRP.Output", kind)
    return node


def _add_volume(scene, array, ijk2ras, name, class_name="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, _unique_name(scene, name))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk2ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


def write_segmentation(probability: np.ndarray, inputs: Inputs, name: str = "Liver tumor",
                       threshold: float = 0.5, scene=None) -> SegmentResult:
    """Segmentation node (segment "Tumor") and probability volume from a (z, y, x) tumor probability."""
    scene = _scene(scene if scene is not None else inputs.reference.GetScene())
    tumor = probability > threshold
    prob_node = _tag(_add_volume(scene, probability.astype(np.float32), inputs.ijk_to_ras,
                                 f"{name} probability"), "probability")
    disp = prob_node.GetDisplayNode()
    if disp is not None:
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(0.0, 1.0)
    seg = _tag(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", _unique_name(scene, name)), "segmentation")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(inputs.reference)
    labelmap = _add_volume(scene, tumor.astype(np.uint8), inputs.ijk_to_ras, f"{name} label",
                           "vtkMRMLLabelMapVolumeNode")
    try:
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(label_color_table(scene).GetID())
        if tumor.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap,
                                                                                                         seg):
            raise RuntimeError("importing the tumor labelmap into the segmentation failed")
    finally:
        scene.RemoveNode(labelmap)
    segmentation = seg.GetSegmentation()
    if segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME) == "":
        segmentation.AddEmptySegment(SEGMENT_NAME, SEGMENT_NAME, TUMOR_COLOR)
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME))
    segment.SetColor(*TUMOR_COLOR)
    seg.CreateDefaultDisplayNodes()
    voxel_ml = abs(np.linalg.det(inputs.ijk_to_ras[:3, :3])) / 1000.0
    return SegmentResult(seg, prob_node, int(tumor.sum()), float(tumor.sum() * voxel_ml))


def segment_task(inputs=None, model="bundled", device="auto", threshold: float = 0.5, name: str = "Liver tumor",
                 patch_size=None, scene=None) -> Task:
    """Task: predict the tumor and write a segmentation node and a probability volume."""
    stacked = inputs if isinstance(inputs, Inputs) else stack_inputs(inputs, scene)

    def compute(progress):
        from .inference import predict

        net = get_model(model)
        return predict(net, stacked.image, device, patch_size=patch_size, progress=progress)

    return Task("Segment", compute, lambda p: write_segmentation(p, stacked, name, threshold, scene),
                list(stacked.messages))


def segment(inputs=None, model="bundled", device="auto", threshold: float = 0.5, name: str = "Liver tumor",
            progress=None, cancel=None, scene=None) -> SegmentResult:
    """Blocking: segment the tumor (see :func:`segment_task`)."""
    return _run_blocking(segment_task(inputs, model, device, threshold, name, scene=scene), progress, cancel)


def _run_blocking(task: Task, progress=None, cancel=None):
    return Job(task, progress, cancel).run()


# ---- relevance write-back ---------------------------------------------------------------------------------------
@dataclass
class ExplanationResult:
    name: str
    folder: int                     # subject hierarchy folder item
    volumes: dict                   # key -> relevance volume node
    table: Any                      # vtkMRMLTableNode: sequence, relevance, positive, negative
    chart: Any                      # vtkMRMLPlotChartNode
    series: list                    # one vtkMRMLPlotSeriesNode per sequence
    shares: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    most_relevant: str              # sequence key
    details: dict = field(default_factory=dict)


def relevance_color_table(scene=None):
    """The project's signed diverging color table (blue-white-red, transparent near zero), created once."""
    scene = _scene(scene)
    node = scene.GetFirstNodeByName(COLOR_TABLE_NAME)
    if node is not None:
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    node.SetTypeToUser()
    node.SetAttribute("Category", "LiverTumorLRP")
    node.SetAttribute("LiverTumorLRP.Output", "1")
    n = 256
    node.SetNumberOfColors(n)
    blue, red = np.array([0.23, 0.30, 0.75]), np.array([0.71, 0.02, 0.15])
    for i in range(n):
        t = 2.0 * i / (n - 1) - 1.0                    # -1 .. 1
        end = red if t > 0 else blue
        rgb = (1 - abs(t)) * np.ones(3) + abs(t) * end
        alpha = float(np.clip((abs(t) - 0.05) / 0.25, 0.0, 1.0))
        node.SetColor(i, "", *(float(c) for c in rgb), alpha)
    node.SetNamesInitialised(True)
    return node


def _sh_place(sh, folder: int, node) -> None:
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)


def write_relevance(maps: np.ndarray, inputs: Inputs, name: str, shares=None, details=None,
                    scene=None) -> ExplanationResult:
    """Relevance volumes (one per sequence), table, bar chart, grouped in a subject-hierarchy folder named ``name``."""
    scene = _scene(scene if scene is not None else inputs.reference.GetScene())
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1).astype(np.float64)
    total = float(flat.sum())
    if not np.isfinite(total) or abs(total) < 1e-20:
        raise ValueError("the relevance map sums to zero; sequence shares are undefined")
    shares = flat.sum(axis=1) / total if shares is None else np.asarray(shares, dtype=float)
    positive = np.clip(flat, 0, None).sum(axis=1) / total
    negative = np.clip(flat, None, 0).sum(axis=1) / total
    from .figures import display_max

    m = display_max(maps)
    colors = relevance_color_table(scene)
    sh = scene.GetSubjectHierarchyNode()
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), _unique_name(scene, name))
    volumes = {}
    for key, disp_name, arr in zip(SEQUENCE_KEYS, DISPLAY_NAMES, maps):
        node = _tag(_add_volume(scene, arr, inputs.ijk_to_ras, f"{name}: {disp_name}"), "relevance")
        disp = node.GetDisplayNode()
        disp.SetAndObserveColorNodeID(colors.GetID())
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(-m, m)
        disp.SetInterpolate(0)
        _sh_place(sh, folder, node)
        volumes[key] = node
    # table
    table = _tag(scene.AddNewNodeByClass("vtkMRMLTableNode", _unique_name(scene, f"{name} table")), "table")
    t = table.GetTable()
    col = vtk.vtkStringArray()
    col.SetName("sequence")
    t.AddColumn(col)
    for cname in ("relevance", "positive", "negative"):
        c = vtk.vtkDoubleArray()
        c.SetName(cname)
        t.AddColumn(c)
    t.SetNumberOfRows(len(DISPLAY_NAMES))
    for r, disp_name in enumerate(DISPLAY_NAMES):
        t.SetValue(r, 0, vtk.vtkVariant(disp_name))
        for c, values in enumerate((shares, positive, negative), start=1):
            t.SetValue(r, c, vtk.vtkVariant(float(values[r])))
    t.Modified()
    _sh_place(sh, folder, table)
    # bar chart: one series per sequence (the legend names them), from a one-row table
    plot_table = _tag(scene.AddNewNodeByClass("vtkMRMLTableNode", _unique_name(scene, f"{name} plot data")), "plot")
    pt = plot_table.GetTable()
    for disp_name in DISPLAY_NAMES:
        c = vtk.vtkDoubleArray()
        c.SetName(disp_name)
        pt.AddColumn(c)
    pt.SetNumberOfRows(1)
    for c, value in enumerate(shares):
        pt.SetValue(0, c, vtk.vtkVariant(float(value)))
    pt.Modified()
    _sh_place(sh, folder, plot_table)
    chart = _tag(scene.AddNewNodeByClass("vtkMRMLPlotChartNode", _unique_name(scene, f"{name} chart")), "chart")
    chart.SetTitle(f"{name}: relevance share per sequence")
    chart.SetYAxisTitle("share of relevance")
    chart.SetXAxisTitle("")
    chart.SetLegendVisibility(True)
    series = []
    for disp_name, color in zip(DISPLAY_NAMES, SERIES_COLORS):
        s = _tag(scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", disp_name), "series")
        s.SetAndObserveTableNodeID(plot_table.GetID())
        s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        s.SetYColumnName(disp_name)
        s.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
        _sh_place(sh, folder, s)
        series.append(s)
    _sh_place(sh, folder, chart)
    most = SEQUENCE_KEYS[int(np.argmax(shares))]
    _show(volumes[most], inputs.nodes[most], chart, scene)
    return ExplanationResult(name, folder, volumes, table, chart, series, shares, positive, negative, most,
                             dict(details or {}))


def _show(relevance_node, background_node, chart, scene) -> None:
    """Overlay the relevance over its sequence and show the chart, when views/modules exist (guarded)."""
    try:
        if scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") > 0 and slicer.mrmlScene is scene:
            slicer.util.setSliceViewerLayers(background=background_node, foreground=relevance_node,
                                             foregroundOpacity=0.6)
    except Exception as exc:  # no views: nothing to show
        warnings.warn(f"could not show the relevance overlay: {exc}", stacklevel=2)
    modules = getattr(slicer, "modules", None)
    plots = getattr(modules, "plots", None) if modules is not None else None
    if plots is not None:
        try:
            plots.logic().ShowChartInLayout(chart)
        except Exception as exc:
            warnings.warn(f"could not show the chart: {exc}", stacklevel=2)



# ---- offscreen slice view ---------------------------------------------------------------------------------------
@dataclass
class SliceView:
    """A rendered slice view: the picture's pixels and where they lie in the world."""

    path: Optional[str]             # the PNG written (None when not written)
    rgb: np.ndarray                 # (height, width, 3) uint8, rows top to bottom
    xy_to_ras: np.ndarray           # 4x4: view pixel (x, y up from the bottom row, 0, 1) -> RAS
    view_width: int                 # columns [0, view_width) are the slice view, the rest the legend panel
    legend_box: tuple               # (row0, row1, col0, col1) of the colour bar (end exclusive)
    value_range: tuple              # relevance at the bottom and the top of the bar
    offset: float                   # slice offset (mm along the slice normal)

    def ras_to_pixel(self, ras) -> tuple:
        """(row, col) of the picture nearest to a RAS point on the slice."""
        x, y = (np.linalg.inv(self.xy_to_ras) @ np.array([*ras[:3], 1.0]))[:2]
        return self.rgb.shape[0] - 1 - int(round(y)), int(round(x))


def _outline_labelmap(segmentation_node, segment_id, reference):
    """Temporary labelmap (value 1, the tumor colour) of one segment on ``reference``'s grid; None if empty."""
    segmentation = segmentation_node.GetSegmentation()
    if segment_id is None:
        segment_id = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME) or (
            segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments() else "")
    if not segment_id:
        return None
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "LiverTumorLRP outline (temporary)")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    if (not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap,
                                                                                   reference)
            or not node_array(labelmap).any()):
        scene.RemoveNode(labelmap)
        return None
    labelmap.CreateDefaultDisplayNodes()
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(label_color_table(scene).GetID())
    return labelmap


def _focus_ras(labelmap, relevance_node) -> Optional[np.ndarray]:
    """RAS centre of the tumor (labelmap), else of the most relevant voxels (|r| >= half the maximum)."""
    if labelmap is not None:
        node, mask = labelmap, node_array(labelmap) > 0
    elif relevance_node is not None:
        a = np.abs(node_array(relevance_node))
        if not a.max() > 0:
            return None
        node, mask = relevance_node, a >= 0.5 * a.max()
    else:
        return None
    k, j, i = np.argwhere(mask).mean(axis=0)
    return (ijk_to_ras(node) @ np.array([i, j, k, 1.0]))[:3]


def _text(label: str, size: int) -> np.ndarray:
    """Alpha (0..1, rows top to bottom) of a white text line, rendered by VTK's FreeType (no window)."""
    from vtk.util.numpy_support import vtk_to_numpy

    prop = vtk.vtkTextProperty()
    prop.SetFontSize(size)
    prop.SetFontFamilyToArial()
    image, dims = vtk.vtkImageData(), [0, 0]
    if not vtk.vtkTextRenderer().RenderString(prop, label, image, dims, 72):
        return np.zeros((1, 1))
    w, h, _ = image.GetDimensions()
    alpha = vtk_to_numpy(image.GetPointData().GetScalars())[:, -1].reshape(h, w)[::-1] / 255.0
    rows, cols = np.nonzero(alpha)
    return alpha[rows.min():rows.max() + 1, cols.min():cols.max() + 1] if rows.size else alpha[:1, :1]


def _paste_text(canvas: np.ndarray, label: str, size: int, row: int, centre_col: int) -> int:
    """Draw white text with its top at ``row``, centred on ``centre_col``; returns the row below it."""
    alpha = _text(label, size)
    h, w = alpha.shape
    c0 = int(np.clip(centre_col - w // 2, 0, max(canvas.shape[1] - w, 0)))
    h, w = min(h, canvas.shape[0] - row), min(w, canvas.shape[1] - c0)
    region = canvas[row:row + h, c0:c0 + w].astype(float)
    a = alpha[:h, :w, None]
    canvas[row:row + h, c0:c0 + w] = np.round(region * (1 - a) + 255.0 * a).astype(np.uint8)
    return row + h


def _legend(color_node, value_range, width: int, height: int):
    """Black panel with a vertical colour bar (top = maximum) labelled with the range; (panel, bar box)."""
    panel = np.zeros((height, width, 3), np.uint8)
    font = max(10, height // 40)
    pad = max(4, font // 2)
    row = _paste_text(panel, "relevance", font, pad, width // 2) + pad
    row = _paste_text(panel, f"{value_range[1]:.2g}", font, row, width // 2) + pad // 2
    low = _text(f"{value_range[0]:.2g}", font)
    bottom = height - pad - low.shape[0] - pad // 2
    bar_w = max(8, width // 5)
    c0 = (width - bar_w) // 2
    lut = color_node.GetScalarsToColors()
    lo, hi = lut.GetRange()
    rgb = [0.0, 0.0, 0.0]
    for r in range(row, bottom):
        t = (bottom - 1 - r) / max(bottom - 1 - row, 1)          # 0 at the bottom .. 1 at the top
        lut.GetColor(lo + t * (hi - lo), rgb)
        panel[r, c0:c0 + bar_w] = np.round(np.asarray(rgb) * 255)
    _paste_text(panel, f"{value_range[0]:.2g}", font, bottom + pad // 2, width // 2)
    return panel, (row, bottom, c0, c0 + bar_w)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding (vtkPNGWriter, in memory) of an (height, width, 3) uint8 picture."""
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    h, w, _ = rgb.shape
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(rgb[::-1], np.uint8).reshape(-1, 3), deep=1))
    writer = vtk.vtkPNGWriter()
    writer.SetWriteToMemory(True)
    writer.SetInputData(image)
    writer.Write()
    return vtk_to_numpy(writer.GetResult()).tobytes()


def render_slice_view(background_node, relevance_node=None, path=None, segmentation_node=None, color_node=None,
                      orientation: str = "Axial", offset: Optional[float] = None, size=(512, 512),
                      opacity: float = 0.6, segment_id: Optional[str] = None, value_range=None) -> SliceView:
    """Render a slice view offscreen as Slicer draws it and write it to ``path`` (PNG, atomically) if given.

    Slicer's own slice pipeline composes the view: a temporary ``vtkMRMLSliceLogic`` with its slice and
    composite nodes (background = ``background_node``; foreground = ``relevance_node`` with its display node's
    colour table, transparent near zero, at ``opacity``; label layer = the tumor segment exported to a labelmap,
    drawn as an outline in the tumor colour), and its blended image (``GetImageDataConnection``) is the view.
    A colour legend (bar with the window's minimum and maximum, text by VTK's FreeType) fills a panel on the
    right.  ``color_node`` and ``value_range`` (min, max) override the relevance display node's colour table
    and window for this picture only.  The default ``offset`` is the slice through the centre of the tumor
    segment (or of the most relevant voxels).  Temporary nodes and display changes are undone; no Qt and no
    render window are used.
    """
    from .case_io import write_bytes

    scene = background_node.GetScene()
    width, height = int(size[0]), int(size[1])
    legend_w = max(64, width // 7) if relevance_node is not None else 0
    if width - legend_w < 16 or height < 64:
        raise ValueError(f"size {width}x{height} is too small for a slice view")
    disp = saved = None
    if relevance_node is not None:
        if relevance_node.GetDisplayNode() is None:
            relevance_node.CreateDefaultDisplayNodes()
        disp = relevance_node.GetDisplayNode()
        saved = (disp.GetColorNodeID(), disp.GetAutoWindowLevel(), disp.GetWindowLevelMin(),
                 disp.GetWindowLevelMax())
    first_new = scene.GetNumberOfNodes()
    labelmap = logic = None
    try:
        if color_node is not None:
            disp.SetAndObserveColorNodeID(color_node.GetID())
        if value_range is not None:
            disp.AutoWindowLevelOff()
            disp.SetWindowLevelMinMax(*(float(v) for v in value_range))
        if disp is not None:
            color_node = disp.GetColorNode()
            value_range = (float(disp.GetWindowLevelMin()), float(disp.GetWindowLevelMax()))
        if segmentation_node is not None:
            labelmap = _outline_labelmap(segmentation_node, segment_id, background_node)
        logic = slicer.vtkMRMLSliceLogic()
        app = getattr(slicer, "app", None)
        if app is not None:
            logic.SetMRMLApplicationLogic(app.applicationLogic())
        logic.SetMRMLScene(scene)
        slice_node = logic.AddSliceNode(scene.GenerateUniqueName("LiverTumorLRP render"))
        composite = logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(relevance_node.GetID() if relevance_node is not None else None)
        composite.SetForegroundOpacity(opacity)
        composite.SetLabelVolumeID(labelmap.GetID() if labelmap is not None else None)
        composite.SetLabelOpacity(1.0)
        slice_node.SetUseLabelOutline(True)
        slice_node.SetOrientation(orientation)
        slice_node.SetDimensions(width - legend_w, height, 1)
        logic.FitSliceToAll()
        if offset is not None:
            logic.SetSliceOffset(float(offset))
        else:
            focus = _focus_ras(labelmap, relevance_node)
            if focus is not None:
                slice_node.JumpSliceByOffsetting(*focus)
                logic.SnapSliceOffsetToIJK()
        producer = logic.GetImageDataConnection().GetProducer()
        producer.Update()
        view = _image_rgb(producer.GetOutputDataObject(0))
        xy_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS())
        used_offset = float(logic.GetSliceOffset())
    finally:
        if logic is not None:
            logic.DeleteSliceModel()
            logic.SetMRMLScene(None)
        for node in [scene.GetNthNode(i) for i in range(first_new, scene.GetNumberOfNodes())][::-1]:
            scene.RemoveNode(node)
        if saved is not None:
            disp.SetAndObserveColorNodeID(saved[0])
            disp.SetWindowLevelMinMax(saved[2], saved[3])
            disp.SetAutoWindowLevel(saved[1])
    picture, box = view, (0, 0, 0, 0)
    if relevance_node is not None:
        panel, (r0, r1, c0, c1) = _legend(color_node, value_range, legend_w, height)
        picture = np.concatenate([view, panel], axis=1)
        box = (r0, r1, c0 + view.shape[1], c1 + view.shape[1])
    if path is not None:
        path = write_bytes(png_bytes(picture), path)
    return SliceView(path, picture, xy_to_ras, view.shape[1], box, tuple(value_range or (0.0, 0.0)), used_offset)


def _image_rgb(image) -> np.ndarray:
    """(height, width, 3) uint8, rows top to bottom, of a VTK RGB(A) image."""
    from vtk.util.numpy_support import vtk_to_numpy

    w, h, _ = image.GetDimensions()
    a = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(a[::-1, :, :3]).astype(np.uint8)

# ---- explanations -----------------------------------------------------------------------------------------------
def _region_array(region, stacked: Inputs):
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


def explain_region_task(inputs=None, model="bundled", region="predicted tumor", cls="tumor",
                        preset="recommended", device="auto", name: Optional[str] = None, threshold: float = 0.5,
                        scene=None) -> Task:
    """Task: Eq. 2 relevance of a region for class ``cls``, written back as relevance nodes."""
    from .sequences import class_index

    stacked = inputs if isinstance(inputs, Inputs) else stack_inputs(inputs, scene)
    c = class_index(cls)
    mask = _region_array(region, stacked)
    reg = Region(region) if isinstance(region, str) else region
    label = "region" if isinstance(region, np.ndarray) else reg.label
    name = name or f"Relevance of {label} for {CLASS_NAMES[c]}"

    def compute(progress):
        from .explain import region_relevance
        from .inference import predict

        net = get_model(model)
        r = mask
        if r is None:
            prob = predict(net, stacked.image, device, progress=progress.part(0.0, 0.3))
            r = prob > threshold if reg.kind == "predicted tumor" else prob <= threshold
            if not r.any():
                raise ValueError(f"the model predicts no {'tumor' if reg.kind == 'predicted tumor' else 'background'}"
                                 " voxels in this case, so that region is empty")
            progress = progress.part(0.3, 1.0)
        return region_relevance(net, stacked.image, r, c, preset, device, progress=progress)

    def apply(rr):
        return write_relevance(rr.maps, stacked, name, rr.sequence_shares,
                               {"n_voxels": rr.n_voxels, "n_excluded": rr.n_excluded, "class": CLASS_NAMES[c],
                                "region": label, "preset": str(preset)}, scene)

    return Task("Explain", compute, apply, list(stacked.messages))


def explain_region(inputs=None, model="bundled", region="predicted tumor", cls="tumor", preset="recommended",
                   device="auto", name=None, progress=None, cancel=None, scene=None) -> ExplanationResult:
    """Blocking :func:`explain_region_task`."""
    return _run_blocking(explain_region_task(inputs, model, region, cls, preset, device, name, scene=scene),
                         progress, cancel)


def analyze_sequences_task(inputs=None, model="bundled", preset="recommended", device="auto", seed: int = 0,
                           name: str = "Sequence relevance", max_voxels: Optional[int] = None, scene=None) -> Task:
    """Task: Sec. 2.3 sequence relevance, written back as relevance nodes."""
    stacked = inputs if isinstance(inputs, Inputs) else stack_inputs(inputs, scene)

    def compute(progress):
        from .explain import sequence_relevance

        return sequence_relevance(get_model(model), stacked.image, preset, device, seed, max_voxels=max_voxels,
                                  progress=progress)

    def apply(sr):
        return write_relevance(sr.maps, stacked, name, sr.shares,
                               {"n_tumor": sr.n_tumor, "n_background": sr.n_background, "n_excluded": sr.n_excluded,
                                "n_predicted_tumor": sr.n_predicted_tumor, "preset": str(preset), "seed": seed},
                               scene)

    return Task("Sequence relevance", compute, apply, list(stacked.messages))


def analyze_sequences(inputs=None, model="bundled", preset="recommended", device="auto", seed: int = 0,
                      name: str = "Sequence relevance", progress=None, cancel=None, scene=None) -> ExplanationResult:
    """Blocking :func:`analyze_sequences_task`."""
    return _run_blocking(analyze_sequences_task(inputs, model, preset, device, seed, name, scene=scene),
                         progress, cancel)


def summary(result: ExplanationResult) -> str:
    """One line per sequence: share, positive and negative mass."""
    lines = [f"{result.name}:"]
    for d, s, p, n in zip(DISPLAY_NAMES, result.shares, result.positive, result.negative):
        lines.append(f"  {d:<10} {s:7.3f}  (+{p:.3f} / {n:.3f})")
    return "\n".join(lines)


__all__ = ["headless_scene", "add_phantom_case", "phantom_ijk_to_ras", "Inputs", "Region", "Task", "Job", "SegmentResult", "ExplanationResult", "REGION_KINDS",
           "assign_sequences", "resolve_inputs", "stack_inputs", "segment_mask", "point_mask", "segment",
           "segment_task", "explain_region", "explain_region_task", "analyze_sequences", "analyze_sequences_task",
           "write_segmentation", "write_relevance", "relevance_color_table", "render_slice_view", "SliceView",
           "png_bytes", "label_color_table", "ijk_to_ras",
           "get_model", "summary"]

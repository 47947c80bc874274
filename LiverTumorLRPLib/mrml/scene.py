"""Scene access, node arrays and geometry (RAS/LPS), and a headless scene for the Slicer core without ``slicer.app``."""
from __future__ import annotations

import numpy as np
import slicer
import vtk

LPS = np.diag([-1.0, -1.0, 1.0])


def current_scene(scene=None):
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
    img.SetDirection([float(v) for v in (LPS @ (cols / spacing)).ravel()])
    img.SetOrigin([float(v) for v in LPS @ np.asarray(ijk2ras, dtype=float)[:3, 3]])
    return img


def resample_to(node, reference) -> np.ndarray:
    """``node``'s voxels resampled (linear) onto ``reference``'s grid; ValueError if they do not overlap."""
    import SimpleITK as sitk

    from ..case_io import overlap_fraction

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


def unique_name(scene, base: str) -> str:
    return scene.GenerateUniqueName(base) if scene.GetFirstNodeByName(base) is not None else base



def tag_output(node, kind: str):
    node.SetAttribute("LiverTumorLRP.Output", kind)
    return node


def add_volume(scene, array, ijk2ras, name, class_name="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, unique_name(scene, name))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk2ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


SEGMENT_NAME = "Tumor"
LABEL_COLOR_TABLE_NAME = "LiverTumorLRP labels"
TUMOR_COLOR = (0.95, 0.75, 0.1)


def label_color_table(scene=None):
    """The small color table naming label 1 "Tumor" (created once)."""
    scene = current_scene(scene)
    node = scene.GetFirstNodeByName(LABEL_COLOR_TABLE_NAME)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", LABEL_COLOR_TABLE_NAME)
        node.SetTypeToUser()
        node.SetNumberOfColors(2)
        node.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        node.SetColor(1, SEGMENT_NAME, *TUMOR_COLOR, 1.0)
        node.SetAttribute("LiverTumorLRP.Output", "1")
    return node

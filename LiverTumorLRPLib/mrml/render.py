"""Offscreen slice views as Slicer draws them (slice logic, no Qt, no render window) with a colour legend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import slicer
import vtk

from .scene import SEGMENT_NAME, label_color_table
from .scene import ijk_to_ras, node_array


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


def _override_display(relevance_node, color_node, value_range):
    """Give the relevance display node this picture's colour table and window; (display node, its previous
    settings to restore, colour node, value range); without a relevance node nothing changes."""
    if relevance_node is None:
        return None, None, color_node, value_range
    if relevance_node.GetDisplayNode() is None:
        relevance_node.CreateDefaultDisplayNodes()
    disp = relevance_node.GetDisplayNode()
    saved = (disp.GetColorNodeID(), disp.GetAutoWindowLevel(), disp.GetWindowLevelMin(), disp.GetWindowLevelMax())
    if color_node is not None:
        disp.SetAndObserveColorNodeID(color_node.GetID())
    if value_range is not None:
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(*(float(v) for v in value_range))
    return disp, saved, disp.GetColorNode(), (float(disp.GetWindowLevelMin()), float(disp.GetWindowLevelMax()))


def _restore_display(disp, saved) -> None:
    if saved is not None:
        disp.SetAndObserveColorNodeID(saved[0])
        disp.SetWindowLevelMinMax(saved[2], saved[3])
        disp.SetAutoWindowLevel(saved[1])


def _slice_logic(scene, background_node, relevance_node, labelmap, orientation: str, width: int, height: int,
                 opacity: float):
    """A temporary slice logic composing background, relevance foreground and the outlined label layer."""
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
    slice_node.SetDimensions(width, height, 1)
    logic.FitSliceToAll()
    return logic, slice_node


def _go_to_slice(logic, slice_node, offset: Optional[float], labelmap, relevance_node) -> None:
    """The slice at ``offset``, else through the tumor's (or the most relevant voxels') centre, on a voxel."""
    if offset is not None:
        logic.SetSliceOffset(float(offset))
        return
    focus = _focus_ras(labelmap, relevance_node)
    if focus is not None:
        slice_node.JumpSliceByOffsetting(*focus)
        logic.SnapSliceOffsetToIJK()


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
    from ..case_io import write_bytes

    scene = background_node.GetScene()
    width, height = int(size[0]), int(size[1])
    legend_w = max(64, width // 7) if relevance_node is not None else 0
    if width - legend_w < 16 or height < 64:
        raise ValueError(f"size {width}x{height} is too small for a slice view")
    first_new = scene.GetNumberOfNodes()
    disp = saved = logic = None
    try:
        disp, saved, color_node, value_range = _override_display(relevance_node, color_node, value_range)
        labelmap = (_outline_labelmap(segmentation_node, segment_id, background_node)
                    if segmentation_node is not None else None)
        logic, slice_node = _slice_logic(scene, background_node, relevance_node, labelmap, orientation,
                                         width - legend_w, height, opacity)
        _go_to_slice(logic, slice_node, offset, labelmap, relevance_node)
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
        _restore_display(disp, saved)
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


"""Result nodes: segmentation and probability, relevance volumes, table, bar chart, colour tables, subject hierarchy."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import slicer
import vtk

from ..figures import SEQUENCE_COLOURS
from ..sequences import DISPLAY_NAMES, SEQUENCE_KEYS
from .scene import (LABEL_COLOR_TABLE_NAME, SEGMENT_NAME, TUMOR_COLOR, add_volume, current_scene,  # noqa: F401
                    label_color_table, tag_output, unique_name)

if TYPE_CHECKING:
    from ..analysis import Explanation
    from .inputs import Inputs


COLOR_TABLE_NAME = "LiverTumorLRP relevance"
SERIES_COLORS = tuple(tuple(int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)) for h in SEQUENCE_COLOURS)  # the PNGs' own


# ---- segmentation -----------------------------------------------------------------------------------------------
@dataclass
class SegmentResult:
    segmentation: Any               # vtkMRMLSegmentationNode with the "Tumor" segment
    probability: Any                # vtkMRMLScalarVolumeNode: tumor probability
    n_tumor: int
    tumor_ml: float



def write_segmentation(probability: np.ndarray, inputs: Inputs, name: str = "Liver tumor",
                       threshold: Optional[float] = None, scene=None, *,
                       segmentation: Optional[np.ndarray] = None) -> SegmentResult:
    """Segmentation node (segment "Tumor") and probability volume from a (z, y, x) lesion probability.

    The segment is ``segmentation`` (the model's labels, :attr:`.analysis.Segmentation.segmentation`) or, given
    ``threshold`` instead, ``probability > threshold``."""
    scene = current_scene(scene if scene is not None else inputs.reference.GetScene())
    if segmentation is None:
        tumor = probability > (0.5 if threshold is None else threshold)
    else:
        tumor = np.asarray(segmentation).astype(bool)
    prob_node = tag_output(add_volume(scene, probability.astype(np.float32), inputs.ijk_to_ras,
                                 f"{name} probability"), "probability")
    disp = prob_node.GetDisplayNode()
    if disp is not None:
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(0.0, 1.0)
    seg = tag_output(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", unique_name(scene, name)), "segmentation")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(inputs.reference)
    labelmap = add_volume(scene, tumor.astype(np.uint8), inputs.ijk_to_ras, f"{name} label",
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
    display_names: tuple = DISPLAY_NAMES


def relevance_color_table(scene=None):
    """The project's signed diverging color table (blue-white-red, transparent near zero), created once.

    Colours without names (a continuous table; its legend shows values): ``SetColor(i, r, g, b, a)``, which
    needs no ``SetNamesInitialised`` (deprecated, and a VTK error on Slicer 5.10+)."""
    scene = current_scene(scene)
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
        node.SetColor(i, *(float(c) for c in rgb), alpha)
    return node


LEGEND_TITLE = "Relevance"
LEGEND_LABEL_FORMAT = "%.2g"        # relevance is often far below 1 (Slicer's default "%.1f" would show 0.0)


def _color_logic():
    """Slicer's Colors module logic (``slicer.modules.colors``) when registered, else its class: the colour
    legend methods are static."""
    colors = getattr(getattr(slicer, "modules", None), "colors", None)
    return colors.logic() if colors is not None else slicer.vtkSlicerColorLogic


def relevance_legend(volume_node, title: str = LEGEND_TITLE):
    """Slicer's colour legend (``vtkMRMLColorLegendDisplayNode``) of a relevance volume, added once.

    Made by the Colors logic (``AddDefaultColorLegendDisplayNode``) as Slicer's Colors module does; it follows
    the volume's colour table and window, and Slicer draws it in every slice view that shows the volume (as
    foreground or background), not in the 3D view.  Values as labels (not colour names), ``title`` on top."""
    logic = _color_logic()
    scene = volume_node.GetScene()
    if scene is not None and not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # a scene without the Colors logic
    legend = logic.GetColorLegendDisplayNode(volume_node) or logic.AddDefaultColorLegendDisplayNode(volume_node)
    if legend is None:
        raise RuntimeError(f"could not add a colour legend to {volume_node.GetName()!r}")
    legend.SetTitleText(title)
    legend.SetUseColorNamesForLabels(False)
    legend.SetLabelFormat(LEGEND_LABEL_FORMAT)
    legend.SetNumberOfLabels(5)
    legend.SetVisibility(True)
    legend.SetVisibility2D(True)
    legend.SetVisibility3D(False)
    legend.SetAttribute("LiverTumorLRP.Output", "legend")
    return legend


def relevance_legends(volumes: dict, display_names=None) -> dict:
    """:func:`relevance_legend` for each relevance volume (sequence key -> node) of a result, titled
    "Relevance (<sequence>)" (``display_names``: one per volume, default the sequences' names); key -> legend
    node.  Only the volume shown in a view has its legend drawn there."""
    names = dict(zip(SEQUENCE_KEYS, DISPLAY_NAMES))
    names.update(zip(volumes, display_names or ()))
    return {key: relevance_legend(node, f"{LEGEND_TITLE} ({names.get(key, key)})") for key, node in volumes.items()}


def _sh_place(sh, folder: int, node) -> None:
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)


def write_explanation(e: "Explanation", inputs: Inputs, name: str, scene=None) -> ExplanationResult:
    """The nodes of an :class:`~LiverTumorLRPLib.analysis.Explanation` (what every front end computes)."""
    interval = None
    if "relevance_p2.5" in e.interval:
        interval = {"p2.5": e.interval.get("relevance_p2.5"), "p97.5": e.interval.get("relevance_p97.5"),
                    "expected": e.interval.get("relevance_expected")}
    details = {k: v for k, v in e.details.items() if k not in ("analysis", "lesion_class")}
    necessity = None
    if e.necessity is not None:       # the necessity columns first, then the spread over B
        necessity = [e.necessity.shapley_dice[k] for k in e.channels]
        interval = {"Dice without": [e.necessity.dice_without[k] for k in e.channels], "Shapley Dice": necessity,
                    **(interval or {})}
        details.update(necessity=e.necessity.as_dict(), agreement=e.agreement)
    return write_relevance(e.maps, inputs, name, e.shares, details, scene, interval, positive=e.positive,
                           negative=e.negative, channels=e.channels, display_names=e.display_names,
                           necessity=necessity)


def write_relevance(maps: np.ndarray, inputs: Inputs, name: str, shares=None, details=None, scene=None,
                    interval=None, *, positive=None, negative=None, channels=SEQUENCE_KEYS,
                    display_names=DISPLAY_NAMES, necessity=None) -> ExplanationResult:
    """Relevance volumes (one per sequence), table, bar chart, grouped in a subject-hierarchy folder named ``name``.

    ``shares``, ``positive``, ``negative``: as computed (on the network grid); what is missing is computed from
    ``maps`` (:func:`~LiverTumorLRPLib.shares.shares_of`).  ``interval``: extra table columns per sequence, e.g.
    ``{"p2.5": low, "p97.5": high, "expected": e}`` (the spread of Sec. 2.3's shares over resampled regions B
    and their exact expectation).  ``necessity``: the Shapley values of Dice per sequence, a second group of bars
    in the chart beside the shares."""
    from ..shares import shares_of

    scene = current_scene(scene if scene is not None else inputs.reference.GetScene())
    maps = np.asarray(maps, dtype=np.float32)
    if shares is None or positive is None or negative is None:
        computed = shares_of(maps)
        shares, positive, negative = (computed[i] if v is None else v
                                      for i, v in enumerate((shares, positive, negative)))
    shares, positive, negative = (np.asarray(v, dtype=float) for v in (shares, positive, negative))
    sh = scene.GetSubjectHierarchyNode()
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), unique_name(scene, name))
    volumes = _relevance_volumes(scene, maps, inputs, name, channels, display_names, sh, folder)
    extra = {k: v for k, v in (interval or {}).items() if v is not None}
    columns = {"relevance": shares, "positive": positive, "negative": negative, **extra}
    table = _relevance_table(scene, f"{name} table", display_names, columns)
    _sh_place(sh, folder, table)
    chart, series = _relevance_chart(scene, name, display_names, shares, sh, folder, necessity)
    most = channels[int(np.argmax(shares))]
    _show(volumes[most], inputs.nodes.get(most, inputs.reference), chart, scene)
    return ExplanationResult(name, folder, volumes, table, chart, series, shares, positive, negative, most,
                             dict(details or {}), tuple(display_names))


def _relevance_volumes(scene, maps, inputs, name, channels, display_names, sh, folder) -> dict:
    """One volume per sequence, in the signed relevance colours, symmetric range from :func:`display_max`."""
    from ..figures import display_max

    m = display_max(maps)
    colors = relevance_color_table(scene)
    volumes = {}
    for key, disp_name, arr in zip(channels, display_names, maps):
        node = tag_output(add_volume(scene, arr, inputs.ijk_to_ras, f"{name}: {disp_name}"), "relevance")
        disp = node.GetDisplayNode()
        disp.SetAndObserveColorNodeID(colors.GetID())
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(-m, m)
        disp.SetInterpolate(0)
        _sh_place(sh, folder, node)
        volumes[key] = node
    return volumes


def _relevance_table(scene, name, display_names, columns: dict):
    """A table node: one row per sequence, a string column ``sequence`` and one number column per entry."""
    table = tag_output(scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, name)), "table")
    t = table.GetTable()
    col = vtk.vtkStringArray()
    col.SetName("sequence")
    t.AddColumn(col)
    for cname in columns:
        c = vtk.vtkDoubleArray()
        c.SetName(cname)
        t.AddColumn(c)
    t.SetNumberOfRows(len(display_names))
    for r, disp_name in enumerate(display_names):
        t.SetValue(r, 0, vtk.vtkVariant(disp_name))
        for c, values in enumerate(columns.values(), start=1):
            t.SetValue(r, c, vtk.vtkVariant(float(values[r])))
    t.Modified()
    return table


def _relevance_chart(scene, name, display_names, shares, sh, folder, necessity=None):
    """Bar chart: one series per sequence (the legend names them); a group of bars for the shares and, given
    ``necessity``, a second group for the Shapley values of Dice (one table row per group)."""
    plot_table = tag_output(scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, f"{name} plot data")),
                            "plot")
    pt = plot_table.GetTable()
    for disp_name in display_names:
        c = vtk.vtkDoubleArray()
        c.SetName(disp_name)
        pt.AddColumn(c)
    groups = [shares] if necessity is None else [shares, necessity]
    pt.SetNumberOfRows(len(groups))
    for r, values in enumerate(groups):
        for c, value in enumerate(values):
            pt.SetValue(r, c, vtk.vtkVariant(float(value)))
    pt.Modified()
    _sh_place(sh, folder, plot_table)
    chart = tag_output(scene.AddNewNodeByClass("vtkMRMLPlotChartNode", unique_name(scene, f"{name} chart")), "chart")
    chart.SetTitle(f"{name}: relevance share per sequence" if necessity is None else
                   f"{name}: relevance share (left) and Shapley value of Dice (right) per sequence")
    chart.SetYAxisTitle("share of relevance")
    chart.SetXAxisTitle("")
    chart.SetLegendVisibility(True)
    series = []
    for i, disp_name in enumerate(display_names):
        s = tag_output(scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", disp_name), "series")
        s.SetAndObserveTableNodeID(plot_table.GetID())
        s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        s.SetYColumnName(disp_name)
        s.SetColor(*SERIES_COLORS[i % len(SERIES_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
        _sh_place(sh, folder, s)
        series.append(s)
    _sh_place(sh, folder, chart)
    return chart, series


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




def summary(result: ExplanationResult) -> str:
    """One line per sequence: share, positive and negative mass (and, when computed, the Dice without it and its
    Shapley value of Dice); then the warning when the relevance ranking disagrees with what the model needs."""
    need = result.details.get("necessity")
    how = {"contribution": " (Shapley values of Sec. 2.3's output; maps: reference-based LRP)",
           "paper": " (Sec. 2.3)"}.get(result.details.get("method"), "")
    lines = [f"{result.name}{how}:"]
    for key, d, s, p, n in zip(result.volumes, result.display_names, result.shares, result.positive,
                               result.negative):
        needed = (f"   Dice without it {need['dice_without'][key]:.3f}, Shapley value of Dice "
                  f"{need['shapley_dice'][key]:+.3f}") if need else ""
        lines.append(f"  {d:<10} {s:7.3f}  (+{p:.3f} / {n:.3f}){needed}")
    warning = (result.details.get("agreement") or {}).get("warning")
    if warning:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)

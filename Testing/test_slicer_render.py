"""Offscreen slice views rendered by Slicer's own slice pipeline (slicer-core), checked pixel by pixel."""
import numpy as np
import pytest
import slicer
import torch
import vtk
from scipy import ndimage
from vtk.util.numpy_support import vtk_to_numpy

from LiverTumorLRPLib import slicer_logic as sl
from LiverTumorLRPLib.intensity import normalise_image
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

SHAPE = (16, 48, 48)                                   # phantom seed 0: tumor in j 16..26, i 12..24
POSITIVE = (slice(30, 38), slice(8, 16))               # (j, i) boxes through all slices
NEGATIVE = (slice(30, 38), slice(28, 36))
FAINT = (slice(16, 24), slice(30, 38))                 # 2 % of the maximum: inside the transparent band
OUTLINE = np.round(np.array(sl.TUMOR_COLOR) * 255)


@pytest.fixture
def phantom():
    with sl.headless_scene() as hs:
        nodes = sl.add_phantom_case(0, shape=SHAPE)
        yield hs.scene, nodes, hs.scene.GetFirstNodeByName("Phantom reference")


def known_relevance(nodes):
    """Relevance volumes written by the logic: +1, -1 and +0.02 boxes on T1 20 s, zero elsewhere."""
    maps = np.zeros((6,) + SHAPE, np.float32)
    c = SEQUENCE_KEYS.index("T1_20s")
    maps[c][(slice(None),) + POSITIVE] = 1.0
    maps[c][(slice(None),) + NEGATIVE] = -1.0
    maps[c][(slice(None),) + FAINT] = 0.02
    return sl.write_relevance(maps, sl.stack_inputs(), "Known").volumes["T1_20s"]


def read_png(path):
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]


def view_ijk(view, node):
    """Continuous (k, j, i) of ``node`` at every pixel of the slice view part."""
    h, w = view.rgb.shape[0], view.view_width
    y, x = np.mgrid[h - 1:-1:-1, 0:w]
    xy = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).reshape(-1, 4).astype(float)
    ijk = (np.linalg.inv(sl.ijk_to_ras(node)) @ view.xy_to_ras @ xy.T).T[:, :3]
    return ijk[:, ::-1].reshape(h, w, 3)


def inside(ijk, box, margin=1.0):
    """Pixels at least ``margin`` voxels inside a (j, i) box (nearest-neighbour display)."""
    j, i = ijk[..., 1], ijk[..., 2]
    return ((j >= box[0].start - 0.5 + margin) & (j <= box[0].stop - 0.5 - margin)
            & (i >= box[1].start - 0.5 + margin) & (i <= box[1].stop - 0.5 - margin))


def test_render_known_relevance(phantom, tmp_path):
    scene, nodes, seg = phantom
    relevance = known_relevance(nodes)
    n_nodes = scene.GetNumberOfNodes()
    view = sl.render_slice_view(nodes["T1_20s"], relevance, tmp_path / "view.png", seg, size=(400, 320))
    assert scene.GetNumberOfNodes() == n_nodes                     # temporary nodes removed
    png = read_png(view.path)
    assert png.shape == (320, 400, 3) and np.array_equal(png, view.rgb)
    rgb = view.rgb[:, :view.view_width].astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]

    # default offset: the slice through the tumor's centre (snapped to a voxel centre)
    ref = nodes["T1_15min"]
    mask = sl.segment_mask(seg, seg.GetSegmentation().GetNthSegmentID(0), ref)
    ijk = view_ijk(view, ref)
    k = int(round(ijk[0, 0, 0]))
    assert np.allclose(ijk[..., 0], k) and abs(k - np.argwhere(mask)[:, 0].mean()) <= 0.5

    # relevance: red where strongly positive, blue where strongly negative
    pos, neg = inside(ijk, POSITIVE), inside(ijk, NEGATIVE)
    assert pos.sum() > 100 and neg.sum() > 100
    assert np.all((r[pos] > g[pos] + 40) & (r[pos] > b[pos] + 40))
    assert np.all((b[neg] > r[neg] + 40) & (b[neg] > g[neg] + 20))

    # near zero (exactly zero or 2 % of the maximum): transparent, the grey sequence shows through
    ii, jj = np.round(ijk[..., 2]).astype(int), np.round(ijk[..., 1]).astype(int)
    on_volume = (ii >= 0) & (ii < SHAPE[2]) & (jj >= 0) & (jj < SHAPE[1])

    def on_view(voxels):                                        # a (j, i) voxel mask of slice k, per pixel
        out = np.zeros(ii.shape, bool)
        out[on_volume] = voxels[jj[on_volume], ii[on_volume]]
        return out

    grown = on_view(ndimage.binary_dilation(mask[k]))
    zero = on_volume & ~grown & ~inside(ijk, POSITIVE, -1.5) & ~inside(ijk, NEGATIVE, -1.5)
    faint = inside(ijk, FAINT)
    for region in (zero, faint):
        assert region.sum() > 100
        assert np.all((r[region] == g[region]) & (g[region] == b[region]))
    assert (r[zero] > 40).sum() > 2000                             # the sequence, not just black

    # tumor outline: the boundary voxels of the tumor on this slice, in the tumor colour
    outline = np.all(np.abs(rgb - OUTLINE) <= 2, axis=-1)
    assert outline.sum() > 30
    interior = ndimage.binary_erosion(mask[k], np.ones((3, 3), bool))      # Slicer outlines 8-connected
    core, edge = on_view(interior), on_view(mask[k] & ~interior)
    assert core.sum() > 20 and not outline[core].any()
    assert np.all(grown[outline]) and edge[outline].mean() > 0.9          # on the boundary voxels
    traced = {(j, i) for j, i in zip(jj[outline], ii[outline])}
    boundary = {tuple(v) for v in np.argwhere(mask[k] & ~interior)}
    assert len(traced & boundary) >= 0.9 * len(boundary)                 # the whole boundary is traced

    # legend: bar red at the top, white in the middle, blue at the bottom; labels on black beside it
    r0, r1, c0, c1 = view.legend_box
    assert view.view_width <= c0 < c1 <= 400 and 0 < r0 < r1 < 320 and r1 - r0 > 150
    bar = view.rgb[r0:r1, c0:c1].astype(int)
    top, middle, bottom = bar[2].mean(0), bar[(r1 - r0) // 2].mean(0), bar[-3].mean(0)
    assert top[0] > top[2] + 80 and bottom[2] > bottom[0] + 80 and middle.min() > 200
    assert view.value_range == pytest.approx((-1.0, 1.0))
    panel = view.rgb[:, view.view_width:]
    assert (panel[:r0].max(-1) > 100).sum() > 20 and (panel[r1:].max(-1) > 100).sum() > 5   # max/min labels


def test_orientations_and_offset(phantom, tmp_path):
    scene, nodes, seg = phantom
    relevance = known_relevance(nodes)
    ref = nodes["T1_15min"]
    for orientation in ("Sagittal", "Coronal"):
        view = sl.render_slice_view(nodes["T2"], relevance, tmp_path / f"{orientation}.png", seg,
                                    orientation=orientation, size=(300, 240))
        assert read_png(view.path).shape == (240, 300, 3)
        normal = view.xy_to_ras[:3, 2] / np.linalg.norm(view.xy_to_ras[:3, 2])
        assert abs(normal[0 if orientation == "Sagittal" else 1]) > 0.99
    # window and colour table for this picture only; the display node is left as it was
    disp = relevance.GetDisplayNode()
    grey = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "grey")
    grey.SetTypeToGrey()
    view = sl.render_slice_view(nodes["T2"], relevance, color_node=grey, value_range=(-0.5, 0.5), size=(300, 240))
    assert view.value_range == (-0.5, 0.5)
    bar = view.rgb[view.legend_box[0]:view.legend_box[1], view.legend_box[2]:view.legend_box[3]].astype(int)
    assert np.all(bar[..., 0] == bar[..., 2]) and bar[0].mean() > 200 and bar[-1].mean() < 50
    assert disp.GetColorNodeID() == sl.relevance_color_table(scene).GetID()
    assert (disp.GetWindowLevelMin(), disp.GetWindowLevelMax()) == (-1.0, 1.0)
    # explicit offset, no segmentation, no relevance: the plain sequence, no legend
    plain = sl.render_slice_view(nodes["T1_60s"], offset=-10.0, size=(200, 200))
    assert plain.path is None and plain.rgb.shape == (200, 200, 3) and plain.view_width == 200
    assert plain.offset == pytest.approx(-10.0)
    assert np.all(plain.rgb[..., 0] == plain.rgb[..., 2])
    k = view_ijk(plain, ref)[..., 0]
    assert np.allclose(k, k[0, 0]) and np.isclose((sl.ijk_to_ras(ref) @ [0, 0, k[0, 0], 1])[2], -10.0)


def test_render_after_segment_and_analyze(phantom, tmp_path):
    """The module's workflow: segment and sequence relevance with a tiny net, then the picture."""
    scene, nodes, _ = phantom
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    image = normalise_image(sl.stack_inputs(normalise=False).image)
    with torch.no_grad():
        y = net(torch.from_numpy(image)[None])[0]
        net.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.97))   # about 3 % tumor
    seg = sl.segment(model=net, device="cpu").segmentation
    result = sl.analyze_sequences(model=net, device="cpu", seed=0)
    relevance = result.volumes[result.most_relevant]
    view = sl.render_slice_view(nodes[result.most_relevant], relevance, tmp_path / "workflow.png", seg,
                                size=(256, 224))
    assert read_png(view.path).shape == (224, 256, 3)
    rgb = view.rgb[:, :view.view_width].astype(int)
    assert np.all(np.abs(rgb - OUTLINE) <= 2, axis=-1).sum() > 5          # the predicted tumor's outline
    coloured = np.abs(rgb[..., 0] - rgb[..., 2]) > 30
    assert coloured.sum() > 20                                          # relevance overlay visible


# ---- the relevance colour table and Slicer's colour legend ------------------------------------------------------
def vtk_messages():
    """Capture VTK's error and warning output (vtkOutputWindow) from now on."""
    window = vtk.vtkStringOutputWindow()
    vtk.vtkOutputWindow.SetInstance(window)
    return window


def test_relevance_color_table_without_deprecated_calls():
    """No SetNamesInitialised (a VTK error on Slicer 5.10+): colours set by value, no names, no VTK message."""
    import inspect
    import re

    from LiverTumorLRPLib.mrml import nodes

    assert not re.search(r"\.(Set)?NamesInitialised(On|Off)?\(", inspect.getsource(nodes))      # no call left
    with sl.headless_scene() as hs:
        messages = vtk_messages()
        try:
            table = sl.relevance_color_table(hs.scene)
            assert sl.relevance_color_table(hs.scene) is table                     # created once
            output = messages.GetOutput()
        finally:
            vtk.vtkOutputWindow.SetInstance(None)
        assert output == "", output
        n = table.GetNumberOfColors()
        rgba = np.array([table.GetLookupTable().GetTableValue(i) for i in range(n)])
        assert n == 256 and rgba[n // 2, 3] == 0.0 and rgba[0, 3] == rgba[-1, 3] == 1.0
        assert rgba[-1, 0] > rgba[-1, 2] + 0.5 and rgba[0, 2] > rgba[0, 0] + 0.5            # red top, blue bottom
        assert table.GetColorName(n - 1) == ""


def test_relevance_legends_on_real_mrml(phantom):
    """One Slicer colour legend per relevance map (Colors logic), following its display node; made once."""
    from LiverTumorLRPLib.mrml.nodes import LEGEND_LABEL_FORMAT, relevance_legend, relevance_legends

    scene, nodes, _ = phantom
    maps = np.zeros((6,) + SHAPE, np.float32)
    maps[2][(slice(None),) + POSITIVE] = 1.0
    result = sl.write_relevance(maps, sl.stack_inputs(), "Known")
    legends = relevance_legends(result.volumes)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 6
    for key, legend in legends.items():
        volume = result.volumes[key]
        assert legend.IsA("vtkMRMLColorLegendDisplayNode")
        assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(volume) is legend
        assert legend.GetPrimaryDisplayNode() is volume.GetDisplayNode()
        assert volume.GetDisplayNode().GetColorNodeID() == sl.relevance_color_table(scene).GetID()
        assert legend.GetTitleText().startswith("Relevance (") and legend.GetLabelFormat() == LEGEND_LABEL_FORMAT
        assert legend.GetVisibility() and legend.GetVisibility2D() and not legend.GetVisibility3D()
        assert not legend.GetUseColorNamesForLabels()
    assert legends["T1_20s"].GetTitleText() == "Relevance (T1 20 s)"
    assert relevance_legend(result.volumes["T2"]) is legends["T2"]                  # not a second one
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 6


LEGEND_SCRIPT = r"""
import json, os, sys
import numpy as np, vtk
from vtk.util.numpy_support import vtk_to_numpy
from trame_slicer.core import SlicerApp
from trame_slicer.views import ViewLayoutDefinition
from trame_slicer.views.direct_view_factory import DirectViewFactory
import slicer
from LiverTumorLRPLib import slicer_logic as sl
from LiverTumorLRPLib.mrml.nodes import relevance_legends

app = SlicerApp()
slicer.mrmlScene = app.scene
app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
view = app.view_manager.create_view(ViewLayoutDefinition.axial_view())
nodes = sl.add_phantom_case(0, shape=(16, 48, 48), scene=app.scene)
app.scene.RemoveNode(app.scene.GetFirstNodeByName("Phantom reference"))
maps = np.zeros((6, 16, 48, 48), np.float32)
maps[2][:, 30:38, 8:16] = 1.0
maps[2][:, 30:38, 28:36] = -0.5
result = sl.write_relevance(maps, sl.stack_inputs(scene=app.scene), "Known", scene=app.scene)

composite = app.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")

def grab(foreground):
    view.render_window().SetSize(400, 300)
    view.set_background_volume_id(nodes["T1_20s"].GetID())
    # as Slicer's slice controller changes a layer (the legends follow layer changes flagged as interactions)
    composite.SetInteractionFlags(slicer.vtkMRMLSliceCompositeNode.ForegroundVolumeFlag)
    view.set_foreground_volume_id(foreground.GetID() if foreground is not None else None)
    composite.SetInteractionFlags(0)
    view.fit_view_to_content()
    view.render()
    w2i = vtk.vtkWindowToImageFilter()
    w2i.SetInput(view.render_window())
    w2i.ReadFrontBufferOff()
    w2i.Update()
    image = w2i.GetOutput()
    w, h, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]

shown = result.volumes["T1_20s"]
before = grab(shown)
relevance_legends(result.volumes)
np.savez(sys.argv[1], before=before, after=grab(shown), hidden=grab(None))
"""


def test_color_legend_drawn_in_slice_view(tmp_path):
    """Slicer's own slice view (its displayable managers, as trame-slicer sets them up), rendered offscreen: the
    legend appears beside the shown relevance -- red at the top, blue at the bottom -- and not without it."""
    pytest.importorskip("trame_slicer")
    import os
    import subprocess
    import sys

    out = tmp_path / "views.npz"
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    p = subprocess.run([sys.executable, "-c", LEGEND_SCRIPT, str(out)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    views = np.load(out)
    before, after, hidden = (views[k].astype(int) for k in ("before", "after", "hidden"))
    changed = np.abs(after - before).sum(-1) > 30
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 500 and cols.min() > 150 and (cols > 300).sum() > 300   # title and bar on the right
    bar = after[:, cols.max() - 12:cols.max() + 1]
    red = (bar[..., 0] > bar[..., 2] + 80) & (bar[..., 0] > 120)
    blue = (bar[..., 2] > bar[..., 0] + 80) & (bar[..., 2] > 120)
    assert red.sum() > 20 and blue.sum() > 20
    assert np.nonzero(red)[0].mean() < np.nonzero(blue)[0].mean()              # red above blue
    assert (np.abs(hidden - before).sum(-1)[changed] > 30).sum() < 20          # no relevance shown: no legend

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

"""slicer_logic with the real Slicer core (slicer-core): scene, nodes, logics; tiny volumes and a tiny u-net."""
import os
import types

import numpy as np
import pytest
import slicer
import torch
import vtk

from LiverTumorLRPLib import slicer_logic as sl
from LiverTumorLRPLib.intensity import normalise_image
from LiverTumorLRPLib.phantom import generate_case
from LiverTumorLRPLib.progress import Cancelled
from LiverTumorLRPLib.sequences import DISPLAY_NAMES, SEQUENCE_KEYS
from LiverTumorLRPLib.models import save_model
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {"T2": "T2 haste", "T1_plain": "T1 plain", "T1_20s": "T1 20s", "T1_60s": "T1 60s",
         "T1_120s": "T1 120s", "T1_15min": "T1 15min HBP"}
SHAPE = (16, 32, 32)


def make_scene():
    """Scene, application logic and the module logics slicer.util expects; returns (scene, app, logics)."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}
    for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Plots", slicer.vtkSlicerPlotsLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name.lower()] = logic
    return scene, app, logics


@pytest.fixture
def scene():
    scene, app, logics = make_scene()
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLApplicationLogic(app)
    slice_logic.SetMRMLScene(scene)
    slice_logic.AddSliceNode("Red")
    saved = {k: getattr(slicer, k) for k in ("mrmlScene", "modules") if hasattr(slicer, k)}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{k: types.SimpleNamespace(logic=(lambda lg=lg: lg))
                                              for k, lg in logics.items()})
    yield scene
    for k in ("mrmlScene", "modules"):
        if k in saved:
            setattr(slicer, k, saved[k])
        elif hasattr(slicer, k):
            delattr(slicer, k)
    scene.Clear(1)


@pytest.fixture(scope="module")
def case():
    return generate_case(3, shape=SHAPE, spacing=(3.0, 2.5, 2.0))


def ijk_to_ras_matrix():
    """Non-identity direction (axes permuted and flipped), non-unit spacing, non-zero origin."""
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag([2.0, 2.5, 3.0])
    m[:3, 3] = [12.5, -40.0, 77.0]
    return m


@pytest.fixture(scope="module")
def model(case):
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    image = normalise_image(np.stack([case.images[k] for k in SEQUENCE_KEYS]))
    with torch.no_grad():
        y = net(torch.from_numpy(image)[None])[0]
        d = (y[1] - y[0]).flatten()
        net.head.bias[1] -= float(torch.quantile(d, 0.95))  # about 5 % predicted tumor
    return net


@pytest.fixture
def volumes(scene, case):
    m = ijk_to_ras_matrix()
    return {k: slicer.util.addVolumeFromArray(case.images[k], m, name=NAMES[k]) for k in SEQUENCE_KEYS}


def geometry(node):
    return node.GetOrigin(), node.GetSpacing(), sl.ijk_to_ras(node)


def assert_same_geometry(a, b):
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    da, db = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASDirectionMatrix(da)
    b.GetIJKToRASDirectionMatrix(db)
    assert np.allclose(slicer.util.arrayFromVTKMatrix(da), slicer.util.arrayFromVTKMatrix(db))
    assert a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()


def test_auto_assign_and_stack(scene, volumes, case):
    assigned = sl.assign_sequences()
    assert {k: n.GetName() for k, n in assigned.items()} == NAMES
    stacked = sl.stack_inputs()
    assert stacked.image.shape == (6,) + SHAPE
    assert stacked.reference is volumes["T1_15min"]
    assert not stacked.messages


def test_missing_sequence_is_named(scene, volumes):
    scene.RemoveNode(volumes["T1_20s"])
    with pytest.raises(ValueError, match="T1 20 s"):
        sl.stack_inputs()
    with pytest.raises(ValueError, match="T1_20s"):
        sl.stack_inputs({k: v for k, v in volumes.items() if k != "T1_20s"})


def test_other_grid_is_resampled_or_named(scene, volumes, case):
    m = ijk_to_ras_matrix()
    m[:3, :3] *= 0.5
    other = slicer.util.addVolumeFromArray(np.repeat(case.images["T2"], 2, axis=0).repeat(2, 1).repeat(2, 2), m,
                                           name="T2 fine")
    with pytest.warns(UserWarning, match="T2 fine"):
        stacked = sl.stack_inputs({**volumes, "T2": other})
    assert stacked.image.shape == (6,) + SHAPE and stacked.messages
    m[:3, 3] += 5000.0
    far = slicer.util.addVolumeFromArray(case.images["T2"], m, name="T2 far away")
    with pytest.raises(ValueError, match="T2 far away"), pytest.warns(UserWarning):
        sl.stack_inputs({**volumes, "T2": far})


def test_segment(scene, volumes, model):
    result = sl.segment(model=model, device="cpu")
    seg = result.segmentation
    assert seg.IsA("vtkMRMLSegmentationNode")
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Tumor")
    assert segment_id
    assert result.n_tumor > 0
    assert_same_geometry(result.probability, volumes["T1_15min"])
    mask = sl.segment_mask(seg, segment_id, volumes["T1_15min"])
    prob = slicer.util.arrayFromVolume(result.probability)
    assert np.array_equal(mask, prob > 0.5)
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0  # temporary one removed


def check_explanation(scene, result, volumes):
    assert set(result.volumes) == set(SEQUENCE_KEYS)
    for key, node in result.volumes.items():
        assert_same_geometry(node, volumes[key])
        disp = node.GetDisplayNode()
        lo, hi = disp.GetWindowLevelMin(), disp.GetWindowLevelMax()
        assert hi > 0 and np.isclose(lo, -hi)
        assert disp.GetColorNodeID() == sl.relevance_color_table(scene).GetID()
    assert np.isclose(abs(result.shares.sum()), 1.0)   # -1: the reference gives more evidence (contribution)
    assert np.allclose(result.positive + result.negative, result.shares)
    table = result.table.GetTable()
    assert table.GetNumberOfRows() == 6
    assert [table.GetColumn(c).GetName() for c in range(4)] == ["sequence", "relevance", "positive", "negative"]
    assert [table.GetValue(r, 0).ToString() for r in range(6)] == list(DISPLAY_NAMES)
    assert np.allclose([table.GetValue(r, 1).ToDouble() for r in range(6)], result.shares)
    chart = result.chart
    assert chart.GetNumberOfPlotSeriesNodes() == 6
    names = [chart.GetNthPlotSeriesNode(i).GetName() for i in range(6)]
    assert names == list(DISPLAY_NAMES)
    assert all(chart.GetNthPlotSeriesNode(i).GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
               for i in range(6))
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemName(result.folder) == result.name
    children = vtk.vtkIdList()
    sh.GetItemChildren(result.folder, children)
    in_folder = {sh.GetItemDataNode(children.GetId(i)).GetID() for i in range(children.GetNumberOfIds())}
    assert {n.GetID() for n in result.volumes.values()} <= in_folder
    assert result.table.GetID() in in_folder and result.chart.GetID() in in_folder


def test_color_table_transparent_near_zero(scene):
    node = sl.relevance_color_table(scene)
    n = node.GetNumberOfColors()
    rgba = [0.0] * 4
    node.GetColor(n // 2, rgba)
    assert rgba[3] == 0.0 and min(rgba[:3]) > 0.9
    node.GetColor(0, rgba)
    assert rgba[3] == 1.0 and rgba[2] > rgba[0]        # blue, opaque
    node.GetColor(n - 1, rgba)
    assert rgba[3] == 1.0 and rgba[0] > rgba[2]        # red, opaque
    assert sl.relevance_color_table(scene) is node       # created once


def test_analyze_sequences_default(scene, volumes, model):
    """The default: the Shapley values of Sec. 2.3's f, with the necessity columns in the table."""
    result = sl.analyze_sequences(model=model, device="cpu")
    check_explanation(scene, result, volumes)
    phi = np.array([result.details["shapley_f"][k] for k in result.volumes])
    np.testing.assert_allclose(result.shares, phi / abs(phi.sum()), rtol=1e-6)
    t = result.table.GetTable()
    names = [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())]
    assert names[-2:] == ["Dice without", "Shapley Dice"] and "p2.5" not in names


def test_analyze_sequences(scene, volumes, model):
    result = sl.analyze_sequences(model=model, device="cpu", seed=1, method="paper")
    check_explanation(scene, result, volumes)
    assert result.details["n_tumor"] > 0
    composite = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == result.volumes[result.most_relevant].GetID()
    assert composite.GetBackgroundVolumeID() == volumes[result.most_relevant].GetID()
    t = result.table.GetTable()
    names = [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())]
    assert names[-3:] == ["p2.5", "p97.5", "expected"]
    for r in range(t.GetNumberOfRows()):  # the first draw's share lies within the spread of the draws
        share, low, high = (t.GetValue(r, names.index(k)).ToDouble() for k in ("relevance", "p2.5", "p97.5"))
        assert low - 1e-9 <= high and np.isfinite(share)
    expected = [t.GetValue(r, names.index("expected")).ToDouble() for r in range(t.GetNumberOfRows())]
    assert abs(sum(expected) - 1) < 1e-6


def test_explain_segment_and_point_regions(scene, volumes, model):
    seg = sl.segment(model=model, device="cpu").segmentation
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Tumor")
    result = sl.explain_region(model=model, region=sl.Region("segment", seg, segment_id), cls="tumor",
                               device="cpu")
    check_explanation(scene, result, volumes)
    assert result.details["n_voxels"] == int(sl.segment_mask(seg, segment_id, volumes["T1_15min"]).sum())
    # one markup point: the voxel (k, j, i) = (8, 16, 10) of the reference
    ras = sl.ijk_to_ras(volumes["T1_15min"]) @ np.array([10, 16, 8, 1.0])
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    markups.AddControlPoint(vtk.vtkVector3d(*ras[:3]))
    mask = sl.point_mask(markups, 0, volumes["T1_15min"])
    assert mask.sum() == 1 and mask[8, 16, 10]
    point = sl.explain_region(model=model, region=sl.Region("point", markups), cls="tumor", device="cpu",
                              name="Point")
    check_explanation(scene, point, volumes)
    assert point.details["n_voxels"] == 1
    background = sl.explain_region(model=model, region="predicted background", cls="background", device="cpu")
    assert np.isclose(background.shares.sum(), 1.0)
    markups.AddControlPoint(vtk.vtkVector3d(1e4, 0, 0))
    with pytest.raises(ValueError, match="outside"):
        sl.point_mask(markups, 1, volumes["T1_15min"])


def test_blocking_job_progress_cancel_and_failure(scene, volumes, model):
    """The in-process path (the worker process path is in test_worker.py): progress, Cancel, errors."""
    seen = []
    job = sl.Job(sl.analyze_sequences_task(model=model, device="cpu"), lambda f, m: seen.append(f))
    result = job.run()
    assert job.state == "done" and result is job.result and np.isclose(abs(result.shares.sum()), 1.0)
    assert seen == sorted(seen) and seen[-1] == 1.0 and any(0 < f < 1 for f in seen)
    assert any("relevance" in m for m in job.take_messages()) and job.take_messages() == []
    # cancel at the first progress report: Cancelled, nothing is written
    n_before = scene.GetNumberOfNodes()
    with pytest.raises(Cancelled):
        sl.analyze_sequences(model=model, device="cpu", cancel=lambda: True)
    assert scene.GetNumberOfNodes() == n_before
    job = sl.Job(sl.Task("slow", lambda progress: progress(0.5, "working"), lambda r: r))
    job.cancel()
    with pytest.raises(Cancelled):
        job.run()
    assert job.state == "cancelled" and isinstance(job.error, Cancelled)
    job = sl.Job(sl.Task("fails", lambda p: 1 / 0, lambda r: r))
    with pytest.raises(ZeroDivisionError):
        job.run()
    assert job.state == "failed" and isinstance(job.error, ZeroDivisionError)


def test_bench_batch_script(tmp_path, case, model):
    from LiverTumorLRPLib.phantom import write_case

    import importlib.util

    spec = importlib.util.spec_from_file_location("slicer_batch", os.path.join(ROOT, "scripts", "slicer_batch.py"))
    slicer_batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slicer_batch)
    case_dir = write_case(case, str(tmp_path / "case"))
    model_path = save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    had_scene = hasattr(slicer, "mrmlScene")
    code = slicer_batch.main([case_dir, str(out), "--model", str(model_path), "--device", "cpu"])
    assert code == 0
    files = sorted(os.listdir(out))
    assert "sequence_relevance.csv" in files and "tumor_probability.nii.gz" in files
    assert sum(f.startswith("relevance_") for f in files) == 6
    import csv                                             # sequence relevance came through the worker process

    with open(out / "sequence_relevance.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == list(SEQUENCE_KEYS)
    assert np.isclose(abs(sum(float(r["relevance"]) for r in rows)), 1.0, atol=1e-5)
    assert hasattr(slicer, "mrmlScene") == had_scene  # the script restores what it set


def test_phantom_case_geometry(scene):
    nodes = sl.add_phantom_case(2, shape=(8, 16, 16), spacing=(4.0, 3.0, 2.0), prefix="P")
    assert set(sl.assign_sequences()) == set(SEQUENCE_KEYS)
    ref = nodes["T1_15min"]
    assert np.allclose(ref.GetSpacing(), (2.0, 3.0, 4.0))
    case = generate_case(2, shape=(8, 16, 16), spacing=(4.0, 3.0, 2.0))
    lps = np.asarray(case.reference().TransformIndexToPhysicalPoint((3, 5, 7)))
    ras = sl.ijk_to_ras(ref) @ np.array([3, 5, 7, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1])
    seg = scene.GetFirstNodeByName("P reference")
    assert seg is not None and seg.GetSegmentation().GetNumberOfSegments() == int(case.label.any())

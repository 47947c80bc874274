"""The worker process and WorkerJob with the real Slicer core: progress, same nodes as in-process, cancel, errors."""
import ast
import glob
import os
import sys
import time

import numpy as np
import pytest
import torch

from LiverTumorLRPLib import slicer_logic as sl
from LiverTumorLRPLib.intensity import normalise_image
from LiverTumorLRPLib.sequences import DISPLAY_NAMES, SEQUENCE_KEYS
from LiverTumorLRPLib.models import save_model
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, SPACING, SEED = (16, 32, 32), (3.0, 2.5, 2.0), 3


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny u-net predicting about 5 % tumor on the phantom, saved as a model file."""
    from LiverTumorLRPLib.phantom import generate_case

    case = generate_case(SEED, shape=SHAPE, spacing=SPACING)
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    image = normalise_image(np.stack([case.images[k] for k in SEQUENCE_KEYS]))
    with torch.no_grad():
        y = net(torch.from_numpy(image)[None])[0]
        net.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.95))
    return str(save_model(net, tmp_path_factory.mktemp("model") / "tiny.safetensors"))


@pytest.fixture
def phantom():
    with sl.headless_scene() as hs:
        yield hs.scene, sl.add_phantom_case(SEED, shape=SHAPE, spacing=SPACING)


def run_polled(job, timeout=300):
    """Poll as the GUI's timer does; (fractions seen, log lines)."""
    fractions, log = [], []
    deadline = time.monotonic() + timeout
    while not job.poll():
        fractions.append(job.fraction)
        log += job.take_messages()
        assert time.monotonic() < deadline, "the worker did not finish"
        time.sleep(0.05)
    return fractions, log + job.take_messages()


def add_point(scene, nodes):
    """A markup point on the reference voxel (k, j, i) = (8, 16, 10)."""
    import vtk

    ras = sl.ijk_to_ras(nodes["T1_15min"]) @ np.array([10, 16, 8, 1.0])
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    markups.AddControlPoint(vtk.vtkVector3d(*ras[:3]), "P-1")
    return markups


def assert_same_volume(a, b, atol):
    assert a.GetName() == b.GetName()
    assert np.allclose(sl.ijk_to_ras(a), sl.ijk_to_ras(b))
    assert a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()
    assert np.allclose(sl.node_array(a), sl.node_array(b), rtol=1e-4, atol=atol)


def test_segment_in_worker_matches_in_process(phantom, model_path):
    scene, nodes = phantom
    job = sl.segment_job(nodes, model_path, "cpu", python=sys.executable).start()
    assert job.worker.running() and os.path.isdir(job.job_dir)
    fractions, log = run_polled(job)
    assert job.state == "done", job.error
    # progress arrives as lines in the worker's log (how many polls see it depends on the machine's speed)
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions) and job.fraction == 1.0
    assert "Segment: started" in log and "Segment: done" in log and any("patch" in m for m in log)
    assert not os.path.exists(job.job_dir)
    with sl.headless_scene():
        ref_nodes = sl.add_phantom_case(SEED, shape=SHAPE, spacing=SPACING)
        ref = sl.segment(ref_nodes, model_path, "cpu")
        assert_same_volume(job.result.probability, ref.probability, 1e-6)
        assert job.result.n_tumor == ref.n_tumor > 0 and np.isclose(job.result.tumor_ml, ref.tumor_ml)
        assert job.result.segmentation.GetName() == ref.segmentation.GetName()
    segmentation = job.result.segmentation
    mask = sl.segment_mask(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName("Tumor"),
                           nodes["T1_15min"])
    assert np.array_equal(mask, sl.node_array(job.result.probability) > 0.5)


def test_explain_point_in_worker_matches_in_process(phantom, model_path):
    """Eq. 2 for a markup point: the region goes to the worker as a mask file. (Sequence relevance through the
    worker: test_slicer_logic.py::test_bench_batch_script.)"""
    scene, nodes = phantom
    job = sl.explain_region_job(nodes, model_path, sl.Region("point", add_point(scene, nodes)), "tumor",
                                device="cpu", python=sys.executable).start()
    assert job.wait(300) and job.state == "done", job.error
    got = job.result
    assert got.details["n_voxels"] == 1 and got.name == "Relevance of point P-1 for tumor"
    with sl.headless_scene() as hs:
        ref_nodes = sl.add_phantom_case(SEED, shape=SHAPE, spacing=SPACING)
        ref = sl.explain_region(ref_nodes, model_path, sl.Region("point", add_point(hs.scene, ref_nodes)), "tumor",
                                device="cpu")
        assert got.name == ref.name and got.details == ref.details
        assert np.allclose(got.shares, ref.shares, atol=1e-5) and np.isclose(got.shares.sum(), 1.0)
        assert np.allclose(got.positive, ref.positive, atol=1e-5)
        scale = max(float(np.abs(sl.node_array(n)).max()) for n in ref.volumes.values())
        for key in SEQUENCE_KEYS:
            assert_same_volume(got.volumes[key], ref.volumes[key], 1e-5 * scale)
        table = got.table.GetTable()
        assert [table.GetValue(r, 0).ToString() for r in range(6)] == list(DISPLAY_NAMES)
        assert got.chart.GetNumberOfPlotSeriesNodes() == 6
        sh = scene.GetSubjectHierarchyNode()
        assert sh.GetItemName(got.folder) == got.name


def test_cancel_mid_run_kills_the_process_and_adds_nothing(phantom, model_path):
    scene, nodes = phantom
    n_before = scene.GetNumberOfNodes()
    job = sl.analyze_sequences_job(nodes, model_path, device="cpu", python=sys.executable).start()
    pid, job_dir = job.worker.process.pid, job.job_dir
    deadline = time.monotonic() + 120
    while job.fraction == 0.0 and job.worker.running():   # until the worker reports progress
        assert not job.poll() and time.monotonic() < deadline
        time.sleep(0.05)
    assert job.state == "running"
    job.cancel()
    assert job.state == "cancelled" and job.poll() and job.result is None
    assert job.worker.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    if hasattr(os, "killpg"):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)                              # no child of its process group is left either
    assert not os.path.exists(job_dir)
    assert scene.GetNumberOfNodes() == n_before
    assert "Sequence relevance: cancelled" in job.take_messages()


def test_failing_job_reports_one_line_and_adds_nothing(phantom, model_path, tmp_path):
    scene, nodes = phantom
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    (tmp_path / "broken.json").write_text(open(model_path[:-len(".safetensors")] + ".json").read())
    n_before = scene.GetNumberOfNodes()
    job = sl.segment_job(nodes, str(broken), "cpu", python=sys.executable).start()
    assert job.wait(300) and job.state == "failed"
    assert job.error and "\n" not in job.error and "Traceback" not in job.error
    assert any(job.error in m and "Segment failed" in m for m in job.take_messages())
    assert scene.GetNumberOfNodes() == n_before and not os.path.exists(job.job_dir)
    with pytest.raises(RuntimeError, match="Segment failed"):
        sl.segment_job(nodes, str(broken), "cpu", python=sys.executable).run()
    # a case lacking a sequence: the error names it and no process or folder is started
    scene.RemoveNode(nodes["T1_20s"])
    job = sl.WorkerJob("sequence relevance", None, model_path, python=sys.executable, scene=scene,
                       temp_dir=str(tmp_path))
    with pytest.raises(ValueError, match="T1 20 s"):
        job.start()
    assert job.worker is None and not glob.glob(str(tmp_path / "LiverTumorLRP-*"))


def test_result_after_scene_close_is_discarded(phantom, model_path):
    scene, nodes = phantom
    job = sl.segment_job(nodes, model_path, "cpu", python=sys.executable).start()
    assert job.worker.process.wait(300) == 0             # the result is on disk, not yet applied
    scene.Clear(0)
    assert job.poll() and job.state == "discarded" and job.result is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert not os.path.exists(job.job_dir)


def shadowing_copy(folder):
    """An installed-looking LiverTumorLRPLib that fails on import."""
    pkg = folder / "LiverTumorLRPLib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('the shadowing copy was imported')\n")
    return str(folder)


def test_worker_command_line_errors_and_no_shadowing(tmp_path):
    import subprocess

    script = os.path.join(ROOT, "LiverTumorLRPLib", "worker.py")
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text('{"task": "paint"}')
    env = dict(os.environ, PYTHONPATH=shadowing_copy(tmp_path))   # ahead of everything but the script's folder
    p = subprocess.run([sys.executable, script, str(job)], capture_output=True, text=True, encoding="utf-8",
                       errors="replace", timeout=120, env=env)
    assert p.returncode == 2 and "'task' must be one of" in p.stderr and p.stderr.count("\n") == 1
    assert '"error"' in p.stdout and "shadowing" not in p.stderr


def test_module_imports_the_bundled_library_ahead_of_an_installed_one(tmp_path):
    """The module's _libraryFolder/_importBundledLibrary (run from its source; the rest of it needs Qt)."""
    module = os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRP.py")
    tree = ast.parse(open(module).read())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_libraryFolder",
                                                                                 "_importBundledLibrary")]
    namespace = {"__file__": module, "os": os, "sys": sys}
    exec(compile(ast.Module(funcs, []), module, "exec"), namespace)
    saved_modules = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "LiverTumorLRPLib"}
    saved_path = list(sys.path)
    try:
        for k in saved_modules:
            del sys.modules[k]
        fake = tmp_path / "site"
        fake.mkdir()
        (fake / "LiverTumorLRPLib").mkdir()
        (fake / "LiverTumorLRPLib" / "__init__.py").write_text("INSTALLED = True\n")
        sys.path.insert(0, str(fake))
        import LiverTumorLRPLib as installed

        assert getattr(installed, "INSTALLED", False)               # the installed copy shadows the bundled one
        lib = namespace["_importBundledLibrary"]()
        assert os.path.dirname(lib.__file__) == os.path.join(ROOT, "LiverTumorLRPLib")
        assert not hasattr(lib, "INSTALLED") and sys.path[0] == ROOT
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "LiverTumorLRPLib"]:
            del sys.modules[k]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path


def _sources():
    """The code that runs in Slicer's process: the module's folder (the module file and its helper package), the
    library's MRML code."""
    module = sorted(glob.glob(os.path.join(ROOT, "LiverTumorLRP", "**", "*.py"), recursive=True))
    assert os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRP.py") in module
    return [*module, *sorted(glob.glob(os.path.join(ROOT, "LiverTumorLRPLib", "mrml", "*.py"))),
            os.path.join(ROOT, "LiverTumorLRPLib", "slicer_logic.py")]


@pytest.mark.parametrize("path", _sources(), ids=os.path.basename)
def test_gui_and_mrml_code_use_no_threads_and_no_torch(path):
    text = open(path, encoding="utf-8").read()
    assert "threading.Thread" not in text and "Thread(" not in text
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert not any(n == "threading" or n == "torch" or n.startswith("torch.") for n in names), \
            f"{os.path.basename(path)}:{node.lineno} imports {names}"

"""One compute path: the same case through every front end gives the same segmentation, maps, shares and
Shapley values of Dice, by either sequence relevance method.

Front ends: the command line (``liver-lrp analyze`` / ``explain``, files), the worker process the Slicer module
starts (:class:`WorkerJob`, nodes), the in-process MRML tasks (nodes), and the web page's handlers (the real
``WebApp`` methods, with a synchronous job runner in place of the trame server).  Models: the bundled one on a
case whose spacing differs from the model's (so every path must resample to the model's grid and back), and a
background/liver/tumor model (so every path must segment by the model's labels: tumor is class 2, not 1).
"""
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch

from LiverTumorLRPLib import slicer_logic as sl
from LiverTumorLRPLib.cli import main as cli
from LiverTumorLRPLib.intensity import normalise_image
from LiverTumorLRPLib.models import bundled_model_path, save_model
from LiverTumorLRPLib.mrml.inputs import PHANTOM_NAMES, phantom_ijk_to_ras
from LiverTumorLRPLib.phantom import generate_case, write_case
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

THREE_CLASSES = ["background", "liver", "tumor"]


def three_class_model(case, path) -> str:
    """A seeded u-net with classes background/liver/tumor: about 5 % tumor (class 2) and 40 % liver (class 1)."""
    torch.manual_seed(1)
    net = UNet3D(UNetConfig(depth=2, base_channels=4, out_channels=3)).eval()
    image = normalise_image(np.stack([case.images[k] for k in SEQUENCE_KEYS]))
    with torch.no_grad():
        y = net(torch.from_numpy(image)[None])[0]
        net.head.bias[2] -= float(torch.quantile((y[2] - torch.maximum(y[0], y[1])).flatten(), 0.95))
        net.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.6))
    return str(save_model(net, path, {"classes": THREE_CLASSES, "lesion": "tumor"}))


CASES = {
    # the bundled model runs at 4 x 3 x 3 mm; this case is 5 x 2.5 x 2.5 mm
    # (the default sequence relevance, Shapley values with LRP maps, on one; the paper's Sec. 2.3 on the other)
    "bundled model, other spacing": dict(seed=11, shape=(20, 60, 60), spacing=(5.0, 2.5, 2.5), model=None,
                                         method="contribution"),
    "background/liver/tumor model": dict(seed=12, shape=(16, 40, 40), spacing=(4.0, 3.0, 3.0), model="three",
                                         method="paper"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every front end on one thread, this process and the worker processes alike: torch's results then do not
    depend on how many threads an earlier test left torch with (its sums are ordered by thread count)."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module", params=list(CASES))
def setup(request, tmp_path_factory):
    spec = CASES[request.param]
    root = tmp_path_factory.mktemp("one_path")
    case = generate_case(spec["seed"], shape=spec["shape"], spacing=spec["spacing"])
    folder = write_case(case, str(root / "case"))
    for name in os.listdir(folder):      # the scene has no label: neither has the folder (necessity's target
        if name.startswith("label"):     # is then the prediction with every sequence, in every front end)
            os.remove(os.path.join(folder, name))
    model = str(bundled_model_path()) if spec["model"] is None else three_class_model(case, root / "three.safetensors")
    return request.param, case, folder, model, spec["method"]


@pytest.fixture
def scene_nodes(setup):
    """The case's six sequences as volume nodes of a fresh scene (the geometry the case files have)."""
    _, case, *_ = setup
    with sl.headless_scene() as hs:
        m = phantom_ijk_to_ras(case)
        nodes = {k: slicer.util.addVolumeFromArray(case.images[k], m, name=f"Phantom {PHANTOM_NAMES[k]}")
                 for k in SEQUENCE_KEYS}
        yield hs.scene, nodes


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def cli_results(folder, model, out, method):
    """``liver-lrp analyze`` and ``explain`` (predicted tumor, tumor class): segmentation, maps and shares."""
    import json

    common = ["--model", model, "--device", "cpu"]
    assert cli(["analyze", folder, "--out", str(out / "analyze"), "--method", method, *common]) == 0
    assert cli(["explain", folder, "--out", str(out / "explain"), "--region", "tumor", "--class", "tumor",
                *common]) == 0
    res = {}
    for task in ("analyze", "explain"):
        with open(out / task / "sequence_relevance.json", encoding="utf-8") as fh:
            summary = json.load(fh)
        res[task] = (np.stack([read(out / task / f"relevance_{k}.nii.gz") for k in SEQUENCE_KEYS]),
                     np.array(summary["relevance"]), np.array([r["positive"] for r in summary["sequences"]]))
        if task == "analyze":
            res["necessity"] = np.array([summary["necessity"]["shapley_dice"][k] for k in SEQUENCE_KEYS])
            assert summary["method"] == method
            if method == "contribution":      # the shares are the Shapley values of f, normalised to sum 1
                phi = np.array([summary["shapley_f"][k] for k in SEQUENCE_KEYS])
                np.testing.assert_allclose(res[task][1], phi / phi.sum(), rtol=1e-6)
    res["segment"] = read(out / "analyze" / "tumor_segmentation.nii.gz").astype(bool)
    return res


def node_results(seg, explained, analyzed, reference, method):
    """The same from result nodes."""
    assert analyzed.details["method"] == method
    segment_id = seg.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Tumor")
    res = {"segment": sl.segment_mask(seg.segmentation, segment_id, reference)}
    for task, er in (("explain", explained), ("analyze", analyzed)):
        res[task] = (np.stack([sl.node_array(er.volumes[k]) for k in SEQUENCE_KEYS]), np.asarray(er.shares),
                     np.asarray(er.positive))
    res["necessity"] = np.array([analyzed.details["necessity"]["shapley_dice"][k] for k in SEQUENCE_KEYS])
    table = analyzed.table.GetTable()
    column = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())].index("Shapley Dice")
    np.testing.assert_allclose([table.GetValue(r, column).ToDouble() for r in range(6)], res["necessity"])
    return res


def assert_same(got, want, where):
    assert np.array_equal(got["segment"], want["segment"]), f"{where}: segmentation differs"
    for task in ("explain", "analyze"):
        (maps, shares, positive), (maps0, shares0, positive0) = got[task], want[task]
        scale = float(np.abs(maps0).max())
        # float32 noise: the worker gets the scene's volumes as files, whose geometry goes through RAS and back,
        # and a sub-micrometre shift of the resampling grid moves a few voxels' relevance by ~1e-4
        np.testing.assert_allclose(maps, maps0, rtol=1e-3, atol=1e-4 * scale, err_msg=f"{where}: {task} maps")
        np.testing.assert_allclose(shares, shares0, atol=1e-5, err_msg=f"{where}: {task} shares")
        np.testing.assert_allclose(positive, positive0, atol=1e-5, err_msg=f"{where}: {task} positive mass")
    np.testing.assert_allclose(got["necessity"], want["necessity"], atol=1e-9,
                               err_msg=f"{where}: Shapley values of Dice")


class WebHarness:
    """The state and job runner the page's handlers use, without a trame server: jobs run at once, here."""

    class State(dict):
        def __getattr__(self, key):
            return self.get(key)

        def __setattr__(self, key, value):
            self[key] = value

    def __init__(self, scene, nodes, model, method):
        from LiverTumorLRPLib.web.app import WebApp

        self.app = object.__new__(WebApp)      # the real handlers, without a SlicerApp and its views
        self.app.scene, self.app.drawn_node, self.app.point_node = scene, None, None
        self.app.state = self.State(case_loaded=True, model=model, device="cpu", region="predicted tumor",
                                    cls="tumor", preset="recommended", method=method, actions=0, error="",
                                    **{f"seq_{k}": n.GetID() for k, n in nodes.items()})
        self.app.jobs = self
        self.results = []

    def start(self, name, make_task, on_done):
        self.results.append(sl.Job(make_task()).run())

    def log(self, text):
        pass

    def run(self, handler):
        getattr(self.app, handler)()
        assert not self.app.state.error, self.app.state.error
        return self.results[-1]


def test_every_front_end_gives_the_same_results(setup, scene_nodes, tmp_path):
    name, case, folder, model, method = setup
    scene, nodes = scene_nodes
    want = cli_results(folder, model, tmp_path, method)
    assert want["segment"].any() and want["segment"].shape == case.label.shape
    reference = nodes["T1_15min"]

    in_process = node_results(sl.segment(nodes, model, "cpu"),
                              sl.explain_region(nodes, model, "predicted tumor", "tumor", device="cpu"),
                              sl.analyze_sequences(nodes, model, device="cpu", method=method), reference,
                              method)
    assert_same(in_process, want, f"{name}: in-process MRML tasks")

    jobs = [sl.segment_job(nodes, model, "cpu", python=sys.executable),
            sl.explain_region_job(nodes, model, "predicted tumor", "tumor", device="cpu", python=sys.executable),
            sl.analyze_sequences_job(nodes, model, device="cpu", python=sys.executable, method=method)]
    worker = node_results(*(job.run(timeout=600) for job in jobs), reference, method)
    assert_same(worker, want, f"{name}: worker process")

    pytest.importorskip("trame_slicer")
    web = WebHarness(scene, nodes, model, method)
    page = node_results(web.run("segment"), web.run("explain"), web.run("sequence_relevance"), reference, method)
    assert_same(page, want, f"{name}: web page handlers")


def test_three_class_model_segments_its_tumor_class(tmp_path):
    """The lesion is the model's class named tumor (index 2 here), on the case grid, by argmax."""
    from LiverTumorLRPLib import analysis

    spec = CASES["background/liver/tumor model"]
    case = generate_case(spec["seed"], shape=spec["shape"], spacing=spec["spacing"])
    net = analysis.load(three_class_model(case, tmp_path / "three.safetensors"))
    seg = analysis.segment(analysis.prepare(write_case(case, str(tmp_path / "case")), net), "cpu")
    assert set(np.unique(seg.labels)) == {0, 1, 2}
    assert np.array_equal(seg.segmentation, seg.labels == 2)
    assert 0 < seg.segmentation.mean() < 0.2 and (seg.labels == 1).mean() > 0.2

"""Server side of the page: a trame-slicer ``SlicerApp`` (scene + Slicer's slice views) driven by slicer_logic.

Every computation is the Slicer module's own MRML logic (:mod:`LiverTumorLRPLib.slicer_logic`: stack_inputs,
segment_task, explain_region_task, analyze_sequences_task, write_segmentation, write_relevance, ...); this file
only reads the page's choices, starts the tasks through :class:`~.jobs.JobRunner` and shows the result nodes.
Bad input (missing folder, a case lacking a sequence, a model that does not load) becomes one line in the
page's error banner; nothing is half-loaded or half-written and the server keeps running.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import traceback
import zipfile

import numpy as np
import slicer
from trame.app import get_server
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import SegmentationEffectPaint
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from .. import slicer_logic as sl
from ..case_io import case_files, write_json
from ..model_info import model_info
from ..models import cached_model
from ..analysis import DEFAULT_METHOD, METHODS
from ..lrp.presets import DEFAULT_PRESET, PRESETS
from ..sequences import CLASS_NAMES, DISPLAY_NAMES, REFERENCE_KEY, SEQUENCE_KEYS
from ..progress import one_line
from .jobs import JobRunner
from .page import build_page

REGIONS = ("predicted tumor", "predicted background", "drawn segment", "point")
LAYOUT_ID = "LiverTumorLRP"
OVERLAY_OPACITY = 0.6


def guarded(fn):
    """Page handler: clears the banner, turns an exception into one line in it (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        self.state.error = ""
        try:
            return fn(self, *args, **kwargs)
        except (ValueError, FileNotFoundError, RuntimeError, OSError, KeyError) as exc:
            self.state.error = one_line(exc)
        except Exception as exc:  # unexpected: the traceback goes to the server log, one line to the page
            traceback.print_exc()
            self.state.error = f"unexpected error: {one_line(exc)}"
        finally:
            self.state.actions = int(self.state.actions or 0) + 1   # handled (for automation)
        self.jobs.log(f"error: {self.state.error}")

    return wrapper


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "case"


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


class WebApp:
    """The page's state and handlers around one MRML scene."""

    def __init__(self, server=None, model: str = "bundled", device: str = "auto", phantom_shape=(32, 96, 96),
                 output=None):
        self.server = server or get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state = self.server.state
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        slicer.mrmlScene = self.scene           # slicer_logic's default scene, as inside Slicer
        self.phantom_shape = tuple(int(s) for s in phantom_shape)
        self.output = os.path.abspath(output or tempfile.mkdtemp(prefix="liver-lrp-web-"))
        os.makedirs(self.output, exist_ok=True)
        self.server.serve["results"] = self.output
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict({LAYOUT_ID: Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view()])})
        self.layout_manager.set_layout(LAYOUT_ID)
        self.jobs = JobRunner(self.state)
        self.case_nodes: list = []              # input volumes of the current case
        self.segmentation = self.probability = self.result = None
        self.point_node = self.drawn_node = None
        self.state.update({
            "trame__title": "LiverTumorLRP", "case_dir": "", "case_name": "", "case_loaded": False,
            "volumes": [], **{f"seq_{k}": None for k in SEQUENCE_KEYS},
            "model": model, "device": device, "devices": ["auto", "cpu", "cuda"],
            "region": REGIONS[0], "regions": list(REGIONS), "cls": "tumor", "classes": list(CLASS_NAMES),
            "preset": DEFAULT_PRESET, "presets": list(PRESETS), "point": "", "drawing": False,
            "method": DEFAULT_METHOD, "methods": list(METHODS),
            "busy": False, "job_name": "", "jobs_finished": 0, "actions": 0, "progress": 0, "log": "", "error": "",
            "info": "", "warning": "", "necessity": False,
            "shares": [], "share_max": 1.0, "shown": "", "result_name": "", "show_seq": REFERENCE_KEY,
            "sequence_items": [{"title": d, "value": k} for k, d in zip(SEQUENCE_KEYS, DISPLAY_NAMES)],
            "legend": {"min": -1.0, "max": 1.0, "gradient": self._gradient()}, "downloads": [],
        })
        self.state.change("show_seq")(lambda show_seq, **_: self.show(show_seq))
        build_page(self)

    # ---- inputs -------------------------------------------------------------------------------------------------
    @guarded
    def load_phantom(self):
        """A generated phantom case (slicer_logic.add_phantom_case), named so the six assignments are automatic."""
        nodes = sl.add_phantom_case(seed=0, shape=self.phantom_shape, scene=self.scene)
        reference = self.scene.GetFirstNodeByName("Phantom reference")
        extra = [reference] if reference is not None else []
        if reference is not None:
            reference.SetDisplayVisibility(False)  # the known truth stays hidden; the page shows predictions
        self._set_case(f"phantom (seed 0, {'x'.join(map(str, self.phantom_shape))})", nodes, extra)

    @guarded
    def load_case(self, path=None):
        """Load a case folder (or case.json) on the server; on any error nothing of it stays in the scene."""
        path = os.path.expanduser(str(path or self.state.case_dir or "").strip())
        if not path:
            raise ValueError("enter the path of a case folder on the server, then press Load case")
        name, files = case_files(path)
        nodes, added = {}, []
        try:
            for key, display in zip(SEQUENCE_KEYS, DISPLAY_NAMES):
                node = self.slicer_app.volumes_logic.AddArchetypeVolume(files[key], f"{name} {key}")
                if node is None:
                    raise ValueError(f"{files[key]} ({display}, {key}): cannot be read as a volume")
                added.append(node)
                nodes[key] = node
            sl.stack_inputs(nodes, scene=self.scene)   # the same checks the jobs run, now
        except Exception:
            for node in added:
                self.scene.RemoveNode(node)
            raise
        self.state.case_dir = path
        self._set_case(name, nodes)

    def _set_case(self, name: str, nodes: dict, extra=()):
        self._clear_case(keep=list(nodes.values()) + list(extra))
        self.case_nodes = list(nodes.values()) + list(extra)
        self.state.volumes = [{"title": n.GetName(), "value": n.GetID()} for n in sl.scalar_volume_nodes(self.scene)
                              if not n.GetAttribute("LiverTumorLRP.Output")]
        self.state.update({f"seq_{k}": nodes[k].GetID() for k in SEQUENCE_KEYS})
        self.state.update({"case_name": name, "case_loaded": True, "shares": [], "result_name": "",
                           "downloads": [], "info": f"case {name} loaded", "point": ""})
        self.jobs.log(f"loaded {name}: " + ", ".join(f"{k}={nodes[k].GetName()}" for k in SEQUENCE_KEYS))
        self.show(REFERENCE_KEY, fit=True)
        self.state.show_seq = REFERENCE_KEY

    def _clear_case(self, keep=()):
        keep_ids = {n.GetID() for n in keep}
        self._remove_result()
        self._remove(self.segmentation, self.probability)
        self.segmentation = self.probability = None
        if self.drawn_node is not None:
            self.slicer_app.segmentation_editor.deactivate_effect()
            self._remove(self.drawn_node)
            self.drawn_node, self.state.drawing = None, False
        if self.point_node is not None:
            self.point_node.RemoveAllControlPoints()
        self._remove(*[n for n in self.case_nodes if n.GetID() not in keep_ids])
        self.case_nodes = []

    def _remove(self, *nodes):
        for node in nodes:
            if node is not None and self.scene.GetNodeByID(node.GetID()) is node:
                self.scene.RemoveNode(node)

    def _remove_result(self):
        if self.result is not None:
            sh = self.scene.GetSubjectHierarchyNode()
            sh.RemoveItem(self.result.folder, True, True)
            self.result = None

    def _node(self, key: str):
        node_id = self.state[f"seq_{key}"]
        return self.scene.GetNodeByID(node_id) if node_id else None

    def _inputs(self) -> sl.Inputs:
        """The six assigned volumes, stacked and normalised by slicer_logic (ValueError names a missing one)."""
        if not self.state.case_loaded:
            raise ValueError("load a case (or the phantom) first")
        nodes = {}
        for key, display in zip(SEQUENCE_KEYS, DISPLAY_NAMES):
            node = self._node(key)
            if node is None:
                raise ValueError(f"no volume assigned to the {display} ({key}) sequence")
            nodes[key] = node
        return sl.stack_inputs(nodes, scene=self.scene)

    def _model(self):
        """The chosen model, loaded now (models.cached_model keeps it): a file that does not load is named
        in the banner before any job starts.  The class list offered is the model's."""
        spec = str(self.state.model or "").strip()
        spec = "bundled" if spec in ("", "bundled") else os.path.expanduser(spec)
        try:
            net = cached_model(spec)
        except Exception as exc:
            where = "the bundled model" if spec == "bundled" else f"model file {spec}"
            raise ValueError(f"{where} could not be loaded: {one_line(exc)}") from None
        info = model_info(net)
        if list(self.state.classes or ()) != list(info.classes):
            self.state.classes = list(info.classes)
            if self.state.cls not in info.classes:
                self.state.cls = info.lesion
        return net

    # ---- jobs ---------------------------------------------------------------------------------------------------
    @guarded
    def segment(self):
        self._stop_drawing()
        self.jobs.start("Segment", lambda: sl.segment_task(self._inputs(), self._model(), self.state.device,
                                                           scene=self.scene), self._segment_done)

    @guarded
    def explain(self):
        self._stop_drawing()
        region = self._region()
        self.jobs.start("Explain", lambda: sl.explain_region_task(
            self._inputs(), self._model(), region, self.state.cls, self.state.preset, self.state.device,
            scene=self.scene), self._relevance_done)

    @guarded
    def sequence_relevance(self):
        self._stop_drawing()
        self.jobs.start("Sequence relevance", lambda: sl.analyze_sequences_task(
            self._inputs(), self._model(), self.state.preset, self.state.device, seed=0, scene=self.scene,
            method=self.state.method),
            self._relevance_done)

    def cancel(self):
        self.jobs.cancel()

    def _region(self):
        kind = self.state.region
        if kind == "point":
            if self.point_node is None or self.point_node.GetNumberOfControlPoints() == 0:
                raise ValueError("no point to explain: press Place point, then click in a slice view")
            return sl.Region("point", self.point_node, point_index=0)
        if kind == "drawn segment":
            if self.drawn_node is None:
                raise ValueError("no drawn segment: press Draw segment and paint in a slice view")
            return sl.Region("segment", self.drawn_node, self.drawn_node.GetSegmentation().GetNthSegmentID(0))
        if kind not in REGIONS:
            raise ValueError(f"unknown region {kind!r}; choose one of {', '.join(REGIONS)}")
        return kind

    def _segment_done(self, res: sl.SegmentResult):
        self._remove(self.segmentation, self.probability)
        self.segmentation, self.probability = res.segmentation, res.probability
        disp = res.segmentation.GetDisplayNode()
        if disp is not None:
            disp.SetVisibility2DFill(False)
            disp.SetVisibility2DOutline(True)
            disp.SetSliceIntersectionThickness(2)
        self.state.info = (f"Segment: {res.n_tumor} predicted tumor voxels ({res.tumor_ml:.1f} ml); outline in "
                           "the views")
        self._downloads("segmentation", [(res.probability, "tumor_probability.nii.gz"),
                                         (res.segmentation, "tumor.seg.nrrd")],
                        {"n_tumor_voxels": res.n_tumor, "tumor_ml": res.tumor_ml})
        self.show(self.state.show_seq)

    def _relevance_done(self, er: sl.ExplanationResult):
        self._remove_result()
        self.result = er
        colors = dict(zip(SEQUENCE_KEYS, sl.SERIES_COLORS))
        need = er.details.get("necessity") or {}
        self.state.shares = [{"key": k, "name": d, "share": float(s), "positive": float(p), "negative": float(n),
                              "color": _hex(colors[k]),
                              "dice_without": need["dice_without"][k] if need else None,
                              "shapley_dice": need["shapley_dice"][k] if need else None}
                             for k, d, s, p, n in zip(SEQUENCE_KEYS, DISPLAY_NAMES, er.shares, er.positive,
                                                      er.negative)]
        self.state.necessity = bool(need)
        warning = (er.details.get("agreement") or {}).get("warning")
        self.state.warning = f"Warning: {warning}" if warning else ""
        if warning:
            self.jobs.log(f"warning: {warning}")
        self.state.share_max = float(max(abs(float(s)) for s in er.shares)) or 1.0
        m = float(er.volumes[er.most_relevant].GetDisplayNode().GetWindowLevelMax())
        self.state.legend = {"min": -m, "max": m, "gradient": self._gradient()}
        self.state.result_name = er.name
        self.state.info = f"{er.name}: most relevant sequence {DISPLAY_NAMES[SEQUENCE_KEYS.index(er.most_relevant)]}"
        items = [(er.volumes[k], f"relevance_{k}.nii.gz") for k in SEQUENCE_KEYS]
        self._downloads("relevance", items, {"name": er.name, "sequences": list(SEQUENCE_KEYS),
                                             "shares": er.shares, "positive": er.positive,
                                             "negative": er.negative, "details": er.details})
        self.state.show_seq = er.most_relevant
        self.show(er.most_relevant)

    # ---- views --------------------------------------------------------------------------------------------------
    def show(self, key: str, fit: bool = False):
        """Background: the assigned ``key`` sequence; foreground: its relevance map (if any); tumor outline."""
        if key not in SEQUENCE_KEYS:
            return
        background = self._node(key)
        foreground = self.result.volumes.get(key) if self.result is not None else None
        self.state.shown = (f"background: {background.GetName() if background is not None else 'none'}"
                            + (f"; overlay: {foreground.GetName()}" if foreground is not None else ""))
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_background_volume_id(background.GetID() if background is not None else None)
            view.set_foreground_volume_id(foreground.GetID() if foreground is not None else None)
            view.set_foreground_opacity(OVERLAY_OPACITY)
            if fit:
                view.fit_view_to_content()
            view.schedule_render()

    def _gradient(self) -> str:
        node = sl.relevance_color_table(self.scene)
        stops = []
        n = node.GetNumberOfColors()
        for i in range(0, n, max(1, n // 16)):
            rgba = [0.0, 0.0, 0.0, 0.0]
            node.GetColor(i, rgba)
            stops.append(f"rgba({', '.join(str(int(round(255 * c))) for c in rgba[:3])}, {max(rgba[3], 0.15):.2f})")
        return f"linear-gradient(to right, {', '.join(stops)})"

    # ---- point and drawn segment --------------------------------------------------------------------------------
    @guarded
    def place_point(self):
        """Arm point placement: the next click in a slice view places the point to explain."""
        if not self.state.case_loaded:
            raise ValueError("load a case (or the phantom) first")
        self._stop_drawing()
        if self.point_node is None or self.scene.GetNodeByID(self.point_node.GetID()) is None:
            self.point_node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Explain point")
            self.point_node.CreateDefaultDisplayNodes()
            self.point_node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._point_defined)
        self.point_node.RemoveAllControlPoints()
        self.state.point = "click in a slice view to place the point"
        self.slicer_app.markups_logic.place_node(self.point_node, False)

    def _point_defined(self, node, _event):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(0, ras)
        text = "point at RAS ({:.1f}, {:.1f}, {:.1f})".format(*ras)
        reference = self._node(REFERENCE_KEY)
        if reference is not None:
            ijk = np.linalg.inv(sl.ijk_to_ras(reference)) @ np.array([*ras, 1.0])
            text += ", voxel ({}, {}, {}) (z, y, x)".format(*(int(round(v)) for v in ijk[2::-1]))
        with self.state:
            self.state.point = text
            self.state.region = "point"

    @guarded
    def toggle_drawing(self):
        """Paint a region with Slicer's segment editor (trame-slicer's Paint effect) in the slice views."""
        if self.state.drawing:
            self._stop_drawing()
            return
        if not self.state.case_loaded:
            raise ValueError("load a case (or the phantom) first")
        editor = self.slicer_app.segmentation_editor
        reference = self._node(REFERENCE_KEY)
        if reference is None:
            raise ValueError(f"assign the {DISPLAY_NAMES[-1]} sequence first (the grid of the drawn segment)")
        if self.drawn_node is None:
            self.drawn_node = editor.create_empty_segmentation_node()
            self.drawn_node.SetName("Drawn region")
            editor.set_active_segmentation(self.drawn_node, reference)
            editor.add_empty_segment(segment_name="Region", segment_color=[0.2, 0.85, 0.3])
        editor.set_active_effect_type(SegmentationEffectPaint)
        self.state.drawing, self.state.region = True, "drawn segment"

    def _stop_drawing(self):
        if self.state.drawing:
            self.slicer_app.segmentation_editor.deactivate_effect()
            self.state.drawing = False

    # ---- result files -------------------------------------------------------------------------------------------
    def _downloads(self, kind: str, items, meta: dict):
        """One zip of the result nodes (NIfTI / .seg.nrrd) and a JSON summary, written atomically."""
        base = f"{_safe(self.state.case_name)}_{kind}.zip"
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.output)
        try:
            for node, name in items:
                storage = node.CreateDefaultStorageNode()
                storage.SetFileName(os.path.join(tmp, name))
                if not storage.WriteData(node):
                    raise OSError(f"could not write {name} for {node.GetName()!r}")
            write_json(meta, os.path.join(tmp, f"{kind}.json"))
            zpath = os.path.join(tmp, base)
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
                for name in sorted(os.listdir(tmp)):
                    if name != base:
                        zf.write(os.path.join(tmp, name), name)
            os.replace(zpath, os.path.join(self.output, base))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        downloads = [d for d in self.state.downloads if d["name"] != base]
        self.state.downloads = downloads + [{"name": base, "url": f"results/{base}"}]


def serve(host="127.0.0.1", port=8080, case=None, model="bundled", device="auto", phantom_shape=(32, 96, 96),
          output=None) -> int:
    """Build the page and serve it (blocking)."""
    app = WebApp(model=model, device=device, phantom_shape=phantom_shape, output=output)
    if case:
        app.state.case_dir = case
        app.load_case(case)
        if app.state.error:
            print(f"liver-lrp web: {app.state.error}", flush=True)
    print(f"liver-lrp web: serving http://{host}:{port}/ (results in {app.output})", flush=True)
    app.server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
    return 0

"""The blocking in-process path: tasks (stack inputs, compute with torch, write nodes) for scripts and tests."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from ..progress import Cancelled, Progress
from ..sequences import CLASS_NAMES
from .inputs import Inputs, Region, _region_array, stack_inputs
from .nodes import ExplanationResult, SegmentResult, write_relevance, write_segmentation


# ---- models -----------------------------------------------------------------------------------------------------
_MODEL_CACHE: dict = {}


def get_model(spec="bundled"):
    """A model (cached by path and modification time); ``spec``: "bundled"/""/None, a path, or an nn.Module."""
    import os

    from ..models import bundled_model_path, load_model

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
    """``compute(progress)`` touches no MRML; ``apply(result)`` writes the result nodes."""

    name: str
    compute: Callable[[Progress], Any]
    apply: Callable[[Any], Any]
    messages: list = field(default_factory=list)


class Job:
    """Runs a :class:`Task` on the caller's thread (:meth:`run`): compute, then apply into the scene.

    Interactive work runs in a separate process instead (:class:`~LiverTumorLRPLib.mrml.jobs.WorkerJob`).
    """

    def __init__(self, task: Task, callback: Optional[Callable[[float, str], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None):
        self.task, self.callback, self._user_cancel = task, callback, cancel
        self.state = "pending"          # pending | running | done | failed | cancelled
        self.fraction, self.message = 0.0, ""
        self.result = self.error = None
        self._cancelled = False
        self._log: list = list(task.messages)

    def _report(self, fraction: float, message: str) -> None:
        self.fraction = float(fraction)
        if message and message != self.message:
            self._log.append(message)
        self.message = message or self.message
        if self.callback is not None:
            self.callback(fraction, message)

    def cancel(self) -> None:
        """Ask the computation to stop at its next progress report."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled or bool(self._user_cancel and self._user_cancel())

    def take_messages(self) -> list:
        """Log lines since the last call."""
        out, self._log = self._log, []
        return out

    def run(self):
        """Compute and apply; raises the error (:class:`Cancelled` when cancelled), nothing is written then."""
        self.state = "running"
        try:
            raw = self.task.compute(Progress(self._report, lambda: self.cancelled))
            self.result = self.task.apply(raw)
        except Cancelled as exc:
            self.error, self.state = exc, "cancelled"
            raise
        except Exception as exc:
            self.error, self.state = exc, "failed"
            raise
        self.state = "done"
        self._report(1.0, f"{self.task.name}: done")
        return self.result


def network_input(stacked: Inputs, net):
    """The inputs as the network sees them (:func:`pipeline.prepare`: the model's spacing, its grid)."""
    from ..case_io import Case
    from ..pipeline import prepare
    from .scene import sitk_image

    reference = sitk_image(np.zeros(stacked.image.shape[1:], np.float32), stacked.ijk_to_ras)
    return prepare(Case("scene", stacked.image, reference), net)


def segment_task(inputs=None, model="bundled", device="auto", threshold: float = 0.5, name: str = "Liver tumor",
                 patch_size=None, scene=None) -> Task:
    """Task: predict the tumor and write a segmentation node and a probability volume."""
    stacked = inputs if isinstance(inputs, Inputs) else stack_inputs(inputs, scene)

    def compute(progress):
        from ..inference import predict

        net = get_model(model)
        p = network_input(stacked, net)
        prob = predict(net, p.image, device, patch_size=patch_size, progress=progress)
        return p.grid.to_case(prob, "probability")

    return Task("Segment", compute, lambda p: write_segmentation(p, stacked, name, threshold, scene),
                list(stacked.messages))


def segment(inputs=None, model="bundled", device="auto", threshold: float = 0.5, name: str = "Liver tumor",
            progress=None, cancel=None, scene=None) -> SegmentResult:
    """Blocking: segment the tumor (see :func:`segment_task`)."""
    return _run_blocking(segment_task(inputs, model, device, threshold, name, scene=scene), progress, cancel)


def _run_blocking(task: Task, progress=None, cancel=None):
    return Job(task, progress, cancel).run()



def explain_region_task(inputs=None, model="bundled", region="predicted tumor", cls="tumor",
                        preset="recommended", device="auto", name: Optional[str] = None, threshold: float = 0.5,
                        scene=None) -> Task:
    """Task: Eq. 2 relevance of a region for class ``cls``, written back as relevance nodes."""
    from ..sequences import class_index

    stacked = inputs if isinstance(inputs, Inputs) else stack_inputs(inputs, scene)
    c = class_index(cls)
    mask = _region_array(region, stacked)
    reg = Region(region) if isinstance(region, str) else region
    label = "region" if isinstance(region, np.ndarray) else reg.label
    name = name or f"Relevance of {label} for {CLASS_NAMES[c]}"

    def compute(progress):
        from ..explain import region_relevance
        from ..inference import predict

        net = get_model(model)
        p = network_input(stacked, net)
        r = None if mask is None else p.grid.mask_to_network(mask)
        if r is None:
            prob = predict(net, p.image, device, progress=progress.part(0.0, 0.3))
            r = prob > threshold if reg.kind == "predicted tumor" else prob <= threshold
            if not r.any():
                raise ValueError(f"the model predicts no {'tumor' if reg.kind == 'predicted tumor' else 'background'}"
                                 " voxels in this case, so that region is empty")
            progress = progress.part(0.3, 1.0)
        rr = region_relevance(net, p.image, r, c, preset, device, progress=progress)
        return replace(rr, maps=p.grid.to_case(rr.maps, "relevance"))

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
        from ..explain import sequence_relevance

        net = get_model(model)
        p = network_input(stacked, net)
        sr = sequence_relevance(net, p.image, preset, device, seed, max_voxels=max_voxels, progress=progress)
        return replace(sr, maps=p.grid.to_case(sr.maps, "relevance"))

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



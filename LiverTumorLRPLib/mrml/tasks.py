"""The in-process path: tasks that stack the inputs, compute with the case layer (:mod:`..analysis`) and write
nodes; for scripts, tests and the web page (the Slicer module computes in a worker process instead)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..analysis import DEFAULT_METHOD, DEFAULT_RESAMPLES
from ..models import cached_model
from ..progress import Cancelled, JobStatus, Progress
from .inputs import Inputs, Region, region_array, stack_inputs
from .nodes import ExplanationResult, SegmentResult, write_explanation, write_segmentation


def get_model(spec="bundled"):
    """Deprecated name of :func:`LiverTumorLRPLib.models.cached_model`."""
    import warnings

    warnings.warn("slicer_logic.get_model is deprecated; use LiverTumorLRPLib.models.cached_model",
                  DeprecationWarning, stacklevel=2)
    return cached_model(spec)


# ---- tasks and jobs ---------------------------------------------------------------------------------------------
@dataclass
class Task:
    """``compute(progress)`` touches no MRML; ``apply(result)`` writes the result nodes."""

    name: str
    compute: Callable[[Progress], Any]
    apply: Callable[[Any], Any]
    messages: list = field(default_factory=list)


class Job(JobStatus):
    """Runs a :class:`Task` on the caller's thread (:meth:`run`): compute, then apply into the scene.

    Interactive work runs in a separate process instead (:class:`~LiverTumorLRPLib.mrml.jobs.WorkerJob`).
    """

    def __init__(self, task: Task, callback: Optional[Callable[[float, str], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None):
        super().__init__(task.messages)
        self.task, self.callback, self._user_cancel = task, callback, cancel
        self._cancelled = False

    def _report(self, fraction: float, message: str) -> None:
        self.report(fraction, message)
        if self.callback is not None:
            self.callback(fraction, message)

    def cancel(self) -> None:
        """Ask the computation to stop at its next progress report."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled or bool(self._user_cancel and self._user_cancel())

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


def scene_case(stacked: Inputs):
    """The stacked inputs as a :class:`~LiverTumorLRPLib.case_io.Case` on the reference node's grid."""
    from ..case_io import Case
    from .scene import sitk_image

    reference = sitk_image(np.zeros(stacked.image.shape[1:], np.float32), stacked.ijk_to_ras)
    return Case("scene", stacked.image, reference)


def network_input(stacked: Inputs, net):
    """The inputs as the network sees them (:func:`.analysis.prepare`: the model's spacing, its grid)."""
    from ..analysis import prepare

    return prepare(scene_case(stacked), net)


def _stack(inputs, scene) -> Inputs:
    return inputs if isinstance(inputs, Inputs) else stack_inputs(inputs, scene)


def segment_task(inputs=None, model="bundled", device="auto", threshold: Optional[float] = None,
                 name: str = "Liver tumor", patch_size=None, scene=None) -> Task:
    """Task: the model's segmentation (:func:`.analysis.segment`) as a segmentation node and a probability volume
    (``threshold``: take ``probability > threshold`` instead of the model's labels)."""
    stacked = _stack(inputs, scene)

    def compute(progress):
        from ..analysis import segment

        return segment(network_input(stacked, cached_model(model)), device, patch_size, progress)

    def apply(seg):
        return write_segmentation(seg.probability, stacked, name, threshold, scene,
                                  segmentation=None if threshold is not None else seg.segmentation)

    return Task("Segment", compute, apply, list(stacked.messages))


def segment(inputs=None, model="bundled", device="auto", threshold: Optional[float] = None,
            name: str = "Liver tumor", progress=None, cancel=None, scene=None) -> SegmentResult:
    """Blocking: segment the tumor (see :func:`segment_task`)."""
    return _run_blocking(segment_task(inputs, model, device, threshold, name, scene=scene), progress, cancel)


def _run_blocking(task: Task, progress=None, cancel=None):
    return Job(task, progress, cancel).run()


def explain_region_task(inputs=None, model="bundled", region="predicted tumor", cls="tumor",
                        preset="recommended", device="auto", name: Optional[str] = None, scene=None) -> Task:
    """Task: Eq. 2 relevance of a region for class ``cls`` (:func:`.analysis.explain_region`) as relevance nodes.

    ``region``: ``"predicted tumor"`` / ``"predicted background"``, a :class:`Region` (segment, point) or a mask."""
    stacked = _stack(inputs, scene)
    mask = region_array(region, stacked)
    reg = Region(region) if isinstance(region, str) else region
    label = "region" if isinstance(region, np.ndarray) else reg.label
    spec = mask if mask is not None else ("tumor" if reg.kind == "predicted tumor" else "background")

    def compute(progress):
        from ..analysis import explain_region

        return explain_region(network_input(stacked, cached_model(model)), spec, cls, preset, device,
                              progress=progress)

    def apply(e):
        e.details["region"] = label
        return write_explanation(e, stacked, name or f"Relevance of {label} for {e.details['class']}", scene)

    return Task("Explain", compute, apply, list(stacked.messages))


def explain_region(inputs=None, model="bundled", region="predicted tumor", cls="tumor", preset="recommended",
                   device="auto", name=None, progress=None, cancel=None, scene=None) -> ExplanationResult:
    """Blocking :func:`explain_region_task`."""
    return _run_blocking(explain_region_task(inputs, model, region, cls, preset, device, name, scene=scene),
                         progress, cancel)


def analyze_sequences_task(inputs=None, model="bundled", preset="recommended", device="auto", seed: int = 0,
                           name: str = "Sequence relevance", max_voxels: Optional[int] = None, scene=None,
                           resamples: int = DEFAULT_RESAMPLES, method: str = DEFAULT_METHOD) -> Task:
    """Task: sequence relevance (:func:`.analysis.sequence_relevance`, ``method`` contribution or paper) as
    relevance nodes."""
    stacked = _stack(inputs, scene)

    def compute(progress):
        from ..analysis import sequence_relevance

        return sequence_relevance(network_input(stacked, cached_model(model)), preset, device, seed,
                                  max_voxels=max_voxels, resamples=resamples, progress=progress, method=method)

    return Task("Sequence relevance", compute, lambda e: write_explanation(e, stacked, name, scene),
                list(stacked.messages))


def analyze_sequences(inputs=None, model="bundled", preset="recommended", device="auto", seed: int = 0,
                      name: str = "Sequence relevance", progress=None, cancel=None, scene=None,
                      method: str = DEFAULT_METHOD) -> ExplanationResult:
    """Blocking :func:`analyze_sequences_task`."""
    return _run_blocking(analyze_sequences_task(inputs, model, preset, device, seed, name, scene=scene,
                                                method=method),
                         progress, cancel)

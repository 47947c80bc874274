"""Jobs that compute in a separate worker process (:mod:`LiverTumorLRPLib.worker`) and write nodes on return.

:class:`WorkerJob` runs on the caller's (main) thread only, without Python threads and without Qt:

* :meth:`~WorkerJob.start` reads the inputs from the scene (the stack on the T1 15 min grid, not normalised, and
  the region mask), writes them as NRRD files into a temporary job folder with ``job.json`` and starts the
  worker with ``python`` (``PythonSlicer`` inside Slicer, ``sys.executable`` headless);
* :meth:`~WorkerJob.poll` (from a timer) reads the progress lines the worker wrote since the last call and,
  once the process has ended, loads its outputs into the scene -- unless the job was cancelled, failed,
  or the scene was closed (or an input node removed) meanwhile: then nothing is added;
* :meth:`~WorkerJob.cancel` kills the worker's process group and removes the job folder.

The torch computation never runs in the calling process.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Optional

import numpy as np
import slicer

from ..analysis import DEFAULT_METHOD
from ..progress import JobStatus, one_line
from ..sequences import SEQUENCE_KEYS
from ..worker import JOB_FILE, JOB_PREFIX, WorkerProcess, remove_folder
from .inputs import Inputs, Region, region_array, stack_inputs
from .nodes import write_explanation, write_segmentation
from .scene import current_scene, sitk_image

REGION_FILE = "region.nrrd"


def _write_nrrd(array, ijk2ras, path) -> None:
    from ..case_io import write_image

    write_image(sitk_image(array, ijk2ras), None, path, compress=False)


def _read_array(path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))


class WorkerJob(JobStatus):
    """One Segment / Explain / Sequence relevance job in a worker process; see the module docstring.

    ``state``: pending | running | done | failed | cancelled | discarded.  ``fraction`` and ``message`` follow
    the worker's progress; :meth:`take_messages` gives the log lines since the last call; ``error`` is the
    one-line error of a failed job; ``result`` the :class:`SegmentResult` / :class:`ExplanationResult`.
    """

    def __init__(self, task: str, inputs=None, model="bundled", device="auto", *, region="predicted tumor",
                 cls="tumor", preset="recommended", seed: int = 0, max_voxels: Optional[int] = None,
                 threshold: Optional[float] = None, name: Optional[str] = None, python: Optional[str] = None,
                 scene=None, temp_dir: Optional[str] = None, method: str = DEFAULT_METHOD):
        from ..worker import TASKS

        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise ValueError("a worker job needs the model as a file path (or 'bundled'), not a network object")
        model = str(model or "bundled")
        if model != "bundled" and os.path.exists(model):
            model = os.path.abspath(model)      # the worker runs in the job folder
        self.task, self.model, self.device = task, model, device
        self.region, self.cls, self.preset, self.seed = region, cls, preset, int(seed)
        self.max_voxels, self.threshold, self.python, self.temp_dir = max_voxels, threshold, python, temp_dir
        self.method = method
        self._inputs, self._scene_arg = inputs, scene
        self.name = name
        self.job_dir: Optional[str] = None
        self.worker: Optional[WorkerProcess] = None
        self.scene = None
        self.stacked: Optional[Inputs] = None
        self._observer = None
        self._scene_closed = False

    @property
    def title(self) -> str:
        return {"segment": "Segment", "explain": "Explain", "sequence relevance": "Sequence relevance"}[self.task]

    # ---- main thread: inputs out, process started
    def _job_description(self, region_label: str) -> dict:
        job = {"task": self.task, "case": "input", "out": "out", "model": self.model, "device": self.device,
               "preset": str(self.preset), "seed": self.seed, "class": self.cls, "max_voxels": self.max_voxels,
               "method": self.method}
        if self.task == "explain":
            job["region"] = region_label
        return job

    def _region_spec(self, stacked: Inputs):
        """(job.json region value, mask to write or None, label for the result's name)."""
        mask = region_array(self.region, stacked)
        if isinstance(self.region, np.ndarray):
            return REGION_FILE, mask, "region"
        reg = Region(self.region) if isinstance(self.region, str) else self.region
        if mask is not None:
            return REGION_FILE, mask, reg.label
        return ("tumor" if reg.kind == "predicted tumor" else "background"), None, reg.label

    def start(self) -> "WorkerJob":
        """Write the inputs and start the worker; ValueError (nothing started) on bad inputs."""
        from ..case_io import write_json

        stacked = self._inputs if isinstance(self._inputs, Inputs) else stack_inputs(self._inputs, self._scene_arg,
                                                                                     normalise=False)
        self.scene = current_scene(self._scene_arg if self._scene_arg is not None else stacked.reference.GetScene())
        region_value, mask, label = "tumor", None, ""
        if self.task == "explain":
            region_value, mask, label = self._region_spec(stacked)
        self.region_label = label
        self.name = self.name or {"segment": "Liver tumor", "sequence relevance": "Sequence relevance"}.get(self.task)
        if self.temp_dir is not None:
            os.makedirs(self.temp_dir, exist_ok=True)
        self.job_dir = tempfile.mkdtemp(prefix=JOB_PREFIX, dir=self.temp_dir)
        try:
            folder = os.path.join(self.job_dir, "input")
            for key, array in zip(SEQUENCE_KEYS, stacked.image):
                _write_nrrd(array, stacked.ijk_to_ras, os.path.join(folder, f"{key}.nrrd"))
            if mask is not None:
                _write_nrrd(mask.astype(np.uint8), stacked.ijk_to_ras, os.path.join(folder, REGION_FILE))
            write_json(self._job_description(region_value), os.path.join(self.job_dir, JOB_FILE))
            self._observer = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_close)
            self.worker = WorkerProcess(self.job_dir, self.python).start()
        except BaseException:
            self._cleanup()
            raise
        self.stacked = Inputs(np.empty((0,)), stacked.nodes, stacked.reference, stacked.ijk_to_ras,
                              stacked.messages)
        self._log.extend(stacked.messages)
        self.log(f"{self.title}: started")
        self.state = "running"
        return self

    def _on_scene_close(self, caller=None, event=None) -> None:
        self._scene_closed = True

    # ---- main thread: progress in, results applied
    def _read_progress(self) -> None:
        for event in self.worker.read_events():
            self.report(float(event.get("progress", self.fraction)), event.get("message") or event.get("warning"))

    def _inputs_alive(self) -> bool:
        return not self._scene_closed and all(
            n.GetScene() is self.scene for n in (*self.stacked.nodes.values(), self.stacked.reference))

    def poll(self) -> bool:
        """Read new progress; True once finished (the results are then in the scene if ``state == "done"``)."""
        if self.state != "running":
            return self.finished
        self._read_progress()
        if self.worker.running():
            return False
        self._read_progress()
        error = self.worker.finish_error()
        try:
            if error is not None:
                self.error, self.state = error, "failed"
                self.log(f"{self.title} failed: {error}")
            elif not self._inputs_alive():
                self.state = "discarded"
                self.log(f"{self.title}: result discarded (the scene was closed or an input removed)")
            else:
                self.result = self._apply(self.worker.result())
                self.state = "done"
                self.fraction = 1.0
                self.log(f"{self.title}: done")
        except Exception as exc:  # reading or writing the result failed: one line, nothing half-added
            self.error, self.state = one_line(exc), "failed"
            self.log(f"{self.title} failed: {self.error}")
        finally:
            self._cleanup()
        return True

    def _apply(self, result: dict):
        from ..pipeline import read_explanation_files

        out = os.path.join(self.job_dir, "out")
        if self.task == "segment":
            prob = _read_array(os.path.join(out, "tumor_probability.nii.gz")).astype(np.float32)
            seg = _read_array(os.path.join(out, "tumor_segmentation.nii.gz")) if self.threshold is None else None
            return write_segmentation(prob, self.stacked, self.name, self.threshold, self.scene, segmentation=seg)
        e = read_explanation_files(out)
        if self.task == "explain":
            e.details["region"] = self.region_label
            self.name = self.name or f"Relevance of {self.region_label} for {e.details['class']}"
        return write_explanation(e, self.stacked, self.name, self.scene)

    def cancel(self) -> None:
        """Kill the worker (and its children), remove the job folder; nothing is added to the scene."""
        if self.state in ("pending", "running"):
            self.state = "cancelled"
            self.log(f"{self.title}: cancelled")
        self._cleanup()

    def _cleanup(self) -> None:
        if self.worker is not None:
            self.worker.kill()
        if self._observer is not None and self.scene is not None:
            self.scene.RemoveObserver(self._observer)
            self._observer = None
        if self.job_dir is not None:
            remove_folder(self.job_dir)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> bool:
        """Poll until finished or ``timeout`` seconds passed (scripts, tests); True when finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    def run(self, progress=None, timeout: Optional[float] = None):
        """Blocking: start, wait (``progress(fraction, message)`` on each new line), return the result;
        RuntimeError with the worker's one-line message when it failed."""
        if self.state == "pending":
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while not self.poll():
            if progress is not None and (self.fraction, self.message) != last:
                last = (self.fraction, self.message)
                progress(self.fraction, self.message)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.title}: no result after {timeout} s; cancelled")
            time.sleep(0.05)
        if self.state != "done":
            raise RuntimeError(f"{self.title} {self.state}: {self.error or 'no result'}")
        if progress is not None:
            progress(1.0, f"{self.title}: done")
        return self.result


def segment_job(inputs=None, model="bundled", device="auto", threshold: Optional[float] = None,
                name: str = "Liver tumor", python=None, scene=None, temp_dir: Optional[str] = None) -> WorkerJob:
    """A :class:`WorkerJob` for :func:`pipeline.segment_case` (not started); its job folder goes into
    ``temp_dir`` (inside Slicer: ``slicer.app.temporaryPath``; default: the system's temporary folder)."""
    return WorkerJob("segment", inputs, model, device, threshold=threshold, name=name, python=python, scene=scene,
                     temp_dir=temp_dir)


def explain_region_job(inputs=None, model="bundled", region="predicted tumor", cls="tumor", preset="recommended",
                       device="auto", name: Optional[str] = None, python=None, scene=None,
                       temp_dir: Optional[str] = None) -> WorkerJob:
    """A :class:`WorkerJob` for :func:`pipeline.explain_case` (Eq. 2 relevance of a region; not started)."""
    return WorkerJob("explain", inputs, model, device, region=region, cls=cls, preset=preset, name=name,
                     python=python, scene=scene, temp_dir=temp_dir)


def analyze_sequences_job(inputs=None, model="bundled", preset="recommended", device="auto", seed: int = 0,
                          name: str = "Sequence relevance", max_voxels: Optional[int] = None, python=None,
                          scene=None, temp_dir: Optional[str] = None, method: str = DEFAULT_METHOD) -> WorkerJob:
    """A :class:`WorkerJob` for :func:`pipeline.analyze_case` (sequence relevance by ``method``: contribution or
    paper; not started)."""
    return WorkerJob("sequence relevance", inputs, model, device, preset=preset, seed=seed, name=name,
                     max_voxels=max_voxels, python=python, scene=scene, temp_dir=temp_dir, method=method)

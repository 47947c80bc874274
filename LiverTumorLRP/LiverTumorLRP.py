"""Liver tumor segmentation in six-sequence liver MRI, explained with layer-wise relevance propagation."""
import contextlib
import enum
import logging
import os
import sys
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.parameterNodeWrapper.guiConnectors import GuiConnector
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode

try:  # Slicer >= 5.3: texts marked for translation
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # older Slicer: the texts as they are
    def _(text):
        return text

    def translate(context, text):
        return text


def _libraryFolder() -> str:
    """The folder holding the bundled LiverTumorLRPLib: beside the module when installed, else the source root."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "LiverTumorLRPLib", "__init__.py")):
            return folder
    raise ImportError(f"LiverTumorLRPLib not found beside {here}")


def _importBundledLibrary():
    """Import the bundled LiverTumorLRPLib ahead of any copy installed in site-packages (and check it)."""
    folder = _libraryFolder()
    expected = os.path.normcase(os.path.join(folder, "LiverTumorLRPLib"))
    loaded = sys.modules.get("LiverTumorLRPLib")
    if loaded is not None and os.path.normcase(os.path.dirname(os.path.abspath(loaded.__file__))) != expected:
        for name in [n for n in sys.modules if n == "LiverTumorLRPLib" or n.startswith("LiverTumorLRPLib.")]:
            del sys.modules[name]
    while folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    import LiverTumorLRPLib

    found = os.path.normcase(os.path.dirname(os.path.abspath(LiverTumorLRPLib.__file__)))
    if found != expected:
        raise ImportError(f"LiverTumorLRP: imported {LiverTumorLRPLib.__file__}, expected the bundled {expected}")
    return LiverTumorLRPLib


def _forgetLibrary(packages=("LiverTumorLRPLib", "LiverTumorLRPModuleLib"), modules: Optional[dict] = None) -> list:
    """Drop the modules of the library and of the module's own helper package (``LiverTumorLRPModuleLib``, in the
    module's folder) from ``sys.modules`` (Reload): the reloaded module file then imports each of them anew when
    first used, after the modules it imports itself (their dependency order), so no class of the old code is left
    behind (``importlib.reload`` in name order would reload a module before the ones it imports from).  Returns
    the names dropped."""
    modules = sys.modules if modules is None else modules
    names = [n for n in list(modules) if any(n == p or n.startswith(p + ".") for p in packages)]
    for name in names:
        del modules[name]
    return names


_importBundledLibrary()

from LiverTumorLRPLib import slicer_deps  # noqa: E402  (no torch, no numpy: only what is installed)
# The module's helpers (LiverTumorLRPModuleLib/ beside this file); the names are also the module's (re-exported).
from LiverTumorLRPModuleLib.dependencies import DependencyInstaller  # noqa: E402
from LiverTumorLRPModuleLib.jobs import jobFolder, pythonSlicerExecutable, removeStaleJobFolders  # noqa: E402
from LiverTumorLRPModuleLib.sampledata import (PHANTOM_SAMPLE, PHANTOM_SHAPE, PHANTOM_SPACING,  # noqa: E402, F401
                                               PHANTOM_URI, phantomSampleFiles, phantomSampleUrl, registerSampleData)
# Slicer's runTest and ctest (slicer.testing.runUnitTest) look for <Module>Test in this module.
from LiverTumorLRPModuleLib.selftest import LiverTumorLRPTest  # noqa: E402, F401

# Names of LiverTumorLRPLib.presets.PRESETS (kept here so that the module loads before torch is installed).
PRESET_NAMES = ["recommended", "paper", "epsilon", "epsilon-gamma-box", "alpha2-beta1", "epsilon-plus-flat",
                "reference-blur", "reference-mean"]
# LiverTumorLRPLib.analysis.METHODS: sequence relevance by Shapley values of Sec. 2.3's output, or Sec. 2.3 exactly
METHOD_NAMES = ["contribution", "paper"]
# parameter field of each sequence's volume selector
SEQUENCE_FIELDS = {"T2": "t2Volume", "T1_plain": "t1PlainVolume", "T1_20s": "t1_20sVolume",
                   "T1_60s": "t1_60sVolume", "T1_120s": "t1_120sVolume", "T1_15min": "t1_15minVolume"}
HOMEPAGE = "https://github.com/LiverTumorLRP/SlicerLiverTumorLRP#readme"


#
# LiverTumorLRP
#

class LiverTumorLRP(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor LRP")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorLRP developers"]
        self.parent.helpText = _("""
Segments liver tumors in six-sequence liver MRI (T2, T1 plain, T1 20 s, 60 s, 120 s and 15 min after gadoxetate)
with a 3D u-net and explains each segmentation with layer-wise relevance propagation (LRP): the relevance of any
region (a segment, the predicted tumor or background, one markup point) per sequence, and the share of each MRI
sequence in the tumor-vs-background decision (sequence relevance). The inputs are resampled to the T1 15 min grid.
<br>The work runs in a separate Python process (Cancel stops it); PyTorch and a few packages are installed on first
use after one confirmation. See the <a href="{homepage}">README</a> for the workflow, the outputs and the batch
mode.
""").format(homepage=HOMEPAGE)
        self.parent.acknowledgementText = _("""
Method: Chlebus G, Abolmaali N, Schenk A, Meine H. Relevance analysis of MRI sequences for automatic liver tumor
segmentation. Medical Imaging with Deep Learning (MIDL) 2019, extended abstract.
""")
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    """Once Slicer has started: remove the job folders a crashed Slicer or worker left, offer the sample."""
    removeStaleJobFolders()
    registerSampleData(LiverTumorLRPLogic)


#
# Parameter node
#

class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return {"auto": "auto (GPU if usable)", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


class RegionChoice(enum.Enum):
    SEGMENT = "segment"
    PREDICTED_TUMOR = "predicted tumor"
    PREDICTED_BACKGROUND = "predicted background"
    POINT = "point"

    def label(self):
        return self.value


@parameterNodeWrapper
class LiverTumorLRPParameterNode:
    """The module's state (saved with the scene)."""

    t2Volume: vtkMRMLScalarVolumeNode
    t1PlainVolume: vtkMRMLScalarVolumeNode
    t1_20sVolume: vtkMRMLScalarVolumeNode
    t1_60sVolume: vtkMRMLScalarVolumeNode
    t1_120sVolume: vtkMRMLScalarVolumeNode
    t1_15minVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Device = Device.AUTO
    preset: Annotated[str, Choice(PRESET_NAMES)] = "recommended"
    explainClass: Annotated[str, Choice(["tumor", "background"])] = "tumor"
    region: RegionChoice = RegionChoice.PREDICTED_TUMOR
    regionPoints: vtkMRMLMarkupsFiducialNode
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    method: Annotated[str, Choice(METHOD_NAMES)] = "contribution"


#
# LiverTumorLRPWidget
#

class LineEditConnector(GuiConnector):
    """QLineEdit <-> str that rewrites the text only when it differs (the stock one moves the cursor to the end
    on every keystroke, because it rewrites every widget on every parameter-node change)."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return isinstance(widget, qt.QLineEdit) and datatype is str

    @staticmethod
    def create(widget, datatype):
        return LineEditConnector(widget)

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.textChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.textChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        return self._widget.text

    def write(self, value: str) -> None:
        if self._widget.text != value:
            self._widget.text = value


class LiverTumorLRPWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, model, Segment / Explain / Sequence relevance in a worker process, with progress, log and Cancel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self.jobButton = None
        self.timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorLRP.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorLRPLogic()

        self.buttonTexts = {b: b.text for b in (self.ui.segmentButton, self.ui.explainButton,
                                                self.ui.sequenceRelevanceButton)}
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.loadPhantomButton.connect("clicked(bool)", self.onLoadPhantom)
        self.ui.autoAssignButton.connect("clicked(bool)", lambda: self.autoAssignInputs(overwrite=True))
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.explainButton.connect("clicked(bool)", self.onExplain)
        self.ui.sequenceRelevanceButton.connect("clicked(bool)", self.onSequenceRelevance)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.stopJob()
        if self.timer is not None:
            self.timer.stop()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        pass  # the GUI stays connected to the parameter node (connected once per node, see setParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.stopJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node) -> None:
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
            qt.QTimer.singleShot(0, self.autoAssignInputs)  # after the node got its name and image

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.autoAssignInputs()

    def guiMapping(self) -> dict:
        """Parameter name -> widget (from the .ui's SlicerParameterName) or connector (the model line edit)."""
        mapping = {}
        for widget in vars(self.ui).values():
            name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
            if name:
                mapping[name] = LineEditConnector(widget) if isinstance(widget, qt.QLineEdit) else widget
        return mapping

    def setParameterNode(self, inputParameterNode: Optional[LiverTumorLRPParameterNode]) -> None:
        """Connect the GUI once per parameter node. ``connectParametersToGui`` returns its tag on every Slicer
        version (``connectGui`` does not on 5.8), so ``disconnectGui`` really disconnects."""
        current = self._parameterNode.parameterNode if self._parameterNode else None
        new = inputParameterNode.parameterNode if inputParameterNode else None
        if current is not None and current is new:
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateRegionWidgets)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self.guiMapping())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateRegionWidgets)
        self.updateRegionWidgets()

    def onReload(self) -> None:
        """Reload the library too (developer mode): its modules are dropped and imported anew, in the order they
        import each other, by the reloaded module file (see _forgetLibrary)."""
        self.stopJob()
        _forgetLibrary()
        super().onReload()

    def autoAssignInputs(self, overwrite: bool = False) -> None:
        """Fill empty sequence selectors (all of them with ``overwrite``) from the volume names."""
        if self._parameterNode is None:
            return
        from LiverTumorLRPLib import slicer_logic

        for key, node in slicer_logic.assign_sequences().items():
            field = SEQUENCE_FIELDS[key]
            if overwrite or getattr(self._parameterNode, field) is None:
                setattr(self._parameterNode, field, node)

    def updateRegionWidgets(self, *args) -> None:
        region = self._parameterNode.region if self._parameterNode else None
        self.ui.segmentSelector.setEnabled(region == RegionChoice.SEGMENT)
        self.ui.pointSelector.setEnabled(region == RegionChoice.POINT)

    # ---- actions ----
    def onBrowseModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Model weights", "",
                                              "Model (*.safetensors);;All files (*)")
        if path:
            self._parameterNode.modelPath = path

    def onLoadPhantom(self) -> None:
        if not self.logic.ensureDependencies(slicer_deps.PHANTOM):
            self.log(_("The phantom case needs {packages}; not installed.").format(
                packages=", ".join(slicer_deps.PHANTOM)))
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the phantom case."), waitCursor=True):
            self.logic.loadPhantomCase(seed=self._parameterNode.seed)
            self.autoAssignInputs(overwrite=True)
            self.log("Phantom case loaded.")

    def onSegment(self) -> None:
        self.runOrCancel(self.ui.segmentButton, lambda: self.logic.segmentJob(self._parameterNode))

    def onExplain(self) -> None:
        def job():
            segmentation = self.ui.segmentSelector.currentNode()
            segmentId = self.ui.segmentSelector.currentSegmentID()
            return self.logic.explainJob(self._parameterNode, segmentation, segmentId)

        self.runOrCancel(self.ui.explainButton, job)

    def onSequenceRelevance(self) -> None:
        self.runOrCancel(self.ui.sequenceRelevanceButton, lambda: self.logic.sequenceRelevanceJob(self._parameterNode))

    def runOrCancel(self, button, makeJob) -> None:
        """Start a worker job from ``button``, or cancel the running one when it is this button."""
        if self.job is not None:
            if button is self.jobButton:
                self.stopJob()
            return
        if not self.logic.ensureDependencies():  # asks (once) before the wait cursor
            self.log(_("PyTorch and the other Python packages are not installed; nothing started."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start."), waitCursor=True):
            job = makeJob()
            self.job, self.jobButton = job.start(), button
            self.setRunning(True)
            self.showMessages()

    def stopJob(self) -> None:
        """Cancel the running job (kills the worker process); nothing is added to the scene."""
        if self.job is None:
            return
        self.job.cancel()
        self.showMessages()
        self.job = None
        self.setRunning(False)
        self.jobButton = None

    def setRunning(self, running: bool) -> None:
        for b, text in self.buttonTexts.items():
            b.text = "Cancel" if running and b is self.jobButton else text
            b.enabled = (not running) or b is self.jobButton
        self.ui.loadPhantomButton.enabled = not running
        self.ui.progressBar.value = 0
        if running:
            self.timer.start()
        else:
            self.timer.stop()

    def showMessages(self) -> None:
        for message in self.job.take_messages():
            self.log(message)

    def onPoll(self) -> None:
        """Timer (main thread): the worker's new progress lines; on its end, its results into the scene."""
        job = self.job
        if job is None:
            self.timer.stop()
            return
        # the worker has ended: this poll loads its results (six relevance maps can take seconds)
        loading = job.state == "running" and job.worker is not None and not job.worker.running()
        if loading:
            self.log(_("{title}: loading the results...").format(title=job.title))
        with slicer.util.WaitCursor() if loading else contextlib.nullcontext():
            finished = job.poll()
            if finished and job.state == "done":
                self.logic.showResult(job.result)
        self.ui.progressBar.value = int(100 * job.fraction)
        self.showMessages()
        if not finished:
            return
        self.job = None
        self.setRunning(False)
        self.jobButton = None
        if job.state == "failed":
            slicer.util.errorDisplay(_("{title} failed: {error}").format(title=job.title, error=job.error))
        elif job.state == "done":
            self.ui.progressBar.value = 100
            self.log(self.logic.describe(job.result))

    def log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)


#
# LiverTumorLRPLogic
#

class LiverTumorLRPLogic(ScriptedLoadableModuleLogic, DependencyInstaller):
    """Module logic: builds worker jobs from the parameter node; the MRML work is in LiverTumorLRPLib.mrml.
    Installing the dependencies (``missingPackages``, ``ensureDependencies``): see ``DependencyInstaller``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LiverTumorLRPParameterNode(super().getParameterNode())

    @staticmethod
    def _lib():
        from LiverTumorLRPLib import slicer_logic

        return slicer_logic

    @staticmethod
    def inputs(parameterNode) -> dict:
        return {key: getattr(parameterNode, field) for key, field in SEQUENCE_FIELDS.items()}

    @staticmethod
    def model(parameterNode) -> str:
        return parameterNode.modelPath.strip() or "bundled"

    def loadPhantomCase(self, seed: int = 0, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING) -> dict:
        """Generated phantom case (numpy, scipy, SimpleITK; no torch) as six volumes and a reference segmentation."""
        nodes = self._lib().add_phantom_case(seed, shape, spacing)
        slicer.util.setSliceViewerLayers(background=nodes["T1_15min"], fit=True)
        return nodes

    def segmentJob(self, p, python=None):
        return self._lib().segment_job(self.inputs(p), self.model(p), p.device.value,
                                       python=python or pythonSlicerExecutable(), temp_dir=jobFolder())

    def region(self, p, segmentationNode=None, segmentId=None):
        lib = self._lib()
        kind = p.region.value
        if kind == "segment":
            return lib.Region("segment", segmentationNode, segmentId)
        if kind == "point":
            return lib.Region("point", p.regionPoints, point_index=0)
        return lib.Region(kind)

    def explainJob(self, p, segmentationNode=None, segmentId=None, python=None):
        return self._lib().explain_region_job(self.inputs(p), self.model(p), self.region(p, segmentationNode, segmentId),
                                              p.explainClass, p.preset, p.device.value,
                                              python=python or pythonSlicerExecutable(), temp_dir=jobFolder())

    def sequenceRelevanceJob(self, p, python=None):
        return self._lib().analyze_sequences_job(self.inputs(p), self.model(p), p.preset, p.device.value, p.seed,
                                                 python=python or pythonSlicerExecutable(), temp_dir=jobFolder(),
                                                 method=p.method)

    def showResult(self, result) -> None:
        """After a job: Slicer's colour legend on each relevance map, drawn in the slice views that show it."""
        if isinstance(result, self._lib().ExplanationResult):
            from LiverTumorLRPLib.mrml.nodes import relevance_legends

            relevance_legends(result.volumes, getattr(result, "display_names", None))

    def describe(self, result) -> str:
        lib = self._lib()
        if isinstance(result, lib.ExplanationResult):
            return lib.summary(result)
        if isinstance(result, lib.SegmentResult):
            return f"Tumor: {result.n_tumor} voxels ({result.tumor_ml:.1f} ml) in {result.segmentation.GetName()}"
        return str(result)

    def process(self, inputs=None, model="bundled", device="auto", preset="recommended", seed=0, python=None,
                method="contribution"):
        """Scripted use: segment and run sequence relevance in the worker (blocking);
        returns (SegmentResult, ExplanationResult)."""
        lib = self._lib()
        python = python or pythonSlicerExecutable()
        segmentation = lib.segment_job(inputs, model, device, python=python, temp_dir=jobFolder()).run()
        relevance = lib.analyze_sequences_job(inputs, model, preset, device, seed, python=python,
                                              temp_dir=jobFolder(), method=method).run()
        self.showResult(relevance)
        return segmentation, relevance

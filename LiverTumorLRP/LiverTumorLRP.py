"""Liver tumor segmentation in six-sequence liver MRI, explained with layer-wise relevance propagation."""
import contextlib
import enum
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
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


def _forgetLibrary(package: str = "LiverTumorLRPLib", modules: Optional[dict] = None) -> list:
    """Drop the library's modules from ``sys.modules`` (Reload): the reloaded module file then imports each of
    them anew when first used, after the modules it imports itself (their dependency order), so no class of
    the old code is left behind (``importlib.reload`` in name order would reload a module before the ones it
    imports from).  Returns the names dropped."""
    modules = sys.modules if modules is None else modules
    names = [n for n in list(modules) if n == package or n.startswith(package + ".")]
    for name in names:
        del modules[name]
    return names


_importBundledLibrary()

from LiverTumorLRPLib import slicer_deps  # noqa: E402  (no torch, no numpy: only what is installed)
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS  # noqa: E402  (no torch needed)

# Names of LiverTumorLRPLib.presets.PRESETS (kept here so that the module loads before torch is installed).
PRESET_NAMES = ["recommended", "paper", "epsilon", "epsilon-gamma-box", "alpha2-beta1", "epsilon-plus-flat",
                "reference-blur", "reference-mean"]
# parameter field of each sequence's volume selector
SEQUENCE_FIELDS = {"T2": "t2Volume", "T1_plain": "t1PlainVolume", "T1_20s": "t1_20sVolume",
                   "T1_60s": "t1_60sVolume", "T1_120s": "t1_120sVolume", "T1_15min": "t1_15minVolume"}
HOMEPAGE = "https://github.com/LiverTumorLRP/SlicerLiverTumorLRP#readme"
# The generated phantom case in the Sample Data module (its files are made on request, see phantomSampleFiles)
PHANTOM_SAMPLE = "LiverTumorLRPPhantom"
PHANTOM_URI = "phantom://LiverTumorLRP/seed0/"
PHANTOM_SHAPE, PHANTOM_SPACING = (32, 96, 96), (4.0, 3.0, 3.0)


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
    registerSampleData()


def jobFolder() -> Optional[str]:
    """Where worker jobs write their files: Slicer's temporary folder (Application settings), else the system's."""
    app = getattr(slicer, "app", None)
    path = getattr(app, "temporaryPath", None) if app is not None else None
    return path or None


def removeStaleJobFolders() -> list:
    """Remove the job folders of workers that no longer run, left by a crash or a kill (logged)."""
    folder = jobFolder()
    if not folder:
        return []
    from LiverTumorLRPLib.worker import remove_stale_job_folders

    try:
        return remove_stale_job_folders(folder)
    except Exception as exc:  # never in the way of start-up
        logging.warning(f"LiverTumorLRP: could not check {folder} for stale job folders: {exc}")
        return []


def phantomSampleFiles(folder: str, seed: int = 0, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING) -> dict:
    """The phantom case as files for the Sample Data module (made once): file name -> (path, node name, type).

    Six NRRD volumes named as :func:`LiverTumorLRPLib.slicer_logic.add_phantom_case` names them (so the inputs
    are assigned automatically) and the reference tumor as a labelmap loaded as a segmentation.
    """
    from LiverTumorLRPLib.case_io import write_image
    from LiverTumorLRPLib.mrml.inputs import PHANTOM_NAMES
    from LiverTumorLRPLib.phantom import generate_case

    files = {f"{PHANTOM_SAMPLE}-{key}.nrrd": (f"Phantom {PHANTOM_NAMES[key]}", "VolumeFile") for key in SEQUENCE_KEYS}
    files[f"{PHANTOM_SAMPLE}-reference.nrrd"] = ("Phantom reference", "SegmentationFile")
    out = {name: (os.path.join(folder, name), node, kind) for name, (node, kind) in files.items()}
    if not all(os.path.isfile(path) for path, _node, _kind in out.values()):
        import numpy as np

        case = generate_case(seed, shape=shape, spacing=spacing)
        reference = case.reference()
        os.makedirs(folder, exist_ok=True)
        for key in SEQUENCE_KEYS:
            write_image(case.images[key], reference, out[f"{PHANTOM_SAMPLE}-{key}.nrrd"][0], dtype=np.float32)
        write_image((case.label > 0).astype(np.uint8), reference, out[f"{PHANTOM_SAMPLE}-reference.nrrd"][0],
                    dtype=np.uint8)
    return out


def phantomSampleUrl(url: str, folder: Optional[str] = None, ensure=None) -> str:
    """Sample Data URL rewrite rule (Slicer >= 5.10): ``phantom://LiverTumorLRP/seed0/<file>`` -> the ``file://``
    URL of that file, made on first use (``ensure()``: the dependencies; False leaves the URL as it is).
    Any other URL is returned unchanged."""
    if not url.startswith(PHANTOM_URI):
        return url
    if ensure is not None and not ensure():
        return url
    import pathlib

    folder = folder or os.path.join(jobFolder() or tempfile.gettempdir(), "LiverTumorLRP-phantom")
    files = phantomSampleFiles(folder)
    name = url[len(PHANTOM_URI):]
    if name not in files:
        raise ValueError(f"unknown phantom sample file {name!r}")
    return pathlib.Path(files[name][0]).resolve().as_uri()


def registerSampleData():
    """Offer the generated phantom case in the Sample Data module, when it exists: its button (a custom
    downloader) and, on Slicer >= 5.10, ``SampleData.downloadSample("LiverTumorLRPPhantom")`` too (a URL rewrite
    rule turns its ``phantom://`` URIs into files made on request)."""
    try:
        import SampleData
    except ImportError:
        return
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")

    def loadPhantom(*args, **kwargs):
        with slicer.util.tryWithErrorDisplay(_("Failed to load the phantom case."), waitCursor=False):
            logic = LiverTumorLRPLogic()
            if not logic.ensureDependencies(slicer_deps.PHANTOM):
                return None
            with slicer.util.WaitCursor():
                nodes = logic.loadPhantomCase()
            return list(nodes.values())
        return None

    def ensure():
        return LiverTumorLRPLogic().ensureDependencies(slicer_deps.PHANTOM)

    names = [f"{PHANTOM_SAMPLE}-{key}.nrrd" for key in SEQUENCE_KEYS] + [f"{PHANTOM_SAMPLE}-reference.nrrd"]
    from LiverTumorLRPLib.mrml.inputs import PHANTOM_NAMES

    nodeNames = [f"Phantom {PHANTOM_NAMES[key]}" for key in SEQUENCE_KEYS] + ["Phantom reference"]
    try:
        logic = SampleData.SampleDataLogic
        logic.registerCustomSampleDataSource(
            category="Liver Tumor LRP", sampleName=PHANTOM_SAMPLE,
            thumbnailFileName=os.path.join(iconsPath, "LiverTumorLRP.png"),
            uris=[PHANTOM_URI + n for n in names], fileNames=names, nodeNames=nodeNames,
            loadFileTypes=["VolumeFile"] * len(SEQUENCE_KEYS) + ["SegmentationFile"],
            customDownloader=loadPhantom)
        if hasattr(logic, "registerUrlRewriteRule"):
            logic.registerUrlRewriteRule("LiverTumorLRPPhantom", lambda url: phantomSampleUrl(url, ensure=ensure))
        else:  # Slicer 5.8: only the Sample Data button makes the phantom
            logging.info("LiverTumorLRP: this Sample Data module has no URL rewrite rules; the phantom case "
                         "loads from its button or the module's 'Load phantom case'")
    except Exception as exc:  # an older/newer SampleData API: the module's own button still works
        logging.warning(f"LiverTumorLRP: could not register the phantom sample data: {exc}")


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

# Shared by every logic instance (the widget's, the Sample Data loader's): ask once, install once.
_DEPENDENCIES = {"installing": False}


def pythonSlicerExecutable() -> str:
    """Slicer's own Python (``PythonSlicer``), which runs the worker process."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    path = shutil.which("PythonSlicer") or os.path.join(slicer.app.slicerHome, "bin", name)
    if not os.path.isfile(path):
        raise RuntimeError(f"cannot find {name} (looked on PATH and in {slicer.app.slicerHome}/bin)")
    return path


def _slicerPackaging():
    """``slicer.packaging`` of Slicer >= 5.11, whose ``pip_install`` takes a constraints file and shows its own
    progress and error dialogs (so none of ours around it); None on older Slicer."""
    try:
        from slicer import packaging
    except ImportError:
        return None
    import inspect

    install = getattr(packaging, "pip_install", None)
    try:
        return packaging if install is not None and "constraints" in inspect.signature(install).parameters else None
    except (TypeError, ValueError):
        return None


class _InstallFailed(Exception):
    """An install step failed; ``shown``: Slicer has already shown the error (its own dialog, with the log)."""

    def __init__(self, message: str, shown: bool = False):
        super().__init__(message)
        self.shown = shown


class LiverTumorLRPLogic(ScriptedLoadableModuleLogic):
    """Module logic: builds worker jobs from the parameter node; the MRML work is in LiverTumorLRPLib.mrml."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LiverTumorLRPParameterNode(super().getParameterNode())

    @staticmethod
    def missingPackages(names=None) -> list:
        """The requirements not met (absent or too old), e.g. ``["torch>=2.1 (installed: 1.13.1)"]``; read from
        the installed packages' metadata, nothing imported (torch is never imported in Slicer's process)."""
        return [m.describe() for m in slicer_deps.missing(slicer_deps.requirements(names))]

    def ensureDependencies(self, names=None) -> bool:
        """Install what is missing or too old (default: torch and the worker's packages); True when all are met.

        One confirmation that lists every package, asked before any wait cursor (none in testing mode); then
        torch (through light-the-torch as the PyTorch extension does when it is present, without torchvision;
        else pip), the other packages with pip, all under constraints that keep Slicer's numpy, SimpleITK and
        vtk; torch is then checked in a separate PythonSlicer process.  A second call while installing (a
        second click) returns False at once.
        """
        missing = slicer_deps.missing(slicer_deps.requirements(names))
        if not missing:
            return True
        if _DEPENDENCIES["installing"]:
            logging.info("LiverTumorLRP: the dependencies are being installed")
            return False
        plan = slicer_deps.install_plan(missing, torch_utils=importlib.util.find_spec("PyTorchUtils") is not None)
        if not slicer.app.testingEnabled() and not slicer.util.confirmOkCancelDisplay(
                slicer_deps.question(plan), _("Liver Tumor LRP: install Python packages")):
            return False
        _DEPENDENCIES["installing"] = True
        try:
            self.install(plan)
        except Exception as exc:  # one message: ours, unless Slicer's pip dialog has shown it already
            logging.error(f"LiverTumorLRP: installing {', '.join(p.describe() for p in missing)} failed: {exc}")
            if not getattr(exc, "shown", False):
                slicer.util.errorDisplay(_("Liver Tumor LRP: installing the Python packages failed: {error}").format(
                    error=exc))
            return False
        finally:
            _DEPENDENCIES["installing"] = False
        still = self.missingPackages(names)
        if still:
            slicer.util.errorDisplay(_("Liver Tumor LRP: still missing after the installation: {packages}; see the "
                                       "Python console.").format(packages=", ".join(still)))
        return not still

    def install(self, plan) -> None:
        """Carry out a :class:`slicer_deps.InstallPlan` (no question asked here)."""
        constraints = slicer_deps.write_constraints(jobFolder() or tempfile.gettempdir())
        if plan.torch is not None:
            if plan.use_ltt:
                if plan.ltt_needed:
                    self._pipInstall([slicer_deps.LIGHT_THE_TORCH], constraints)
                self._runPythonModule("light_the_torch", slicer_deps.ltt_args(plan.torch, constraints))
            else:
                self._pipInstall([plan.torch], constraints)
        if plan.pip:
            self._pipInstall(plan.pip, constraints)
        if plan.torch is not None:
            with slicer.util.WaitCursor():
                info = slicer_deps.check_torch(pythonSlicerExecutable(), plan.torch)
            logging.info(f"LiverTumorLRP: PyTorch {info['version']} works "
                         f"({'CUDA available' if info['cuda'] else 'CPU only'})")

    @staticmethod
    def _pipInstall(requirements: list, constraints: str) -> None:
        packaging = _slicerPackaging()
        if packaging is not None:  # Slicer >= 5.11: its own progress dialog, and error dialog with the log
            try:
                packaging.pip_install(list(requirements), constraints=constraints, requester=_("Liver Tumor LRP"))
            except Exception as exc:
                raise _InstallFailed(f"pip install {' '.join(requirements)}: {exc}",
                                     shown=not slicer.app.testingEnabled()) from exc
            return
        with slicer.util.WaitCursor():
            slicer.util.pip_install(slicer_deps.pip_args(requirements, constraints))

    @staticmethod
    def _runPythonModule(module: str, args: list) -> None:
        """``PythonSlicer -m module args`` (a separate process, its console hidden), blocking."""
        run = getattr(slicer.util, "executePythonModule", None) or slicer.util._executePythonModule
        with slicer.util.WaitCursor():
            run(module, args)

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
                                                 python=python or pythonSlicerExecutable(), temp_dir=jobFolder())

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

    def process(self, inputs=None, model="bundled", device="auto", preset="recommended", seed=0, python=None):
        """Scripted use: segment and run sequence relevance in the worker (blocking);
        returns (SegmentResult, ExplanationResult)."""
        lib = self._lib()
        python = python or pythonSlicerExecutable()
        segmentation = lib.segment_job(inputs, model, device, python=python, temp_dir=jobFolder()).run()
        relevance = lib.analyze_sequences_job(inputs, model, preset, device, seed, python=python,
                                              temp_dir=jobFolder()).run()
        self.showResult(relevance)
        return segmentation, relevance


#
# LiverTumorLRPTest
#

class LiverTumorLRPTest(ScriptedLoadableModuleTest):
    """Installs the dependencies (testing mode: no questions), then segment, explain and sequence relevance in the
    worker process on a phantom case with the bundled model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            getattr(self, name)()

    def _phantom(self):
        return LiverTumorLRPLogic().loadPhantomCase(seed=0)

    def _assertSameGeometry(self, a, b):
        ijkToRasA, ijkToRasB = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        a.GetIJKToRASMatrix(ijkToRasA)
        b.GetIJKToRASMatrix(ijkToRasB)
        for i in range(4):
            for j in range(4):
                self.assertAlmostEqual(ijkToRasA.GetElement(i, j), ijkToRasB.GetElement(i, j), places=4)
        self.assertEqual(a.GetImageData().GetDimensions(), b.GetImageData().GetDimensions())

    def test_01_phantom_needs_no_torch(self):
        self.delayDisplay("Phantom case (numpy, scipy, SimpleITK only)")
        logic = LiverTumorLRPLogic()
        self.assertTrue(logic.ensureDependencies(slicer_deps.PHANTOM))
        hadTorch = "torch" in sys.modules
        nodes = self._phantom()
        self.assertEqual(sorted(nodes), sorted(SEQUENCE_KEYS))
        self.assertEqual(sorted(LiverTumorLRPLogic._lib().assign_sequences()), sorted(SEQUENCE_KEYS))
        if not hadTorch:
            self.assertNotIn("torch", sys.modules)

    def test_02_dependencies_install_without_asking(self):
        self.delayDisplay("Dependencies (installed without a question in testing mode; torch never imported here)")
        hadTorch = "torch" in sys.modules
        self.assertTrue(LiverTumorLRPLogic().ensureDependencies())
        self.assertEqual(LiverTumorLRPLogic.missingPackages(), [])
        info = slicer_deps.check_torch(pythonSlicerExecutable())      # imported in a separate process
        self.assertTrue(slicer_deps.satisfied(slicer_deps.REQUIREMENTS["torch"], info["version"]))
        if not hadTorch:
            self.assertNotIn("torch", sys.modules)

    def _run(self, job):
        job.start()
        self.assertIsNotNone(job.worker.process.pid)
        fractions = []
        while not job.poll():
            fractions.append(job.fraction)
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        self.assertEqual(job.state, "done", job.error)
        self.assertFalse(os.path.exists(job.job_dir))
        return job.result

    def test_03_segment_explain_sequence_relevance_in_worker(self):
        self.delayDisplay("Segment, explain and sequence relevance in the worker process")
        logic = LiverTumorLRPLogic()
        self.assertTrue(logic.ensureDependencies())
        lib = logic._lib()
        nodes = self._phantom()
        python = pythonSlicerExecutable()
        job = lib.segment_job(nodes, "bundled", "cpu", python=python, temp_dir=jobFolder())
        seg = self._run(job)
        self.assertEqual(os.path.dirname(job.job_dir), os.path.normpath(slicer.app.temporaryPath))
        self.assertTrue(seg.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Tumor"))
        self.assertGreater(seg.n_tumor, 0)
        self._assertSameGeometry(seg.probability, nodes["T1_15min"])
        for job in (lib.explain_region_job(nodes, "bundled", lib.Region("predicted tumor"), "tumor", device="cpu",
                                           python=python, temp_dir=jobFolder()),
                    lib.analyze_sequences_job(nodes, "bundled", device="cpu", python=python, temp_dir=jobFolder())):
            result = self._run(job)
            self.assertEqual(set(result.volumes), set(SEQUENCE_KEYS))
            for key, node in result.volumes.items():
                self._assertSameGeometry(node, nodes[key])
            self.assertAlmostEqual(float(sum(result.shares)), 1.0, places=5)
            self.assertEqual(result.table.GetTable().GetNumberOfRows(), 6)
            self.assertEqual(result.chart.GetNumberOfPlotSeriesNodes(), 6)
            logic.showResult(result)
            for node in result.volumes.values():
                legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(node)
                self.assertIsNotNone(legend)
                self.assertTrue(legend.GetVisibility2D())

    def test_04_cancel_adds_nothing(self):
        self.delayDisplay("Cancel: the worker process is stopped, nothing is added")
        self.assertTrue(LiverTumorLRPLogic().ensureDependencies())
        lib = LiverTumorLRPLogic._lib()
        nodes = self._phantom()
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = lib.analyze_sequences_job(nodes, "bundled", device="cpu", python=pythonSlicerExecutable()).start()
        jobDir = job.job_dir
        job.cancel()
        self.assertEqual(job.state, "cancelled")
        self.assertIsNotNone(job.worker.process.poll())
        self.assertFalse(os.path.exists(jobDir))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_05_phantom_through_sample_data(self):
        self.delayDisplay("The phantom case through SampleData.downloadSample (Slicer >= 5.10)")
        import SampleData

        if not hasattr(SampleData.SampleDataLogic, "registerUrlRewriteRule"):
            self.delayDisplay("This Sample Data module has no URL rewrite rules: the button only")
            return
        self.assertTrue(LiverTumorLRPLogic().ensureDependencies(slicer_deps.PHANTOM))
        nodes = SampleData.downloadSamples(PHANTOM_SAMPLE)
        self.assertEqual(len(nodes), len(SEQUENCE_KEYS) + 1)
        self.assertEqual(sorted(LiverTumorLRPLogic._lib().assign_sequences()), sorted(SEQUENCE_KEYS))
        self.assertTrue(nodes[-1].IsA("vtkMRMLSegmentationNode"))
        self.delayDisplay("Test passed")

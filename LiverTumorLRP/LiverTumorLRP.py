"""Liver tumor segmentation in six-sequence liver MRI, explained with layer-wise relevance propagation."""
import enum
import importlib
import importlib.util
import logging
import os
import sys
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode


def _addLibraryPath():
    """LiverTumorLRPLib lives beside the module when installed, at the repository root in a source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "LiverTumorLRPLib")) and folder not in sys.path:
            sys.path.insert(0, folder)
            break


_addLibraryPath()

from LiverTumorLRPLib.sequences import SEQUENCE_KEYS  # noqa: E402  (no torch needed)

# Names of LiverTumorLRPLib.presets.PRESETS (kept here so that the module loads before torch is installed).
PRESET_NAMES = ["recommended", "paper", "epsilon", "epsilon-gamma-box", "alpha2-beta1", "epsilon-plus-flat",
                "reference-blur", "reference-mean"]
# Python packages the library needs besides torch; never numpy, SimpleITK or vtk (Slicer's own).
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4,<1", "scipy": "scipy>=1.9,<2", "tqdm": "tqdm>=4.60,<5",
                    "matplotlib": "matplotlib>=3.6,<4"}
TORCH_REQUIREMENT = ">=2.1"
# parameter field of each sequence's volume selector
SEQUENCE_FIELDS = {"T2": "t2Volume", "T1_plain": "t1PlainVolume", "T1_20s": "t1_20sVolume",
                   "T1_60s": "t1_60sVolume", "T1_120s": "t1_120sVolume", "T1_15min": "t1_15minVolume"}


#
# LiverTumorLRP
#

class LiverTumorLRP(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Liver Tumor LRP"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorLRP developers"]
        self.parent.helpText = """
Segments liver tumors in six-sequence liver MRI (T2, T1 plain, T1 20 s, 60 s, 120 s and 15 min after gadoxetate)
with a 3D u-net and explains each segmentation with layer-wise relevance propagation (LRP): relevance maps of any
region (a segment, the predicted tumor or background, one point) and the share of each MRI sequence in the
tumor-vs-background decision. The inputs are resampled to the T1 15 min grid.
See the <a href="https://github.com/">project page</a> for details.
"""
        self.parent.acknowledgementText = """
Method: Chlebus G, Abolmaali N, Schenk A, Meine H. Relevance analysis of MRI sequences for automatic liver tumor
segmentation. Medical Imaging with Deep Learning (MIDL) 2019, extended abstract.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the generated phantom case in the Sample Data module, when it exists."""
    try:
        import SampleData
    except ImportError:
        return
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")

    def loadPhantom(*args, **kwargs):
        logic = LiverTumorLRPLogic()
        if not logic.ensureDependencies():
            return None
        logic.loadPhantomCase()
        return os.path.join(iconsPath, "LiverTumorLRP.png")

    try:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="Liver Tumor LRP", sampleName="LiverTumorLRPPhantom",
            thumbnailFileName=os.path.join(iconsPath, "LiverTumorLRP.png"),
            uris="phantom://LiverTumorLRP/seed0", fileNames="LiverTumorLRPPhantom", nodeNames="Phantom",
            loadFiles=False, customDownloader=loadPhantom)
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

class LiverTumorLRPWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, model, Segment / Explain / Sequence relevance with progress, log and Cancel."""

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
        if self.job is not None:
            self.job.cancel()
        if self.timer is not None:
            self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self.job is not None:
            self.job.cancel()
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

    def setParameterNode(self, inputParameterNode: Optional[LiverTumorLRPParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateRegionWidgets)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateRegionWidgets)
        self.updateRegionWidgets()

    def onReload(self) -> None:
        """Reload the library too (developer mode)."""
        for name in sorted(n for n in sys.modules if n.startswith("LiverTumorLRPLib.")):
            importlib.reload(sys.modules[name])
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
        with slicer.util.tryWithErrorDisplay("Failed to load the phantom case.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self.logic.loadPhantomCase(seed=self._parameterNode.seed)
            self.autoAssignInputs(overwrite=True)
            self.log("Phantom case loaded.")

    def onSegment(self) -> None:
        self.runOrCancel(self.ui.segmentButton, lambda: self.logic.segmentTask(self._parameterNode))

    def onExplain(self) -> None:
        def task():
            p = self._parameterNode
            segmentation = self.ui.segmentSelector.currentNode()
            segmentId = self.ui.segmentSelector.currentSegmentID()
            return self.logic.explainTask(p, segmentation, segmentId)

        self.runOrCancel(self.ui.explainButton, task)

    def onSequenceRelevance(self) -> None:
        self.runOrCancel(self.ui.sequenceRelevanceButton, lambda: self.logic.sequenceRelevanceTask(self._parameterNode))

    def runOrCancel(self, button, makeTask) -> None:
        """Start a background job from ``button``, or cancel the running one when it is this button."""
        if self.job is not None:
            if button is self.jobButton:
                self.job.cancel()
                self.log("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay("Could not start.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            from LiverTumorLRPLib import slicer_logic

            task = makeTask()
            self.job = slicer_logic.Job(task).start()
            self.jobButton = button
            self.setRunning(True)
            self.log(f"{task.name}: started")

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

    def onPoll(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        for message in job.take_messages():
            self.log(message)
        self.ui.progressBar.value = int(100 * job.fraction)
        if not job.poll():
            return
        self.job = None
        self.setRunning(False)
        self.jobButton = None
        for message in job.take_messages():
            self.log(message)
        if job.state == "cancelled":
            self.log(f"{job.task.name}: cancelled")
        elif job.state == "failed":
            self.log(f"{job.task.name} failed: {job.error}")
            slicer.util.errorDisplay(f"{job.task.name} failed: {job.error}")
        else:
            self.ui.progressBar.value = 100
            self.log(self.logic.describe(job.result))

    def log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)


#
# LiverTumorLRPLogic
#

class LiverTumorLRPLogic(ScriptedLoadableModuleLogic):
    """Module logic: thin wrappers around LiverTumorLRPLib.slicer_logic (which does the MRML work)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LiverTumorLRPParameterNode(super().getParameterNode())

    @staticmethod
    def missingPackages() -> list:
        names = [n for n in ("torch", *PIP_REQUIREMENTS) if importlib.util.find_spec(n) is None]
        return names

    def ensureDependencies(self) -> bool:
        """Install torch and the other packages after asking the user; False when declined."""
        missing = self.missingPackages()
        if not missing:
            return True
        if slicer.app.testingEnabled():
            raise RuntimeError(f"LiverTumorLRP needs {', '.join(missing)}; they are not installed during tests")
        if not slicer.util.confirmOkCancelDisplay(
                f"Liver Tumor LRP needs these Python packages: {', '.join(missing)}. Install them now? "
                "(PyTorch may download about 2 GB.)", "Install dependencies"):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                        return False
            else:
                slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
        others = [PIP_REQUIREMENTS[n] for n in missing if n in PIP_REQUIREMENTS]
        if others:
            slicer.util.pip_install(others)
        importlib.invalidate_caches()
        return not self.missingPackages()

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

    def loadPhantomCase(self, seed: int = 0, shape=(32, 96, 96), spacing=(4.0, 3.0, 3.0)) -> dict:
        nodes = self._lib().add_phantom_case(seed, shape, spacing)
        slicer.util.setSliceViewerLayers(background=nodes["T1_15min"], fit=True)
        return nodes

    def segmentTask(self, p):
        return self._lib().segment_task(self.inputs(p), self.model(p), p.device.value)

    def explainTask(self, p, segmentationNode=None, segmentId=None):
        lib = self._lib()
        kind = p.region.value
        if kind == "segment":
            region = lib.Region("segment", segmentationNode, segmentId)
        elif kind == "point":
            region = lib.Region("point", p.regionPoints, point_index=0)
        else:
            region = lib.Region(kind)
        return lib.explain_region_task(self.inputs(p), self.model(p), region, p.explainClass, p.preset,
                                       p.device.value)

    def sequenceRelevanceTask(self, p):
        return self._lib().analyze_sequences_task(self.inputs(p), self.model(p), p.preset, p.device.value, p.seed)

    def describe(self, result) -> str:
        lib = self._lib()
        if isinstance(result, lib.ExplanationResult):
            return lib.summary(result)
        if isinstance(result, lib.SegmentResult):
            return f"Tumor: {result.n_tumor} voxels ({result.tumor_ml:.1f} ml) in {result.segmentation.GetName()}"
        return str(result)

    def process(self, inputs=None, model="bundled", device="auto", preset="recommended", seed=0):
        """Scripted use: segment and run sequence relevance (blocking); returns (SegmentResult, ExplanationResult)."""
        lib = self._lib()
        segmentation = lib.segment(inputs, model, device)
        return segmentation, lib.analyze_sequences(inputs, model, preset, device, seed)


#
# LiverTumorLRPTest
#

class LiverTumorLRPTest(ScriptedLoadableModuleTest):
    """Small phantom case and a tiny random u-net: segment, explain the tumor, sequence relevance."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment()
        self.setUp()
        self.test_explain_and_sequence_relevance()

    def _tinyModelAndInputs(self):
        import numpy as np
        import torch

        from LiverTumorLRPLib.intensity import normalise_image
        from LiverTumorLRPLib.unet import UNet3D, UNetConfig

        lib = LiverTumorLRPLogic._lib()
        nodes = lib.add_phantom_case(3, shape=(16, 32, 32), spacing=(3.0, 2.5, 2.0))
        torch.manual_seed(0)
        model = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
        image = normalise_image(np.stack([slicer.util.arrayFromVolume(nodes[k]) for k in SEQUENCE_KEYS]))
        with torch.no_grad():
            y = model(torch.from_numpy(image)[None])[0]
            model.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.95))
        return lib, model, nodes

    def _assertSameGeometry(self, a, b):
        import numpy as np

        self.assertTrue(np.allclose(a.GetOrigin(), b.GetOrigin()))
        self.assertTrue(np.allclose(a.GetSpacing(), b.GetSpacing()))
        self.assertEqual(a.GetImageData().GetDimensions(), b.GetImageData().GetDimensions())

    def test_segment(self):
        self.delayDisplay("Segment a small phantom case")
        lib, model, nodes = self._tinyModelAndInputs()
        result = lib.segment(nodes, model, "cpu")
        self.assertTrue(result.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Tumor"))
        self.assertGreater(result.n_tumor, 0)
        self._assertSameGeometry(result.probability, nodes["T1_15min"])

    def test_explain_and_sequence_relevance(self):
        import numpy as np

        self.delayDisplay("Explain the predicted tumor and run sequence relevance")
        lib, model, nodes = self._tinyModelAndInputs()
        for result in (lib.explain_region(nodes, model, lib.Region("predicted tumor"), "tumor", device="cpu"),
                       lib.analyze_sequences(nodes, model, device="cpu")):
            self.assertEqual(set(result.volumes), set(SEQUENCE_KEYS))
            for key, node in result.volumes.items():
                self._assertSameGeometry(node, nodes[key])
            self.assertAlmostEqual(float(np.sum(result.shares)), 1.0, places=5)
            self.assertEqual(result.table.GetNumberOfRows(), 6)
            self.assertEqual(result.chart.GetNumberOfPlotSeriesNodes(), 6)
        self.delayDisplay("Test passed")

"""The module's self-test (Slicer's Reload and Test, and ctest through ``slicer_add_python_unittest``).

``LiverTumorLRP.py`` imports :class:`LiverTumorLRPTest`, since Slicer's ``ScriptedLoadableModule.runTest`` and
``slicer.testing.runUnitTest`` look for ``<Module>Test`` in the module.  The module's logic is imported from the
module when a test runs (the module imports this file, so not at import time).
"""
import os
import sys

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from LiverTumorLRPLib import slicer_deps  # no torch, no numpy: only what is installed
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS

from .jobs import jobFolder, pythonSlicerExecutable
from .sampledata import PHANTOM_SAMPLE


def _logicClass():
    """``LiverTumorLRPLogic`` of the module as loaded now (after a Reload: the reloaded one)."""
    from LiverTumorLRP import LiverTumorLRPLogic

    return LiverTumorLRPLogic


def _logic():
    return _logicClass()()


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
        return _logic().loadPhantomCase(seed=0)

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
        logic = _logic()
        self.assertTrue(logic.ensureDependencies(slicer_deps.PHANTOM))
        hadTorch = "torch" in sys.modules
        nodes = self._phantom()
        self.assertEqual(sorted(nodes), sorted(SEQUENCE_KEYS))
        self.assertEqual(sorted(_logicClass()._lib().assign_sequences()), sorted(SEQUENCE_KEYS))
        if not hadTorch:
            self.assertNotIn("torch", sys.modules)

    def test_02_dependencies_install_without_asking(self):
        self.delayDisplay("Dependencies (installed without a question in testing mode; torch never imported here)")
        hadTorch = "torch" in sys.modules
        self.assertTrue(_logic().ensureDependencies())
        self.assertEqual(_logicClass().missingPackages(), [])
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
        logic = _logic()
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
            self.assertAlmostEqual(abs(float(sum(result.shares))), 1.0, places=5)
            self.assertEqual(result.table.GetTable().GetNumberOfRows(), 6)
            self.assertEqual(result.chart.GetNumberOfPlotSeriesNodes(), 6)
            logic.showResult(result)
            for node in result.volumes.values():
                legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(node)
                self.assertIsNotNone(legend)
                self.assertTrue(legend.GetVisibility2D())

    def test_04_cancel_adds_nothing(self):
        self.delayDisplay("Cancel: the worker process is stopped, nothing is added")
        self.assertTrue(_logic().ensureDependencies())
        lib = _logicClass()._lib()
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
        self.assertTrue(_logic().ensureDependencies(slicer_deps.PHANTOM))
        nodes = SampleData.downloadSamples(PHANTOM_SAMPLE)
        self.assertEqual(len(nodes), len(SEQUENCE_KEYS) + 1)
        self.assertEqual(sorted(_logicClass()._lib().assign_sequences()), sorted(SEQUENCE_KEYS))
        self.assertTrue(nodes[-1].IsA("vtkMRMLSegmentationNode"))
        self.delayDisplay("Test passed")

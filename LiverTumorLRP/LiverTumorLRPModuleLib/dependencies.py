"""Installing what the worker needs (PyTorch and a few packages) from Slicer: one question, then pip or
light-the-torch under constraints that keep Slicer's own packages; torch is never imported in Slicer's process.
The module's logic inherits :class:`DependencyInstaller`."""
import importlib.util
import logging
import tempfile

import slicer

from LiverTumorLRPLib import slicer_deps  # no torch, no numpy: only what is installed

from . import _
from .jobs import jobFolder, pythonSlicerExecutable

# Shared by every logic instance (the widget's, the Sample Data loader's): ask once, install once.
_DEPENDENCIES = {"installing": False}


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


class DependencyInstaller:
    """The logic's dependency methods (a mixin of ``LiverTumorLRPLogic``)."""

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

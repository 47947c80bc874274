"""The Slicer module's Python dependencies, decided without importing them (no Qt, no Slicer; tested with pytest).

The module (``LiverTumorLRP.py``) keeps only the dialog and the calls into Slicer; everything it decides is here:

* :data:`REQUIREMENTS`: what the worker process needs besides Slicer's own numpy, SimpleITK and vtk;
* :func:`missing`: which of them are absent or too old, read from the installed distributions' metadata
  (``importlib.metadata`` and ``packaging``): nothing is imported, so Slicer's process never imports torch;
* :func:`install_plan` and :func:`question`: one confirmation that names every package to install, then the
  steps -- torch through light-the-torch (the PyTorch extension's way of choosing the build for the GPU found,
  here without torchvision and without PyTorchUtils' own dialog) or plain pip, then the others with pip;
* :func:`constraints_text` / :func:`write_constraints`: a pip constraints file pinning the numpy, SimpleITK and
  vtk that this Slicer ships (the versions installed now), so no install can replace them;
* :func:`check_torch`: imports torch in a separate ``PythonSlicer`` process and checks its version.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

try:
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - Slicer ships packaging; pip always vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

# import name -> requirement (pip); the worker's packages besides Slicer's numpy, SimpleITK and vtk
REQUIREMENTS: Dict[str, str] = {
    "torch": "torch>=2.1",
    "safetensors": "safetensors>=0.4,<1",
    "scipy": "scipy>=1.9,<2",
    "tqdm": "tqdm>=4.60,<5",
    "matplotlib": "matplotlib>=3.6,<4",
}
# The phantom case needs only these (numpy and SimpleITK come with Slicer).
PHANTOM = ("scipy",)
# Packages that Slicer ships and that no install may replace.
SLICER_PACKAGES = ("numpy", "SimpleITK", "vtk")
LIGHT_THE_TORCH = "light-the-torch>=0.5"
CONSTRAINTS_FILE = "LiverTumorLRP-constraints.txt"
# Run by check_torch in a separate process: the only place where the module's side imports torch.
TORCH_CHECK = ("import json, torch; print(json.dumps({'version': torch.__version__, "
               "'cuda': bool(torch.cuda.is_available())}))")


def installed_version(name: str) -> Optional[str]:
    """The installed distribution's version (from its metadata; nothing imported), None when absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Missing:
    """A requirement that is not met: ``installed`` is the version found (too old or too new) or None."""

    requirement: str
    installed: Optional[str] = None

    @property
    def name(self) -> str:
        return Requirement(self.requirement).name

    def describe(self) -> str:
        return self.requirement + (f" (installed: {self.installed})" if self.installed else "")


def requirements(names: Optional[Iterable[str]] = None) -> List[str]:
    """Requirement strings of ``names`` (import names of :data:`REQUIREMENTS`; default all of them)."""
    names = list(REQUIREMENTS) if names is None else list(names)
    unknown = [n for n in names if n not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"unknown dependencies {unknown}; known: {', '.join(REQUIREMENTS)}")
    return [REQUIREMENTS[n] for n in names]


def satisfied(requirement: str, version: Optional[str]) -> bool:
    """Whether an installed ``version`` (None: absent) meets ``requirement`` (local builds such as
    ``2.5.1+cu121`` count as their release; an unparsable version does not)."""
    if version is None:
        return False
    try:
        return Requirement(requirement).specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def missing(reqs: Iterable[str], version_of: Callable[[str], Optional[str]] = installed_version) -> List[Missing]:
    """The requirements not met by what is installed (absent, or a version outside the requirement)."""
    out = []
    for req in reqs:
        version = version_of(Requirement(req).name)
        if not satisfied(req, version):
            out.append(Missing(req, version))
    return out


@dataclass
class InstallPlan:
    """What to install: ``torch`` (a requirement or None) through light-the-torch (``use_ltt``) or pip, then
    ``pip`` (requirements); ``ltt_needed``: light-the-torch itself must be installed first."""

    torch: Optional[str] = None
    use_ltt: bool = False
    ltt_needed: bool = False
    pip: List[str] = field(default_factory=list)
    missing: List[Missing] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.pip

    def packages(self) -> List[str]:
        """Every package the plan installs, as the confirmation lists them."""
        out = [m.describe() for m in self.missing]
        if self.ltt_needed:
            out.append(f"{LIGHT_THE_TORCH} (picks the PyTorch build for this computer's GPU)")
        return out


def install_plan(missing_reqs: Sequence[Missing], torch_utils: bool,
                 ltt_installed: Optional[bool] = None) -> InstallPlan:
    """The steps for ``missing_reqs``: torch through light-the-torch when the PyTorch extension is present
    (``torch_utils``; as its PyTorchUtils does, but without torchvision), else plain pip; the others with pip."""
    plan = InstallPlan(missing=list(missing_reqs))
    for m in missing_reqs:
        if m.name == "torch":
            plan.torch = m.requirement
        else:
            plan.pip.append(m.requirement)
    if plan.torch is not None and torch_utils:
        plan.use_ltt = True
        if ltt_installed is None:
            ltt_installed = installed_version("light-the-torch") is not None
        plan.ltt_needed = not ltt_installed
    return plan


def question(plan: InstallPlan, title: str = "Liver Tumor LRP") -> str:
    """The one confirmation's text: every package to install, and what installing PyTorch means."""
    lines = [f"{title} needs these Python packages, to be installed now:", ""]
    lines += [f"  - {p}" for p in plan.packages()]
    if plan.torch is not None:
        lines += ["", "PyTorch is a download of up to about 2 GB and may take several minutes."]
    lines += ["", "Slicer's own numpy, SimpleITK and vtk are kept as they are. Install?"]
    return "\n".join(lines)


def _module_version(name: str, modules=None) -> Optional[str]:
    """The version of an already imported module (never imports it): ``__version__``, or VTK's own."""
    module = (sys.modules if modules is None else modules).get(name)
    if module is None:
        return None
    version = getattr(module, "__version__", None)
    if version is None and name == "vtk" and hasattr(module, "vtkVersion"):
        version = module.vtkVersion.GetVTKVersion()
    return str(version) if version else None


def constraints_text(names: Iterable[str] = SLICER_PACKAGES,
                     version_of: Callable[[str], Optional[str]] = installed_version, modules=None) -> str:
    """pip constraints pinning the installed ``names`` (``numpy==1.26.4``), one a line.

    A package known to pip by its metadata is pinned to that version; one without metadata (Slicer's own VTK
    build) to the version of its already imported module, so a package requiring another version fails to
    install instead of replacing Slicer's.  Names found neither way (or with no PEP 440 version) are left out.
    """
    lines = []
    for name in names:
        version = version_of(name) or _module_version(name, modules)
        if not version:
            continue
        try:
            Version(version)
        except InvalidVersion:
            continue
        lines.append(f"{name}=={version}")
    return "".join(line + "\n" for line in lines)


def write_constraints(folder: str, text: Optional[str] = None) -> str:
    """Write :func:`constraints_text` to ``folder/LiverTumorLRP-constraints.txt`` (atomically); its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, CONSTRAINTS_FILE)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(constraints_text() if text is None else text)
    os.replace(tmp, path)
    return path


def pip_args(reqs: Sequence[str], constraints: Optional[str] = None) -> List[str]:
    """Arguments after ``pip install`` (the form ``slicer.util.pip_install`` takes as a list)."""
    return [*reqs, *(["-c", constraints] if constraints else [])]


def ltt_args(torch_requirement: str, constraints: Optional[str] = None) -> List[str]:
    """Arguments of ``python -m light_the_torch``: torch alone (no torchvision), under the constraints."""
    return ["install", torch_requirement, *(["-c", constraints] if constraints else [])]


def check_torch(python: str, requirement: str = REQUIREMENTS["torch"], timeout: float = 600.0,
                run=subprocess.run) -> dict:
    """Import torch in a separate process (``python``: ``PythonSlicer``) and check its version.

    Returns ``{"version": "2.5.1+cu121", "cuda": True}``; RuntimeError with the process's last error line when
    torch does not import, ValueError when its version does not meet ``requirement``.
    """
    from .worker import hidden_window

    try:
        p = run([python, "-c", TORCH_CHECK], capture_output=True, text=True, encoding="utf-8", errors="replace",
                timeout=timeout, stdin=subprocess.DEVNULL, **hidden_window())
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"importing torch took more than {timeout:.0f} s") from None
    lines = [ln.strip() for ln in (p.stderr or "").splitlines() if ln.strip()]
    info = None
    for line in reversed((p.stdout or "").splitlines()):
        try:
            info = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if p.returncode != 0 or not isinstance(info, dict) or "version" not in info:
        raise RuntimeError("PyTorch does not import: " + (lines[-1] if lines else f"exit code {p.returncode}"))
    if not satisfied(requirement, info["version"]):
        raise ValueError(f"PyTorch {info['version']} is installed; Liver Tumor LRP needs {requirement}")
    return info


__all__ = ["REQUIREMENTS", "PHANTOM", "SLICER_PACKAGES", "Missing", "InstallPlan", "installed_version",
           "requirements", "satisfied", "missing", "install_plan", "question", "constraints_text",
           "write_constraints", "pip_args", "ltt_args", "check_torch"]

"""The Slicer module's dependency decisions (LiverTumorLRPLib.slicer_deps): versions read without importing, one
question naming every package, light-the-torch without torchvision, constraints pip really honours, and torch
checked in a separate process."""
import os
import re
import subprocess
import sys
import types

import pytest

from LiverTumorLRPLib import slicer_deps as deps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def versions(**installed):
    return lambda name: installed.get(name)


def test_requirements_match_pyproject():
    """The module installs what the library declares (same packages, same lower bounds)."""
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    declared = dict(re.findall(r'^\s+"([A-Za-z0-9_-]+)(>=[\d.]+)[^"]*",$', text.split("[project.optional")[0], re.M))
    for name, requirement in deps.REQUIREMENTS.items():
        assert name in declared, f"{name} is not in pyproject's dependencies"
        assert deps.Requirement(requirement).specifier.contains(declared[name][2:]), (name, declared[name])
    assert not set(deps.REQUIREMENTS) & {n.lower() for n in deps.SLICER_PACKAGES}    # Slicer's own: never installed
    assert deps.requirements(deps.PHANTOM) == ["scipy>=1.9,<2"]
    with pytest.raises(ValueError, match="unknown dependencies"):
        deps.requirements(["torchvision"])


def test_versions_compared_without_importing():
    assert deps.satisfied("torch>=2.1", "2.5.1+cu121") and deps.satisfied("torch>=2.1", "2.1.0")
    assert not deps.satisfied("torch>=2.1", "2.0.1+cpu") and not deps.satisfied("torch>=2.1", None)
    assert not deps.satisfied("scipy>=1.9,<2", "2.0.0") and not deps.satisfied("torch>=2.1", "not a version")
    found = deps.missing(deps.requirements(), versions(torch="1.13.1", safetensors="0.4.5", scipy="1.14.1",
                                                       matplotlib="3.9.2"))
    assert [m.describe() for m in found] == ["torch>=2.1 (installed: 1.13.1)", "tqdm>=4.60,<5"]
    # the real environment, from the installed distributions' metadata: all met
    assert deps.missing(deps.requirements()) == []
    assert deps.installed_version("torch") and deps.installed_version("no-such-package-here") is None


def test_one_question_lists_every_package_and_the_plan():
    found = deps.missing(deps.requirements(), versions(torch="1.13.1", scipy="1.14.1"))
    with_extension = deps.install_plan(found, torch_utils=True, ltt_installed=False)
    assert with_extension.torch == "torch>=2.1" and with_extension.use_ltt and with_extension.ltt_needed
    assert with_extension.pip == ["safetensors>=0.4,<1", "tqdm>=4.60,<5", "matplotlib>=3.6,<4"]
    text = deps.question(with_extension)
    for requirement in ("torch>=2.1 (installed: 1.13.1)", *with_extension.pip, "light-the-torch"):
        assert requirement in text
    assert "scipy" not in text and "torchvision" not in text and "2 GB" in text
    plain = deps.install_plan(found, torch_utils=False)
    assert plain.torch == "torch>=2.1" and not plain.use_ltt and not plain.ltt_needed
    assert "light-the-torch" not in deps.question(plain)
    phantom = deps.install_plan(deps.missing(deps.requirements(deps.PHANTOM), versions()), torch_utils=True)
    assert phantom.torch is None and phantom.pip == ["scipy>=1.9,<2"] and not phantom.use_ltt
    assert deps.install_plan([], torch_utils=True).empty


def test_install_arguments_never_add_torchvision():
    assert deps.ltt_args("torch>=2.1", "/c.txt") == ["install", "torch>=2.1", "-c", "/c.txt"]
    assert deps.pip_args(["scipy>=1.9,<2"], "/c.txt") == ["scipy>=1.9,<2", "-c", "/c.txt"]
    assert deps.pip_args(["tqdm"]) == ["tqdm"]


def test_constraints_pin_slicers_packages():
    vtk_module = types.SimpleNamespace(vtkVersion=types.SimpleNamespace(GetVTKVersion=lambda: "9.4.2"))
    text = deps.constraints_text(version_of=versions(numpy="1.26.4", SimpleITK="2.4.0"), modules={"vtk": vtk_module})
    assert text == "numpy==1.26.4\nSimpleITK==2.4.0\nvtk==9.4.2\n"
    assert deps.constraints_text(version_of=versions(numpy="not-pep440"), modules={}) == ""
    import numpy
    import SimpleITK
    import vtk

    real = deps.constraints_text()
    assert f"numpy=={numpy.__version__}\n" in real and f"vtk=={vtk.vtkVersion.GetVTKVersion()}\n" in real
    assert f"SimpleITK=={deps.installed_version('SimpleITK')}\n" in real and SimpleITK


def pip_dry_run(constraints, *reqs):
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                           "--disable-pip-version-check", "-c", constraints, *reqs],
                          capture_output=True, text=True, timeout=300)


def test_pip_honours_the_constraints_file(tmp_path):
    """Offline: the written file pins numpy to the installed version (already satisfied), and a pin to another
    version makes pip refuse rather than replace the installed numpy."""
    path = deps.write_constraints(str(tmp_path))
    assert os.path.basename(path) == deps.CONSTRAINTS_FILE and open(path).read() == deps.constraints_text()
    ok = pip_dry_run(path, "numpy")
    assert ok.returncode == 0, ok.stderr
    assert "already satisfied" in ok.stdout.lower()
    other = deps.write_constraints(str(tmp_path / "other"), "numpy==1.0.0\n")
    refused = pip_dry_run(other, "numpy")
    assert refused.returncode != 0 and "numpy==1.0.0" in (refused.stdout + refused.stderr)


def test_torch_is_checked_in_a_separate_process():
    """check_torch imports torch in a child process; this process (a fresh one) never imports it."""
    code = ("import sys; from LiverTumorLRPLib import slicer_deps as d; d.missing(d.requirements()); "
            "info = d.check_torch(sys.executable); "
            "print(info['version'], 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    version, imported = p.stdout.split()
    assert deps.satisfied("torch>=2.1", version) and imported == "False"
    with pytest.raises(ValueError, match="needs torch>=99"):
        deps.check_torch(sys.executable, "torch>=99")


def test_torch_check_reports_the_last_error_line():
    def broken(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "Traceback ...\nOSError: [WinError 126] c10.dll not found\n")

    with pytest.raises(RuntimeError, match=r"PyTorch does not import: OSError: \[WinError 126\] c10.dll"):
        deps.check_torch("PythonSlicer", run=broken)

    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args, 1)

    with pytest.raises(RuntimeError, match="more than 5 s"):
        deps.check_torch("PythonSlicer", timeout=5, run=slow)

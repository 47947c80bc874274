"""Packaging: the Slicer extension's CMake and the pip package take every file of the library (all sub-packages,
its resources, the bundled model and its card, nothing cached), and the extension's metadata and Extensions
Index entry are in the forms the index checks (Slicer/ExtensionsIndex scripts/check_description_files.py)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRP.py")
MODULE_DIR = os.path.join(ROOT, "LiverTumorLRP")
MODULE_CMAKE = os.path.join(ROOT, "LiverTumorLRP", "CMakeLists.txt")
ENTRY = os.path.join(ROOT, "ExtensionsIndex", "LiverTumorLRP.json")
LIB_DIR = "lib/Slicer/qt-scripted-modules"     # stands for Slicer_QTSCRIPTEDMODULES_LIB_DIR

# slicerMacroBuildScriptedModule as Slicer 5.8 to 5.13 define it (CMake/SlicerMacroBuildScriptedModule.cmake:
# its checks, then CTK's ctkMacroCompilePythonScript: a script given by an absolute path lands at its path
# relative to the current build folder, a relative one at its path relative to the current source folder, a
# resource at its path as given, all in <build>/<qt-scripted-modules>, which is installed as a whole); only
# the byte compiling and the generic tests are left out.
STUB = r"""
cmake_minimum_required(VERSION 3.20.6...3.22.6)
project(LiverTumorLRPPackagingCheck NONE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR @LIB_DIR@)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR @LIB_DIR@)
set(BUILD_TESTING OFF)
macro(slicer_add_python_unittest)
endmacro()
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS OR NOT MY_NAME)
    message(FATAL_ERROR "bad arguments: ${MY_UNPARSED_ARGUMENTS}")
  endif()
  set(dest ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
  foreach(file ${MY_SCRIPTS})
    get_filename_component(ext ${file} EXT)
    if(NOT "${ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    if(IS_ABSOLUTE ${file})
      set(src ${file})
      file(RELATIVE_PATH tgt ${CMAKE_CURRENT_BINARY_DIR} ${file})
    else()
      set(src ${CMAKE_CURRENT_SOURCE_DIR}/${file})
      set(tgt ${file})
    endif()
    if(NOT EXISTS ${src})
      message(FATAL_ERROR "SCRIPTS: nonexistent file '${file}'")
    endif()
    configure_file(${src} ${dest}/${tgt} COPYONLY)
  endforeach()
  foreach(file ${MY_RESOURCES})
    if(IS_ABSOLUTE ${file})
      message(FATAL_ERROR "RESOURCES: '${file}' is absolute (CTK would copy it to <dest>/<absolute path>)")
    endif()
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${file})
      message(FATAL_ERROR "RESOURCES: nonexistent file '${file}'")
    endif()
    configure_file(${CMAKE_CURRENT_SOURCE_DIR}/${file} ${dest}/${file} COPYONLY)
  endforeach()
  install(DIRECTORY "${dest}/" DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endfunction()
add_subdirectory(@MODULE_DIR@ LiverTumorLRP)
"""


def _skip(parts) -> bool:
    return any(p == "__pycache__" or p.startswith(".") for p in parts) or parts[-1].endswith((".pyc", ".pyo"))


def tree_files(*folders) -> set:
    """Every file under the given folders of the repository (relative, '/'-separated), no caches or dot files."""
    found = set()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/")
                if not _skip(rel.split("/")):
                    found.add(rel)
    return found


def module_folder_files() -> set:
    """Every file of the module's folder but its CMakeLists.txt, relative to that folder: the module file, its helper
    package (LiverTumorLRPModuleLib/) and its Resources/ (icon, .ui)."""
    return {os.path.relpath(p, "LiverTumorLRP") for p in tree_files("LiverTumorLRP")} - {"CMakeLists.txt"}


def expected_package() -> set:
    """What the Slicer package must hold beside the module: every file of the module's folder at its path there
    (the module, its helper package, its Resources/), every file of the library and of the root Resources/
    (bundled model, model card) at its path in the repository."""
    return module_folder_files() | tree_files("LiverTumorLRPLib", "Resources")


def cmake_install(tmp_path, module_dir) -> set:
    """Configure the module's CMakeLists.txt (in module_dir) with the stand-ins above, install it, and list the
    files installed in qt-scripted-modules (relative, '/'-separated)."""
    cmake = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake not found: it comes with the test extras (pip install -e '.[test]')")
    src, build, prefix = tmp_path / "src", tmp_path / "build", tmp_path / "install"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(STUB.replace("@LIB_DIR@", LIB_DIR)
                                        .replace("@MODULE_DIR@", str(module_dir).replace(os.sep, "/")))
    for args in ([cmake, "-S", str(src), "-B", str(build)], [cmake, "--install", str(build), "--prefix", str(prefix)]):
        run = subprocess.run(args, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    top = prefix / LIB_DIR
    return {os.path.relpath(os.path.join(d, f), top).replace(os.sep, "/") for d, _, fs in os.walk(top) for f in fs}


def test_cmake_packages_every_file_of_the_library_and_its_resources(tmp_path):
    expected = expected_package()
    # what must be among them (a check that the walk itself found the tree)
    assert {"LiverTumorLRPLib/__init__.py", "LiverTumorLRPLib/mrml/__init__.py", "LiverTumorLRPLib/web/__init__.py",
            "Resources/Models/MODEL_CARD.md", "Resources/Icons/LiverTumorLRP.png",
            "Resources/UI/LiverTumorLRP.ui", "LiverTumorLRP.py", "LiverTumorLRPModuleLib/__init__.py",
            "LiverTumorLRPModuleLib/selftest.py"} <= expected
    packages = {os.path.dirname(p) for p in expected if p.endswith("/__init__.py")}
    assert {p.replace(".", "/") for p in subpackages()} | {"LiverTumorLRPModuleLib"} == packages   # every package
    installed = cmake_install(tmp_path, os.path.join(ROOT, "LiverTumorLRP"))
    assert installed == expected, (f"not packaged: {sorted(expected - installed)}; "
                                   f"not in the tree: {sorted(installed - expected)}")


def test_the_cmake_check_catches_a_left_out_file(tmp_path):
    """The module's CMake of before the glob (an explicit list: top level and mrml/ only, no web/, no model card)
    fails the comparison; so would any list that misses a new file."""
    module_dir = tmp_path / "LiverTumorLRP"
    shutil.copytree(os.path.join(ROOT, "LiverTumorLRP"), module_dir, ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(os.path.join(ROOT, "LiverTumorLRPLib"), tmp_path / "LiverTumorLRPLib")
    os.symlink(os.path.join(ROOT, "Resources"), tmp_path / "Resources")
    listed = sorted(p for p in tree_files("LiverTumorLRPLib") if p.endswith(".py") and "/web/" not in p)
    (module_dir / "CMakeLists.txt").write_text(OLD_CMAKE.replace("@LIST@", "\n  ".join(listed)))
    installed = cmake_install(tmp_path / "check", module_dir)
    missing = expected_package() - installed
    assert "LiverTumorLRPLib/web/__init__.py" in missing and "Resources/Models/MODEL_CARD.md" in missing


def test_the_cmake_check_catches_a_left_out_module_file(tmp_path):
    """The module's CMake with the module file alone in SCRIPTS (as it was before the helper package) fails the
    comparison: every Python file of the module's folder must be packaged."""
    module_dir = tmp_path / "LiverTumorLRP"
    shutil.copytree(MODULE_DIR, module_dir, ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(os.path.join(ROOT, "LiverTumorLRPLib"), tmp_path / "LiverTumorLRPLib")
    os.symlink(os.path.join(ROOT, "Resources"), tmp_path / "Resources")
    text = (module_dir / "CMakeLists.txt").read_text()
    glob_block = re.compile(r"file\(GLOB_RECURSE MODULE_PYTHON_SCRIPTS .*?\n  \)\n", re.S)
    assert len(glob_block.findall(text)) == 1, "the module's CMake no longer globs its Python files as expected"
    (module_dir / "CMakeLists.txt").write_text(glob_block.sub("set(MODULE_PYTHON_SCRIPTS ${MODULE_NAME}.py)\n", text))
    missing = expected_package() - cmake_install(tmp_path / "check", module_dir)
    helpers = {p for p in module_folder_files() if p.startswith("LiverTumorLRPModuleLib/") and p.endswith(".py")}
    assert helpers and missing == helpers


def test_the_module_file_is_the_only_python_file_at_the_top_of_its_folder():
    """Slicer loads every .py file at the top of a module folder (qt-scripted-modules/) as a scripted module of its
    own; the module's other Python files belong in its helper package."""
    top = sorted(n for n in os.listdir(MODULE_DIR) if n.endswith(".py"))
    assert top == ["LiverTumorLRP.py"], top
    assert os.path.isfile(os.path.join(MODULE_DIR, "LiverTumorLRPModuleLib", "__init__.py"))


# The module's CMake of issue 25 (abridged): every .py file listed, the model files copied by hand.
OLD_CMAKE = r"""
set(MODULE_NAME LiverTumorLRP)
set(MODULE_LIB_SCRIPTS
  @LIST@
  )
set(MODULE_PYTHON_SCRIPTS ${MODULE_NAME}.py)
foreach(_script ${MODULE_LIB_SCRIPTS})
  configure_file(${CMAKE_CURRENT_SOURCE_DIR}/../${_script} ${CMAKE_CURRENT_BINARY_DIR}/${_script} COPYONLY)
  list(APPEND MODULE_PYTHON_SCRIPTS ${CMAKE_CURRENT_BINARY_DIR}/${_script})
endforeach()
set(MODULE_PYTHON_RESOURCES Resources/Icons/${MODULE_NAME}.png Resources/UI/${MODULE_NAME}.ui)
slicerMacroBuildScriptedModule(NAME ${MODULE_NAME} SCRIPTS ${MODULE_PYTHON_SCRIPTS}
  RESOURCES ${MODULE_PYTHON_RESOURCES} WITH_GENERIC_TESTS)
foreach(_file liver_tumor_unet.safetensors liver_tumor_unet.json)
  set(_file ${CMAKE_CURRENT_SOURCE_DIR}/../Resources/Models/${_file})
  if(EXISTS ${_file})
    file(COPY ${_file} DESTINATION ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/Resources/Models)
  endif()
endforeach()
"""


def test_module_cmake_follows_slicer_conventions():
    text = open(MODULE_CMAKE).read()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert "GLOB_RECURSE" in text and "__pycache__" in text


def subpackages() -> set:
    """The library's packages on disk: every folder under LiverTumorLRPLib that holds Python files."""
    found = set()
    for p in tree_files("LiverTumorLRPLib"):
        if p.endswith(".py"):
            found.add(os.path.dirname(p).replace("/", "."))
    return found


def setuptools_files(monkeypatch) -> tuple:
    """The packages and the files the pip package takes, as setuptools' build_py computes them from pyproject.toml
    (modules and package data; without building anything)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    dist.include_package_data = False        # package data from [tool.setuptools.package-data] alone (no manifest)
    dist.script_name = "setup.py"
    build_py = dist.get_command_obj("build_py")
    build_py.ensure_finalized()
    files = {os.path.normpath(src).replace(os.sep, "/") for _, _, src in build_py.find_all_modules()}
    for _, src_dir, _, names in build_py.data_files:
        files |= {os.path.normpath(os.path.join(src_dir, n)).replace(os.sep, "/") for n in names}
    return set(dist.packages), {f for f in files if not _skip(f.split("/"))}


def test_pyproject_packages_every_subpackage_and_file(monkeypatch):
    packages, files = setuptools_files(monkeypatch)
    on_disk = subpackages()
    assert {"LiverTumorLRPLib", "LiverTumorLRPLib.mrml", "LiverTumorLRPLib.web"} <= on_disk
    assert on_disk <= packages, f"no __init__.py (not found as packages): {sorted(on_disk - packages)}"
    tree = tree_files("LiverTumorLRPLib")
    assert files == tree, f"not packaged: {sorted(tree - files)}; not in the tree: {sorted(files - tree)}"


# ---------------------------------------------------------------------------------------------------------------
# Extension metadata (top-level CMakeLists.txt) and the Extensions Index entry


def cmake_settings() -> dict:
    text = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    return dict(re.findall(r'^set\((EXTENSION_\w+) "([^"]*)"\)', text, re.M))


def test_extension_cmake_and_icons():
    text = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)",
                "include(${Slicer_USE_FILE})", "add_subdirectory(LiverTumorLRP)",
                "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert key in text, key
    import matplotlib.image

    assert matplotlib.image.imread(os.path.join(ROOT, "LiverTumorLRP.png")).shape[:2] == (128, 128)
    assert os.path.exists(os.path.join(ROOT, "LiverTumorLRP", "Resources", "Icons", "LiverTumorLRP.png"))


def test_extension_metadata_conventions():
    text = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    version = re.search(r"cmake_minimum_required\(VERSION (\d+\.\d+\.\d+)", text).group(1)
    assert tuple(map(int, version.split("."))) >= (3, 20, 6)        # Slicer 5.10's SlicerConfig enforces it
    settings = cmake_settings()
    urls = {k: v for k, v in settings.items() if k.endswith(("URL", "URLS"))}
    assert set(urls) == {"EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"}
    homepage = settings["EXTENSION_HOMEPAGE"]
    module = "\n".join(open(os.path.join(ROOT, p)).read() for p in sorted(tree_files("LiverTumorLRP"))
                       if p.endswith(".py"))   # the module file and its helper package
    assert homepage in open(MODULE).read()
    assert homepage.startswith("https://") and homepage in module    # helpText links the same README
    assert "placeholder" not in module.lower() and 'href="https://github.com/"' not in module
    if "PyTorchUtils" in module:
        assert "PyTorch" in settings["EXTENSION_DEPENDS"].split()
    # the index's form: "Name (Organization)", comma-separated (an organization may hold commas)
    item = r"[^(),]+ \([^()]+\)"
    assert re.fullmatch(rf"{item}(, {item})*", settings["EXTENSION_CONTRIBUTORS"]), settings["EXTENSION_CONTRIBUTORS"]


# Slicer/ExtensionsIndex schemas/slicer-extension-catalog-entry-schema-v1.0.2.json (what the index's lint checks
# every entry against): required keys, the only keys allowed (additionalProperties: false) and their types.
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.2.json#")
REQUIRED = {"$schema", "category", "scm_url"}
TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
         "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
         "tier": int}


def test_extensions_index_entry_follows_the_schema():
    raw = open(ENTRY, "rb").read()
    assert b"\r" not in raw and raw.endswith(b"\n")                  # LF only, as the index's check asks
    entry = json.loads(raw)
    assert entry["$schema"] == SCHEMA_URL
    assert REQUIRED <= set(entry) <= set(TYPES), sorted(set(entry) ^ set(TYPES))
    for key, value in entry.items():
        assert isinstance(value, TYPES[key]) and not (TYPES[key] is int and isinstance(value, bool)), key
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert entry.get("scm_type", "git") in ("git", "local") and 1 <= entry.get("tier", 1) <= 5
    # the file name is the extension name: the CMake project's, not starting with "Slicer"
    name = os.path.splitext(os.path.basename(ENTRY))[0]
    project = re.search(r"^project\((\w+)", open(os.path.join(ROOT, "CMakeLists.txt")).read(), re.M).group(1)
    assert name == project and not name.lower().startswith("slicer")


def test_extensions_index_entry_matches_the_extension():
    entry = json.load(open(ENTRY))
    settings = cmake_settings()
    assert entry["category"] == settings["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == settings["EXTENSION_DEPENDS"].split()
    assert "PyTorch" in entry["build_dependencies"]
    # a GitHub repository whose name starts with "Slicer" (the index's check), the extension's homepage
    m = re.fullmatch(r"https://github\.com/([\w.-]+)/(Slicer[\w.-]*?)(\.git)?", entry["scm_url"])
    assert m, entry["scm_url"]
    owner, repo = m.group(1), m.group(2)
    assert settings["EXTENSION_HOMEPAGE"].startswith(f"https://github.com/{owner}/{repo}")
    # icon and screenshots: raw files of that repository at the entry's revision, PNG files in this tree
    raw = f"https://raw.githubusercontent.com/{owner}/{repo}/{entry['scm_revision']}/"
    urls = [settings["EXTENSION_ICONURL"], *settings["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(raw), url
        path = os.path.join(ROOT, *url[len(raw):].split("/"))
        assert os.path.isfile(path), url
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", url


def test_license_is_the_apache_2_text():
    text = open(os.path.join(ROOT, "LICENSE.txt")).read()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)
    assert re.search(r'^license-files = \["LICENSE.txt"\]$', pyproject, re.M)

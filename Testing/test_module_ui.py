"""Static checks of the Slicer module: .ui widgets and bindings, module classes, CMake lists (no Qt needed)."""
import ast
import glob
import os
import re
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRP.py")
UI = os.path.join(ROOT, "LiverTumorLRP", "Resources", "UI", "LiverTumorLRP.ui")
CMAKE = os.path.join(ROOT, "LiverTumorLRP", "CMakeLists.txt")
WIDGET_CLASS = re.compile(r"^(Q[A-Z]\w+|ctk[A-Z]\w+|qMRML\w+|qSlicer\w+)$")


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI).getroot()


@pytest.fixture(scope="module")
def tree():
    with open(MODULE) as f:
        return ast.parse(f.read())


def widgets(ui):
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def parameter_names(ui):
    out = {}
    for w in ui.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = (w.get("name"), w.get("class"))
    return out


def test_ui_root_is_qmrmlwidget_with_collapsible_sections(ui):
    root = ui.find("widget")
    assert root.get("class") == "qMRMLWidget"
    assert sum(c == "ctkCollapsibleButton" for c in widgets(ui).values()) >= 4


def test_every_ui_attribute_used_exists(ui, tree):
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used, "the module uses no self.ui.<name>"
    known = widgets(ui)
    missing = sorted(used - set(known))
    assert not missing, f"self.ui names not in the .ui: {missing}"
    for name in used:
        assert WIDGET_CLASS.match(known[name]), f"{name}: {known[name]} is not a Slicer/CTK/Qt widget class"


def parameter_fields(tree):
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
    raise AssertionError("no @parameterNodeWrapper class")


def test_every_parameter_is_bound(ui, tree):
    fields = parameter_fields(tree)
    assert len(fields) >= 13
    bound = parameter_names(ui)
    assert sorted(set(fields) - set(bound)) == []
    assert sorted(set(bound) - set(fields)) == []  # no stale bindings


def test_bound_widget_types_fit_the_fields(ui, tree):
    source = ast.get_source_segment(open(MODULE).read(), next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverTumorLRPParameterNode"))
    bound = parameter_names(ui)
    for field, (name, cls) in bound.items():
        annotation = re.search(rf"^\s+{field}: (.+?)(?: =|$)", source, re.M).group(1)
        if "Node" in annotation:
            assert cls == "qMRMLNodeComboBox", field
        elif annotation == "str":
            assert cls == "QLineEdit", field
        elif "int" in annotation:
            assert cls == "QSpinBox", field
        else:  # enums and Choice strings
            assert cls == "QComboBox", field


def test_node_selectors_follow_the_scene(ui):
    combos = {n for n, c in widgets(ui).items() if c in ("qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget")}
    connected = {c.findtext("receiver") for c in ui.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert len(combos) >= 8
    assert combos <= connected


def test_module_defines_the_four_classes(tree):
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["LiverTumorLRP"] == ["ScriptedLoadableModule"]
    assert classes["LiverTumorLRPWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["LiverTumorLRPLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["LiverTumorLRPTest"] == ["ScriptedLoadableModuleTest"]
    tests = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert len(tests) >= 2


def test_module_imports_no_torch_at_top_level(tree):
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not {"torch", "LiverTumorLRPLib.slicer_logic", "LiverTumorLRPLib.explain"} & names


def test_preset_names_match_the_library(tree):
    from LiverTumorLRPLib.presets import PRESETS

    value = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "PRESET_NAMES" for t in n.targets))
    assert ast.literal_eval(value) == list(PRESETS)


def test_cmake_lists_every_library_file():
    text = open(CMAKE).read()
    listed = sorted(set(re.findall(r"LiverTumorLRPLib/[\w/]+\.py", text)))
    on_disk = sorted(os.path.relpath(p, ROOT).replace(os.sep, "/")
                     for sub in ("", "mrml") for p in glob.glob(os.path.join(ROOT, "LiverTumorLRPLib", sub, "*.py")))
    assert listed == on_disk
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert "Resources/UI/${MODULE_NAME}.ui" in text and "Resources/Icons/${MODULE_NAME}.png" in text


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
    urls = dict(re.findall(r'set\((EXTENSION_\w+URLS?) "([^"]+)"\)', text))
    assert set(urls) == {"EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"}
    for url in urls.values():                                       # raw.githubusercontent.com/<o>/<r>/main/<path>
        path = url.split("/main/", 1)[1]
        assert os.path.isfile(os.path.join(ROOT, path)), url
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', text).group(1)
    module = open(MODULE).read()
    assert homepage.startswith("https://") and homepage in module    # helpText links the same README
    assert "placeholder" not in module.lower() and 'href="https://github.com/"' not in module
    if "PyTorchUtils" in module:
        assert re.search(r'set\(EXTENSION_DEPENDS "[^"]*PyTorch[^"]*"\)', text)


def test_pyproject_packages_every_subpackage():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    listed = set(re.findall(r'"(LiverTumorLRPLib[\w.]*)"', re.search(r"^packages = \[(.*)\]", text, re.M).group(1)))
    on_disk = {os.path.relpath(os.path.dirname(p), ROOT).replace(os.sep, ".")
               for p in glob.glob(os.path.join(ROOT, "LiverTumorLRPLib", "**", "__init__.py"), recursive=True)}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"

"""Static checks of the Slicer module: .ui widgets and bindings, module classes (no Qt needed; packaging: see
test_packaging.py)."""
import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRP.py")
UI = os.path.join(ROOT, "LiverTumorLRP", "Resources", "UI", "LiverTumorLRP.ui")
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

"""Static checks of the Slicer module: .ui widgets and bindings, module classes (no Qt needed; packaging: see
test_packaging.py).  The module is LiverTumorLRP/LiverTumorLRP.py and its helper package LiverTumorLRPModuleLib/
(dependencies, job folders, sample data, self-test)."""
import ast
import glob
import os
import re
import sys
import typing
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRP.py")
HELPERS = os.path.join(ROOT, "LiverTumorLRP", "LiverTumorLRPModuleLib")
UI = os.path.join(ROOT, "LiverTumorLRP", "Resources", "UI", "LiverTumorLRP.ui")
WIDGET_CLASS = re.compile(r"^(Q[A-Z]\w+|ctk[A-Z]\w+|qMRML\w+|qSlicer\w+)$")


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI).getroot()


@pytest.fixture(scope="module")
def tree():
    with open(MODULE) as f:
        return ast.parse(f.read())


def parse(path):
    with open(path) as f:
        return ast.parse(f.read(), filename=path)


@pytest.fixture(scope="module")
def helpers():
    """The helper package's modules: name (``jobs``, ``selftest`` ...) -> syntax tree."""
    files = sorted(glob.glob(os.path.join(HELPERS, "*.py")))
    return {os.path.splitext(os.path.basename(p))[0]: parse(p) for p in files}


@pytest.fixture(scope="module")
def module_code(tree, helpers):
    """The module file and its helper package as one syntax tree (for checks of what any of them does)."""
    return ast.Module([*tree.body, *(n for h in helpers.values() for n in h.body)], [])


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


def test_every_ui_attribute_used_exists(ui, module_code):
    used = {n.attr for n in ast.walk(module_code) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
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


def classes_of(tree):
    return {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}


def test_module_defines_the_four_classes(tree, helpers):
    """Module, widget and logic in the module file; the test class in the helper package, imported into the module
    (Slicer's ScriptedLoadableModule.runTest and slicer.testing.runUnitTest look for <Module>Test there)."""
    classes = classes_of(tree)
    assert classes["LiverTumorLRP"] == ["ScriptedLoadableModule"]
    assert classes["LiverTumorLRPWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["LiverTumorLRPLogic"] == ["ScriptedLoadableModuleLogic", "DependencyInstaller"]
    assert classes_of(helpers["dependencies"])["DependencyInstaller"] == []
    assert classes_of(helpers["selftest"])["LiverTumorLRPTest"] == ["ScriptedLoadableModuleTest"]
    imported = {(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("LiverTumorLRPModuleLib.selftest", "LiverTumorLRPTest") in imported
    tests = [n.name for n in ast.walk(helpers["selftest"]) if isinstance(n, ast.FunctionDef)
             and n.name.startswith("test_")]
    assert len(tests) >= 2


def test_helpers_import_the_module_file_only_when_they_run(helpers):
    """No import cycle: the module file imports the helper package, which imports the module (for its logic)
    only inside functions, after the module has loaded."""
    for name, helper in helpers.items():
        top = [n for n in helper.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert "LiverTumorLRP" not in names, name


def test_module_imports_no_torch_at_top_level(tree, helpers):
    for code in (tree, *helpers.values()):
        top = [n for n in code.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert not {"torch", "LiverTumorLRPLib.slicer_logic", "LiverTumorLRPLib.explain"} & names


def test_preset_names_match_the_library(tree):
    from LiverTumorLRPLib.lrp.presets import PRESETS

    value = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "PRESET_NAMES" for t in n.targets))
    assert ast.literal_eval(value) == list(PRESETS)


def test_method_names_match_the_library(tree):
    from LiverTumorLRPLib.analysis import DEFAULT_METHOD, METHODS

    assert module_constants(tree, "METHOD_NAMES")["METHOD_NAMES"] == list(METHODS)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverTumorLRPParameterNode")
    method = next(a for a in node.body if isinstance(a, ast.AnnAssign) and a.target.id == "method")
    assert ast.literal_eval(method.value) == DEFAULT_METHOD


# ---- conventions of Slicer >= 5.3 modules, dependencies, Reload, the phantom sample -----------------------------
def module_function(tree, name):
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def module_constants(tree, *names):
    """Top-level literal constants of the module (also ``A, B = 1, 2``)."""
    out = {}
    for n in tree.body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1:
            target = n.targets[0]
            pairs = zip(target.elts, n.value.elts) if isinstance(target, ast.Tuple) else [(target, n.value)]
            out.update({t.id: ast.literal_eval(v) for t, v in pairs if isinstance(t, ast.Name) and t.id in names})
    assert sorted(out) == sorted(names)
    return out


def exec_functions(tree, names, namespace):
    """The module's top-level functions ``names``, run from its source (the rest of it needs Qt)."""
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert sorted(f.name for f in funcs) == sorted(names)
    exec(compile(ast.Module(funcs, []), "<module functions>", "exec"), namespace)
    return namespace


def test_module_texts_are_marked_for_translation(tree):
    """title, category, help and acknowledgement through _() / translate() as Slicer >= 5.3 modules do, with a
    fallback for older Slicer."""
    fallback = next(n for n in tree.body if isinstance(n, ast.Try) and "slicer.i18n" in ast.unparse(n))
    assert [h.type.id for h in fallback.handlers] == ["ImportError"]
    assert {f.name for f in fallback.handlers[0].body if isinstance(f, ast.FunctionDef)} == {"_", "translate"}
    init = next(f for f in next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverTumorLRP").body
                if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    values = {ast.unparse(a.targets[0]).split(".")[-1]: ast.unparse(a.value) for a in init.body
              if isinstance(a, ast.Assign)}
    assert values["title"] == "_('Liver Tumor LRP')"
    assert values["categories"] == "[translate('qSlicerAbstractCoreModule', 'Segmentation')]"
    assert values["helpText"].startswith("_('\\nSegments") and values["helpText"].endswith(".format(homepage=HOMEPAGE)")
    assert values["acknowledgementText"].startswith("_(")


def test_dependencies_never_import_torch_in_slicer(module_code):
    """One question (ours), no PyTorchUtils.installTorch (its own dialog, torchvision, torch imported in Slicer's
    process); on Slicer >= 5.11 pip's own dialogs are not doubled by a wait cursor or a second error."""
    tree = module_code
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and id(n) not in docstrings]
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "installTorch" not in names and not any("torchvision" in s for s in strings)
    assert not {n for n in imported if n.split(".")[0] == "torch"}
    ensure = module_function(tree, "ensureDependencies")
    calls = [ast.unparse(n.func) for n in ast.walk(ensure) if isinstance(n, ast.Call)]
    assert calls.count("slicer.util.confirmOkCancelDisplay") == 1 and "slicer_deps.question" in calls
    assert "getattr(exc, 'shown', False)" in ast.unparse(ensure)
    pip = module_function(tree, "_pipInstall")
    waits = [n for n in ast.walk(pip) if isinstance(n, ast.With) and "WaitCursor" in ast.unparse(n.items[0])]
    new_api = next(n for n in ast.walk(pip) if isinstance(n, ast.Call) and ast.unparse(n.func) == "packaging.pip_install")
    assert waits and not any(new_api in list(ast.walk(w)) for w in waits)
    assert "constraints=constraints" in ast.unparse(new_api)
    for name in ("segmentJob", "explainJob", "sequenceRelevanceJob"):
        assert "temp_dir=jobFolder()" in ast.unparse(module_function(tree, name))
    poll = ast.unparse(module_function(tree, "onPoll"))
    assert "slicer.util.WaitCursor()" in poll and "self.logic.showResult(job.result)" in poll


def test_reload_drops_every_library_module(tree):
    """Reload drops the library's modules and the module's helper package, so the reloaded module file imports
    each anew after what it imports (Slicer's reloadScriptedModule runs the module file again, nothing else)."""
    ns = exec_functions(tree, ["_forgetLibrary"], {"sys": sys, "Optional": typing.Optional})
    reload = ast.unparse(module_function(tree, "onReload"))
    assert reload.index("_forgetLibrary()") < reload.index("super().onReload()")
    packages = ("LiverTumorLRPLib", "LiverTumorLRPModuleLib")
    sys.path.insert(0, os.path.dirname(HELPERS))
    import LiverTumorLRPLib.slicer_deps as old_deps
    import LiverTumorLRPLib.worker  # noqa: F401
    import LiverTumorLRPModuleLib as old_helpers

    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in packages}
    fake = {"LiverTumorLRPLib": 1, "LiverTumorLRPLib.mrml.nodes": 2, "LiverTumorLRPLibOther": 3, "numpy": 4,
            "LiverTumorLRPModuleLib": 5, "LiverTumorLRPModuleLib.selftest": 6, "LiverTumorLRP": 7}
    assert sorted(ns["_forgetLibrary"](modules=fake)) == ["LiverTumorLRPLib", "LiverTumorLRPLib.mrml.nodes",
                                                          "LiverTumorLRPModuleLib", "LiverTumorLRPModuleLib.selftest"]
    assert fake == {"LiverTumorLRPLibOther": 3, "numpy": 4, "LiverTumorLRP": 7}
    try:
        dropped = ns["_forgetLibrary"]()
        assert {"LiverTumorLRPLib", "LiverTumorLRPLib.slicer_deps", "LiverTumorLRPLib.worker",
                "LiverTumorLRPModuleLib"} <= set(dropped)
        assert not [k for k in sys.modules if k.split(".")[0] in packages]
        import LiverTumorLRPLib.slicer_deps as new_deps

        assert new_deps is not old_deps and new_deps.Missing is not old_deps.Missing
        import LiverTumorLRPLib.worker as new_worker

        assert new_worker.WorkerProcess is not saved["LiverTumorLRPLib.worker"].WorkerProcess     # imported anew
        import LiverTumorLRPModuleLib as new_helpers

        assert new_helpers is not old_helpers          # imported anew
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in packages]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path.remove(os.path.dirname(HELPERS))


def test_phantom_sample_files_for_sample_data(helpers, tmp_path):
    """SampleData.downloadSample's path (Slicer >= 5.10): the phantom:// URIs become file:// URLs of files made on
    request, which load into MRML as Slicer loads them (six named volumes, the reference as a segmentation)."""
    import pathlib

    import slicer

    from LiverTumorLRPLib import slicer_logic as sl
    from LiverTumorLRPLib.mrml.inputs import PHANTOM_NAMES
    from LiverTumorLRPLib.sequences import SEQUENCE_KEYS

    tree = helpers["sampledata"]
    consts = module_constants(tree, "PHANTOM_SAMPLE", "PHANTOM_URI", "PHANTOM_SHAPE", "PHANTOM_SPACING")
    ns = exec_functions(tree, ["phantomSampleFiles", "phantomSampleUrl"],
                        {"os": os, "tempfile": None, "Optional": typing.Optional, "SEQUENCE_KEYS": SEQUENCE_KEYS,
                         "jobFolder": lambda: None, **consts})
    files = ns["phantomSampleFiles"](str(tmp_path), shape=(16, 48, 48))
    assert len(files) == 7 and all(os.path.isfile(path) for path, _, _ in files.values())
    names = {node for _, node, kind in files.values() if kind == "VolumeFile"}
    assert names == {f"Phantom {PHANTOM_NAMES[k]}" for k in SEQUENCE_KEYS}
    stamps = {p: os.path.getmtime(p) for p, _, _ in files.values()}
    for name, (path, _, _) in files.items():
        url = ns["phantomSampleUrl"](consts["PHANTOM_URI"] + name, folder=str(tmp_path))
        assert url == pathlib.Path(path).resolve().as_uri()
    assert stamps == {p: os.path.getmtime(p) for p in stamps}                         # made once
    other = "https://github.com/Slicer/SlicerTestingData/releases/download/x"
    assert ns["phantomSampleUrl"](other, folder=str(tmp_path)) == other
    declined = consts["PHANTOM_URI"] + next(iter(files))
    assert ns["phantomSampleUrl"](declined, folder=str(tmp_path), ensure=lambda: False) == declined
    with pytest.raises(ValueError, match="unknown phantom sample file"):
        ns["phantomSampleUrl"](consts["PHANTOM_URI"] + "nothing.nrrd", folder=str(tmp_path))
    with sl.headless_scene() as hs:
        for path, node, kind in files.values():
            if kind == "VolumeFile":
                hs.logics["volumes"].AddArchetypeVolume(path, node)
            else:
                seg = hs.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node)
                storage = hs.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
                storage.SetFileName(path)
                assert storage.ReadData(seg) and seg.GetSegmentation().GetNumberOfSegments() == 1
        assert sorted(sl.assign_sequences()) == sorted(SEQUENCE_KEYS)              # assigned by their names
        assert slicer.util.arrayFromVolume(hs.scene.GetFirstNodeByName("Phantom T2")).shape == (16, 48, 48)

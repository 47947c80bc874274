"""The repository's layout kept honest (issue 24, parts 4 and 5), read from the source (nothing imported):

1. no Python module over 600 lines and 2. no function over 80 lines in LiverTumorLRPLib/, LiverTumorLRP/ (the Slicer
   module and its helper package), scripts/ and bench/;
3. no import cycle among LiverTumorLRPLib's modules: imports at module level and inside functions, relative and
   absolute, but not those under ``if TYPE_CHECKING:`` (never run) or inside a module-level ``def __getattr__``
   (deprecation shims, run when an old name is used); a module depends on the module it names (``from .a import
   x`` on ``a``; ``from . import b`` on the submodule ``b`` when there is one, else on the package), not on the
   packages above it (Python runs their ``__init__`` first, which is no cycle of the code's own making);
4. no private name (``_name``, not ``__dunder__``) imported from another LiverTumorLRPLib module, by the library or by
   the module, scripts and benchmarks (a package's private submodule, ``from . import _sub``, stays within its
   package);
5. no ``sys.path`` manipulation in bench/ and scripts/ (they run with the installed package).
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = "LiverTumorLRPLib"
FOLDERS = (LIBRARY, "LiverTumorLRP", "scripts", "bench")
TOOL_FOLDERS = ("scripts", "bench")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
SYS_PATH_METHODS = {"insert", "append", "extend", "remove", "pop", "clear", "__setitem__", "__delitem__"}


def python_files(root, *folders) -> list:
    """The .py files under ``folders`` of ``root`` (relative, '/'-separated), no caches or dot folders."""
    found = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            found += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                      for f in sorted(filenames) if f.endswith(".py")]
    return found


def parse(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return ast.parse(f.read(), filename=rel)


# ---- 1 and 2: sizes ------------------------------------------------------------------------------------------------
def line_count(root, rel) -> int:
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return len(f.read().splitlines())


def long_functions(tree, limit=MAX_FUNCTION_LINES) -> list:
    """(qualified name, first line, lines) of each function longer than ``limit`` lines (from ``def`` to its last
    line; a nested function counts in its own right and in the function around it)."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((name, child.lineno, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


# ---- 3 and 4: the library's imports --------------------------------------------------------------------------------
def module_name(rel) -> str:
    """``LiverTumorLRPLib/lrp/core.py`` -> ``LiverTumorLRPLib.lrp.core``; a package's ``__init__.py`` -> the package."""
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(test) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(tree) -> list:
    """The Import/ImportFrom nodes that run: everywhere but under ``if TYPE_CHECKING:`` and in a module-level
    ``def __getattr__``."""
    found = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            elif isinstance(child, ast.If) and _type_checking(child.test):
                for other in child.orelse:
                    visit(ast.Module([other], []), top)
            elif top and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child.name == "__getattr__":
                continue
            else:   # a block at module level (if, try, with) is still at module level
                visit(child, top and isinstance(child, (ast.If, ast.Try, ast.With)))

    visit(tree, True)
    return found


def imported(node, importer, is_package, modules) -> list:
    """What an import statement of module ``importer`` takes from the library: (module, name or None) pairs; the
    module is the one the statement makes Python run (a submodule where the name is one), name the name taken
    from it (None for a module imported as such)."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules),
                          None)
            if target is not None:
                out.append((target, None))
        return out
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        base_parts = package[:len(package) - node.level + 1]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            out.append((f"{base}.{alias.name}", None))
        elif base in modules:
            out.append((base, alias.name))
    return out


def library_modules(root, package=LIBRARY) -> dict:
    """Module name -> (relative path, is a package) for every module of ``package`` under ``root``."""
    return {module_name(rel): (rel, rel.endswith("/__init__.py")) for rel in python_files(root, package)}


def import_graph(root, package=LIBRARY) -> dict:
    """Module -> {module it imports: first line} among the modules of ``package``."""
    modules = library_modules(root, package)
    graph = {}
    for name, (rel, is_package) in modules.items():
        edges = graph.setdefault(name, {})
        for node in import_nodes(parse(root, rel)):
            for target, _name in imported(node, name, is_package, modules):
                if target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def cycles(graph) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def describe_cycle(graph, component) -> str:
    members = set(component)
    edges = [f"{a} -> {b} (line {line})" for a in component for b, line in sorted(graph[a].items()) if b in members]
    return "; ".join(edges)


def private_imports(root, folders=FOLDERS, package=LIBRARY) -> list:
    """(file, line, what) for each private name that a file under ``folders`` imports from another module of
    ``package`` (a private submodule imported within its own package is allowed)."""
    modules = library_modules(root, package)
    found = []
    for rel in python_files(root, *folders):
        in_library = rel.split("/")[0] == package
        name = module_name(rel) if in_library else "__main__"
        is_package = rel.endswith("/__init__.py")
        for node in import_nodes(parse(root, rel)):
            if not in_library and isinstance(node, ast.ImportFrom) and node.level:
                continue                            # the module's own helper package, not the library
            for alias in node.names:
                for target, taken in imported(_one(node, alias), name, is_package, modules):
                    private = _private((taken or target).split(".")[-1])
                    own_submodule = taken is None and target.rsplit(".", 1)[0] in (name, name.rsplit(".", 1)[0])
                    if private and target != name and not own_submodule:
                        what = f"{taken} from {target}" if taken else f"the private module {target}"
                        found.append((rel, node.lineno, what))
    return found


def _one(node, alias):
    """The import statement ``node`` for one of its names."""
    if isinstance(node, ast.Import):
        return ast.Import(names=[alias])
    return ast.ImportFrom(module=node.module, names=[alias], level=node.level)


def _private(name) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# ---- 5: sys.path ---------------------------------------------------------------------------------------------------
def sys_path_changes(tree) -> list:
    """(line, what) for each change of ``sys.path``: its methods, assignments to it or its items, ``site.addsitedir``,
    and ``from sys import path``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = ast.unparse(node.func)
            if (ast.unparse(node.func.value) == "sys.path" and node.func.attr in SYS_PATH_METHODS) or \
                    func == "site.addsitedir":
                found.append((node.lineno, func + "(...)"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                text = ast.unparse(target)
                if text == "sys.path" or text.startswith(("sys.path[", "sys.path ")):
                    found.append((node.lineno, f"{type(node).__name__.lower()} to {text}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            found.append((node.lineno, "from sys import path"))
    return sorted(found)


# ---- the checks on the repository --------------------------------------------------------------------------------------
def test_no_module_over_600_lines():
    files = python_files(ROOT, *FOLDERS)
    assert any(f.startswith(LIBRARY + "/") for f in files) and "LiverTumorLRP/LiverTumorLRP.py" in files
    long = {rel: n for rel in files if (n := line_count(ROOT, rel)) > MAX_MODULE_LINES}
    assert not long, "\n".join(f"{rel}: {n} lines (at most {MAX_MODULE_LINES})" for rel, n in sorted(long.items()))


def test_no_function_over_80_lines():
    found = [f"{rel}:{line}: {name} has {n} lines (at most {MAX_FUNCTION_LINES})"
             for rel in python_files(ROOT, *FOLDERS) for name, line, n in long_functions(parse(ROOT, rel))]
    assert not found, "\n".join(found)


def test_no_import_cycle_in_the_library():
    graph = import_graph(ROOT)
    assert f"{LIBRARY}.lrp.engine" in graph and any(graph.values())          # the graph was read
    found = cycles(graph)
    assert not found, "\n".join(describe_cycle(graph, c) for c in found)


def test_no_private_name_imported_from_another_library_module():
    found = private_imports(ROOT)
    assert not found, "\n".join(f"{rel}:{line}: imports {what}" for rel, line, what in found)


@pytest.mark.parametrize("rel", python_files(ROOT, *TOOL_FOLDERS))
def test_no_sys_path_manipulation_in_scripts_and_benchmarks(rel):
    found = sys_path_changes(parse(ROOT, rel))
    assert not found, "\n".join(f"{rel}:{line}: {what}" for line, what in found)


# ---- the checks find what they look for ------------------------------------------------------------------------------
FAKE = {
    "pkg/__init__.py": "from .a import A\n\ndef __getattr__(name):\n    from .old import Old\n    return Old\n",
    "pkg/a.py": "from . import b\nA = 1\n",
    "pkg/b.py": "def f():\n    from pkg.a import A\n    return A\n",                    # cycle a <-> b (in a function)
    "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\nelse:\n    from .e import _e\n",
    "pkg/d.py": "from .c import _x\n",                                          # no cycle: c -> d is TYPE_CHECKING only
    "pkg/e.py": "_e = 1\n",
    "pkg/old.py": "import pkg\n",                                              # no cycle: __init__ -> old in __getattr__
    "pkg/sub/__init__.py": "from . import _private\nfrom .. import e\nfrom ..e import __doc__\n",  # allowed
    "pkg/sub/_private.py": "import pkg.sub.mod\n",
    "pkg/sub/mod.py": "",
    "tools/run.py": ("import sys, site\nsys.path.insert(0, 'x')\nsys.path[:0] = ['y']\nsys.path += ['z']\n"
                     "site.addsitedir('w')\nfrom pkg.sub import _private\nfrom pkg.e import _e\nprint(sys.path[0])\n"),
}


@pytest.fixture
def fake(tmp_path):
    for rel, text in FAKE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_checks_find_what_they_look_for(fake):
    graph = import_graph(fake, "pkg")
    assert graph["pkg"] == {"pkg.a": 1} and graph["pkg.c"] == {"pkg.e": 5} and graph["pkg.old"] == {"pkg": 1}
    assert graph["pkg.sub"] == {"pkg.sub._private": 1, "pkg.e": 2} and graph["pkg.sub._private"] == {"pkg.sub.mod": 1}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert describe_cycle(graph, ["pkg.a", "pkg.b"]) == "pkg.a -> pkg.b (line 1); pkg.b -> pkg.a (line 2)"
    assert private_imports(fake, ("pkg", "tools"), "pkg") == [
        ("pkg/c.py", 5, "_e from pkg.e"), ("pkg/d.py", 1, "_x from pkg.c"),
        ("tools/run.py", 6, "the private module pkg.sub._private"), ("tools/run.py", 7, "_e from pkg.e")]
    assert [line for line, _ in sys_path_changes(parse(fake, "tools/run.py"))] == [2, 3, 4, 5]
    assert sys_path_changes(ast.parse("from sys import path\nimport sys\nprint(sys.path)\n")) == [
        (1, "from sys import path")]
    tree = ast.parse("def f():\n" + "    x = 1\n" * 80 + "\nclass C:\n    def g(self):\n        def h():\n"
                     + "            pass\n" * 79)
    assert long_functions(tree) == [("f", 1, 81), ("C.g", 84, 81)]
    assert long_functions(tree, limit=80 + 1) == []

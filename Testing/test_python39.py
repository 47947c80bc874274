"""Slicer 5.8 ships Python 3.9: what its module imports -- the module file and the whole library, whose worker also
runs in Slicer's PythonSlicer -- must compile and run on Python 3.9 to 3.12.

Three checks: the grammar of 3.9 (``ast.parse(feature_version=(3, 9))``: match statements, ``except*``, ``type``
statements ...); the 3.10+ features that parse but fail when they run (``X | Y`` in annotations that Python
evaluates, in ``isinstance``, ``zip(strict=)``, ``dataclass(slots=/kw_only=)``, typing names and stdlib
functions added later); and, where a Python 3.9 interpreter is found (``LIVERTUMORLRP_PYTHON39``, ``python3.9`` on
the PATH, or pyenv's), its own compiler on every file.
"""
import ast
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted([*glob.glob(os.path.join(ROOT, "LiverTumorLRP", "**", "*.py"), recursive=True),   # module, helpers
                *glob.glob(os.path.join(ROOT, "LiverTumorLRPLib", "**", "*.py"), recursive=True)])
# names that Python 3.9's standard library does not have
TYPING_310 = {"TypeAlias", "ParamSpec", "ParamSpecArgs", "ParamSpecKwargs", "Concatenate", "TypeGuard",
              "is_typeddict", "Self", "LiteralString", "Never", "Required", "NotRequired", "assert_never",
              "assert_type", "reveal_type", "dataclass_transform", "Unpack", "TypeVarTuple", "override",
              "TypeAliasType", "get_overloads", "clear_overloads", "TypeIs", "ReadOnly"}
MODULES_311 = {"tomllib", "wsgiref.types"}
ATTRIBUTES_310 = {("itertools", "pairwise"), ("contextlib", "chdir"), ("enum", "StrEnum"), ("datetime", "UTC"),
                  ("math", "cbrt"), ("math", "exp2"), ("asyncio", "TaskGroup"), ("asyncio", "timeout"),
                  ("operator", "call"), ("hashlib", "file_digest"), ("inspect", "get_annotations"),
                  ("sys", "orig_argv"), ("sys", "stdlib_module_names")}
BUILTINS_310 = {"aiter", "anext", "EncodingWarning", "ExceptionGroup", "BaseExceptionGroup"}


def rel(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_grammar_of_python_39(path):
    source = open(path, encoding="utf-8").read()
    try:
        ast.parse(source, filename=path, feature_version=(3, 9))
    except SyntaxError as exc:
        pytest.fail(f"{rel(path)}:{exc.lineno}: not Python 3.9: {exc.msg}")


def _union(node) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))


def _evaluated_annotations(tree):
    """Annotations Python evaluates when the module runs (without ``from __future__ import annotations``):
    function arguments and returns, module- and class-level variables (not those inside function bodies)."""
    out = []

    def visit(body, in_function):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                    if a is not None and a.annotation is not None:
                        out.append(a.annotation)
                if node.returns is not None:
                    out.append(node.returns)
                visit(node.body, True)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, False)
            elif isinstance(node, ast.AnnAssign) and not in_function:
                out.append(node.annotation)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child], in_function)
    visit(tree.body, False)
    return out


def problems_310(source: str, path: str = "<source>") -> list:
    """The Python 3.10+ features in ``source`` that parse under 3.9 but fail when they run there."""
    tree = ast.parse(source, filename=path)
    found = []
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not future:
        found += [(a.lineno, "X | Y in an evaluated annotation (add `from __future__ import annotations`)")
                  for a in _evaluated_annotations(tree) if _union(a)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg for k in node.keywords}
            if func in ("isinstance", "issubclass") and len(node.args) == 2 and _union(node.args[1]):
                found.append((node.lineno, f"{func}(x, A | B)"))
            if func == "zip" and "strict" in keywords:
                found.append((node.lineno, "zip(strict=...)"))
            if func.split(".")[-1] == "dataclass" and keywords & {"slots", "kw_only", "match_args"}:
                found.append((node.lineno, f"dataclass({', '.join(sorted(keywords))})"))
            if func in BUILTINS_310:
                found.append((node.lineno, f"{func}()"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "typing":
                found += [(node.lineno, f"typing.{a.name}") for a in node.names if a.name in TYPING_310]
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if (node.module, a.name) in ATTRIBUTES_310]
            if node.module in MODULES_311:
                found.append((node.lineno, f"module {node.module}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"module {a.name}") for a in node.names if a.name in MODULES_311]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in ATTRIBUTES_310:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return sorted(found)


def test_the_checks_find_what_they_look_for():
    bad = ("import itertools\nfrom typing import TypeAlias\nfrom dataclasses import dataclass\n"
           "def f(x: int | None) -> str | None:\n    y: int | None = None\n    return isinstance(x, int | str)\n"
           "@dataclass(slots=True)\nclass C:\n    a: int | None = None\n"
           "list(zip([1], [2], strict=True)); itertools.pairwise([1, 2])\n")
    lines = [line for line, _ in problems_310(bad)]
    assert lines == [2, 4, 4, 6, 7, 9, 10, 10], problems_310(bad)
    assert problems_310("from __future__ import annotations\ndef f(x: int | None) -> str | None: ...\n") == []
    assert problems_310("def f():\n    y: int | None = None\n    return y\n") == []


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_no_python_310_features_at_run_time(path):
    found = problems_310(open(path, encoding="utf-8").read(), path)
    assert not found, "\n".join(f"{rel(path)}:{line}: {what}" for line, what in found)


def _python39():
    candidates = [os.environ.get("LIVERTUMORLRP_PYTHON39"), shutil.which("python3.9"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))]
    for candidate in filter(None, candidates):
        try:
            p = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                               capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if p.returncode == 0 and p.stdout.strip() == "True":
            return candidate
    return None


COMPILE = """
import sys
bad = []
for path in sys.argv[1:]:
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        bad.append(f"{path}:{exc.lineno}: {exc.msg}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_compiles_with_python_39():
    """Python 3.9's own compiler on every file (nothing written: no .pyc)."""
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter (set LIVERTUMORLRP_PYTHON39, or install python3.9 or pyenv's 3.9)")
    p = subprocess.run([python, "-c", COMPILE, *FILES], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr

"""The Slicer module's own helpers (they need Slicer's application; the computation is in LiverTumorLRPLib).

A package beside ``LiverTumorLRP.py`` rather than more ``.py`` files there: Slicer loads every ``.py`` file at the top
of a module folder as a scripted module of its own (``class X was not found in file X.py`` at every start), so
further Python files of a module go into packages (Slicer's ``<Module>Lib`` convention; ``LiverTumorLRPLib`` is
the computation library). ``LiverTumorLRP.py`` imports it after the bundled library is on the path, and drops it
with the library on Reload (``_forgetLibrary``), so that Reload imports every file of it anew.

- ``jobs``: the worker process's Python and job folders (stale ones removed at start-up);
- ``dependencies``: installing PyTorch and the worker's packages (the logic's ``ensureDependencies``);
- ``sampledata``: the generated phantom case in the Sample Data module;
- ``selftest``: the module's self-test ``LiverTumorLRPTest`` (``LiverTumorLRP.py`` exposes it, as Slicer's
  ``runTest`` and ctest look for ``<Module>Test`` in the module).
"""

try:  # Slicer >= 5.3: texts marked for translation
    from slicer.i18n import tr as _  # noqa: F401  (used by the modules of this package)
except ImportError:  # older Slicer: the texts as they are
    def _(text):
        return text

"""Where the worker process comes from and where its jobs write: Slicer's Python and temporary folder."""
import logging
import os
import shutil
from typing import Optional

import slicer


def pythonSlicerExecutable() -> str:
    """Slicer's own Python (``PythonSlicer``), which runs the worker process."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    path = shutil.which("PythonSlicer") or os.path.join(slicer.app.slicerHome, "bin", name)
    if not os.path.isfile(path):
        raise RuntimeError(f"cannot find {name} (looked on PATH and in {slicer.app.slicerHome}/bin)")
    return path


def jobFolder() -> Optional[str]:
    """Where worker jobs write their files: Slicer's temporary folder (Application settings), else the system's."""
    app = getattr(slicer, "app", None)
    path = getattr(app, "temporaryPath", None) if app is not None else None
    return path or None


def removeStaleJobFolders() -> list:
    """Remove the job folders of workers that no longer run, left by a crash or a kill (logged)."""
    folder = jobFolder()
    if not folder:
        return []
    from LiverTumorLRPLib.worker import remove_stale_job_folders

    try:
        return remove_stale_job_folders(folder)
    except Exception as exc:  # never in the way of start-up
        logging.warning(f"LiverTumorLRP: could not check {folder} for stale job folders: {exc}")
        return []

"""The generated phantom case in Slicer's Sample Data module: its files, made on request, and its registration."""
import logging
import os
import tempfile
from typing import Optional

import slicer

from LiverTumorLRPLib import slicer_deps  # no torch, no numpy: only what is installed
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS

from . import _
from .jobs import jobFolder

# The generated phantom case in the Sample Data module (its files are made on request, see phantomSampleFiles)
PHANTOM_SAMPLE = "LiverTumorLRPPhantom"
PHANTOM_URI = "phantom://LiverTumorLRP/seed0/"
PHANTOM_SHAPE, PHANTOM_SPACING = (32, 96, 96), (4.0, 3.0, 3.0)


def phantomSampleFiles(folder: str, seed: int = 0, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING) -> dict:
    """The phantom case as files for the Sample Data module (made once): file name -> (path, node name, type).

    Six NRRD volumes named as :func:`LiverTumorLRPLib.slicer_logic.add_phantom_case` names them (so the inputs
    are assigned automatically) and the reference tumor as a labelmap loaded as a segmentation.
    """
    from LiverTumorLRPLib.case_io import write_image
    from LiverTumorLRPLib.mrml.inputs import PHANTOM_NAMES
    from LiverTumorLRPLib.phantom import generate_case

    files = {f"{PHANTOM_SAMPLE}-{key}.nrrd": (f"Phantom {PHANTOM_NAMES[key]}", "VolumeFile") for key in SEQUENCE_KEYS}
    files[f"{PHANTOM_SAMPLE}-reference.nrrd"] = ("Phantom reference", "SegmentationFile")
    out = {name: (os.path.join(folder, name), node, kind) for name, (node, kind) in files.items()}
    if not all(os.path.isfile(path) for path, _node, _kind in out.values()):
        import numpy as np

        case = generate_case(seed, shape=shape, spacing=spacing)
        reference = case.reference()
        os.makedirs(folder, exist_ok=True)
        for key in SEQUENCE_KEYS:
            write_image(case.images[key], reference, out[f"{PHANTOM_SAMPLE}-{key}.nrrd"][0], dtype=np.float32)
        write_image((case.label > 0).astype(np.uint8), reference, out[f"{PHANTOM_SAMPLE}-reference.nrrd"][0],
                    dtype=np.uint8)
    return out


def phantomSampleUrl(url: str, folder: Optional[str] = None, ensure=None) -> str:
    """Sample Data URL rewrite rule (Slicer >= 5.10): ``phantom://LiverTumorLRP/seed0/<file>`` -> the ``file://``
    URL of that file, made on first use (``ensure()``: the dependencies; False leaves the URL as it is).
    Any other URL is returned unchanged."""
    if not url.startswith(PHANTOM_URI):
        return url
    if ensure is not None and not ensure():
        return url
    import pathlib

    folder = folder or os.path.join(jobFolder() or tempfile.gettempdir(), "LiverTumorLRP-phantom")
    files = phantomSampleFiles(folder)
    name = url[len(PHANTOM_URI):]
    if name not in files:
        raise ValueError(f"unknown phantom sample file {name!r}")
    return pathlib.Path(files[name][0]).resolve().as_uri()


def registerSampleData(logicClass):
    """Offer the generated phantom case in the Sample Data module, when it exists: its button (a custom
    downloader) and, on Slicer >= 5.10, ``SampleData.downloadSample("LiverTumorLRPPhantom")`` too (a URL rewrite
    rule turns its ``phantom://`` URIs into files made on request).  ``logicClass``: the module's logic
    (``LiverTumorLRPLogic``), which installs the dependencies and loads the case."""
    try:
        import SampleData
    except ImportError:
        return
    iconsPath = os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons")

    def loadPhantom(*args, **kwargs):
        with slicer.util.tryWithErrorDisplay(_("Failed to load the phantom case."), waitCursor=False):
            logic = logicClass()
            if not logic.ensureDependencies(slicer_deps.PHANTOM):
                return None
            with slicer.util.WaitCursor():
                nodes = logic.loadPhantomCase()
            return list(nodes.values())
        return None

    def ensure():
        return logicClass().ensureDependencies(slicer_deps.PHANTOM)

    names = [f"{PHANTOM_SAMPLE}-{key}.nrrd" for key in SEQUENCE_KEYS] + [f"{PHANTOM_SAMPLE}-reference.nrrd"]
    from LiverTumorLRPLib.mrml.inputs import PHANTOM_NAMES

    nodeNames = [f"Phantom {PHANTOM_NAMES[key]}" for key in SEQUENCE_KEYS] + ["Phantom reference"]
    try:
        logic = SampleData.SampleDataLogic
        logic.registerCustomSampleDataSource(
            category="Liver Tumor LRP", sampleName=PHANTOM_SAMPLE,
            thumbnailFileName=os.path.join(iconsPath, "LiverTumorLRP.png"),
            uris=[PHANTOM_URI + n for n in names], fileNames=names, nodeNames=nodeNames,
            loadFileTypes=["VolumeFile"] * len(SEQUENCE_KEYS) + ["SegmentationFile"],
            customDownloader=loadPhantom)
        if hasattr(logic, "registerUrlRewriteRule"):
            logic.registerUrlRewriteRule("LiverTumorLRPPhantom", lambda url: phantomSampleUrl(url, ensure=ensure))
        else:  # Slicer 5.8: only the Sample Data button makes the phantom
            logging.info("LiverTumorLRP: this Sample Data module has no URL rewrite rules; the phantom case "
                         "loads from its button or the module's 'Load phantom case'")
    except Exception as exc:  # an older/newer SampleData API: the module's own button still works
        logging.warning(f"LiverTumorLRP: could not register the phantom sample data: {exc}")

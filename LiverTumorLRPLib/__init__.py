"""LiverTumorLRP library: liver tumor segmentation in six-sequence MRI, explained by LRP.

Everything here runs without Slicer's GUI.  The public API is imported lazily so
that ``import LiverTumorLRPLib`` works before torch is installed (Slicer installs it
on first use):

    from LiverTumorLRPLib import relevance, region_relevance, sequence_relevance

A whole case as every front end computes it: :mod:`LiverTumorLRPLib.analysis` (the case layer).
"""
from .sequences import SEQUENCES, SEQUENCE_KEYS, DISPLAY_NAMES, REFERENCE_KEY  # noqa: F401

__version__ = "0.1.0"

_LAZY = {
    "relevance": "explain",
    "region_relevance": "explain",
    "sequence_relevance": "explain",
    "sequence_relevance_interval": "explain",
    "weighted_relevance": "explain",
    "Relevance": "explain",
    "RegionRelevance": "explain",
    "SequenceRelevance": "explain",
    "SequenceRelevanceInterval": "explain",
    "LRP": "lrp",
    "PRESETS": "lrp",
    "UNet3D": "unet",
    "UNetConfig": "unet",
    "load_model": "models",
    "save_model": "models",
    "cached_model": "models",
    "read_case": "case_io",
    "Case": "case_io",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'LiverTumorLRPLib' has no attribute {name!r}")


__all__ = ["SEQUENCES", "SEQUENCE_KEYS", "DISPLAY_NAMES", "REFERENCE_KEY", *_LAZY]

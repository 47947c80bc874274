"""The six MRI sequences of the paper, in the network's channel order.

This is the one definition used everywhere (reader, model, explanations, Slicer
module, reports).  Channel c of every input tensor is ``SEQUENCES[c]``.
All sequences are registered to ``REFERENCE_KEY`` (T1 15 min), whose grid is the
reference geometry of a case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Sequence:
    key: str            # file and API name, e.g. "T1_20s"
    display_name: str   # what a radiologist reads, e.g. "T1 20 s"
    description: str
    aliases: tuple[str, ...] = ()  # lower-case fragments that identify a node or file name


SEQUENCES: tuple[Sequence, ...] = (
    Sequence("T2", "T2", "T2-weighted", ("t2",)),
    Sequence("T1_plain", "T1 plain", "T1 before contrast (plain-T1)",
             ("plain", "pre", "native", "nativ", "unenhanced", "non contrast")),
    Sequence("T1_20s", "T1 20 s", "T1 20 s after gadoxetate (arterial)",
             ("20s", "20 s", "20 sec", "arterial", "arteriell", "artériel", "arteriosa")),
    Sequence("T1_60s", "T1 60 s", "T1 60 s after gadoxetate (portal venous)",
             ("60s", "60 s", "60 sec", "portal", "venous", "venös", "venosa", "veineu")),
    Sequence("T1_120s", "T1 120 s", "T1 120 s after gadoxetate (transitional)",
             ("120s", "120 s", "120 sec", "2 min", "transitional", "late", "delayed", "equilibrium", "spät",
              "tardiv")),
    Sequence("T1_15min", "T1 15 min", "T1 15 min after gadoxetate (hepatobiliary)",
             ("15min", "15 min", "20min", "20 min", "hepatobiliary", "hbp", "hepatobiliar", "hépatobiliaire",
              "epatobiliare", "leberspezifisch", "hepatocyt")),
)
# Aliases also cover German, French, Italian and Spanish phase names ("arteriell", "venös", "spät",
# "hepatobiliär" -> "hepatobiliar", "tardiva", ...) as they appear in DICOM series descriptions.

SEQUENCE_KEYS: tuple[str, ...] = tuple(s.key for s in SEQUENCES)
DISPLAY_NAMES: tuple[str, ...] = tuple(s.display_name for s in SEQUENCES)
N_SEQUENCES = len(SEQUENCES)
REFERENCE_KEY = "T1_15min"
CLASS_NAMES: tuple[str, ...] = ("background", "tumor")


def sequence_index(key: str) -> int:
    """Channel index of a sequence key (``"T1_20s"`` -> 2); ValueError names the valid keys."""
    try:
        return SEQUENCE_KEYS.index(key)
    except ValueError:
        raise ValueError(f"unknown sequence {key!r}; expected one of {', '.join(SEQUENCE_KEYS)}") from None


def display_name(key: str) -> str:
    """What a radiologist reads for a channel key (``"T1_20s"`` -> ``"T1 20 s"``); other names unchanged."""
    return DISPLAY_NAMES[SEQUENCE_KEYS.index(key)] if key in SEQUENCE_KEYS else str(key)


def class_index(name: "str | int") -> int:
    """Deprecated: the classes are the model's (:meth:`.model_info.ModelInfo.class_index`); this knows only the
    paper's two classes (background 0, tumor 1)."""
    import warnings

    warnings.warn("sequences.class_index is deprecated; use model_info(model).class_index", DeprecationWarning,
                  stacklevel=2)
    if isinstance(name, int) and name in (0, 1):
        return name
    if isinstance(name, str) and name.lower() in CLASS_NAMES:
        return CLASS_NAMES.index(name.lower())
    raise ValueError(f"unknown class {name!r}; expected 'tumor' (1) or 'background' (0)")


def _alias_pattern(alias: str) -> "re.Pattern[str]":
    """Regex for an alias at a word start; numbers must not be part of a larger number ("20s" is not in "120s")."""
    body = r"\s*".join(re.escape(part) for part in alias.split())
    if alias[0].isdigit():
        return re.compile(rf"(?<![0-9]){body}(?![a-z0-9])")
    return re.compile(rf"(?<![a-z]){body}")


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]", " ", name.lower()).strip()


def find_alias(name: str, aliases) -> "str | None":
    """The first of ``aliases`` that ``name`` mentions at a word start (the matching of :func:`guess_sequence`:
    separators ``-_.`` are spaces, a number is not part of a larger number), or None."""
    low = _normalised(name)
    for alias in aliases:
        if _alias_pattern(alias).search(low):
            return alias
    return None


def guess_sequence(name: str) -> "str | None":
    """The sequence key a node or file name most likely refers to (``"T1 15min HBP"`` -> ``"T1_15min"``), or None.

    Exact keys win; otherwise the longest alias found at a word start ("T1 20s" is T1_20s, "T1 120s"
    is T1_120s).  "T2" only matches when no T1 alias does.
    """
    low = _normalised(name)
    compact = low.replace(" ", "")
    for s in SEQUENCES:
        if compact == s.key.lower().replace("_", ""):
            return s.key
    best, best_len = None, 0
    for s in SEQUENCES[1:]:
        for alias in s.aliases:
            if len(alias) > best_len and _alias_pattern(alias).search(low):
                best, best_len = s.key, len(alias)
    if best is None and re.search(r"(?<![a-z0-9])t2(?![0-9])", low):
        return "T2"
    return best

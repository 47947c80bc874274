"""Channel names: matching a dataset's channel name or a file name to one of the model's channels, and the
BraTS sequences.

A name matches a model channel when, ignoring case, spaces, ``-`` and ``_``, it is that channel's name; else
when both are the same BraTS sequence by :data:`BRATS_ALIASES`; else when :func:`sequences.guess_sequence`
turns it into that channel (``"T1 15min HBP"`` -> ``T1_15min``).

BraTS file names are recognised for models whose channels are the four BraTS sequences (each channel one of
them, none twice): BraTS 2023 and later ``CASE-t1n``, ``-t1c``, ``-t2w``, ``-t2f`` (label ``-seg``); older
``CASE_t1``, ``_t1ce``, ``_t2``, ``_flair`` (label ``_seg``).
"""
from __future__ import annotations

import re
from typing import Optional

from ..sequences import guess_sequence

# BraTS sequence -> the channel names that mean it, compared without case, spaces, "-" and "_"
BRATS_ALIASES: dict[str, tuple[str, ...]] = {
    "t1n": ("t1n", "t1", "t1w", "t1native", "t1pre", "t1precontrast", "nativet1"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1wgd", "t1wce", "t1post", "t1postcontrast", "t1contrast", "t1cgd"),
    "t2w": ("t2w", "t2", "t2weighted"),
    "t2f": ("t2f", "flair", "t2flair", "t2wflair"),
}
# the last part of a BraTS file name -> BraTS sequence ("seg": the label)
BRATS_FILE_SUFFIXES: dict[str, str] = {
    "t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f",          # BraTS 2023+: CASE-t1n.nii.gz
    "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f",         # BraTS 2012-2021: CASE_t1.nii.gz
    "seg": "seg",
}
_BRATS_FILE = re.compile(r"[-_](" + "|".join(sorted(BRATS_FILE_SUFFIXES, key=len, reverse=True)) + r")$",
                         re.IGNORECASE)
_BY_ALIAS = {alias: seq for seq, aliases in BRATS_ALIASES.items() for alias in aliases}


def _plain(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


def brats_sequence(name: str) -> Optional[str]:
    """The BraTS sequence (``t1n``, ``t1c``, ``t2w``, ``t2f``) a channel name means, or None."""
    return _BY_ALIAS.get(_plain(name))


def is_brats_model(keys) -> bool:
    """True when every channel of the model is a different BraTS sequence."""
    seqs = [brats_sequence(k) for k in keys]
    return bool(seqs) and None not in seqs and len(set(seqs)) == len(seqs)


def brats_file(stem: str, keys) -> Optional[str]:
    """The model channel (or ``"label"`` for ``-seg``) a BraTS file name (without extension) holds, for a
    BraTS model; None for any other name or model."""
    m = _BRATS_FILE.search(stem)
    if m is None or not is_brats_model(keys):
        return None
    seq = BRATS_FILE_SUFFIXES[m.group(1).lower()]
    if seq == "seg":
        return "label"
    return next(k for k in keys if brats_sequence(k) == seq)


def looks_like_brats_file(stem: str) -> bool:
    """True for a file name (without extension) ending in a BraTS sequence (not the label)."""
    m = _BRATS_FILE.search(stem)
    return m is not None and m.group(1).lower() != "seg"


def match_channel(name: str, keys) -> Optional[str]:
    """The model channel (one of ``keys``) that a dataset's channel name means, or None (see the module)."""
    plain = _plain(name)
    for key in keys:
        if _plain(key) == plain:
            return key
    seq = brats_sequence(name)
    if seq is not None:
        hits = [k for k in keys if brats_sequence(k) == seq]
        if len(hits) == 1:
            return hits[0]
    guess = guess_sequence(str(name))
    return guess if guess in keys else None

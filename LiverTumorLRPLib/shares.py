"""Sec. 2.3's normalisation, in one place: a relevance map's share per sequence (numpy only, no torch)."""
from __future__ import annotations

import numpy as np


def shares_of(M: np.ndarray, keep_sign: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The channel sums of ``M`` (C, ...) over its total, summing to 1, and the positive and negative mass per
    channel over the total (``shares = positive + negative``).  ValueError when the total is zero.
    ``keep_sign``: over the total's magnitude instead, so that a negative total (the explained output lower than
    at the reference) does not turn the ranking upside down; the shares then sum to -1."""
    flat = np.asarray(M).reshape(M.shape[0], -1).astype(np.float64)
    total = float(flat.sum())
    if not np.isfinite(total) or abs(total) < 1e-12:
        raise ValueError("the relevance map sums to zero; sequence shares are undefined")
    total = abs(total) if keep_sign else total
    return (flat.sum(axis=1) / total, np.clip(flat, 0, None).sum(axis=1) / total,
            np.clip(flat, None, 0).sum(axis=1) / total)

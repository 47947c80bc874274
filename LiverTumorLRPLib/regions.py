"""Sec. 2.3's regions: the predicted tumor T, as many predicted-background voxels B, and the seed weights of the
explained output ``f = mean_T y^lesion + mean_B y^(predicted class)`` (numpy only)."""
from __future__ import annotations

from typing import Optional

import numpy as np


NO_TUMOR = ("the model predicts no tumor voxels in this case, so there is no tumor region T to explain; sequence "
            "relevance (Sec. 2.3) needs a predicted tumor")


def choose_background(pred_tumor: np.ndarray, n: int, seed: int = 0, how: str = "random") -> np.ndarray:
    """B: ``n`` predicted-background voxels, chosen reproducibly.

    ``random``: uniformly at random (numpy Generator seeded with ``seed``) among all predicted-background
    voxels; ``shell``: the ``n`` predicted-background voxels nearest to the predicted tumor (ties broken by
    the same seeded random order).
    """
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(~pred_tumor)
    if n > candidates.size:
        raise ValueError(f"only {candidates.size} background voxels for {n} tumor voxels")
    if how == "random":
        chosen = rng.choice(candidates, size=n, replace=False)
    elif how == "shell":
        from scipy.ndimage import distance_transform_edt

        dist = distance_transform_edt(~pred_tumor).ravel()[candidates]
        order = np.lexsort((rng.permutation(candidates.size), dist))
        chosen = candidates[order[:n]]
    else:
        raise ValueError(f"unknown background choice {how!r}; use 'random' or 'shell'")
    out = np.zeros(pred_tumor.size, dtype=bool)
    out[chosen] = True
    return out.reshape(pred_tumor.shape)


def choose_regions(pred_tumor: np.ndarray, seed: int = 0, background: str = "random",
                   max_voxels: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Sec. 2.3's regions (T, B): the predicted tumor (a seeded random subset when it has more than
    ``max_voxels`` voxels or more than the background) and as many predicted-background voxels."""
    n_pred = int(pred_tumor.sum())
    if n_pred == 0:
        raise ValueError(NO_TUMOR)
    n = min(n_pred, int(pred_tumor.size - n_pred), max_voxels or n_pred)
    if n == 0:
        raise ValueError("the model predicts tumor everywhere; there is no background region B")
    tumor = pred_tumor
    if n < n_pred:
        rng = np.random.default_rng(seed + 1)
        idx = rng.choice(np.flatnonzero(pred_tumor), size=n, replace=False)
        tumor = np.zeros(pred_tumor.size, dtype=bool)
        tumor[idx] = True
        tumor = tumor.reshape(pred_tumor.shape)
    return tumor, choose_background(pred_tumor, n, seed, background)


def sec23_weights(pred: np.ndarray, lesion: int, tumor: np.ndarray, back: np.ndarray, n_classes: int) -> np.ndarray:
    """Sec. 2.3's seed weights: T for the lesion class, each voxel of B for its predicted (non-lesion) class.
    ``tumor``/``back`` may be weights in [0, 1] instead of masks (the expectation over random regions)."""
    w = np.zeros((n_classes,) + pred.shape, dtype=np.float64)
    w[lesion] = tumor
    back_cls = np.where(pred == lesion, 0 if lesion != 0 else 1, pred)
    for c in range(n_classes):
        if c != lesion:
            w[c] = np.where(back_cls == c, back, 0.0)
    return w


def sec23_output_weights(pred: np.ndarray, lesion: int, n_classes: int) -> np.ndarray:
    """Seed weights of Sec. 2.3's explained output in expectation over its random regions,
    ``f = mean_T y^lesion + mean_B y^(predicted class)`` with T every predicted-lesion voxel and B uniformly random
    among the others: 1/|T| on T, 1/N on each of the N other voxels (E over B of 1/|B| on a chosen voxel)."""
    pred_tumor = pred == lesion
    n_tumor, n_back = int(pred_tumor.sum()), int((~pred_tumor).sum())
    if n_tumor == 0:
        raise ValueError(NO_TUMOR)
    if n_back == 0:
        raise ValueError("the model predicts tumor everywhere; there is no background region B")
    return sec23_weights(pred, lesion, pred_tumor / n_tumor, ~pred_tumor / n_back, n_classes)


__all__ = ["NO_TUMOR", "choose_background", "choose_regions", "sec23_weights", "sec23_output_weights"]

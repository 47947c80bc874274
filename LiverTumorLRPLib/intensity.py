"""Per-sequence intensity normalisation, the same for training, inference and explanation.

MRI intensities have no absolute scale, so each sequence is z-scored on its own:
foreground = voxels brighter than 10 % of the sequence's 99th percentile (this
drops air and the Rician noise floor); the sequence is shifted by the foreground
mean, divided by the foreground standard deviation and clipped to [-5, 5].
After this, 0 is the mean of the body, so LRP's sign matters: relevance is
reported as positive and negative mass per sequence.
"""
from __future__ import annotations

import numpy as np

CLIP = 5.0
FOREGROUND_FRACTION = 0.10


def normalise_sequence(array: np.ndarray, name: str = "sequence") -> np.ndarray:
    """Robust z-score of one sequence (any shape) as float32; ValueError if it is constant or not finite."""
    a = np.asarray(array, dtype=np.float32)
    if a.size == 0:
        raise ValueError(f"{name}: the image is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains {int(np.size(a) - np.isfinite(a).sum())} NaN or infinite voxels")
    hi = float(np.percentile(a, 99))
    fg = a[a > FOREGROUND_FRACTION * hi] if hi > 0 else a
    if fg.size < 10:
        fg = a
    mean, std = float(fg.mean()), float(fg.std())
    if std <= 1e-8 * max(1.0, abs(mean)):
        raise ValueError(f"{name}: the image is constant (value {mean:g}); nothing to segment")
    return np.clip((a - mean) / std, -CLIP, CLIP).astype(np.float32)


def normalise_image(image: np.ndarray, names=None) -> np.ndarray:
    """Normalise each channel of a (C, D, H, W) stack with :func:`normalise_sequence`."""
    names = names or [f"channel {c}" for c in range(image.shape[0])]
    return np.stack([normalise_sequence(ch, n) for ch, n in zip(image, names)])

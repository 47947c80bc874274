"""How much the segmentation needs each sequence -- beside how relevant LRP finds it.

A sequence is *absent* when it is replaced by a reference (:func:`reference_image`); the value of a subset S
of sequences is the Dice of the segmentation with only S present, against the case's label (or, without one,
against the segmentation with every sequence).  Two answers:

* drop one: the Dice with one sequence absent (the loss from losing it, all others kept);
* the exact Shapley values of that Dice over all 2^C subsets (:func:`shapley_values`), which sum to
  ``Dice(all) - Dice(none)`` and credit each sequence with its average marginal gain; for C > ``MAX_EXACT``
  a permutation-sampled estimate with its standard error (:func:`sampled_shapley_values`).

:func:`agreement` compares a relevance ranking with the Shapley values, so that a user is told when LRP's
answer and what the model provably needs disagree.  The model runs in :mod:`.analysis` (``necessity``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Optional, Sequence

import numpy as np

REFERENCE = "blur"
REFERENCES = ("blur", "mean", "zero")
BLUR_SIGMA = 3.0            # voxels of the network grid
MAX_EXACT = 8               # exact Shapley values up to 2^8 subsets
DISAGREE_RHO = 0.5          # below this Spearman rho (or another top sequence) the answers disagree


def reference_image(image: np.ndarray, kind: str = REFERENCE, what: str = "reference") -> np.ndarray:
    """What replaces an absent sequence in a normalised (C, D, H, W) stack.

    ``blur`` (the default): a Gaussian blur of the sequence itself (sigma 3 voxels) -- the same anatomy and
    intensities without lesion-scale detail, so the network sees an image like those it was trained on
    (a constant channel is one it never saw, and what it does with it says little about the sequence);
    ``mean``: the sequence's volume mean; ``zero``: 0, the normalised foreground mean."""
    if kind == "blur":
        from scipy import ndimage

        return np.stack([ndimage.gaussian_filter(c, BLUR_SIGMA) for c in image]).astype(image.dtype)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(1, 2, 3), keepdims=True), image.shape).astype(image.dtype)
    if kind == "zero":
        return np.zeros_like(image)
    raise ValueError(f"unknown {what} {kind!r}; use one of {', '.join(REFERENCES)}")


def with_only(image: np.ndarray, reference: np.ndarray, present) -> np.ndarray:
    """``image`` with the sequences not in ``present`` (channel indices) replaced by ``reference``."""
    keep = np.isin(np.arange(len(image)), list(present))[:, None, None, None]
    return np.where(keep, image, reference)


def shapley_weight(size: int, n: int) -> float:
    """``|S|! (n - |S| - 1)! / n!``: the weight of a subset of ``size`` players in a player's Shapley value."""
    return math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)


def all_subsets(n: int) -> list:
    return [frozenset(s) for r in range(n + 1) for s in combinations(range(n), r)]


def shapley_values(value: dict, n: int) -> np.ndarray:
    """Exact Shapley values from the value of every subset: ``phi_i = sum_{S without i} w(|S|) (v(S+i) - v(S))``;
    they sum to ``v(all) - v(none)``."""
    phi = np.zeros(n)
    for s, v in value.items():
        for i in range(n):
            if i not in s:
                phi[i] += shapley_weight(len(s), n) * (value[s | {i}] - v)
    return phi


def sampled_shapley_values(values_of: Callable[[list], list], n: int, samples: int, seed: int = 0):
    """Shapley values estimated from ``samples`` random orderings (each gives every player's marginal gain),
    with their standard errors."""
    rng = np.random.default_rng(seed)
    gains = np.zeros((samples, n))
    for k in range(samples):
        order = rng.permutation(n)
        chain = [frozenset(order[:j]) for j in range(n + 1)]
        v = values_of(chain)
        gains[k, order] = np.diff(v)
    return gains.mean(axis=0), gains.std(axis=0, ddof=1) / math.sqrt(samples)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


@dataclass
class Necessity:
    """Dice without each sequence and the Shapley values of Dice, per channel key."""

    reference: str
    target: str                     # "label" (the case's) or "prediction" (the segmentation with every sequence)
    dice_full: float
    dice_none: float
    dice_without: dict              # key -> Dice with that sequence replaced by the reference
    shapley_dice: dict              # key -> Shapley value of Dice
    exact: bool = True
    shapley_stderr: Optional[dict] = None
    forward_passes: int = 0
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"reference": self.reference, "target": self.target, "dice_full": self.dice_full,
               "dice_none": self.dice_none, "dice_without": self.dice_without, "shapley_dice": self.shapley_dice,
               "exact": self.exact, "forward_passes": self.forward_passes}
        if self.shapley_stderr is not None:
            out["shapley_stderr"] = self.shapley_stderr
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Necessity":
        return cls(d["reference"], d["target"], d["dice_full"], d.get("dice_none", float("nan")),
                   dict(d["dice_without"]), dict(d["shapley_dice"]), d.get("exact", True), d.get("shapley_stderr"),
                   d.get("forward_passes", 0))


def game_shapley(values_of: Callable[[list], list], n: int, max_exact: int = MAX_EXACT, samples: int = 64,
                 seed: int = 0) -> tuple:
    """(Shapley values, their standard errors or None, subsets evaluated) of the game ``values_of(subsets)``:
    exact over all 2^n subsets up to ``max_exact`` players, else from ``samples`` random orderings."""
    if n <= max_exact:
        subsets = all_subsets(n)
        return shapley_values(dict(zip(subsets, values_of(subsets))), n), None, len(subsets)
    phi, err = sampled_shapley_values(values_of, n, samples, seed)
    return phi, err, samples * (n + 1)


def sequence_necessity(dice_of: Callable[[list], list], channels: Sequence[str], reference: str = REFERENCE,
                       target: str = "label", max_exact: int = MAX_EXACT, samples: int = 64,
                       seed: int = 0) -> Necessity:
    """Drop-one Dice and Shapley values of Dice; ``dice_of(subsets)`` gives the Dice with only each subset of
    channel indices present (the model runs there, batched as it likes)."""
    n = len(channels)
    full, none = frozenset(range(n)), frozenset()
    drop = [full - {i} for i in range(n)]
    if n <= max_exact:
        subsets = all_subsets(n)
        value = dict(zip(subsets, dice_of(subsets)))
        phi, err, passes = shapley_values(value, n), None, len(subsets)
    else:
        value = dict(zip([full, none, *drop], dice_of([full, none, *drop])))
        phi, err, passes = game_shapley(dice_of, n, max_exact, samples, seed)
        passes += len(value)
    stderr = None if err is None else dict(zip(channels, err.tolist()))
    return Necessity(reference, target, float(value[full]), float(value[none]),
                     {k: float(value[s]) for k, s in zip(channels, drop)},
                     dict(zip(channels, phi.tolist())), stderr is None, stderr, passes)


def calibrated_maps(maps: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Each sequence's voxel map shifted to sum to its Shapley value: ``M_i + (phi_i - sum M_i) |M_i| / sum |M_i|``
    (the part of ``phi_i`` the map does not carry, spread over the voxels in proportion to their relevance;
    evenly where the map is zero).  The maps then add up to the bars the user reads."""
    out = np.array(maps, dtype=np.float64)
    flat = out.reshape(len(out), -1)
    for i, m in enumerate(flat):
        gap, mass = phi[i] - m.sum(), np.abs(m).sum()
        m += gap * (np.abs(m) / mass if mass > 0 else 1.0 / m.size)
    return out.astype(np.float32)


def spearman(a, b) -> Optional[float]:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    from scipy import stats

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b)[0])


def agreement(shares, shapley: dict, channels: Sequence[str], display_names: Sequence[str]) -> dict:
    """Does the relevance ranking agree with what the model needs?  Spearman rho between the shares and the
    Shapley values of Dice, whether both put the same sequence first, and a warning when rho < 0.5, the top
    sequences differ, or the Shapley values cannot rank the sequences."""
    phi = np.array([shapley[k] for k in channels], dtype=float)
    shares = np.asarray(shares, dtype=float)
    rho = spearman(shares, phi)
    top_rel, top_need = int(np.argmax(shares)), int(np.argmax(phi))
    same_top = bool(top_rel == top_need) if np.ptp(phi) > 0 else None
    warning = None
    if rho is None or same_top is None:
        warning = ("no sequence changes the segmentation's Dice when it is replaced by the reference, so the "
                   "relevance ranking cannot be checked against what the model needs")
    elif rho < DISAGREE_RHO or not same_top:
        warning = (f"the relevance ranking disagrees with what the model needs (Spearman rho {rho:+.2f} with the "
                   f"Shapley values of Dice): relevance ranks {display_names[top_rel]} first, the segmentation "
                   f"needs {display_names[top_need]} most")
    return {"spearman": rho, "same_top": same_top, "top_relevance": channels[top_rel],
            "top_necessity": channels[top_need], "warning": warning}

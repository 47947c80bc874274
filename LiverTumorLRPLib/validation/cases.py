"""The cases the checks explain, and the model output they explain (the paper's Sec. 2.3).

Every check explains the same model output, with T (predicted tumor) and B (as many predicted-background
voxels) fixed from the original prediction:

    f(x) = mean_{a in T} y^1_a(x) + mean_{a in B} y^0_a(x)        (y: class logits)

and region perturbation the tumor evidence ``g(x) = mean_{a in T} y^1_a``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from ..explain import choose_regions

VALIDATION_SEED = 200000  # phantom seeds used neither by training (seed * 10000 + i) nor by the model card (100000+)


@dataclass
class ValidationCase:
    """One (whole or cropped) normalised case with the regions of Sec. 2.3 fixed from the model's prediction."""

    name: str
    image: np.ndarray          # (C, D, H, W) normalised
    tumor: np.ndarray          # T: predicted tumor (bool)
    background: np.ndarray     # B: as many predicted-background voxels
    informative: Optional[list] = None
    label: Optional[np.ndarray] = field(default=None, repr=False)


def crop_around(image: np.ndarray, centre, size) -> tuple:
    """Slices of ``size`` voxels (clipped to the image) centred on ``centre``."""
    sl = []
    for c, s, n in zip(centre, size, image.shape[-3:]):
        s = min(s, n)
        start = int(np.clip(round(c - s / 2), 0, n - s))
        sl.append(slice(start, start + s))
    return tuple(sl)


@torch.no_grad()
def logits(model, x: np.ndarray, device="cpu") -> torch.Tensor:
    """Class logits (N, K, D, H, W) of a (C, D, H, W) image or an (N, C, D, H, W) batch."""
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    t = t[None] if t.dim() == 4 else t
    return model.to(device).eval()(t.to(device)).float().cpu()


def make_case(model, image: np.ndarray, name: str, label=None, seed: int = 0, max_voxels: int = 2000,
              informative=None, device="cpu") -> ValidationCase:
    """Fix T and B (Sec. 2.3) from the model's prediction on ``image``."""
    y = logits(model, image, device)[0]
    tumor, back = choose_regions((y[1] > y[0]).numpy(), seed, "random", max_voxels)
    return ValidationCase(name, image.astype(np.float32), tumor, back, informative, label)


def phantom_cases(model, n: int, seed: int = VALIDATION_SEED, crop=None, informative=None,
                  device="cpu", skipped: Optional[list] = None) -> list[ValidationCase]:
    """``n`` whole phantom volumes (or, with ``crop``, crops of that size around their largest tumor); cases
    without predicted tumor are skipped (their names are appended to ``skipped``)."""
    from ..train import case_arrays

    kw = {"informative": list(informative)} if informative else {}
    out, i = [], 0
    while len(out) < n and i < 3 * n:
        image, label = case_arrays(seed + i, (48, 128, 128), (4.0, 3.0, 3.0), **kw)
        name = f"phantom_{seed + i}"
        i += 1
        comps, k = ndimage.label(label > 0)
        if k == 0:
            continue
        largest = 1 + int(np.argmax(ndimage.sum(label > 0, comps, range(1, k + 1))))
        sl = crop_around(image, ndimage.center_of_mass(comps == largest), crop) if crop else \
            (slice(None),) * 3
        try:
            out.append(make_case(model, image[(slice(None),) + sl], name, label[sl], seed, informative=informative,
                                 device=device))
        except ValueError:
            if skipped is not None:
                skipped.append(name)
    return out


def target(y: torch.Tensor, case: ValidationCase) -> torch.Tensor:
    """Sec. 2.3's explained output per batch item: mean tumor logit over T + mean background logit over B."""
    t, b = torch.from_numpy(case.tumor), torch.from_numpy(case.background)
    return y[:, 1][:, t].mean(dim=1) + y[:, 0][:, b].mean(dim=1)


def tumor_evidence(y: torch.Tensor, case: ValidationCase) -> torch.Tensor:
    """``g``: mean tumor logit over T, per batch item."""
    return y[:, 1][:, torch.from_numpy(case.tumor)].mean(dim=1)

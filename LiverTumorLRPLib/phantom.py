"""Synthetic six-sequence gadoxetate liver MRI with known ground truth (``liver-lrp phantom``).

Anatomy in millimetres on the T1 15 min grid: body outline with subcutaneous fat and muscle,
liver (sometimes cirrhotic), portal and hepatic veins, IVC, aorta, spleen, kidneys; tumors
(HCC, metastases with rim) and mimics labelled background (cysts, hemangiomas).  Intensities
per tissue and series follow ``shared/notes/phantom.md`` (T1 series: pre-contrast liver = 1;
T2: liver = 1), with per-lesion behaviour drawn at random: arterial hyper-enhancement, washout at
60 s or 120 s, hepatobiliary iso-intense HCC, rim and 15-min enhancement of metastases, early or
late arterial timing of the 20 s phase.  Acquisition: liver texture, a transmit field that
changes contrast (flip-angle ratio 0.6-1.1), a receive field, Rician noise (sigma 3-5 % of liver)
with a parallel-imaging amplification map, T2 on coarser slices, and the small residual
misalignment registration leaves; ``unregistered=True`` gives the raw breathing motion instead
(known, in ``lesions.json``).  ``informative=[keys]``: tumors have contrast only in those
sequences and look like liver in the others.  Deterministic for a seed.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .sequences import SEQUENCE_KEYS

T1_KEYS = SEQUENCE_KEYS[1:]
LIVER_SIGNAL = 1000.0     # pre-contrast liver (T1) and liver (T2) signal

# Relative intensities: (T2, T1 plain, T1 20 s, T1 60 s, T1 120 s, T1 15 min).  For the 20 s phase,
# (early, late) arterial where it depends on bolus timing.
TISSUES = {
    "air": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "fat": (0.35, 0.35, 0.35, 0.35, 0.35, 0.35),
    "muscle": (0.6, 0.67, 0.73, 0.9, 0.85, 0.75),
    "liver": (1.0, 1.0, (1.05, 1.5), 1.7, 1.7, 2.2),
    "cirrhotic liver": (1.1, 1.0, (1.4, 1.5), 1.6, 1.5, 1.8),
    "spleen": (3.0, 0.73, (1.6, 2.1), 1.45, 1.1, 0.93),
    "kidney": (4.0, 0.84, (2.2, 3.1), 2.6, 2.6, 2.2),
    "aorta": (0.2, 0.7, (2.2, 4.1), 1.3, 1.3, 1.0),
    "portal vein": (0.6, 0.7, (2.0, 3.2), 1.6, 1.3, 1.0),
    "hepatic vein": (0.6, 0.7, (0.7, 0.9), 1.8, 1.2, 0.95),
}


@dataclass
class PhantomCase:
    images: dict                     # sequence key -> float32 (z, y, x) on the T1 15 min grid
    label: np.ndarray                # uint8 (z, y, x): 1 tumor
    lesions: list                    # one dict per lesion (tumors and mimics)
    motion: dict                     # sequence key -> (x, y, z) displacement in mm
    spacing: tuple                   # (z, y, x) mm
    origin: tuple = (0.0, 0.0, 0.0)  # (x, y, z) LPS mm of voxel 0
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    info: dict = field(default_factory=dict)

    def reference(self):
        """A SimpleITK image with this case's geometry (the T1 15 min grid)."""
        import SimpleITK as sitk

        ref = sitk.Image([int(s) for s in self.label.shape[::-1]], sitk.sitkUInt8)
        ref.SetSpacing([float(s) for s in self.spacing[::-1]])
        ref.SetOrigin(self.origin)
        ref.SetDirection(self.direction)
        return ref


def _smooth_field(rng, shape, coarse=(3, 5, 5), low=-1.0, high=1.0) -> np.ndarray:
    """A smooth random field in [low, high] (cubic up-sampling of coarse noise)."""
    g = rng.uniform(-1, 1, size=coarse)
    f = ndimage.zoom(g, [s / c for s, c in zip(shape, coarse)], order=3, mode="nearest")[
        : shape[0], : shape[1], : shape[2]]
    f = (f - f.min()) / max(f.max() - f.min(), 1e-6)
    return (low + (high - low) * f).astype(np.float32)


def _ellipsoid(P, centre, axes, rot=None):
    d = [(P[i] - centre[i]) for i in range(3)]
    if rot is not None:
        d = [sum(rot[i][j] * d[j] for j in range(3)) for i in range(3)]
    return sum((d[i] / axes[i]) ** 2 for i in range(3))


def _rotation(rng, max_angle=0.4):
    a, b, c = rng.uniform(-max_angle, max_angle, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _tube(P, a, b, radius):
    """Mask of a cylinder of ``radius`` around segment a-b (points P = (X, Y, Z))."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = ((P[0] - a[0]) * ab[0] + (P[1] - a[1]) * ab[1] + (P[2] - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0, 1)
    d2 = sum((P[i] - (a[i] + t * ab[i])) ** 2 for i in range(3))
    return d2 <= radius ** 2


def _value(tissue, seq_index, late_arterial):
    v = TISSUES[tissue][seq_index]
    return (v[1] if late_arterial else v[0]) if isinstance(v, tuple) else v


def _lesion_values(kind, rng, late_arterial, liver):
    """(core, rim) relative intensities per sequence and behaviour flags of one lesion."""
    flags = {}
    if kind == "hcc":
        arterial = rng.random() < 0.89
        washout60 = rng.random() < 0.57
        washout120 = washout60 or rng.random() < 0.43
        hbp_iso = rng.random() < 0.12
        art = (2.4 if late_arterial else 1.2) if arterial else 0.9 * liver[2]
        core = [rng.uniform(1.5, 2.0), 0.9, art, 1.4 if washout60 else liver[3] * rng.uniform(0.97, 1.03),
                1.2 if washout120 else liver[4] * rng.uniform(0.97, 1.03),
                liver[5] * rng.uniform(0.95, 1.1) if hbp_iso else 1.05]
        flags = dict(arterial_hyperenhancement=arterial, washout_60s=washout60, washout_120s=washout120,
                     hepatobiliary_iso=hbp_iso)
        return core, None, flags
    if kind == "metastasis":
        rim_enh = rng.random() < 0.7
        late_enh = rng.random() < 0.77
        core = [rng.uniform(2.0, 2.5), 0.6, rng.uniform(0.6, 0.8), 0.85, 0.9, 0.95]
        rim = [2.2, 0.75, 1.7 if rim_enh else 0.8, 1.4 if rim_enh else 0.9, 1.1, 1.5 if late_enh else 0.9]
        flags = dict(rim_enhancement=rim_enh, enhancement_15min=late_enh)
        return core, rim, flags
    if kind == "cyst":
        return [rng.uniform(6, 8)] + [0.35] * 5, None, {}
    if kind == "hemangioma":
        return [rng.uniform(4, 5), 0.45, 0.8, 1.4, 1.1, 0.75], [rng.uniform(4, 5), 0.45, 3.0, 1.4, 1.1, 0.75], {}
    raise ValueError(kind)


def _place_lesions(rng, P, liver_mask, spacing, tumor_kind, n_tumors, n_cysts, n_hemangiomas):
    """Lesion centres inside the liver, not overlapping; returns a list of dicts."""
    dist = ndimage.distance_transform_edt(liver_mask, sampling=spacing)
    lesions = []
    plan = [(tumor_kind, True)] * n_tumors + [("cyst", False)] * n_cysts + [("hemangioma", False)] * n_hemangiomas
    for kind, is_tumor in plan:
        if kind == "hcc":
            d = float(np.clip(rng.lognormal(np.log(25), 0.45), 10, 60))
        elif kind == "metastasis":
            d = float(np.clip(rng.lognormal(np.log(20), 0.45), 8, 45))
        elif kind == "cyst":
            d = float(rng.uniform(6, 30))
        else:
            d = float(rng.uniform(10, 35))
        r = d / 2
        ok = dist > max(r * 0.7, 4.0)
        for les in lesions:
            ok &= ((P[0] - les["center_mm"][0]) ** 2 + (P[1] - les["center_mm"][1]) ** 2
                   + (P[2] - les["center_mm"][2]) ** 2) > (r + les["radius_mm"] + 3) ** 2
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        i = rng.choice(idx)
        c = [float(P[k].flat[i]) for k in range(3)]
        lesions.append({"kind": kind, "is_tumor": is_tumor, "center_mm": c, "radius_mm": r,
                        "axes": [float(v) for v in rng.uniform(0.8, 1.2, 3)]})
    return lesions


@dataclass
class _Grid:
    """Physical coordinates (mm) centred on the grid; X left-right, Y antero-posterior, Z cranio-caudal."""

    shape: tuple                     # (z, y, x) voxels
    spacing: tuple                   # (z, y, x) mm
    ext: list                        # half extents (z, y, x) mm
    P: tuple                         # (X, Y, Z) coordinate arrays
    sc: float                        # anatomy scale in-plane (small test grids)
    scz: float                       # anatomy scale cranio-caudal


def _grid(shape, spacing) -> _Grid:
    ext = [(n - 1) * s / 2 for n, s in zip(shape, spacing)]
    z, y, x = [np.linspace(-e, e, n, dtype=np.float32) for e, n in zip(ext, shape)]
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    fov = (ext[2], ext[1], ext[0])  # half extents x, y, z
    sc = min(fov[0] / 190.0, fov[1] / 190.0)  # anatomy scale for small test grids
    scz = min(1.0, fov[2] / 96.0)
    return _Grid(shape, spacing, ext, (X, Y, Z), sc, scz)


@dataclass
class _Anatomy:
    tissue: np.ndarray               # uint8 (z, y, x): index into TISSUES
    body: np.ndarray
    cavity: np.ndarray
    liver: np.ndarray
    spleen: np.ndarray
    cirrhotic: bool
    liver_c: tuple                   # liver centre (x, y, z) mm
    portal: np.ndarray = None
    hepatic: np.ndarray = None


TISSUE_INDEX = {n: i for i, n in enumerate(TISSUES)}


def _organs(rng, g: _Grid) -> _Anatomy:
    """Body outline with subcutaneous fat and muscle, liver (sometimes cirrhotic), spleen, kidneys."""
    (X, Y, _), P, sc, scz, T = g.P, g.P, g.sc, g.scz, TISSUE_INDEX
    tissue = np.zeros(g.shape, np.uint8)
    body_ax = (sc * rng.uniform(150, 170), sc * rng.uniform(100, 120))
    body = (X / body_ax[0]) ** 2 + (Y / body_ax[1]) ** 2 <= 1
    tissue[body] = T["fat"]
    inner = (X / (body_ax[0] - 15 * sc)) ** 2 + (Y / (body_ax[1] - 15 * sc)) ** 2 <= 1
    tissue[inner] = T["muscle"]
    cavity = (X / (body_ax[0] - 27 * sc)) ** 2 + (Y / (body_ax[1] - 27 * sc)) ** 2 <= 1
    tissue[cavity] = T["fat"]
    cirrhotic = rng.random() < 0.3
    liver_c = (sc * rng.uniform(-60, -45), sc * rng.uniform(-10, 5), scz * rng.uniform(0, 15))
    liver_ax = (sc * rng.uniform(75, 90), sc * rng.uniform(60, 72), scz * rng.uniform(60, 75))
    liver = (_ellipsoid(P, liver_c, liver_ax, _rotation(rng, 0.25)) <= 1) & cavity
    liver &= (X - liver_c[0]) * 0.5 + (Y - liver_c[1]) * 0.2 < liver_ax[0] * 0.75   # a flatter medial side
    spleen = (_ellipsoid(P, (sc * 95, sc * 30, scz * 20), (sc * 33, sc * 25, scz * 50), _rotation(rng)) <= 1) & cavity
    kidneys = np.zeros(g.shape, bool)
    for side in (-1, 1):
        kidneys |= _ellipsoid(P, (side * sc * 65, sc * 60, scz * -45), (sc * 26, sc * 26, scz * 52),
                              _rotation(rng)) <= 1
    kidneys &= cavity
    tissue[spleen] = T["spleen"]
    tissue[kidneys] = T["kidney"]
    tissue[liver] = T["cirrhotic liver" if cirrhotic else "liver"]
    return _Anatomy(tissue, body, cavity, liver, spleen, bool(cirrhotic), liver_c)


def _add_vessels(rng, g: _Grid, a: _Anatomy) -> None:
    """Aorta, IVC, portal vein with three branches from the hilum, three hepatic veins into the IVC."""
    (X, Y, _), P, sc, scz, T, liver_c = g.P, g.P, g.sc, g.scz, TISSUE_INDEX, a.liver_c
    aorta = ((X - sc * 15) ** 2 + (Y - sc * 45) ** 2 <= (sc * 11) ** 2) & a.body
    ivc = ((X + sc * 20) ** 2 + (Y - sc * 40) ** 2 <= (sc * 10) ** 2) & a.body
    hilum = (liver_c[0] + sc * 35, liver_c[1] + sc * 15, liver_c[2] - scz * 5)
    portal = _tube(P, (sc * 0, sc * 25, scz * -30), hilum, sc * 7)
    for _ in range(3):
        end = (liver_c[0] + sc * rng.uniform(-60, 10), liver_c[1] + sc * rng.uniform(-40, 30),
               liver_c[2] + scz * rng.uniform(-40, 40))
        portal |= _tube(P, hilum, end, sc * rng.uniform(3.5, 5))
    hepatic = ivc.copy()
    top = (-sc * 20, sc * 40, liver_c[2] + scz * 45)
    for _ in range(3):
        end = (liver_c[0] + sc * rng.uniform(-60, 20), liver_c[1] + sc * rng.uniform(-45, 20),
               liver_c[2] + scz * rng.uniform(-35, 20))
        hepatic |= _tube(P, top, end, sc * rng.uniform(3, 4.5)) & (a.liver | ivc)
    a.tissue[hepatic & a.body] = T["hepatic vein"]
    a.tissue[portal & (a.liver | a.cavity)] = T["portal vein"]
    a.tissue[aorta] = T["aorta"]
    a.portal, a.hepatic = portal, hepatic


def _plan_lesions(rng, g: _Grid, a: _Anatomy, tumor_kind) -> tuple[str, list]:
    """The tumor kind (HCC or metastases) and the lesions placed in the liver, away from the vessels."""
    kind = tumor_kind or ("hcc" if rng.random() < 0.5 else "metastasis")
    if kind == "hcc":
        n_t = 1 if (u := rng.random()) < 0.6 else (int(rng.integers(2, 4)) if u < 0.9 else int(rng.integers(4, 6)))
    else:
        n_t = int(rng.integers(1, 7))
    liver_free = a.liver & ~a.portal & ~a.hepatic
    lesions = _place_lesions(rng, g.P, liver_free, g.spacing, kind, n_t,
                             int(rng.integers(0, 4)), int(rng.integers(0, 3)))
    return kind, lesions


def _relative_intensities(tissue: np.ndarray, late_arterial: bool) -> np.ndarray:
    """(6, z, y, x) relative intensity per sequence of the tissue map."""
    names = list(TISSUES)
    return np.stack([np.vectorize(lambda t, i=i: _value(names[t], i, late_arterial), otypes=[np.float32])(
        np.arange(len(names)))[tissue] for i in range(6)])


def _paint_lesions(rng, g: _Grid, a: _Anatomy, lesions: list, rel: np.ndarray, liver_vals: list,
                   late_arterial: bool, informative) -> np.ndarray:
    """Lesion intensities (core, rim) into ``rel``; returns the tumor label.  ``informative``: tumors have
    contrast only in those sequences and look like liver in the others."""
    label = np.zeros(g.shape, np.uint8)
    tumor_mask = np.zeros(g.shape, bool)
    for les in lesions:
        core_v, rim_v, flags = _lesion_values(les["kind"], rng, late_arterial, liver_vals)
        les.update(flags)
        if informative is not None and les["is_tumor"]:  # an informative sequence must show the tumor
            for i, key in enumerate(SEQUENCE_KEYS):
                if key in informative and abs(core_v[i] / liver_vals[i] - 1) < 0.25:
                    core_v[i] = 0.6 * liver_vals[i]
        r = les["radius_mm"]
        wob = 1 + 0.08 * _smooth_field(rng, g.shape, (3, 4, 4), -1, 1)
        e = _ellipsoid(g.P, les["center_mm"], [r * ax for ax in les["axes"]], _rotation(rng, 1.0)) * wob
        mask = (e <= 1) & a.liver
        if not mask.any():
            continue
        les["voxels"] = int(mask.sum())
        vals = np.asarray(core_v, np.float32)[:, None]
        rel[:, mask] = vals
        if rim_v is not None:
            rim_w = 3.0 / max(r, 3.0) if les["kind"] == "metastasis" else 0.3
            rim = mask & (e > (1 - rim_w) ** 2)
            if les["kind"] == "hemangioma":  # peripheral nodules, bright as the aorta in the arterial phase
                rim &= _smooth_field(rng, g.shape, (6, 10, 10)) > 0.4
            rel[:, rim] = np.asarray(rim_v, np.float32)[:, None]
        if les["is_tumor"]:
            label[mask] = 1
            tumor_mask |= mask
    # informative variant: tumors look like liver in the other sequences
    if informative is not None:
        for i, key in enumerate(SEQUENCE_KEYS):
            if key not in informative:
                rel[i, tumor_mask] = liver_vals[i]
    return label


def _acquire(rng, g: _Grid, rel: np.ndarray, noise: bool, unregistered: bool,
             residual_misalignment: bool) -> tuple[dict, dict, float]:
    """The six images from the relative intensities: transmit field (contrast), receive field, T2's coarser
    slices, motion between series and Rician noise with a g-factor map.  Returns images, motion (x, y, z mm)
    and the noise sigma."""
    shape = g.shape
    images, motion = {}, {}
    b1 = _smooth_field(rng, shape, (2, 3, 3), 0.6, 1.1) if noise else np.ones(shape, np.float32)
    coil = _smooth_field(rng, shape, (2, 3, 3), 0.8, 1.2) if noise else np.ones(shape, np.float32)
    gmap = _smooth_field(rng, shape, (2, 3, 3), 1.0, 1.5) if noise else np.ones(shape, np.float32)
    sigma = rng.uniform(0.03, 0.05) * LIVER_SIGNAL
    for i, key in enumerate(SEQUENCE_KEYS):
        r = rel[i]
        if key != "T2":
            # lower flip angle -> less T1 contrast: relative intensity compressed towards the liver's
            r = np.where(r > 0, r ** (1.0 + 0.8 * (b1 - 1.0)), 0.0) * b1
        img = (LIVER_SIGNAL * r * coil).astype(np.float32)
        if key == "T2":  # coarser slices: a centred two-slice profile, then the slice-profile blur
            img = ndimage.correlate1d(img, [0.25, 0.5, 0.25], axis=0, mode="nearest")  # centred: no half-slice shift
            img = ndimage.gaussian_filter1d(img, sigma=max(6.0 / g.spacing[0] / 2.355, 0.3), axis=0)
        motion[key] = _motion(rng, key, unregistered, residual_misalignment)
        if any(motion[key]):
            shift = motion[key]
            img = ndimage.shift(img, [shift[2] / g.spacing[0], shift[1] / g.spacing[1], shift[0] / g.spacing[2]],
                                order=1, mode="nearest")
        if noise:
            s = sigma * gmap
            img = np.sqrt((img + rng.normal(0, 1, shape) * s) ** 2 + (rng.normal(0, 1, shape) * s) ** 2)
        images[key] = img.astype(np.float32)
    return images, motion, sigma


def _motion(rng, key: str, unregistered: bool, residual_misalignment: bool) -> list:
    """Displacement (x, y, z mm) of one series against T1 15 min: breathing (``unregistered``), the residual
    misalignment registration leaves, or none."""
    if key == "T1_15min":
        return [0.0, 0.0, 0.0]
    if unregistered:
        shift = (float(rng.uniform(-2, 2)), float(rng.uniform(-3, 3)), float(np.clip(rng.normal(0, 4), -10, 10)))
    elif residual_misalignment:
        shift = tuple(float(v) for v in rng.normal(0, 0.7, 3))
    else:
        shift = (0.0, 0.0, 0.0)
    return list(shift)


def generate_case(seed: int = 0, shape=(48, 128, 128), spacing=(4.0, 3.0, 3.0), informative=None,
                  unregistered: bool = False, residual_misalignment: bool = True, noise: bool = True,
                  tumor_kind: str | None = None) -> PhantomCase:
    """One phantom case on a (z, y, x) grid with ``spacing`` (mm).  ``noise=False`` gives noise- and
    field-free images (for checking contrast); ``tumor_kind`` forces "hcc" or "metastasis"."""
    rng = np.random.default_rng(seed)
    informative = list(informative) if informative else None
    for k in informative or []:
        if k not in SEQUENCE_KEYS:
            raise ValueError(f"unknown sequence {k!r} in informative; expected {', '.join(SEQUENCE_KEYS)}")
    g = _grid(tuple(int(s) for s in shape), tuple(float(s) for s in spacing))
    anatomy = _organs(rng, g)
    _add_vessels(rng, g, anatomy)
    kind, lesions = _plan_lesions(rng, g, anatomy, tumor_kind)
    late_arterial = bool(rng.random() < 0.5)
    liver_vals = [_value("cirrhotic liver" if anatomy.cirrhotic else "liver", i, late_arterial) for i in range(6)]
    rel = _relative_intensities(anatomy.tissue, late_arterial)
    label = _paint_lesions(rng, g, anatomy, lesions, rel, liver_vals, late_arterial, informative)
    if noise:  # liver texture (same pattern in every series, stronger when cirrhotic)
        cv = 0.07 if anatomy.cirrhotic else 0.04
        tex = 1 + cv * 1.7 * _smooth_field(rng, g.shape, (12, 32, 32), -1, 1)
        organ = anatomy.liver | anatomy.spleen
        rel[:, organ] *= tex[organ]
    images, motion, sigma = _acquire(rng, g, rel, noise, unregistered, residual_misalignment)
    info = {"seed": seed, "tumor_kind": kind, "cirrhotic": anatomy.cirrhotic,
            "arterial_phase": "late" if late_arterial else "early", "informative": informative,
            "unregistered": unregistered, "noise_sigma": float(sigma) if noise else 0.0,
            "liver_volume_ml": float(anatomy.liver.sum() * np.prod(g.spacing) / 1000)}
    origin = tuple(-e for e in g.ext[::-1])
    return PhantomCase(images, label, lesions, motion, g.spacing, origin, info=info)


def write_case(case: PhantomCase, folder: str) -> str:
    """Six NIfTI sequences named by key, ``label.nii.gz`` and ``lesions.json`` (all atomic)."""
    from .case_io import write_image, write_json

    ref = case.reference()
    os.makedirs(folder, exist_ok=True)
    for key in SEQUENCE_KEYS:
        write_image(case.images[key], ref, os.path.join(folder, f"{key}.nii.gz"), dtype=np.float32)
    write_image(case.label, ref, os.path.join(folder, "label.nii.gz"), dtype=np.uint8)
    write_json({"lesions": case.lesions, "motion_mm_xyz": case.motion, **case.info,
                "spacing_zyx_mm": list(case.spacing)}, os.path.join(folder, "lesions.json"))
    return folder


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("out", help="output folder (one sub-folder per case)")
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (case i uses seed + i)")
    p.add_argument("--informative", nargs="+", default=None, metavar="KEY",
                   help="tumor contrast only in these sequences (known sequence importance)")
    p.add_argument("--unregistered", action="store_true", help="raw breathing motion between series")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[4.0, 3.0, 3.0], metavar=("Z", "Y", "X"))
    p.add_argument("--dicom", action="store_true", help="write each case as a DICOM study (localiser, T2, one "
                   "dynamic series of four phases, diffusion, hepatobiliary phase, ground-truth SEG)")


def run(args) -> int:
    from tqdm import tqdm

    for i in tqdm(range(args.cases), desc="phantom", unit="case", disable=args.cases < 2):
        case = generate_case(args.seed + i, args.shape, args.spacing, args.informative, args.unregistered)
        if getattr(args, "dicom", False):
            from .dicom.phantom import write_phantom_study
            write_phantom_study(case, os.path.join(args.out, f"case_{i:03d}"))
        else:
            write_case(case, os.path.join(args.out, f"case_{i:03d}"))
    print(f"{args.cases} case(s) -> {args.out}")
    return 0

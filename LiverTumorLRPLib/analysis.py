"""The case layer: one case through one model, with every result on the case's reference grid.

prepare on the model's grid (its spacing, or nnU-Net's own preprocessing) -> predict -> segment by the
model's labels (argmax; the lesion class by name) -> explain a region (Eq. 2) -> sequence relevance
(Sec. 2.3) -> explanations of label components (true positives, false negatives).  The explanations are
computed on the network grid, where Eq. 2 holds exactly; maps come back to the case grid, shares are those of
the network grid.

This is the only place where a case is computed.  The front ends -- the command line and cohorts
(:mod:`.pipeline` writes files), the worker process (files for the Slicer module and batch runs), the
in-process MRML tasks and the web page (:mod:`.mrml.tasks` writes nodes) -- only decide where results go.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .case_io import Case, read_case
from .geometry import GridMap, grid_map
from .model_info import ModelInfo, model_info
from .necessity import REFERENCE, Necessity, agreement, dice
from .progress import as_progress
from .shares import shares_of

DEFAULT_RESAMPLES = 10      # draws of the random region B for the spread of Sec. 2.3's shares
METHODS = ("contribution", "paper")   # sequence relevance: Shapley values of f with LRP maps, or Sec. 2.3 exactly
DEFAULT_METHOD = "contribution"


def load(model):
    """A network: ``model`` itself if it is one, else :func:`.models.load_model` of the spec (on the CPU)."""
    from .models import load_model

    return model if hasattr(model, "forward") else load_model(model, device="cpu")


def as_case(case, net=None, labels: Optional[str] = None) -> Case:
    """``case`` itself, or the case (a folder, or an nnU-Net dataset's case) read with the model's channels, its
    label taken as the model's lesion class (``labels``: a folder of nnU-Net label files to take it from)."""
    if isinstance(case, Case):
        return case
    if net is None:
        return read_case(case, labels=labels)
    info = model_info(net)
    return read_case(case, sequences=info.channels, labels=labels, lesion=info.lesion, model_classes=info.classes)


@dataclass
class Prepared:
    """A case as the network sees it: the normalised image on the network grid and the way back."""

    case: Case
    net: object
    info: ModelInfo
    grid: GridMap
    image: np.ndarray   # (C, d, h, w) on the network grid


def prepare(case, net) -> Prepared:
    """Bring ``case`` onto ``net``'s grid (its spacing, or nnU-Net's own preprocessing); a case already prepared
    for ``net`` is returned as it is."""
    if isinstance(case, Prepared):
        if case.net is net:
            return case
        case = case.case
    info = model_info(net)
    case = as_case(case, net)
    if tuple(case.channels) != tuple(info.channels):
        raise ValueError(f"case {case.name} has the sequences {', '.join(case.channels)} but the model expects "
                         f"{', '.join(info.channels)} in that order")
    grid = net.grid_map_for(case) if hasattr(net, "grid_map_for") else grid_map(info, case)
    src = case.raw if getattr(grid, "wants_raw", False) else case.image
    if src is None:
        raise ValueError(f"case {case.name}: the model needs the un-normalised images (read the case with keep_raw)")
    return Prepared(case, net, info, grid, grid.image_to_network(src))


# ---- segmentation -----------------------------------------------------------------------------------------------
@dataclass
class Segmentation:
    """The model's prediction of one case: lesion probability and labels on the case grid."""

    prepared: Prepared = field(repr=False)
    probability: np.ndarray          # (z, y, x) float32: probability of the lesion class, case grid
    labels: np.ndarray               # (z, y, x) uint8: the predicted class of every voxel, case grid
    network_labels: np.ndarray       # the same on the network grid (where the explanations run)
    windows: int                     # sliding windows the network ran on
    window_shape: tuple

    @property
    def segmentation(self) -> np.ndarray:
        """The lesion mask (uint8) on the case grid."""
        return (self.labels == self.prepared.info.lesion_index).astype(np.uint8)

    @property
    def network_lesion(self) -> np.ndarray:
        return self.network_labels == self.prepared.info.lesion_index

    def summary(self) -> dict:
        """Voxel count, volume, class, grids and windows (and Dice against the case's label when it has one)."""
        p, seg = self.prepared, self.segmentation
        out = {"case": p.case.name, "tumor_voxels": int(seg.sum()),
               "tumor_volume_ml": float(seg.sum() * p.case.voxel_volume_mm3 / 1000.0),
               "lesion_class": p.info.lesion, "network_grid": list(p.image.shape[1:]),
               "network_spacing": list(p.grid.network_spacing) if p.grid.network_spacing else None,
               "windows": self.windows, "window_shape": list(self.window_shape)}
        if p.case.label is not None:
            out["dice"] = dice(seg, p.case.label > 0)
        return out


def segment(p: Prepared, device="auto", patch_size=None, progress=None) -> Segmentation:
    """Predict on the network grid; probabilities come back linearly interpolated, labels by nearest neighbour
    (nnU-Net: its export, which resamples the logits and takes the argmax there)."""
    from .inference import plan_for, predict_logits, probabilities

    prog = as_progress(progress)
    logits = predict_logits(p.net, p.image, device=device, patch_size=patch_size, progress=prog.part(0, 0.9))
    probs = probabilities(logits)
    labels_net = probs.argmax(axis=0).astype(np.uint8)
    prob = p.grid.to_case(probs[p.info.lesion_index], "probability").astype(np.float32)
    plan = plan_for(p.info, p.image.shape[1:], patch_size)
    prog(1.0, "segmented")
    return Segmentation(p, prob, case_labels(p, logits, labels_net), labels_net, len(plan.windows),
                        tuple(plan.patch))


def case_labels(p: Prepared, logits: np.ndarray, network_labels: Optional[np.ndarray] = None) -> np.ndarray:
    """The predicted class of every voxel on the case grid, from the logits on the network grid."""
    if getattr(p.grid, "wants_raw", False):      # nnU-Net's export resamples the logits, then takes the argmax
        return p.grid.to_case(logits, "segmentation").astype(np.uint8)
    labels = logits.argmax(axis=0).astype(np.uint8) if network_labels is None else network_labels
    return p.grid.to_case(labels, "segmentation").astype(np.uint8)


# ---- the model with sequences absent -------------------------------------------------------------------------------
class SubsetPasses:
    """The model on ``p`` with only some sequences present, the others replaced by ``reference``
    (:func:`.necessity.reference_image`): per subset of channel indices the segmentation's Dice against ``target``
    and, given seed ``weights`` on the network grid, the output ``f = sum(weights * y)``.  Forward passes run
    ``batch`` subsets at a time, each subset once (Dice and f of one pass are kept together)."""

    def __init__(self, p: Prepared, reference: str, target: Optional[np.ndarray], weights: Optional[np.ndarray],
                 device="auto", patch_size=None, batch: int = 4, progress=None):
        from .necessity import reference_image

        self.p, self.target, self.weights = p, target, weights
        self.reference = reference_image(p.image, reference)
        self.device, self.patch_size, self.batch = device, patch_size, batch
        self.progress = as_progress(progress)
        self.done: dict = {}

    def _run(self, subsets):
        from .inference import predict_logits
        from .necessity import with_only

        lesion, total = self.p.info.lesion_index, 2 ** len(self.p.info.channels)
        for i in range(0, len(subsets), self.batch):
            chunk = subsets[i:i + self.batch]
            images = np.stack([with_only(self.p.image, self.reference, s) for s in chunk])
            for s, logits in zip(chunk, predict_logits(self.p.net, images, device=self.device,
                                                       patch_size=self.patch_size)):
                d = None if self.target is None else dice(case_labels(self.p, logits) == lesion, self.target)
                f = None if self.weights is None else float((self.weights * logits).sum())
                self.done[s] = (d, f)
            self.progress(min(len(self.done) / total, 1.0), f"sequences absent: {len(self.done)} forward passes")

    def values(self, subsets, which: int) -> list:
        """Dice (``which`` 0) or f (1) with only each subset present."""
        todo = list(dict.fromkeys(s for s in subsets if s not in self.done))
        if todo:
            self._run(todo)
        return [self.done[s][which] for s in subsets]

    def dice_of(self, subsets) -> list:
        return self.values(subsets, 0)

    def output_of(self, subsets) -> list:
        return self.values(subsets, 1)


def necessity_target(p: Prepared, seg: Optional[Segmentation], device="auto", patch_size=None):
    """(mask, what): the case's label when it has one, else the segmentation with every sequence."""
    if p.case.label is not None:
        return p.case.label > 0, "label"
    seg = seg if seg is not None else segment(p, device, patch_size)
    return seg.segmentation.astype(bool), "prediction"


def necessity(p: Prepared, seg: Optional[Segmentation] = None, reference: str = REFERENCE, device="auto",
              patch_size=None, batch: int = 4, progress=None, passes: Optional[SubsetPasses] = None) -> Necessity:
    """How much the segmentation needs each sequence (:mod:`.necessity`): the Dice with one sequence replaced by
    ``reference`` and the Shapley values of Dice over all subsets of sequences (2^C forward passes, ``batch`` at
    a time), against the case's label when it has one, else against the segmentation with every sequence.
    ``passes``: forward passes already made (:class:`SubsetPasses` with a target), reused."""
    from .necessity import sequence_necessity

    target, what = necessity_target(p, seg, device, patch_size)
    if passes is None:
        passes = SubsetPasses(p, reference, target, None, device, patch_size, batch, progress)
    return sequence_necessity(passes.dice_of, p.info.channels, reference, what)


# ---- explanations -----------------------------------------------------------------------------------------------
@dataclass
class Explanation:
    """Relevance per sequence on the case grid and its shares: the one result every front end shows.

    ``shares`` (channel sums over the total, summing to 1), ``positive`` and ``negative`` (the mass of each sign
    over the total; ``shares = positive + negative``) are those of the network grid, where Eq. 2 holds exactly."""

    title: str
    maps: np.ndarray                 # (C, z, y, x) float32 on the case grid
    shares: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    channels: tuple
    display_names: tuple
    details: dict = field(default_factory=dict)      # counts and options (n_voxels, n_excluded, preset, ...)
    region: Optional[np.ndarray] = field(default=None, repr=False)   # the explained region, case grid (Eq. 2)
    interval: dict = field(default_factory=dict)     # Sec. 2.3's spread over draws of B (relevance_p2.5, ...)
    necessity: Optional[Necessity] = None            # how much the segmentation needs each sequence
    agreement: Optional[dict] = None                 # the shares' ranking against the Shapley values of Dice

    @property
    def most_relevant(self) -> str:
        return self.channels[int(np.argmax(self.shares))]


def region_mask(spec, p: Prepared, seg: Optional[Segmentation] = None):
    """(mask on the case grid, mask on the network grid, description) of a region.

    ``tumor`` / ``background``: the predicted lesion / everything else, taken on the network grid itself;
    a bool array on the case grid; or the path of a mask file on the case's reference grid."""
    if spec is None or (isinstance(spec, str) and spec in ("tumor", "background")):
        if seg is None:
            raise ValueError("a predicted region needs the segmentation")
        background = spec == "background"
        net_mask = ~seg.network_lesion if background else seg.network_lesion
        mask = seg.segmentation.astype(bool)
        desc = f"predicted {'background' if background else p.info.lesion}"
        return (~mask if background else mask), net_mask, desc
    if isinstance(spec, np.ndarray):
        mask, desc = spec.astype(bool), "region"
    else:
        from .case_io import label_on_grid, read_image

        mask = label_on_grid(read_image(str(spec), "region mask"), p.case.reference, str(spec)) > 0
        desc = f"mask {os.path.basename(str(spec))}"
        if not mask.any():
            raise ValueError(f"region mask {spec}: no voxel is set")
    if mask.shape != p.case.shape:
        raise ValueError(f"the region has shape {mask.shape}, the case {p.case.shape}")
    return mask, p.grid.mask_to_network(mask), desc


def _explanation(p: Prepared, title: str, maps_net: np.ndarray, details: dict, region=None, interval=None,
                 keep_sign: bool = False):
    shares, positive, negative = shares_of(maps_net, keep_sign)
    maps = p.grid.to_case(maps_net, "relevance").astype(np.float32)
    return Explanation(title, maps, shares, positive, negative, tuple(p.info.channels),
                       tuple(p.info.display_names), details, region, interval or {})


def explain_region(p: Prepared, region="tumor", cls="tumor", preset="recommended", device="auto",
                   seg: Optional[Segmentation] = None, patch_size=None, progress=None) -> Explanation:
    """Eq. 2: relevance of ``region`` for class ``cls`` (a name of the model's classes, or its index)."""
    from .explain import region_relevance

    prog = as_progress(progress)
    if seg is None and (region is None or isinstance(region, str) and region in ("tumor", "background")):
        seg, prog = segment(p, device, patch_size, prog.part(0.0, 0.2)), prog.part(0.2, 1.0)
    mask, mask_net, desc = region_mask(region, p, seg)
    if not mask_net.any():
        raise ValueError(f"{p.case.name}: the region ({desc}) is empty")
    c = p.info.class_index(cls)
    res = region_relevance(p.net, p.image, mask_net, cls=c, preset=preset, device=device, patch_size=patch_size,
                           progress=prog)
    name = p.info.classes[c]
    details = {"region": desc, "class": name, "preset": preset if isinstance(preset, str) else repr(preset),
               "n_voxels": res.n_voxels, "n_excluded": res.n_excluded}
    return _explanation(p, f"{name}-class relevance of {desc}", res.maps, details, mask)


def sequence_relevance(p: Prepared, preset="recommended", device="auto", seed: int = 0, background: str = "random",
                       max_voxels: Optional[int] = None, resamples: int = DEFAULT_RESAMPLES, patch_size=None,
                       progress=None, seg: Optional[Segmentation] = None,
                       necessity_reference: Optional[str] = REFERENCE, method: str = DEFAULT_METHOD) -> Explanation:
    """Which sequences the model relies on, per ``method``:

    * ``contribution`` (the default, :func:`sequence_contribution`): the exact Shapley values of Sec. 2.3's
      explained output over the sequences, with reference-based LRP voxel maps that add up to them;
    * ``paper`` (:func:`paper_sequence_relevance`): Sec. 2.3 exactly, ``M = M_B^0 + M_T^1`` of Eq. 2 maps with
      ``preset``'s rules, over ``resamples`` draws of B.

    Beside it, unless ``necessity_reference`` is None, how much the segmentation needs each sequence
    (:func:`necessity`) and whether the two rankings agree (:func:`.necessity.agreement`)."""
    if method not in METHODS:
        raise ValueError(f"unknown sequence relevance method {method!r}; use one of {', '.join(METHODS)}")
    if method == "contribution":
        return sequence_contribution(p, device, patch_size, progress, seg, necessity_reference)
    return paper_sequence_relevance(p, preset, device, seed, background, max_voxels, resamples, patch_size,
                                    progress, seg, necessity_reference)


def paper_sequence_relevance(p: Prepared, preset="recommended", device="auto", seed: int = 0,
                             background: str = "random", max_voxels: Optional[int] = None,
                             resamples: int = DEFAULT_RESAMPLES, patch_size=None, progress=None,
                             seg: Optional[Segmentation] = None,
                             necessity_reference: Optional[str] = REFERENCE) -> Explanation:
    """Sec. 2.3: ``M = M_B^0 + M_T^1`` per sequence, normalised to sum 1; with ``resamples`` draws of B their
    spread and the exact expectation over B (:func:`.explain.sequence_relevance_interval`)."""
    from .explain import sequence_relevance as sec23, sequence_relevance_interval

    prog = as_progress(progress)
    with_necessity = necessity_reference is not None
    kw = dict(preset=preset, device=device, seed=seed, background=background, max_voxels=max_voxels,
              patch_size=patch_size, progress=prog.part(0.0, 0.7 if with_necessity else 1.0))
    res = sequence_relevance_interval(p.net, p.image, resamples=resamples, **kw) if resamples else sec23(
        p.net, p.image, **kw)
    details = {"analysis": "sequence relevance (Sec. 2.3): M = M_B^0 + M_T^1", "method": "paper",
               "preset": preset if isinstance(preset, str) else repr(preset), "background_choice": background,
               "seed": seed, **{k: v for k, v in res.as_dict().items() if k.startswith("n_")},
               "lesion_class": res.lesion}
    interval = {}
    if resamples:
        interval = {"resamples": resamples, "relevance_mean": res.mean, "relevance_std": res.std,
                    "relevance_p2.5": res.low, "relevance_p97.5": res.high, "relevance_expected": res.expected}
    e = _explanation(p, "sequence relevance", res.maps, details, None, interval)
    if with_necessity:
        e.necessity = necessity(p, seg, necessity_reference, device, patch_size, progress=prog.part(0.7, 1.0))
        e.agreement = agreement(e.shares, e.necessity.shapley_dice, e.channels, e.display_names)
    return e


def reference_lrp(net, reference: str, image: np.ndarray):
    """Reference-based LRP (:mod:`.lrp.reference`) against the reference that replaces an absent sequence
    (:func:`.necessity.reference_image`): its blur, 0, or each sequence's volume mean."""
    from .lrp.reference import ReferenceLRP
    from .necessity import BLUR_SIGMA, REFERENCES

    if reference == "blur":
        return ReferenceLRP(net, "blur", sigma=BLUR_SIGMA, preset="reference-blur")
    if reference == "zero":
        return ReferenceLRP(net, "mean", preset="reference-mean")
    if reference == "mean":
        return ReferenceLRP(net, image.mean(axis=(1, 2, 3)), preset="reference-volume-mean")
    raise ValueError(f"unknown reference {reference!r}; use one of {', '.join(REFERENCES)}")


def sequence_contribution(p: Prepared, device="auto", patch_size=None, progress=None,
                          seg: Optional[Segmentation] = None,
                          necessity_reference: Optional[str] = REFERENCE) -> Explanation:
    """Each sequence's exact Shapley value for Sec. 2.3's explained output, normalised to sum 1, with voxel maps.

    ``f = mean_T y^lesion + mean_B y^(predicted class)`` in expectation over B (:func:`.regions.sec23_output_weights`);
    a sequence is absent when replaced by ``necessity_reference`` (blur when None).  The 2^C forward passes
    (sampled orderings above 8 sequences) also give the Dice of each subset, hence the necessity beside it.
    The voxel maps are reference-based LRP of f against the same reference (Eq. 1 of f, no per-voxel
    normalisation), each sequence's map shifted to sum to its Shapley value (:func:`.necessity.calibrated_maps`);
    ``details`` keeps the maps' own sums (``lrp_sums``), their Spearman rho with the Shapley values and the
    share of the relevance the shift moved."""
    from .explain import relevance
    from .regions import sec23_output_weights
    from .necessity import calibrated_maps, game_shapley, spearman

    prog = as_progress(progress)
    reference = necessity_reference or REFERENCE
    seg = seg if seg is not None else segment(p, device, patch_size, prog.part(0.0, 0.1))
    weights = sec23_output_weights(seg.network_labels, p.info.lesion_index, p.info.n_classes)
    target, what = necessity_target(p, seg)
    passes = SubsetPasses(p, reference, target, weights, device, patch_size, progress=prog.part(0.1, 0.8))
    phi, err, n_passes = game_shapley(passes.output_of, len(p.info.channels))
    lrp = reference_lrp(p.net, reference, p.image)
    maps = relevance(lrp, p.image, weights, device=device, patch_size=patch_size)
    prog(0.95, "contribution maps")
    sums = maps.reshape(len(maps), -1).sum(axis=1).astype(np.float64)
    calibrated = calibrated_maps(maps, phi)
    moved = float(np.abs(phi - sums).sum() / max(np.abs(calibrated).sum(), 1e-12))
    full, none = frozenset(range(len(phi))), frozenset()
    f_full, f_none = passes.output_of([full, none])
    details = {"analysis": "sequence contribution: exact Shapley values of Sec. 2.3's f over the sequences, "
                           "reference-based LRP maps", "method": "contribution", "reference": reference,
               "lesion_class": p.info.lesion, "n_tumor": int(seg.network_lesion.sum()),
               "n_background": int((~seg.network_lesion).sum()), "f_full": f_full, "f_reference": f_none,
               "shapley_f": dict(zip(p.info.channels, phi.tolist())), "exact": err is None,
               "forward_passes": n_passes, "lrp_sums": dict(zip(p.info.channels, sums.tolist())),
               "lrp_spearman": spearman(sums, phi), "calibration_moved": moved}
    interval = {} if err is None else {"shapley_f_stderr": err.tolist()}
    e = _explanation(p, "sequence contribution", calibrated, details, None, interval, keep_sign=True)
    if necessity_reference is not None:
        e.necessity = necessity(p, seg, reference, device, patch_size, passes=passes)
        e.agreement = agreement(e.shares, e.necessity.shapley_dice, e.channels, e.display_names)
    if f_full < f_none:     # shares over |f(all) - f(none)|: positive still means "raises the evidence"
        note = (f"with every sequence replaced by its reference the model's tumor-vs-background evidence is "
                f"higher ({f_none:.3g}) than with the image itself ({f_full:.3g}), so the shares sum to -1")
        e.agreement = dict(e.agreement or {})
        e.agreement["warning"] = "; ".join(w for w in (e.agreement.get("warning"), note) if w)
    prog(1.0, "sequence contribution")
    return e


def label_components(label: np.ndarray, segmentation: np.ndarray, max_components: int) -> list:
    """The largest true-positive and false-negative connected components of ``label`` (at most
    ``max_components`` of each kind), as (kind, mask) pairs on the case grid."""
    from scipy import ndimage

    comps, n = ndimage.label(label > 0)
    sizes = ndimage.sum(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    found = {"true positive": [], "false negative": []}
    for idx in np.argsort(sizes)[::-1]:
        region = comps == idx + 1
        kind = "true positive" if (segmentation.astype(bool) & region).any() else "false negative"
        if len(found[kind]) < max_components:
            found[kind].append(region)
    return [(kind, region) for kind, regions in found.items() for region in regions]


def explain_components(p: Prepared, seg: Segmentation, preset="recommended", device="auto", max_components: int = 2,
                       patch_size=None) -> list:
    """Lesion-class Eq. 2 relevance of the largest true-positive and false-negative components of the case's label
    (on the network grid, like every explanation), as :class:`Explanation` with ``details["kind"]``."""
    if p.case.label is None:
        return []
    out = []
    for kind, region in label_components(p.case.label, seg.segmentation, max_components):
        e = explain_region(p, region, p.info.lesion, preset, device, seg, patch_size)
        e.details["kind"] = kind
        e.title = f"{p.info.lesion}-class relevance of a {kind} ({int(region.sum())} voxels)"
        out.append(e)
    return out


__all__ = ["Prepared", "Segmentation", "Explanation", "load", "as_case", "prepare", "segment", "case_labels",
           "explain_region", "sequence_relevance", "necessity", "explain_components", "label_components", "region_mask", "dice",
           "DEFAULT_RESAMPLES", "METHODS", "DEFAULT_METHOD", "sequence_contribution", "paper_sequence_relevance",
           "SubsetPasses", "reference_lrp"]

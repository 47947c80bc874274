"""What a segmentation model expects and produces: channels, classes, strides, patch, spacing, padding.

One :class:`ModelInfo` travels with every network the library explains (attribute ``model_info`` on the
``nn.Module``); :func:`model_info` finds or derives it.  The defaults describe the paper's set-up: six
sequences in channel order, two classes (background, tumor).  nnU-Net folders, MONAI networks and our
own u-net fill it from their plans or configs, so nothing downstream guesses a stride or a class count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from .sequences import CLASS_NAMES, SEQUENCE_KEYS, display_name

PADDINGS = ("edge", "zero")


@dataclass(frozen=True)
class ModelInfo:
    """The contract between a network and the library.

    ``channels``: the input channel keys in order (sequence keys such as ``T1_20s``, or any names);
    ``classes``: output label names, index = logit channel; ``lesion``: the class Sec. 2.3 explains
    against the rest (``tumor`` by default); ``strides``: total down-sampling per axis (z, y, x), every
    input size must be a multiple; ``patch_size``: sliding-window patch on the network grid (None: the
    whole volume in one window); ``spacing``: (z, y, x) mm the model was trained at (None: run on the
    case grid as it is); ``padding``: how a volume is padded to the strides (``edge`` copies border
    voxels, ``zero`` pads with 0 as nnU-Net); ``pad_to_patch``: pad volumes smaller than the patch up to
    it (nnU-Net); ``tile_step``: window step as a fraction of the patch; ``mirror_axes``: spatial axes
    (0 = z, 1 = y, 2 = x of the network grid) of test-time mirroring -- the prediction is the mean over
    every subset of them of ``flip(f(flip(x)))``, as nnU-Net's ``use_mirroring`` (empty: none).
    """

    channels: tuple = SEQUENCE_KEYS
    classes: tuple = CLASS_NAMES
    lesion: str = "tumor"
    strides: tuple = (8, 8, 8)
    patch_size: Optional[tuple] = None
    spacing: Optional[tuple] = None
    padding: str = "edge"
    pad_to_patch: bool = False
    tile_step: float = 0.5
    mirror_axes: tuple = ()
    normalisation: str = "zscore-foreground"
    source: str = ""
    notes: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "strides", _triple(self.strides, "strides"))
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", _triple(self.patch_size, "patch_size"))
            bad = [p for p, s in zip(self.patch_size, self.strides) if p % s]
            if bad:
                raise ValueError(f"patch size {self.patch_size} is not a multiple of the strides {self.strides}")
        if self.spacing is not None:
            sp = tuple(float(s) for s in self.spacing)
            if len(sp) != 3 or not all(s > 0 and math.isfinite(s) for s in sp):
                raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {self.spacing}")
            object.__setattr__(self, "spacing", sp)
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if len(self.classes) < 2:
            raise ValueError(f"a segmentation model needs at least two classes, got {self.classes}")
        if not 0 < self.tile_step <= 1:
            raise ValueError("tile_step must be in (0, 1]")
        axes = tuple(sorted({int(a) for a in self.mirror_axes}))
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"mirror_axes must be spatial axes 0, 1, 2 (z, y, x), got {self.mirror_axes}")
        object.__setattr__(self, "mirror_axes", axes)

    @property
    def mirrors(self) -> tuple:
        """The flips of test-time mirroring as tensor dims of a (N, C, D, H, W) batch, the identity first:
        every subset of ``mirror_axes`` (nnU-Net's ``_internal_maybe_mirror_and_predict``)."""
        import itertools

        dims = [a + 2 for a in self.mirror_axes]
        return tuple(c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r))

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def lesion_index(self) -> int:
        return self.class_index(self.lesion)

    @property
    def display_names(self) -> tuple:
        return tuple(display_name(c) for c in self.channels)

    def class_index(self, name) -> int:
        """Index of a class given by name (case-insensitive) or index; ValueError names the classes."""
        if isinstance(name, bool):
            raise ValueError(f"unknown class {name!r}")
        if isinstance(name, int):
            if 0 <= name < self.n_classes:
                return name
        elif isinstance(name, str):
            low = [c.lower() for c in self.classes]
            if name.lower() in low:
                return low.index(name.lower())
            if name.isdigit() and int(name) < self.n_classes:
                return int(name)
        raise ValueError(f"unknown class {name!r}; this model's classes are "
                         + ", ".join(f"{c!r} ({i})" for i, c in enumerate(self.classes)))

    def with_(self, **changes) -> "ModelInfo":
        return replace(self, **changes)


def _triple(v, what) -> tuple:
    if isinstance(v, int):
        v = (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3 or any(x < 1 for x in t):
        raise ValueError(f"{what} must be three positive integers (z, y, x), got {v}")
    return t


def _monai_strides(model) -> Optional[tuple]:
    """Total down-sampling of the MONAI u-nets, from their own hyper-parameters."""
    name = type(model).__name__
    if name == "BasicUNet":
        return (16, 16, 16)
    if name in ("UNet", "DynUNet") and hasattr(model, "strides"):
        total = [1, 1, 1]
        for s in model.strides:
            s = _triple(s, "strides")
            total = [a * b for a, b in zip(total, s)]
        return tuple(total)
    return None


def traced_strides(model, channels: int, limit: int = 64) -> tuple:
    """Total down-sampling per axis, read off a forward pass: input size / smallest size of any tensor."""
    import torch

    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])) if isinstance(
        o, torch.Tensor) and o.dim() == 5 else None) for m in model.modules() if not list(m.children())]
    p = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, channels, limit, limit, limit),
                                     dtype=p.dtype if p is not None else torch.float32,
                                     device=p.device if p is not None else "cpu"))
    except Exception as exc:
        raise ValueError(f"cannot read the strides of {type(model).__name__} from a forward pass of a "
                         f"{limit}^3 input ({exc}); give them in its config as \"strides\": [z, y, x]") from None
    finally:
        for h in hooks:
            h.remove()
    smallest = [min(s[i] for s in sizes) for i in range(3)] if sizes else [limit] * 3
    return tuple(max(1, limit // max(s, 1)) for s in smallest)


def model_info(model) -> ModelInfo:
    """The :class:`ModelInfo` of a network (an ``nn.Module``, or an LRP object wrapping one).

    Order: the ``model_info`` attribute; our u-net's config; MONAI's hyper-parameters (with a config's
    ``size_divisor`` or ``strides``); else strides read off a forward pass and the paper's defaults.
    """
    src = getattr(model, "source", model)  # an LRP object
    info = getattr(src, "model_info", None)
    if isinstance(info, ModelInfo):
        return info
    cfg = getattr(src, "config", None)
    if cfg is not None and hasattr(cfg, "divisor"):  # our UNet3D
        kw = dict(channels=tuple(getattr(cfg, "sequences", SEQUENCE_KEYS))[: cfg.in_channels],
                  classes=tuple(getattr(cfg, "classes", CLASS_NAMES))[: cfg.out_channels],
                  strides=(cfg.divisor,) * 3)
        for k in ("patch_size", "spacing"):
            if getattr(cfg, k, None):
                kw[k] = tuple(getattr(cfg, k))
        if len(kw["channels"]) != cfg.in_channels:
            kw["channels"] = tuple(f"channel_{i}" for i in range(cfg.in_channels))
        if len(kw["classes"]) != cfg.out_channels:
            kw["classes"] = tuple(f"class_{i}" for i in range(cfg.out_channels))
        if "tumor" not in [c.lower() for c in kw["classes"]]:
            kw["lesion"] = kw["classes"][-1]
        return ModelInfo(**kw)
    strides = getattr(src, "strides_zyx", None) or _monai_strides(src)
    if getattr(src, "size_divisor", None):
        strides = src.size_divisor
    if strides is None:
        first = next((m for m in src.modules() if hasattr(m, "in_channels")), None)
        strides = traced_strides(src, getattr(first, "in_channels", len(SEQUENCE_KEYS)))
    return ModelInfo(strides=strides)


__all__ = ["ModelInfo", "model_info", "traced_strides", "PADDINGS"]

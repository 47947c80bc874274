"""nnU-Net v2 trained-model folders: load the network, preprocess and map back exactly as nnU-Net does.

A folder ``DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres/`` (``plans.json``, ``dataset.json``,
``fold_N/checkpoint_final.pth``) or one of its ``fold_N`` folders becomes an ``nn.Module`` that the
library explains like any other network (:func:`load_nnunet`).  Optional dependency: ``pip install -e
".[nnunet]"`` (nnunetv2 2.8, dynamic-network-architectures).

* Safety: the checkpoint is read with ``torch.load(weights_only=True)`` and only numpy scalar/dtype classes
  allowed (a context manager, never a global change); nnU-Net's own loaders unpickle fully and are never
  called.  The network class and the layer types named in ``plans.json`` must be on allow-lists
  (:data:`NETWORK_CLASSES`, :data:`LAYER_TYPES`); nothing named in a file is imported.
* Folds: ``fold=None`` takes ``fold_0`` (or the only fold), an int or ``"all"`` another, a list of them
  (CLI ``--folds 0 1 2 3 4``) their ensemble: :class:`FoldEnsemble`, the mean of the folds' logits, as
  nnU-Net's predictor; LRP explains that mean (each fold's explanation weighted by its share of the logit).
* Test-time mirroring (``mirror=True``, CLI ``--mirror``): over the checkpoint's
  ``inference_allowed_mirroring_axes``, as nnU-Net's ``use_mirroring`` (:attr:`.ModelInfo.mirror_axes`);
  the explanation is of the averaged prediction (flip, explain, flip back, average).  Off by default.
* Supported: 3D configurations (``3d_fullres``, ``3d_lowres``) of PlainConvUNet, ResidualEncoderUNet
  (ResEnc presets) and ResidualUNet with the DefaultPreprocessor; not supported (a one-line error): 2D
  configurations, the cascade (``3d_cascade_fullres``), region-based labels.
* Geometry (:class:`NnUNetGridMap`): nnU-Net's own ``DefaultPreprocessor.run_case_npy`` (transpose_forward,
  crop to non-zero, per-channel normalisation, resampling to the plans' spacing) gives the network-grid
  image; nnU-Net's export steps (``resampling_fn_probabilities``, the crop put back, transpose_backward)
  map results back.  Sequence shares are computed on the network grid, where Eq. 2 holds exactly;
  relevance maps are resampled keeping each channel's positive and negative mass
  (:func:`.geometry.preserve_totals`).
* LRP: nnU-Net's InstanceNorm3d(affine) is folded into the convolution before it with this input's mean
  and variance (:mod:`.lrp`), so its centring shift acts as a bias and absorbs relevance like one
  (measured conservation in ``Testing/test_nnunet.py`` and the README).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from .geometry import GridMap, check_kind, preserve_totals
from .model_info import ModelInfo
from .sequences import guess_sequence

NETWORK_CLASSES = {f"dynamic_network_architectures.architectures.unet.{n}": n
                   for n in ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")}
LAYER_TYPES = {  # plans.json "_kw_requires_import" entries: torch.nn classes only
    "conv_op": ("Conv3d",),
    "norm_op": ("InstanceNorm3d", "BatchNorm3d"),
    "dropout_op": ("Dropout3d", "Dropout"),
    "nonlin": ("LeakyReLU", "ReLU", "PReLU"),
}
CHECKPOINT = "checkpoint_final.pth"


def _nnunet():
    try:
        import nnunetv2  # noqa: F401
        import dynamic_network_architectures  # noqa: F401
    except ImportError:
        raise ValueError('nnU-Net models need the optional dependency: pip install -e ".[nnunet]"') from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: missing; an nnU-Net model folder has plans.json and dataset.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _fold_dirs(model_dir: Path) -> list:
    return sorted(p for p in model_dir.glob("fold_*") if p.is_dir())


def is_nnunet_folder(path) -> bool:
    """True for an nnU-Net trained-model folder (plans.json, dataset.json, fold_N/) or one of its folds."""
    p = Path(path)
    if not p.is_dir():
        return False
    if p.name.startswith("fold_"):
        p = p.parent
    return (p / "plans.json").is_file() and (p / "dataset.json").is_file() and bool(_fold_dirs(p))


def _locate(path, fold) -> tuple[Path, list]:
    """(model folder, [fold folders]); ``fold`` a list or tuple: several folds."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{p}: not a folder; expected an nnU-Net trained-model folder")
    if isinstance(fold, (list, tuple)):
        if not fold:
            raise ValueError(f"{p}: an empty list of folds")
        if p.name.startswith("fold_"):
            p = p.parent
        located = [_locate_one(p, f) for f in dict.fromkeys(fold)]
        return p, [f for _, f in located]
    model_dir, fold_dir = _locate_one(p, fold)
    return model_dir, [fold_dir]


def _locate_one(p: Path, fold) -> tuple[Path, Path]:
    if p.name.startswith("fold_") and fold is None:
        return p.parent, p
    folds = _fold_dirs(p)
    if fold is not None:
        f = p / f"fold_{fold}"
        if not f.is_dir():
            raise ValueError(f"{f}: no such fold; available: {', '.join(d.name for d in folds) or 'none'}")
        return p, f
    if not folds:
        raise ValueError(f"{p}: no fold_N folder with a checkpoint")
    if (p / "fold_0").is_dir():
        return p, p / "fold_0"
    if len(folds) == 1:
        return p, folds[0]
    raise ValueError(f"{p}: several folds ({', '.join(d.name for d in folds)}) and no fold_0; choose one "
                     "with fold=N, or several (an ensemble) with a list")


def _safe_globals() -> list:
    """numpy scalar and dtype classes found in nnU-Net checkpoints (training logs hold numpy floats)."""
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("Float32DType", "Float64DType", "Float16DType", "Int64DType",
                                                 "Int32DType", "BoolDType") if hasattr(dtypes, n)]
    return allowed


def read_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint as a dict, read without running any code stored in it."""
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: never fall back to full unpickling
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it names {found.group(1)}" if found else str(exc).strip().splitlines()[0][:200]
        raise ValueError(f"{path}: refused: the checkpoint holds more than tensors and numbers ({what}); "
                         "it is not unpickled, as it could run code") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise ValueError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return ckpt


def _torch_class(name, key, plans_file):
    if name is None:
        return None
    last = str(name).rsplit(".", 1)[-1]
    if not str(name).startswith("torch.nn.") or last not in LAYER_TYPES[key]:
        raise ValueError(f"{plans_file}: {key} {name!r} is not supported (allowed: "
                         f"{', '.join('torch.nn.' + n for n in LAYER_TYPES[key])})")
    return getattr(nn, last)


def build_network(configuration_manager, n_channels: int, n_classes: int, plans_file="plans.json") -> nn.Module:
    """The network named in the plans, from the allow-lists only, without deep supervision."""
    from dynamic_network_architectures.architectures import unet

    cls_name = configuration_manager.network_arch_class_name
    if cls_name not in NETWORK_CLASSES:
        raise ValueError(f"{plans_file}: network class {cls_name!r} is not supported (allowed: "
                         f"{', '.join(NETWORK_CLASSES.values())})")
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    for key in configuration_manager.network_arch_init_kwargs_req_import:
        if key not in LAYER_TYPES:
            raise ValueError(f"{plans_file}: architecture argument {key!r} names code to import; not supported")
        kwargs[key] = _torch_class(kwargs.get(key), key, plans_file)
    if kwargs.get("conv_op") is not nn.Conv3d:
        raise ValueError(f"{plans_file}: only 3D networks (torch.nn.Conv3d) are supported; use a 3d_fullres or "
                         "3d_lowres model")
    kwargs["deep_supervision"] = False
    try:
        return getattr(unet, NETWORK_CLASSES[cls_name])(input_channels=n_channels, num_classes=n_classes, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ValueError(f"{plans_file}: cannot build {cls_name} from its arch_kwargs ({exc})") from None


def _classes(dataset_json: dict, dataset_file) -> tuple:
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{dataset_file}: no 'labels'")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ValueError(f"{dataset_file}: region-based labels are not supported")
    try:
        items = sorted(((int(v), str(k)) for k, v in labels.items() if str(k).lower() != "ignore"))
    except (TypeError, ValueError):
        raise ValueError(f"{dataset_file}: label values must be integers") from None
    if [v for v, _ in items] != list(range(len(items))):
        raise ValueError(f"{dataset_file}: labels must be 0, 1, 2, ... without gaps")
    return tuple(n for _, n in items)


def _channels(dataset_json: dict, dataset_file) -> tuple:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{dataset_file}: no 'channel_names'")
    try:
        ordered = [str(names[k]) for k in sorted(names, key=int)]
    except ValueError:
        raise ValueError(f"{dataset_file}: channel_names keys must be 0, 1, ...") from None
    guessed = [guess_sequence(n) or n for n in ordered]
    # our sequence keys where the names say so unambiguously (BraTS' T2w and T2f would both read as T2)
    return tuple(g if guessed.count(g) == 1 else n for g, n in zip(guessed, ordered))


def _strides(configuration_manager) -> tuple:
    total = [1, 1, 1]
    for s in configuration_manager.network_arch_init_kwargs.get("strides") or ():
        s = [s] * 3 if isinstance(s, int) else list(s)
        total = [a * int(b) for a, b in zip(total, s)]
    return tuple(total)


def load_nnunet(path, fold: Union[None, int, str, list, tuple] = None, checkpoint: str = CHECKPOINT, device="cpu",
                mirror: bool = False) -> nn.Module:
    """The network of an nnU-Net v2 trained-model folder (or fold folder) in eval mode.

    ``fold``: None (``fold_0`` or the only fold), an int or ``"all"``, or a list of them: their
    :class:`FoldEnsemble`.  ``mirror``: test-time mirroring over the checkpoint's allowed axes.
    It carries ``model_info`` (:class:`ModelInfo` from plans.json and dataset.json), ``nnunet`` (the plans,
    configuration and dataset.json) and ``grid_map_for(case)`` -> :class:`NnUNetGridMap`.
    """
    _nnunet()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_dir, fold_dirs = _locate(path, fold)
    plans_file, dataset_file = model_dir / "plans.json", model_dir / "dataset.json"
    plans, dataset_json = _read_json(plans_file), _read_json(dataset_file)
    classes, channels = _classes(dataset_json, dataset_file), _channels(dataset_json, dataset_file)
    ckpts = {d: read_checkpoint(d / checkpoint) for d in fold_dirs}
    configs = {d: (c.get("init_args") or {}).get("configuration") or model_dir.name.rsplit("__", 1)[-1]
               for d, c in ckpts.items()}
    config = configs[fold_dirs[0]]
    for d, c in configs.items():
        if c != config:
            raise ValueError(f"{d / checkpoint}: configuration {c!r} differs from {fold_dirs[0].name}'s {config!r}")
    try:
        pm = PlansManager(plans)
        if config not in pm.available_configurations:
            raise KeyError(config)
        cm = pm.get_configuration(config)
        patch, spacing = tuple(cm.patch_size), tuple(cm.spacing)
        tf = list(pm.transpose_forward)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{plans_file}: no usable configuration {config!r} ({exc!r})") from None
    if len(patch) != 3:
        raise ValueError(f"{plans_file}: configuration {config!r} is 2D; only 3D configurations are supported")
    if cm.previous_stage_name is not None:
        raise ValueError(f"{plans_file}: configuration {config!r} is a cascade stage; the cascade is not supported")
    if cm.preprocessor_name != "DefaultPreprocessor":
        raise ValueError(f"{plans_file}: preprocessor {cm.preprocessor_name!r} is not supported")
    nets = [_fold_network(cm, channels, classes, plans_file, d / checkpoint, ckpts[d]) for d in fold_dirs]
    net = nets[0] if len(nets) == 1 else FoldEnsemble(nets)
    allowed = ckpts[fold_dirs[0]].get("inference_allowed_mirroring_axes")
    lesion = next((c for c in classes if c.lower() == "tumor"), classes[-1])
    net.model_info = ModelInfo(
        channels=channels, classes=classes, lesion=lesion, strides=_strides(cm), patch_size=patch,
        spacing=spacing, padding="zero", pad_to_patch=True, tile_step=0.5,
        mirror_axes=tuple(allowed or ()) if mirror else (),
        normalisation=",".join(cm.normalization_schemes), source=", ".join(str(d) for d in fold_dirs),
        notes={"configuration": config, "transpose_forward": tf, "fold": ", ".join(d.name for d in fold_dirs),
               "mirror_axes": allowed})
    net.nnunet = NnUNetPlans(pm, cm, dataset_json)
    net.grid_map_for = net.nnunet.grid_map_for
    return net.to(device).eval()


def _fold_network(cm, channels, classes, plans_file: Path, ckpt_file: Path, ckpt: dict) -> nn.Module:
    """One fold's network with its weights; deep-supervision heads other than the full-resolution one removed."""
    net = build_network(cm, len(channels), len(classes), plans_file)
    try:
        net.load_state_dict(ckpt["network_weights"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt_file}: weights do not match the network in plans.json "
                         f"({str(exc).splitlines()[0][:200]})") from None
    heads = getattr(getattr(net, "decoder", None), "seg_layers", None)
    if isinstance(heads, nn.ModuleList):  # deep-supervision heads: never run without deep supervision
        for i in range(len(heads) - 1):
            heads[i] = nn.Identity()
    return net


class FoldEnsemble(nn.Module):
    """Several folds as one network: the mean of their logits, as nnU-Net's predictor ensembles folds.

    LRP explains the mean like any sum (the plain gradient at a sum is LRP-0): each fold's explanation
    counts with its share of the logit."""

    def __init__(self, folds):
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x):
        return sum(f(x) for f in self.folds) / len(self.folds)


class NnUNetPlans:
    """What nnU-Net's preprocessing and export need: plans, configuration and dataset.json."""

    def __init__(self, plans_manager, configuration_manager, dataset_json: dict):
        self.plans_manager, self.configuration_manager, self.dataset_json = (
            plans_manager, configuration_manager, dataset_json)

    def grid_map_for(self, case) -> "NnUNetGridMap":
        return NnUNetGridMap(self, case.reference, getattr(case, "raw", None))


class NnUNetGridMap(GridMap):
    """Case grid <-> network grid with nnU-Net's own preprocessing and export steps.

    ``image_to_network`` takes the *un-normalised* (C, z, y, x) stack on the case's reference grid
    (``wants_raw``); it must run first (the constructor runs it when given ``raw``), because the crop
    to the non-zero region depends on the image.
    """

    wants_raw = True

    def __init__(self, plans: NnUNetPlans, reference: sitk.Image, raw: Optional[np.ndarray] = None):
        self.plans = plans
        self.case_shape = tuple(reference.GetSize()[::-1])
        self.case_spacing = tuple(float(s) for s in reference.GetSpacing()[::-1])
        self.network_spacing = tuple(float(s) for s in plans.configuration_manager.spacing)
        self.props = None
        if raw is not None:
            self.image_to_network(raw)

    # ---- forward: nnU-Net's preprocessing --------------------------------------------------------------------
    def image_to_network(self, image):
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        image = np.asarray(image)
        n = len(self.plans.configuration_manager.normalization_schemes)
        if image.ndim != 4 or image.shape[0] != n or tuple(image.shape[1:]) != self.case_shape:
            raise ValueError(f"nnU-Net preprocessing expects the raw ({n}, {', '.join(map(str, self.case_shape))}) "
                             f"stack on the case grid, got shape {image.shape}")
        props = {"spacing": list(self.case_spacing)}
        p = self.plans
        data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
            image, None, props, p.plans_manager, p.configuration_manager, p.dataset_json)
        self.props = props
        self.network_shape = tuple(data.shape[1:])
        return np.ascontiguousarray(data, dtype=np.float32)

    def _need(self):
        if self.props is None:
            raise ValueError("NnUNetGridMap: call image_to_network with the raw image first")
        return self.props

    @property
    def _tf(self):
        return list(self.plans.plans_manager.transpose_forward)

    @property
    def _tb(self):
        return list(self.plans.plans_manager.transpose_backward)

    def _spacings(self):
        return list(self.network_spacing), [self.case_spacing[i] for i in self._tf]

    def mask_to_network(self, mask):
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

        props = self._need()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.case_shape:
            raise ValueError(f"mask shape {mask.shape} differs from the case grid {self.case_shape}")
        m = mask.transpose(self._tf)
        (lo, hi) = np.array(props["bbox_used_for_cropping"]).T
        cropped = m[tuple(slice(a, b) for a, b in zip(lo, hi))]
        net_sp, case_sp = self._spacings()
        out = resample_data_or_seg_to_shape(cropped[None].astype(np.uint8), self.network_shape, case_sp, net_sp,
                                            is_seg=True, order=0, order_z=0)[0] > 0
        idx = np.argwhere(m)
        if len(idx):  # the network voxel holding each mask voxel's centre: no region vanishes
            scale = np.array(self.network_shape) / np.maximum(hi - lo, 1)
            ijk = np.round((np.clip(idx, lo, hi - 1) - lo + 0.5) * scale - 0.5).astype(int)
            ijk = np.clip(ijk, 0, np.array(self.network_shape) - 1)
            out[tuple(ijk.T)] = True
        return out

    # ---- back: nnU-Net's export steps ------------------------------------------------------------------------
    def _to_crop(self, flat: np.ndarray, order: Optional[int] = None, is_seg: bool = False) -> np.ndarray:
        """(N, network grid) -> (N, cropped case grid, transposed), with the plans' probability resampling."""
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

        props = self._need()
        net_sp, case_sp = self._spacings()
        shape = props["shape_after_cropping_and_before_resampling"]
        if order is None:
            out = self.plans.configuration_manager.resampling_fn_probabilities(flat, shape, net_sp, case_sp)
        else:
            out = resample_data_or_seg_to_shape(flat, shape, net_sp, case_sp, is_seg=is_seg, order=order, order_z=0)
        return np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out)

    def _uncrop(self, flat: np.ndarray, fill=None) -> np.ndarray:
        """Insert the crop into the full (transposed) grid, then transpose back: (N, case grid)."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        props = self._need()
        full = np.zeros((flat.shape[0], *props["shape_before_cropping"]), dtype=flat.dtype)
        if fill is not None:
            full[:] = np.asarray(fill, dtype=flat.dtype).reshape((-1,) + (1,) * 3)
        bbox = [[0, flat.shape[0]]] + [list(b) for b in props["bbox_used_for_cropping"]]
        full = insert_crop_into_image(full, flat, bbox)
        return full.transpose([0] + [i + 1 for i in self._tb])

    def to_case(self, array, kind):
        """Network grid -> case grid.  ``probability``: (K, ...) or (...) resampled as nnU-Net resamples
        probabilities (outside the crop: background 1 for a full (K, ...) stack, else 0); ``segmentation``:
        a (K, ...) float stack of logits or probabilities is resampled and argmax-ed as nnU-Net's export
        (logits reproduce nnU-Net exactly), a label map is resampled nearest-neighbour; ``relevance``:
        (..., z, y, x) with each volume's positive and negative mass kept."""
        check_kind(kind)
        array = np.asarray(array)
        if tuple(array.shape[-3:]) != self.network_shape:
            raise ValueError(f"array shape {array.shape} does not end with the network grid {self.network_shape}")
        n_classes = len(_classes(self.plans.dataset_json, "dataset.json"))
        if kind == "segmentation":
            if array.ndim == 4 and np.issubdtype(array.dtype, np.floating):
                seg = self._to_crop(array.astype(np.float32)).argmax(0)[None]
            else:
                seg = self._to_crop(array.astype(np.int16)[None], order=0, is_seg=True)
            return self._uncrop(seg.astype(np.uint8))[0]
        lead = array.shape[:-3]
        flat = array.reshape((-1,) + array.shape[-3:]).astype(np.float32)
        if kind == "probability":
            fill = [1.0] + [0.0] * (flat.shape[0] - 1) if len(lead) == 1 and flat.shape[0] == n_classes else None
            out = self._uncrop(self._to_crop(flat).astype(np.float32), fill)
        else:
            res = [preserve_totals(v, lambda part, interp: self._to_crop(
                part[None], order=0 if interp == sitk.sitkNearestNeighbor else None)[0]) for v in flat]
            out = self._uncrop(np.stack(res).astype(np.float32))
        return out.reshape(lead + self.case_shape)


__all__ = ["is_nnunet_folder", "load_nnunet", "FoldEnsemble", "read_checkpoint", "build_network", "NnUNetGridMap",
           "NnUNetPlans", "NETWORK_CLASSES", "LAYER_TYPES"]

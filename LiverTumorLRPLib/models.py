"""Loading segmentation models: the bundled u-net, our u-net or a MONAI network from files, nnU-Net folders.

A model file is safetensors weights with a JSON config beside it (same name, ``.json``):

* our u-net: the fields of :class:`~LiverTumorLRPLib.unet.UNetConfig` (``"architecture": "UNet3D"``);
* MONAI (optional dependency): ``{"architecture": "monai.BasicUNet" | "monai.UNet" | "monai.DynUNet",
  "kwargs": {...keyword arguments of the class...}}``.

Both may give what the library needs to know (:class:`~.model_info.ModelInfo`): ``"sequences"`` (channel
keys in order; default the paper's six), ``"classes"`` (default background, tumor), ``"lesion"``,
``"strides"`` (per axis; ``"size_divisor"`` is one number for all), ``"patch_size"``, ``"spacing"`` (z, y, x
mm the model was trained at), ``"padding"`` and ``"mirror_axes"`` (test-time mirroring, e.g. ``[0, 1, 2]``
for a model trained with flips).  A folder is an nnU-Net v2 trained model
(:mod:`.nnunet`).  Weights are never unpickled: ``.pt``/``.pth`` files are refused by name.  Every bad
file gets one ``ValueError``/``FileNotFoundError`` line naming it.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Optional

from torch import nn

from .model_info import ModelInfo, model_info
from .sequences import CLASS_NAMES, SEQUENCE_KEYS
from .unet import UNet3D, UNetConfig

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
BUNDLED_MODEL = RESOURCES / "Models" / "liver_tumor_unet.safetensors"
MONAI_NETWORKS = ("BasicUNet", "UNet", "DynUNet")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
INFO_KEYS = ("sequences", "classes", "lesion", "strides", "size_divisor", "patch_size", "spacing", "padding")


class ModelFileError(ValueError):
    """A model file or folder that cannot be used; the message names it."""


def bundled_model_path() -> Path:
    """The bundled model (``LIVER_LRP_MODEL`` overrides it)."""
    return Path(os.environ.get("LIVER_LRP_MODEL", BUNDLED_MODEL))


def info_from_config(config: dict, where: str = "config") -> ModelInfo:
    """The :class:`ModelInfo` a config describes (channels and classes checked against the network's)."""
    kwargs = config.get("kwargs", {}) if config.get("architecture", "UNet3D") != "UNet3D" else config
    channels = tuple(config.get("sequences") or SEQUENCE_KEYS)
    classes = tuple(config.get("classes") or CLASS_NAMES)
    n_in, n_out = kwargs.get("in_channels", len(channels)), kwargs.get("out_channels", len(classes))
    if n_in != len(channels):
        raise ModelFileError(f"{where}: the network takes {n_in} input channels but {len(channels)} sequences are "
                             f"named ({', '.join(channels)}); list one name per channel in \"sequences\"")
    if n_out != len(classes):
        raise ModelFileError(f"{where}: the network gives {n_out} classes but {len(classes)} are named "
                             f"({', '.join(classes)}); list one name per class in \"classes\"")
    kw = {"channels": channels, "classes": classes, "source": where}
    if "lesion" in config:
        kw["lesion"] = config["lesion"]
    elif "tumor" not in [c.lower() for c in classes]:
        kw["lesion"] = classes[-1]
    for key in ("patch_size", "spacing", "padding", "mirror_axes"):
        if config.get(key) is not None:
            kw[key] = config[key]
    if config.get("strides") is not None:
        kw["strides"] = config["strides"]
    elif config.get("size_divisor") is not None:
        kw["strides"] = config["size_divisor"]
    try:
        info = ModelInfo(**kw)
        info.lesion_index
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    return info


def build_model(config: dict, where: str = "config") -> nn.Module:
    """An untrained network from a config dict, carrying its :class:`ModelInfo` as ``model_info``."""
    if not isinstance(config, dict):
        raise ModelFileError(f"{where}: the config must be a JSON object, got {type(config).__name__}")
    arch = config.get("architecture", "UNet3D")
    if arch == "UNet3D":
        fields = {k: config[k] for k in UNetConfig.__dataclass_fields__ if k in config}
        try:
            model = UNet3D(UNetConfig(**fields))
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{where}: {exc}") from None
        base = model_info(model)
        info = info_from_config({**config, "in_channels": model.config.in_channels,
                                 "out_channels": model.config.out_channels, "strides": base.strides}, where)
    else:
        name = arch.split(".", 1)[1] if arch.startswith("monai.") else arch
        if name not in MONAI_NETWORKS:
            raise ModelFileError(f"{where}: unknown architecture {arch!r}; use UNet3D or "
                                 f"monai.{{{', '.join(MONAI_NETWORKS)}}}")
        try:
            from monai.networks import nets
        except ImportError:
            raise ModelFileError(f"{where}: architecture {arch!r} needs MONAI: pip install monai") from None
        kwargs = dict(config.get("kwargs", {}))
        kwargs.setdefault("spatial_dims", 3)
        kwargs.setdefault("in_channels", len(config.get("sequences") or SEQUENCE_KEYS))
        kwargs.setdefault("out_channels", len(config.get("classes") or CLASS_NAMES))
        info = info_from_config({**config, "kwargs": kwargs}, where)
        try:
            model = getattr(nets, name)(**kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ModelFileError(f"{where}: cannot build {arch} from its kwargs ({exc})") from None
        if config.get("strides") is None and config.get("size_divisor") is None:
            info = info.with_(strides=model_info(model).strides)
    model.model_info = info
    return model


def save_model(model: nn.Module, path, extra: Optional[dict] = None, *, config: Optional[dict] = None) -> Path:
    """Weights (safetensors) and their JSON config beside them (same name, ``.json``), atomically.

    ``extra``: fields added to the config (``sequences``, ``classes``, ``spacing``, ...); ``config``: the network's
    config (default: our u-net's own, ``model.config``; MONAI networks: ``{"architecture": ..., "kwargs": ...}``).
    ``path`` may end in ``.safetensors``, ``.json`` or neither."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    if config is None:
        if not isinstance(model, UNet3D):
            raise ValueError(f"save_model: give the config of a {type(model).__name__} (only UNet3D carries its own)")
        config = asdict(model.config)
    config = {**config, **(extra or {})}
    path = Path(path)
    path = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    path = path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = path.with_name(path.name + ".tmp"), path.with_name(path.stem + ".json.tmp")
    # clone: some networks (DynUNet) register the same module twice, and safetensors refuses shared memory
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_w), metadata={"config": json.dumps(config)})
    tmp_c.write_text(json.dumps(config, indent=2))
    os.replace(tmp_w, path)
    os.replace(tmp_c, path.with_suffix(".json"))
    return path


def save_model_file(model: nn.Module, path, config: dict) -> Path:
    """Deprecated name of :func:`save_model`."""
    import warnings

    warnings.warn("save_model_file is deprecated; use models.save_model", DeprecationWarning, stacklevel=2)
    return save_model(model, path, config=config)


def load_unet(path, map_location: str = "cpu") -> UNet3D:
    """Our :class:`UNet3D` from its safetensors weights and JSON config (never pickle); ValueError for another
    architecture."""
    model = load_model(path, device=map_location)
    if not isinstance(model, UNet3D):
        raise ValueError(f"{path}: is a {type(model).__name__}, not a UNet3D")
    return model


def _model_paths(spec) -> tuple[Path, Path]:
    """(weights, config) of a model file given as either; refuses pickles by name."""
    path = Path(spec)
    low = path.name.lower()
    if low.endswith(PICKLE_SUFFIXES):
        raise ModelFileError(f"{path}: only .safetensors weights are read; .pt/.pth files can run code when "
                             "loaded (pickle). Convert the state dict with safetensors.torch.save_file")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path}: not a model file; expected a .safetensors file with its .json config "
                             "beside it, or an nnU-Net trained-model folder")
    return path, path.with_suffix(".json")


def read_model_config(weights: Path, config_path: Path) -> dict:
    """The JSON config beside a weights file (or in its safetensors metadata); errors name the file."""
    if config_path.exists():
        try:
            return json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{config_path}: invalid JSON ({exc.msg} at line {exc.lineno}, "
                                 f"column {exc.colno})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{config_path}: cannot be read ({exc})") from None
    meta = _safetensors_call(weights, lambda: _metadata(weights))
    if "config" not in meta:
        raise ModelFileError(f"{weights}: no config JSON beside it ({config_path.name}) and none in its metadata")
    try:
        return json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{weights}: the config in its metadata is invalid JSON ({exc.msg})") from None


def _metadata(weights: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return f.metadata() or {}


def _safetensors_call(weights: Path, fn):
    try:
        return fn()
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for bad files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{weights}: not a readable safetensors file ({msg}); it may be truncated or "
                             "corrupt") from None


def load_weights(model: nn.Module, weights: Path, what: str) -> nn.Module:
    """Load safetensors weights into ``model`` strictly; a mismatch is one line naming the file."""
    from safetensors.torch import load_file

    state = _safetensors_call(weights, lambda: load_file(str(weights), device="cpu"))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:2])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
        raise ModelFileError(f"{weights}: the weights do not match {what}: " + ", ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return model


def load_model(spec="bundled", device="cpu", folds=None, mirror: bool = False) -> nn.Module:
    """A model in eval mode carrying its ``model_info``: ``"bundled"``, a ``.safetensors`` (or its ``.json``)
    path, an nnU-Net v2 trained-model folder, or an ``nn.Module``.

    nnU-Net folders only: ``folds`` (a list: their ensemble) and ``mirror`` (test-time mirroring), see
    :func:`.nnunet.load_nnunet`.  ``spec`` may also be a dict ``{"path", "folds", "mirror"}`` (what the CLI
    hands to cohort workers)."""
    if isinstance(spec, dict):
        return load_model(spec.get("path", "bundled"), device, spec.get("folds"), bool(spec.get("mirror")))
    if isinstance(spec, nn.Module):
        return spec.to(device).eval()
    nnunet_folder = spec not in (None, "bundled") and Path(spec).is_dir()
    if (folds is not None or mirror) and not nnunet_folder:
        raise ModelFileError(f"{spec or 'bundled'}: folds and test-time mirroring are options of nnU-Net model "
                             "folders; this model has neither")
    if spec in (None, "bundled"):
        weights, config_path = _model_paths(bundled_model_path())
    else:
        if nnunet_folder:
            try:
                from .nnunet import load_nnunet
            except ImportError as exc:
                raise ModelFileError(f"{spec}: a model folder is read as an nnU-Net v2 trained model, which "
                                     f"needs nnunetv2 (pip install -e \".[nnunet]\"): {exc}") from None
            return load_nnunet(spec, fold=None if folds is None else list(folds), device=device, mirror=mirror)
        weights, config_path = _model_paths(spec)
    if not weights.exists():
        hint = " (the bundled model is trained with `liver-lrp train`)" if spec in (None, "bundled") else ""
        raise FileNotFoundError(f"model weights not found: {weights}{hint}")
    config = read_model_config(weights, config_path)
    where = str(config_path if config_path.exists() else weights)
    model = build_model(config, where)
    load_weights(model, weights, f"{config.get('architecture', 'UNet3D')} as configured in {where}")
    return model.to(device).eval()


_CACHE = threading.local()


def cached_model(spec="bundled") -> nn.Module:
    """:func:`load_model` once per thread for the same spec and file version (path and modification time): a
    Dask worker keeps its model across cases, the Slicer and web tasks across clicks.  A network is returned as
    it is; a new spec replaces the thread's cached model (one model in memory)."""
    if isinstance(spec, nn.Module):
        return spec
    path = spec.get("path", "bundled") if isinstance(spec, dict) else spec   # a dict: with folds / mirror
    path = str(bundled_model_path() if path in (None, "", "bundled") else path)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = None
    key = (repr(sorted(spec.items())) if isinstance(spec, dict) else path, mtime)
    if getattr(_CACHE, "key", None) != key:
        _CACHE.key, _CACHE.model = None, None
        _CACHE.model, _CACHE.key = load_model(spec if spec not in ("", None) else "bundled", device="cpu"), key
    return _CACHE.model


__all__ = ["cached_model", "load_model", "load_unet", "save_model", "build_model", "save_model_file", "read_model_config",
           "bundled_model_path", "BUNDLED_MODEL", "ModelFileError",
           "info_from_config", "load_weights"]

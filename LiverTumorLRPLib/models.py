"""Loading segmentation models: the bundled u-net, our u-net from a file, or a MONAI network.

A model is a safetensors weights file with a JSON config beside it (same name, ``.json``):

* our u-net: the fields of :class:`~LiverTumorLRPLib.unet.UNetConfig` (``"architecture": "UNet3D"``);
* MONAI (optional dependency): ``{"architecture": "monai.BasicUNet" | "monai.UNet" | "monai.DynUNet",
  "kwargs": {...keyword arguments of the class...}, "size_divisor": 16}``.

Inputs are always the six sequences in channel order, outputs two class logits
(background, tumor).  Weights are never unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .unet import UNet3D, UNetConfig, load_unet, read_config

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
BUNDLED_MODEL = RESOURCES / "Models" / "liver_tumor_unet.safetensors"
MONAI_NETWORKS = ("BasicUNet", "UNet", "DynUNet")


def bundled_model_path() -> Path:
    """The bundled model (``LIVER_LRP_MODEL`` overrides it)."""
    return Path(os.environ.get("LIVER_LRP_MODEL", BUNDLED_MODEL))


def build_model(config: dict) -> nn.Module:
    """An untrained network from a config dict."""
    arch = config.get("architecture", "UNet3D")
    if arch == "UNet3D":
        return UNet3D(UNetConfig(**{k: config[k] for k in UNetConfig.__dataclass_fields__ if k in config}))
    name = arch.split(".", 1)[1] if arch.startswith("monai.") else arch
    if name not in MONAI_NETWORKS:
        raise ValueError(f"unknown architecture {arch!r}; use UNet3D or monai.{{{', '.join(MONAI_NETWORKS)}}}")
    try:
        from monai.networks import nets
    except ImportError:
        raise ValueError(f"architecture {arch!r} needs MONAI: pip install monai") from None
    kwargs = dict(config.get("kwargs", {}))
    kwargs.setdefault("spatial_dims", 3)
    kwargs.setdefault("in_channels", 6)
    kwargs.setdefault("out_channels", 2)
    if (kwargs["in_channels"], kwargs["out_channels"]) != (6, 2):
        raise ValueError(f"{arch}: the model must take 6 sequences and give 2 classes, not "
                         f"{kwargs['in_channels']} -> {kwargs['out_channels']}")
    model = getattr(nets, name)(**kwargs)
    model.size_divisor = int(config.get("size_divisor", 16))
    return model


def save_model_file(model: nn.Module, path, config: dict) -> Path:
    """Weights (safetensors) and ``config`` (JSON) for any supported network; atomic."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = path.with_name(path.name + ".tmp"), path.with_name(path.stem + ".json.tmp")
    # clone: some networks (DynUNet) register the same module twice, and safetensors refuses shared memory
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_w), metadata={"config": json.dumps(config)})
    tmp_c.write_text(json.dumps(config, indent=2))
    os.replace(tmp_w, path)
    os.replace(tmp_c, path.with_suffix(".json"))
    return path


def load_model(spec="bundled", device="cpu") -> nn.Module:
    """A model in eval mode: ``"bundled"``, a ``.safetensors`` path (config JSON beside it), an nnU-Net v2
    trained-model folder (:func:`.nnunet.load_nnunet`), or an nn.Module."""
    if isinstance(spec, nn.Module):
        return spec.to(device).eval()
    from .nnunet import is_nnunet_folder, load_nnunet

    if spec not in (None, "bundled") and is_nnunet_folder(spec):
        return load_nnunet(spec, device=device)
    path = bundled_model_path() if spec in (None, "bundled") else Path(spec)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists():
        hint = " (the bundled model is trained with `liver-lrp train`)" if spec in (None, "bundled") else ""
        raise FileNotFoundError(f"model weights not found: {path}{hint}")
    config = read_config(path)
    if config.get("architecture", "UNet3D") == "UNet3D":
        model = load_unet(path, map_location="cpu")
    else:
        from safetensors.torch import load_file

        model = build_model(config)
        try:
            model.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights do not match {config['architecture']} with the given kwargs: "
                             f"{str(exc)[:300]}") from None
    return model.to(device).eval()


__all__ = ["load_model", "build_model", "save_model_file", "bundled_model_path", "BUNDLED_MODEL"]

"""Bring your own model: our u-net from config + safetensors, and MONAI networks explained by the engine."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from LiverTumorLRPLib.lrp import rules
from LiverTumorLRPLib.explain import region_relevance, region_relevance_loop
from LiverTumorLRPLib.inference import model_divisor, predict
from LiverTumorLRPLib.lrp import LRP
from LiverTumorLRPLib.models import build_model, load_model, save_model_file
from LiverTumorLRPLib.models import load_unet, save_model
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

monai = pytest.importorskip("monai", reason="MONAI is a test dependency: pip install -e '.[test]'")

MONAI_CONFIGS = {
    "BasicUNet": ({"architecture": "monai.BasicUNet", "size_divisor": 16,
                   "kwargs": {"features": [4, 4, 8, 8, 16, 4], "norm": "batch"}}, 32),
    "UNet": ({"architecture": "monai.UNet", "size_divisor": 4,
              "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2, "norm": "batch"}}, 16),
    "DynUNet": ({"architecture": "monai.DynUNet", "size_divisor": 4,
                 "kwargs": {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
                            "res_block": True, "norm_name": "batch"}}, 16),
}


def test_unet_config_round_trip(tmp_path):
    torch.manual_seed(0)
    model = UNet3D(UNetConfig(depth=2, base_channels=4, norm="instance", upsampling="trilinear")).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    cfg = json.loads((tmp_path / "m.json").read_text())
    assert cfg["norm"] == "instance" and cfg["upsampling"] == "trilinear" and cfg["sequences"][0] == "T2"
    again = load_unet(path)
    x = torch.randn(1, 6, 8, 8, 8)
    torch.testing.assert_close(again(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="model weights not found"):
        load_model(tmp_path / "missing.safetensors")


def test_unet_config_rejects_bad_values():
    with pytest.raises(ValueError, match="norm must be one of"):
        UNetConfig(norm="group")


@pytest.mark.parametrize("name", list(MONAI_CONFIGS))
def test_monai_network_round_trip_and_conservation(name, tmp_path):
    """Layer coverage and conservation (zero biases, LRP-0) for MONAI networks loaded from config + weights."""
    config, size = MONAI_CONFIGS[name]
    torch.manual_seed(1)
    model = build_model(config).eval()
    path = save_model_file(model, tmp_path / f"{name}.safetensors", config)
    model = load_model(path).double()
    assert model_divisor(model) == (config["size_divisor"],) * 3
    for m in model.modules():
        if isinstance(getattr(m, "bias", None), torch.nn.Parameter):
            m.bias.data.zero_()
    x = torch.randn(1, 6, size, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = model(x).detach()
    M = LRP(model, None, overrides=[("*", rules.Epsilon(0.0))]).relevance(x, torch.ones_like(y))
    assert float(M.sum()) == pytest.approx(float(y.sum()), rel=1e-8)


def test_monai_default_instance_norm_network_eq2_and_prediction():
    """MONAI's default BasicUNet (instance norm, LeakyReLU, deconvolution, replicate padding): the recommended
    preset runs, and one-pass Eq. 2 equals the per-voxel loop."""
    torch.manual_seed(3)
    model = build_model({"architecture": "monai.BasicUNet", "kwargs": {"features": [4, 4, 8, 8, 16, 4]}}).eval()
    x = np.random.default_rng(4).standard_normal((6, 16, 32, 32)).astype(np.float32)
    region = np.zeros(x.shape[1:], bool)
    region[8, 10:14, 20] = True
    lrp = LRP(model, "recommended")
    fast = region_relevance(lrp, x, region, 1, device="cpu")
    slow = region_relevance_loop(lrp, x, region, 1)
    assert np.abs(fast.maps - slow.maps).max() < 1e-4 * np.abs(slow.maps).max()
    prob = predict(model, x, device="cpu")
    assert prob.shape == x.shape[1:] and (prob >= 0).all() and (prob <= 1).all()


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="takes 4 input channels but 6 sequences are named"):
        build_model({"architecture": "monai.UNet", "kwargs": {"in_channels": 4, "channels": [4, 8],
                                                              "strides": [2]}})
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"architecture": "monai.SegResNet"})

"""Issue 11: exact Eq. 2 on any volume size (padding folded back), per-axis strides, spacing, model files.

Sizes are deliberately not multiples of the networks' strides, and regions touch both borders.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from LiverTumorLRPLib.case_io import case_from_images
from LiverTumorLRPLib.explain import region_relevance, region_relevance_loop, relevance, sequence_relevance
from LiverTumorLRPLib.geometry import SpacingMap
from LiverTumorLRPLib.inference import grow_to_budget, plan_for, plan_patches, predict_logits
from LiverTumorLRPLib.lrp import LRP
from LiverTumorLRPLib.model_info import ModelInfo, model_info
from LiverTumorLRPLib.models import build_model, load_model
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS

from lrp_models import random_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def border_region(shape, n=40, seed=0):
    """Random voxels, including the far and near corners and faces."""
    rng = np.random.default_rng(seed)
    region = rng.random(shape) < n / np.prod(shape)
    region[-1, -1, -1] = region[0, 0, 0] = region[-1, 0, -1] = True
    region[-1, rng.integers(shape[1]), rng.integers(shape[2])] = True
    return region


def monai_basic(dtype=torch.float64):
    torch.manual_seed(3)
    return build_model({"architecture": "monai.BasicUNet",
                        "kwargs": {"features": [4, 4, 8, 8, 16, 4]}}).eval().to(dtype)


def monai_dyn(dtype=torch.float64):
    torch.manual_seed(4)
    return build_model({"architecture": "monai.DynUNet",
                        "kwargs": {"kernel_size": [3, 3, 3], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                                   "upsample_kernel_size": [[1, 2, 2], [2, 2, 2]], "filters": [4, 8, 8],
                                   "norm_name": "instance"}}).eval().to(dtype)


NETWORKS = {
    "unet-edge": lambda: random_unet(seed=1, depth=2, base=4),
    "unet-zero": lambda: _with_padding(random_unet(seed=2, depth=2, base=4), "zero"),
    "monai-basic": monai_basic,
    "monai-dynunet": monai_dyn,
}


def _with_padding(net, padding):
    net.model_info = model_info(net).with_(padding=padding)
    return net


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("preset", ["recommended", "epsilon"])
def test_eq2_conserves_exactly_on_sizes_that_are_not_multiples_of_the_strides(name, preset):
    """sum(M_A) = |A| - excluded: relevance on padded copies is folded back, none is lost."""
    net = NETWORKS[name]()
    shape = {"monai-dynunet": (5, 10, 11), "monai-basic": (17, 18, 20)}.get(name, (9, 12, 13))
    x = np.random.default_rng(1).standard_normal((6, *shape))
    region = border_region(shape)
    res = region_relevance(net, x, region, "tumor", preset=preset, device="cpu")
    kept = res.n_voxels - res.n_excluded
    assert kept > 0.9 * res.n_voxels
    assert abs(float(res.maps.sum()) - kept) < 1e-4 * kept


@pytest.mark.parametrize("name", ["unet-edge", "monai-dynunet"])
def test_every_kept_voxel_sums_to_one_and_one_pass_equals_the_loop(name):
    net = NETWORKS[name]()
    shape = (5, 10, 11)
    x = np.random.default_rng(2).standard_normal((6, *shape))
    region = np.zeros(shape, bool)
    region[-1, -1, -1] = region[0, 0, 0] = region[2, 9, 0] = True
    lrp = LRP(net, "recommended")
    fast = region_relevance(lrp, x, region, 1, device="cpu")
    slow = region_relevance_loop(lrp, x, region, 1)
    np.testing.assert_allclose(fast.maps, slow.maps, rtol=1e-5, atol=1e-6 * np.abs(slow.maps).max())
    for idx in zip(*np.nonzero(region)):
        one = np.zeros(shape, bool)
        one[idx] = True
        assert abs(region_relevance(lrp, x, one, 1, device="cpu").maps.sum() - 1.0) < 1e-6


def test_sliding_windows_conserve_and_match_the_padded_forward():
    """Several windows with edge padding at both ends: blended logits equal the network applied window by
    window to the edge-padded volume, and Eq. 2 still conserves."""
    net = random_unet(seed=5, depth=2, base=4)
    shape = (6, 21, 19)
    x = np.random.default_rng(3).standard_normal((6, *shape))
    plan = plan_patches(shape, 4, (8, 12, 12))
    assert len(plan.windows) > 1 and any(o > 0 for o in plan.offset)
    padded = np.pad(x, [(0, 0)] + [(o, p - s - o) for o, p, s in zip(plan.offset, plan.padded, shape)], mode="edge")
    expected = np.zeros((2,) + plan.padded)
    with torch.no_grad():
        for w in plan.windows:
            y = net(torch.from_numpy(padded[(slice(None),) + w.padded])[None])[0].numpy()
            expected[(slice(None),) + w.padded] += y * plan.normalised_weight(w)
    got = predict_logits(net, x, device="cpu", patch_size=(8, 12, 12))
    np.testing.assert_allclose(got, plan.crop(expected), rtol=1e-5, atol=1e-5)
    res = region_relevance(net, x, border_region(shape, seed=4), 1, device="cpu", patch_size=(8, 12, 12))
    assert abs(res.maps.sum() - (res.n_voxels - res.n_excluded)) < 1e-4 * res.n_voxels


def test_the_models_patch_is_a_voxel_budget():
    """The model's patch bounds a window's voxels, not its shape: the issue's 72 x 320 x 260 case (54 x 128
    x 104 on the bundled model's grid) runs in one seamless window, a larger one in windows of the patch."""
    assert grow_to_budget((48, 128, 128), (56, 128, 104)) == (56, 128, 104)
    assert grow_to_budget((48, 128, 128), (72, 160, 136)) == (48, 128, 128)
    assert grow_to_budget((48, 128, 128), (40, 200, 136)) == (40, 128, 136)  # x whole, y still windowed
    rng = np.random.default_rng(0)
    for _ in range(200):
        patch = tuple(int(v) for v in rng.integers(1, 9, 3) * 8)
        fitted = tuple(int(v) for v in rng.integers(1, 17, 3) * 8)
        w = grow_to_budget(patch, fitted)
        assert np.prod(w) <= np.prod(patch)
        assert all(v == min(p, f) or v == f for v, p, f in zip(w, patch, fitted))  # grown only to whole axes
    info = ModelInfo(strides=(8, 8, 8), patch_size=(48, 128, 128))
    assert plan_for(info, (54, 128, 104)).single
    assert len(plan_for(info, (54, 128, 104), patch_size=(48, 128, 128)).windows) == 2  # given: used as is
    assert plan_for(info.with_(padding="zero", pad_to_patch=True), (54, 128, 104)).patch == (48, 128, 128)


def _flipped(a, dims):
    """A (C, D, H, W) array mirrored along the (N, C, D, H, W) tensor dims of ``ModelInfo.mirrors``."""
    return np.flip(a, [d - 1 for d in dims]).copy() if dims else a


def test_test_time_mirroring_is_flip_explain_flip_back_average():
    """Mirroring (nnU-Net's TTA): the prediction is the mean over the mirrors of flip(f(flip(x))), and its
    explanation the mean of the flipped-back explanations; Eq. 2 one-pass still equals the loop."""
    net = random_unet(seed=9, depth=2, base=4)
    mirrored = random_unet(seed=9, depth=2, base=4)
    mirrored.model_info = model_info(net).with_(mirror_axes=(2, 0))
    mirrors = mirrored.model_info.mirrors
    assert mirrors == ((), (2,), (4,), (2, 4))
    shape = (8, 12, 12)  # a multiple of the strides: no padding, so flipping the window is flipping the image
    x = np.random.default_rng(9).standard_normal((6, *shape))
    want = np.mean([_flipped(predict_logits(net, _flipped(x, d), device="cpu"), d) for d in mirrors], axis=0)
    np.testing.assert_allclose(predict_logits(mirrored, x, device="cpu"), want, rtol=1e-6, atol=1e-6)
    seed = np.zeros((2, *shape))
    seed[1, 4, 0, 7], seed[0, 1, 9, 2] = 1.0, 0.5
    for preset in ("recommended", "epsilon-gamma-box"):
        got = relevance(mirrored, x, seed, preset=preset, device="cpu")
        want = np.mean([_flipped(relevance(net, _flipped(x, d), _flipped(seed, d), preset=preset, device="cpu"), d)
                        for d in mirrors], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    shape = (7, 10, 11)  # and on a size that needs padding, across several windows
    x = np.random.default_rng(10).standard_normal((6, *shape))
    region = border_region(shape, seed=2)
    fast = region_relevance(mirrored, x, region, 1, device="cpu", patch_size=(8, 8, 8))
    slow = region_relevance_loop(mirrored, x, region, 1, patch_size=(8, 8, 8))
    np.testing.assert_allclose(fast.maps, slow.maps, rtol=1e-5, atol=1e-6 * np.abs(slow.maps).max())
    assert abs(fast.maps.sum() - (fast.n_voxels - fast.n_excluded)) < 1e-6 * fast.n_voxels
    with pytest.raises(ValueError, match="mirror_axes"):
        ModelInfo(mirror_axes=(3,))


def test_zero_padding_to_the_patch_matches_the_zero_padded_forward():
    """nnU-Net style: zero padding, centred, up to the patch."""
    net = _with_padding(random_unet(seed=6, depth=2, base=4), "zero")
    net.model_info = net.model_info.with_(pad_to_patch=True, patch_size=(8, 16, 16))
    shape = (5, 13, 10)
    x = np.random.default_rng(5).standard_normal((6, *shape))
    plan = plan_for(net, shape)
    assert plan.padded == (8, 16, 16) and plan.offset == (1, 1, 3)
    padded = np.pad(x, [(0, 0), (1, 2), (1, 2), (3, 3)])
    with torch.no_grad():
        expected = net(torch.from_numpy(padded)[None])[0].numpy()[:, 1:6, 1:14, 3:13]
    np.testing.assert_allclose(predict_logits(net, x, device="cpu"), expected, rtol=1e-6, atol=1e-6)


def test_strides_are_per_axis_and_taken_from_the_model():
    net = monai_dyn()
    assert model_info(net).strides == (2, 4, 4)
    with pytest.raises(ValueError, match=r"multiple of the model's strides \(2, 4, 4\)"):
        plan_patches((5, 10, 11), (2, 4, 4), (4, 6, 8))
    y = predict_logits(net, np.zeros((6, 5, 10, 11)), device="cpu", patch_size=(4, 8, 8))
    assert y.shape == (2, 5, 10, 11)


def test_eq1_seed_for_any_class_count():
    net = random_unet(seed=7, depth=2, base=4)
    net.head = nn.Conv3d(4, 3, 1).double()
    net.config.out_channels = 3
    net.config.classes = ["background", "liver", "tumor"]
    info = model_info(net)
    assert info.classes == ("background", "liver", "tumor") and info.lesion_index == 2
    x = np.random.default_rng(6).standard_normal((6, 5, 6, 7))
    m = relevance(net, x, ("liver", 2, 3, 4), device="cpu")
    assert m.shape == x.shape and np.isfinite(m).all()
    with pytest.raises(ValueError, match="classes are 'background' \\(0\\), 'liver' \\(1\\), 'tumor' \\(2\\)"):
        relevance(net, x, ("lesion", 0, 0, 0), device="cpu")


def test_sequence_relevance_with_three_labels_is_lesion_versus_the_rest():
    """T = predicted tumor (class 2), B = as many voxels predicted as any other class, each explained for
    its predicted class: equal to the sum of the matching Eq. 2 maps."""
    torch.manual_seed(8)
    net = random_unet(seed=8, depth=2, base=4)
    net.head = nn.Conv3d(4, 3, 1).double()
    net.config.out_channels = 3
    net.config.classes = ["background", "liver", "tumor"]
    x = np.random.default_rng(7).standard_normal((6, 8, 12, 8))
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None])[0]
        net.head.bias -= y.mean(dim=(1, 2, 3))
        net.head.bias[2] -= 0.3 * float(y[2].std())
        pred = net(torch.from_numpy(x)[None])[0].argmax(0).numpy()
    assert len(np.unique(pred)) == 3
    lrp = LRP(net, "epsilon")
    res = sequence_relevance(lrp, x, device="cpu", max_voxels=20)
    T, B = res.tumor_region, res.background_region
    assert T.sum() == B.sum() == 20 and (pred[T] == 2).all() and (pred[B] != 2).all()
    expected = region_relevance(lrp, x, T, 2, device="cpu").maps
    for c in (0, 1):
        if (B & (pred == c)).any():
            expected = expected + region_relevance(lrp, x, B & (pred == c), c, device="cpu").maps
    np.testing.assert_allclose(res.maps, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_loop_oracle_survives_a_region_with_every_voxel_excluded():
    net = random_unet(seed=9, depth=2, base=4)
    with torch.no_grad():
        net.head.weight[1].zero_()
        net.head.bias[1] = 0.0
    x = np.random.default_rng(8).standard_normal((6, 4, 8, 8))
    region = np.zeros((4, 8, 8), bool)
    region[1, 2:4, 2:4] = True
    res = region_relevance_loop(net, x, region, 1)
    assert res.n_excluded == 4 and np.all(res.maps == 0)


# ---- spacing -------------------------------------------------------------------------------------------------
class Brightness(nn.Module):
    """A known 'network': tumor logit = T1 15 min intensity - 1 (after z-scoring), background logit = 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(6, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, -1.0]))
            self.conv.weight[1, 5] = 1.0
        self.model_info = ModelInfo(strides=(1, 1, 1), spacing=(4.0, 3.0, 3.0))

    def forward(self, x):
        return self.conv(x)


def sphere_case(spacing_xyz=(1.5, 1.5, 2.0), size_xyz=(60, 56, 36), origin=(-40.0, 12.5, 7.0), centre=(5.0, 50.0, 40.0),
                radius=14.0):
    """Six sequences on a fine grid, bright sphere (known physical centre and radius) on T1 15 min."""
    ref = sitk.Image(list(size_xyz), sitk.sitkFloat32)
    ref.SetSpacing(spacing_xyz)
    ref.SetOrigin(origin)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size_xyz[::-1]], indexing="ij"), -1)[..., ::-1]
    phys = np.array(origin) + idx * np.array(spacing_xyz)
    inside = np.linalg.norm(phys - np.array(centre), axis=-1) < radius
    rng = np.random.default_rng(0)
    images = {}
    for k in SEQUENCE_KEYS:
        arr = (100 + 5 * rng.standard_normal(inside.shape)).astype(np.float32)
        if k == "T1_15min":
            arr[inside] += 400
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        images[k] = img
    return case_from_images(images, name="sphere"), inside


def test_spacing_resamples_to_the_model_and_maps_every_output_back(tmp_path):
    from LiverTumorLRPLib import pipeline

    case, inside = sphere_case()
    net = Brightness()
    p = pipeline.prepare(case, net)
    assert isinstance(p.grid, SpacingMap)
    assert p.image.shape[1:] == (18, 28, 30)  # 36*2/4, 56*1.5/3, 60*1.5/3
    seg = pipeline.segment_case(p, str(tmp_path), net, "cpu")
    assert seg["segmentation"].shape == case.shape
    inter = (seg["segmentation"].astype(bool) & inside).sum()
    assert 2 * inter / (seg["segmentation"].sum() + inside.sum()) > 0.85  # the sphere comes back in place
    out = sitk.ReadImage(str(tmp_path / "tumor_probability.nii.gz"))
    np.testing.assert_allclose(out.GetSpacing(), case.reference.GetSpacing())
    np.testing.assert_allclose(out.GetOrigin(), case.reference.GetOrigin())
    summary = pipeline.analyze_case(case, str(tmp_path / "a"), net, preset="epsilon", device="cpu", method="paper")
    assert summary["network_grid"] == [18, 28, 30]
    res = sequence_relevance(net, p.image, preset="epsilon", device="cpu")
    back = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / f"relevance_{k}.nii.gz")))
            for k in SEQUENCE_KEYS]
    totals = np.array([b.sum() for b in back])
    net_totals = res.maps.reshape(6, -1).sum(axis=1)
    np.testing.assert_allclose(totals, net_totals, rtol=1e-4, atol=1e-5 * np.abs(net_totals).max())
    assert np.argmax(summary["relevance"]) == 5


def test_a_single_clicked_voxel_survives_the_coarser_grid():
    case, _ = sphere_case()
    grid = SpacingMap(case.reference, (4.0, 3.0, 3.0))
    mask = np.zeros(case.shape, bool)
    mask[17, 27, 33] = True
    net_mask = grid.mask_to_network(mask)
    assert net_mask.sum() == 1
    z, y, x = np.argwhere(net_mask)[0]
    pt = grid.network_grid.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
    clicked = case.reference.TransformIndexToPhysicalPoint((33, 27, 17))
    assert np.all(np.abs(np.array(pt) - clicked) <= np.array([1.5, 1.5, 2.0]))


# ---- model files -------------------------------------------------------------------------------------------------
def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "LiverTumorLRPLib", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=300)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    from LiverTumorLRPLib.models import save_model
    from LiverTumorLRPLib.unet import UNet3D, UNetConfig
    return save_model(UNet3D(UNetConfig(depth=2, base_channels=4)).eval(), d / "m.safetensors")


def _bad_models(folder, good):
    good_json = good.with_suffix(".json")
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    (folder / "truncated.json").write_text(good_json.read_text())
    mismatch = folder / "mismatch.safetensors"
    mismatch.write_bytes(good.read_bytes())
    cfg = json.loads(good_json.read_text())
    (folder / "mismatch.json").write_text(json.dumps({**cfg, "base_channels": 8}))
    four = folder / "four.safetensors"
    four.write_bytes(good.read_bytes())
    (folder / "four.json").write_text(json.dumps({**cfg, "in_channels": 4}))
    mirror = folder / "mirror.safetensors"
    mirror.write_bytes(good.read_bytes())
    (folder / "mirror.json").write_text(json.dumps({**cfg, "mirror_axes": [0, 3]}))
    broken = folder / "broken.safetensors"
    broken.write_bytes(good.read_bytes())
    (folder / "broken.json").write_text('{"architecture": "UNet3D", "depth": 2,,}')
    marker = folder / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = folder / "evil.pt"
    import pickle
    evil.write_bytes(pickle.dumps({"x": Evil()}))  # unpickling it would create ``marker``
    return {"truncated": (truncated, "not a readable safetensors file"),
            "mismatch": (mismatch, "the weights do not match"),
            "four": (four, "4 input channels but 6 sequences are named"),
            "broken": (folder / "broken.json", "invalid JSON"),
            "mirror": (mirror, "mirror_axes must be spatial axes 0, 1, 2"),
            "evil": (evil, "only .safetensors weights are read; .pt/.pth files can run code"),
            "missing": (folder / "nothing.safetensors", "model weights not found")}, marker


def test_model_config_may_ask_for_test_time_mirroring(tmp_path, tiny_model):
    cfg = json.loads(tiny_model.with_suffix(".json").read_text())
    (tmp_path / "m.safetensors").write_bytes(tiny_model.read_bytes())
    (tmp_path / "m.json").write_text(json.dumps({**cfg, "mirror_axes": [2, 1]}))
    assert load_model(str(tmp_path / "m.safetensors")).model_info.mirrors == ((), (3,), (4,), (3, 4))


def test_every_bad_model_file_is_one_line_naming_it(tmp_path, tiny_model):
    bad, _ = _bad_models(tmp_path, tiny_model)
    for name, (path, message) in bad.items():
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            load_model(str(path))
        assert message in str(err.value), name
        assert str(path) in str(err.value) or str(path.with_suffix(".json")) in str(err.value), name
        assert "\n" not in str(err.value)


def test_bad_model_files_on_the_command_line_write_nothing(tmp_path, tiny_model):
    from LiverTumorLRPLib.phantom import generate_case, write_case

    case = tmp_path / "case"
    write_case(generate_case(0, shape=(8, 24, 24), spacing=(8.0, 8.0, 8.0)), str(case))
    bad, marker = _bad_models(tmp_path, tiny_model)
    for name, (path, message) in bad.items():
        out = tmp_path / f"out_{name}"
        r = _cli("analyze", str(case), "--out", str(out), "--model", str(path), "--device", "cpu", cwd=tmp_path)
        assert r.returncode == 1, (name, r.stderr)
        assert "Traceback" not in r.stderr and message in r.stderr, (name, r.stderr)
        assert not out.exists() or not any(out.iterdir()), name
    assert not marker.exists()


def test_a_model_config_records_spacing_and_patch():
    info = model_info(load_model("bundled"))
    assert info.spacing == (4.0, 3.0, 3.0) and info.patch_size == (48, 128, 128) and info.strides == (8, 8, 8)


def test_a_four_channel_model_reads_its_own_sequences_from_the_case_folder(tmp_path):
    """Channels come from the model: a brain-tumor-style 4-channel u-net analyses a folder of FLAIR/T1/T1ce/T2."""
    from LiverTumorLRPLib.models import save_model
    from LiverTumorLRPLib.unet import UNet3D, UNetConfig

    from LiverTumorLRPLib.case_io import read_case

    keys = ["FLAIR", "T1", "T1ce", "T2"]
    case = tmp_path / "case"
    case.mkdir()
    rng = np.random.default_rng(0)
    for k in keys:
        img = sitk.GetImageFromArray((100 + 10 * rng.standard_normal((7, 14, 15))).astype(np.float32))
        img.SetSpacing((2.0, 2.0, 3.0))
        sitk.WriteImage(img, str(case / f"{k}.nii.gz"))
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(in_channels=4, depth=2, base_channels=4, sequences=keys)).eval()
    x = read_case(str(case), sequences=keys).image
    with torch.no_grad():  # about 10 % predicted tumor
        y = net(torch.from_numpy(np.pad(x, [(0, 0), (0, 1), (1, 1), (0, 1)]))[None])[0]
        net.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.9))
    model = save_model(net, tmp_path / "brain.safetensors")
    r = _cli("analyze", str(case), "--out", str(tmp_path / "out"), "--model", str(model), "--device", "cpu",
             "--preset", "epsilon", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "sequence_relevance.json").read_text())
    assert [row["sequence"] for row in summary["sequences"]] == keys
    assert abs(sum(summary["relevance"]) - 1) < 1e-6
    for k in keys:
        assert (tmp_path / "out" / f"relevance_{k}.nii.gz").exists()
    (case / "T1ce.nii.gz").unlink()
    r = _cli("analyze", str(case), "--out", str(tmp_path / "out2"), "--model", str(model), "--device", "cpu",
             cwd=tmp_path)
    assert r.returncode == 1 and "missing sequence(s) T1ce" in r.stderr and "Traceback" not in r.stderr

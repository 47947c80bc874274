"""The engine's own guarantees: Eq. 2 equals the per-voxel loop, conservation, Sec. 2.3, error paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from LiverTumorLRPLib.lrp import rules
from LiverTumorLRPLib.explain import (choose_background, region_relevance, region_relevance_loop, relevance,
                                      sequence_relevance)
from LiverTumorLRPLib.inference import plan_patches, predict_logits
from LiverTumorLRPLib.lrp import LRP, LRPError
from lrp_models import random_input, random_unet


def with_tumor(model, x, fraction=0.3):
    """Shift the head's tumor bias so that about ``fraction`` of the voxels are predicted tumor."""
    with torch.no_grad():
        y = model(torch.as_tensor(x)[None].to(next(model.parameters())))
        margin = (y[0, 1] - y[0, 0]).flatten()
        model.head.bias[1] -= torch.quantile(margin, 1 - fraction)
    return model


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---- Eq. 2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [(0, "recommended", 1, 0.01), (1, "paper", 0, 0.03), (2, "epsilon", 1, 0.003)])
def test_eq2_one_pass_equals_per_voxel_loop(case):
    seed, preset, cls, density = case
    model = random_unet(seed=seed, dtype=torch.float32)
    x = random_input(seed=seed + 10, shape=(8, 16, 16), dtype=torch.float32)[0].numpy()
    region = np.random.default_rng(seed).random(x.shape[1:]) < density
    region[0, 0, 0] = True
    lrp = LRP(model, preset)
    fast = region_relevance(lrp, x, region, cls, device="cpu")
    slow = region_relevance_loop(lrp, x, region, cls)
    assert fast.n_voxels == slow.n_voxels == region.sum()
    assert fast.n_excluded == slow.n_excluded
    np.testing.assert_allclose(fast.sums, slow.sums, rtol=1e-4, atol=1e-6 * np.abs(slow.sums).max())
    assert rel_err(fast.maps, slow.maps) < 1e-4
    # each included voxel contributes relevance 1 (Eq. 2 normalisation)
    assert fast.maps.sum() == pytest.approx(fast.n_voxels - fast.n_excluded, rel=1e-3)


def test_eq2_excludes_voxels_with_zero_sum_and_reports_them():
    """Bias-free LRP-0 net, input zero in one half: output voxels there have S_a = 0 exactly."""
    model = random_unet(seed=3, dtype=torch.float32, zero_bias=True, norm="none")
    x = random_input(seed=4, shape=(8, 16, 64), dtype=torch.float32)[0].numpy()
    x[:, :, :, 8:] = 0.0
    region = np.zeros(x.shape[1:], bool)
    region[2:6, 4:12, 2] = True       # data side
    region[2:6, 4:12, 62] = True      # far inside the zero part, beyond the receptive field: y = 0, S = 0
    lrp = LRP(model, None, overrides=[("*", rules.Epsilon(0.0))])
    fast = region_relevance(lrp, x, region, 1, device="cpu")
    slow = region_relevance_loop(lrp, x, region, 1)
    assert fast.n_excluded == slow.n_excluded >= 32
    assert np.isfinite(fast.maps).all()
    assert rel_err(fast.maps, slow.maps) < 1e-4


def test_eq2_threshold_excludes_small_sums_consistently():
    model = random_unet(seed=5, dtype=torch.float32)
    x = random_input(seed=6, shape=(8, 8, 8), dtype=torch.float32)[0].numpy()
    region = np.random.default_rng(1).random(x.shape[1:]) < 0.1
    lrp = LRP(model, "epsilon")
    fast = region_relevance(lrp, x, region, 0, device="cpu", threshold=0.5)
    slow = region_relevance_loop(lrp, x, region, 0, threshold=0.5)
    assert 0 < fast.n_excluded == slow.n_excluded < fast.n_voxels
    assert rel_err(fast.maps, slow.maps) < 1e-4


def test_eq2_patchwise_matches_patchwise_per_voxel_relevance():
    """Sliding windows: Eq. 2 assembled from patches equals the sum of per-voxel Eq. 1 maps of the blended
    prediction, and the blended output equals the segmentation's logits."""
    model = random_unet(seed=7, dtype=torch.float64)
    x = random_input(seed=8, shape=(8, 24, 24), dtype=torch.float64)[0].numpy()
    region = np.zeros(x.shape[1:], bool)
    region[3, [2, 11, 12, 21], [5, 12, 13, 20]] = True
    patch = (8, 16, 16)
    assert len(plan_patches(x.shape[1:], 4, patch).windows) > 1
    lrp = LRP(model, "recommended")
    fast = region_relevance(lrp, x, region, 1, device="cpu", patch_size=patch)
    expected = 0
    for idx in zip(*np.nonzero(region)):
        m = relevance(lrp, x, (1, *idx), device="cpu", patch_size=patch)
        expected = expected + m / m.sum()
    assert rel_err(fast.maps, expected) < 1e-6  # maps are stored as float32
    blended = predict_logits(model.float(), x.astype(np.float32), device="cpu", patch_size=patch)
    with torch.no_grad():
        whole = model.double()(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(blended - whole).max() > 1e-6  # patches see less context: really a different assembly
    from LiverTumorLRPLib.explain import _Engine
    from LiverTumorLRPLib.progress import Progress
    eng = _Engine(lrp, x, None, torch.device("cpu"), patch, 0.5, None, Progress())
    y, _ = eng.sums()
    np.testing.assert_allclose(y[:, :8, :24, :24].numpy(), blended, atol=1e-4)


# ---- conservation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net", [dict(norm="batch"), dict(norm="batch", upsampling="trilinear"),
                                 dict(norm="none", depth=3)])
def test_conservation_with_zero_bias_and_lrp0(net):
    model = random_unet(seed=11, zero_bias=True, **net)
    x = random_input(seed=12)
    with torch.no_grad():
        y = model(x)
    seed = torch.rand(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    lrp = LRP(model, None, overrides=[("*", rules.Epsilon(0.0))])
    M, sums = lrp.relevance(x, seed, layer_sums=True)
    total = float((seed * y).sum())
    assert float(M.sum()) == pytest.approx(total, rel=1e-9)
    for name in ("encoders.0.0", "head"):
        assert sums[name] == pytest.approx(total, rel=1e-9), name


def test_instance_norm_conserves_relevance_when_its_shift_is_zeroed():
    """InstanceNorm is folded into the preceding convolution with this input's statistics; its centring
    shift is a bias of the forward pass, so LRP-0 with zeroed biases conserves relevance exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(6, 8, 3, padding=1, bias=False), nn.InstanceNorm3d(8, affine=True), nn.ReLU(),
                        nn.Conv3d(8, 8, 3, padding=1), nn.InstanceNorm3d(8), nn.LeakyReLU(0.1),
                        nn.Conv3d(8, 2, 1, bias=False)).double()
    x = random_input(seed=1)
    y = net(x).detach()
    seed = torch.rand(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    M, sums = LRP(net, None, overrides=[("*", rules.Epsilon(0.0, zero_bias=True))]).relevance(
        x, seed, layer_sums=True)
    total = float((seed * y).sum())
    assert float(M.sum()) == pytest.approx(total, rel=1e-9)
    assert sums["3"] == pytest.approx(total, rel=1e-9)
    # with the shift kept, it absorbs relevance like any bias
    M_bias = LRP(net, None, overrides=[("*", rules.Epsilon(0.0))]).relevance(x, seed)
    assert float(M_bias.sum()) != pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("negative_weights", [False, True])
def test_instance_norm_is_batch_norm_with_this_inputs_statistics(negative_weights):
    """The documented InstanceNorm choice: same relevance as the u-net with BatchNorm whose running
    statistics are this input's instance statistics (the fused InstanceNorm paths of gamma and epsilon
    against the plain BatchNorm fold), also with negative InstanceNorm weights."""
    inst = random_unet(seed=22, norm="instance")
    if negative_weights:
        for m in inst.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.data[::2] *= -1
    x = random_input(seed=23)
    stats = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: stats.__setitem__(
        n, (i[0].mean(dim=(0, 2, 3, 4)), i[0].var(dim=(0, 2, 3, 4), unbiased=False))))
        for n, m in inst.named_modules() if isinstance(m, nn.InstanceNorm3d)]
    inst(x)
    for h in hooks:
        h.remove()
    batch = random_unet(seed=22, norm="batch")
    batch.load_state_dict({k: v for k, v in inst.state_dict().items()}, strict=False)
    for n, m in batch.named_modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.data, m.running_var.data = stats[n]
            m.eps = dict(inst.named_modules())[n].eps
    y = inst(x).detach()
    torch.testing.assert_close(batch(x).detach(), y)
    seed = torch.rand(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    for preset in ("recommended", "epsilon-gamma-box", "alpha2-beta1"):
        torch.testing.assert_close(LRP(inst, preset).relevance(x, seed), LRP(batch, preset).relevance(x, seed))
        S_inst = LRP(inst, preset).forward_with_sums(x, keep_graph=False)[1]
        torch.testing.assert_close(S_inst, LRP(batch, preset).forward_with_sums(x, keep_graph=False)[1])


def test_conservation_through_residual_addition():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv3d(6, 6, 3, padding=1, bias=False)
            self.b = nn.Conv3d(6, 6, 3, padding=1, bias=False)
            self.act = nn.ReLU()
            self.head = nn.Conv3d(6, 2, 1, bias=False)

        def forward(self, x):
            h = self.act(self.a(x))
            h = h + self.b(h)     # residual: relevance split in proportion to the two contributions
            return self.head(h)

    torch.manual_seed(0)
    model = Res().double()
    x = random_input(seed=1)
    y = model(x).detach()
    M = LRP(model, None, overrides=[("*", rules.Epsilon(0.0))]).relevance(x, torch.ones_like(y))
    assert float(M.sum()) == pytest.approx(float(y.sum()), rel=1e-9)


def test_layer_sums_show_bias_absorption():
    model = random_unet(seed=13)
    x = random_input(seed=14)
    y = model(x).detach()
    _, sums = LRP(model, "epsilon").relevance(x, torch.ones_like(y), layer_sums=True)
    assert set(sums) >= {"encoders.0.0", "head", "decoders.1.0"}
    assert all(np.isfinite(v) for v in sums.values())


# ---- Sec. 2.3 -----------------------------------------------------------------------------------------------
def test_sequence_relevance_is_sum_of_two_eq2_maps_and_normalised():
    model = random_unet(seed=15, dtype=torch.float32)
    x = random_input(seed=16, shape=(8, 16, 16), dtype=torch.float32)[0].numpy()
    with_tumor(model, x, 0.2)
    lrp = LRP(model, "recommended")
    res = sequence_relevance(lrp, x, device="cpu", seed=3)
    assert res.shares.shape == (6,)
    assert res.shares.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(res.positive + res.negative, res.shares, atol=1e-6)
    assert (res.positive >= 0).all() and (res.negative <= 0).all()
    assert res.n_tumor == res.n_background == res.tumor_region.sum() == res.background_region.sum()
    assert not (res.tumor_region & res.background_region).any()
    m_b = region_relevance(lrp, x, res.background_region, 0, device="cpu").maps
    m_t = region_relevance(lrp, x, res.tumor_region, 1, device="cpu").maps
    assert rel_err(res.maps, m_b + m_t) < 1e-4
    again = sequence_relevance(lrp, x, device="cpu", seed=3)
    np.testing.assert_array_equal(again.background_region, res.background_region)
    other = sequence_relevance(lrp, x, device="cpu", seed=4)
    assert (other.background_region != res.background_region).any()


def test_background_choices():
    pred = np.zeros((4, 10, 10), bool)
    pred[1:3, 4:6, 4:6] = True
    shell = choose_background(pred, 8, how="shell")
    assert shell.sum() == 8 and not (shell & pred).any()
    from scipy.ndimage import binary_dilation
    assert (shell <= binary_dilation(pred)).all()
    rnd = choose_background(pred, 8, seed=1)
    assert rnd.sum() == 8 and not (rnd & pred).any()
    with pytest.raises(ValueError, match="unknown background"):
        choose_background(pred, 8, how="nearest")


def test_sequence_relevance_without_tumor_is_a_clear_error():
    model = random_unet(seed=17, dtype=torch.float32)
    model.head.bias.data[1] = -1e3
    x = random_input(seed=18, dtype=torch.float32)[0].numpy()
    with pytest.raises(ValueError, match="predicts no tumor"):
        sequence_relevance(model, x, device="cpu")


@pytest.mark.parametrize("first", [rules.Flat(), rules.WSquare()])
def test_sequence_relevance_refuses_data_independent_input_rules(first):
    model = random_unet(seed=19, dtype=torch.float32)
    x = random_input(seed=20, dtype=torch.float32)[0].numpy()
    with_tumor(model, x)
    lrp = LRP(model, "epsilon", overrides=[("input", first)])
    with pytest.raises(LRPError, match="ignores the input values"):
        sequence_relevance(lrp, x, device="cpu")
    # ...and with flat the shares would indeed be the same for any input
    lrp_flat = LRP(model, "epsilon", overrides=[("input", rules.Flat())])
    region = np.ones(x.shape[1:], bool)
    a = region_relevance(lrp_flat, x, region, 1, device="cpu").sequence_shares
    b = region_relevance(lrp_flat, x * 3 + 1, region, 1, device="cpu").sequence_shares
    if isinstance(first, rules.Flat):
        np.testing.assert_allclose(a, b, atol=1e-4)


# ---- error paths ------------------------------------------------------------------------------------------------
class WithLayer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.conv = nn.Conv3d(6, 4, 3, padding=1)
        self.layer = layer
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(self.layer(self.conv(x)))


def test_unknown_layer_is_named():
    lrp = LRP(WithLayer(nn.GELU()))
    with pytest.raises(LRPError, match=r"'layer' \(GELU\)"):
        lrp.relevance(random_input(dtype=torch.float32), torch.ones(1, 2, 8, 8, 8))


def test_unknown_functional_operation_is_named():
    class F(WithLayer):
        def forward(self, x):
            return self.head(torch.tanh(self.conv(x)))

    with pytest.raises(LRPError, match="'tanh'"):
        LRP(F(nn.Identity())).relevance(random_input(dtype=torch.float32), torch.ones(1, 2, 8, 8, 8))


def test_gating_product_is_refused():
    class Gate(WithLayer):
        def forward(self, x):
            h = self.conv(x)
            return self.head(h * h)

    with pytest.raises(LRPError, match="multiplies two input-dependent"):
        LRP(Gate(nn.Identity())).relevance(random_input(dtype=torch.float32), torch.ones(1, 2, 8, 8, 8))


def test_final_softmax_is_dropped_and_logits_explained():
    torch.manual_seed(0)
    plain = WithLayer(nn.ReLU()).double()
    soft = nn.Sequential(plain, nn.Softmax(dim=1))
    x = random_input()
    seed = torch.zeros(1, 2, 8, 8, 8, dtype=torch.float64)
    seed[0, 1, 4, 4, 4] = 1
    a = LRP(plain, "epsilon").relevance(x, seed)
    b = LRP(soft, "epsilon").relevance(x, seed)
    torch.testing.assert_close(a, b)


def test_softmax_in_the_middle_is_refused():
    with pytest.raises(LRPError, match="not the network's last operation"):
        LRP(WithLayer(nn.Softmax(dim=1))).build(random_input(dtype=torch.float32))


def test_batchnorm_not_after_a_convolution_is_refused():
    class BNFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm3d(6)
            self.head = nn.Conv3d(6, 2, 1)

        def forward(self, x):
            return self.head(self.bn(x))

    with pytest.raises(LRPError, match="BatchNorm layer 'bn' does not directly follow"):
        LRP(BNFirst().eval()).build(random_input(dtype=torch.float32))


def test_input_rule_on_hidden_layer_is_refused():
    with pytest.raises(LRPError, match="only valid on the input layer"):
        LRP(random_unet(), None, overrides=[("head", rules.ZBox()), ("*", rules.Epsilon())]).build(random_input())


def test_unknown_preset_and_rule_names():
    with pytest.raises(ValueError, match="unknown LRP preset 'fancy'; choose one of recommended"):
        LRP(random_unet(), "fancy").build(random_input())
    with pytest.raises(ValueError, match="unknown LRP rule"):
        rules.make_rule("magic")


def test_bad_inputs():
    model = random_unet(dtype=torch.float32)
    x = random_input(dtype=torch.float32)[0].numpy()
    with pytest.raises(ValueError, match="region shape"):
        region_relevance(model, x, np.ones((4, 4, 4), bool), device="cpu")
    with pytest.raises(ValueError, match="region is empty"):
        region_relevance(model, x, np.zeros(x.shape[1:], bool), device="cpu")
    bad = x.copy()
    bad[2, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        region_relevance(model, bad, np.ones(x.shape[1:], bool), device="cpu")
    with pytest.raises(ValueError, match="unknown class"):
        region_relevance(model, x, np.ones(x.shape[1:], bool), cls="liver", device="cpu")


def test_original_model_is_not_modified():
    model = random_unet(seed=21)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = random_input()
    LRP(model, "recommended").relevance(x, torch.ones(1, 2, 8, 8, 8, dtype=torch.float64))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert isinstance(model.encoders[0][1], nn.BatchNorm3d)


def test_cuda_request_without_gpu_falls_back_to_cpu():
    from LiverTumorLRPLib.device import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.warns(UserWarning, match="no usable GPU"):
            assert resolve_device("cuda").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")

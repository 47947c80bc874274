"""Reference-based LRP (DeepLIFT-rescale, issue 15 item 3): completeness, equality with captum's DeepLift,
Eq. 2 one-pass equal to the per-voxel loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from LiverTumorLRPLib.explain import region_relevance, region_relevance_loop, sequence_relevance
from LiverTumorLRPLib.lrp import LRPError, as_lrp
from LiverTumorLRPLib.lrp import ReferenceLRP, liver_means
from LiverTumorLRPLib.validation import baseline_image
from lrp_models import random_input, random_unet
from test_lrp_engine import rel_err, with_tumor


def conv_relu_net(seed=0, leaky=False) -> nn.Module:
    """Conv3d + ReLU (or LeakyReLU) with biases, no pooling or normalisation: the definitions of DeepLIFT-rescale
    and of our reference LRP coincide, and y~(x_ref) = f(x_ref)."""
    torch.manual_seed(seed)
    act = (lambda: nn.LeakyReLU(0.1)) if leaky else nn.ReLU
    net = nn.Sequential(nn.Conv3d(6, 5, 3, padding=1), act(), nn.Conv3d(5, 4, 3, padding=1), act(),
                        nn.Conv3d(4, 2, 1)).double().eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv3d):
                m.bias.uniform_(-0.5, 0.5)
    net.size_divisor = 1
    return net


def relevance_of(lrp, x, c, idx):
    y, s = lrp.forward(x)
    seed = torch.zeros_like(y)
    seed[(0, c, *idx)] = 1.0
    (m,) = torch.autograd.grad(y, s, seed)
    return m


@pytest.mark.parametrize("leaky", [False, True])
def test_completeness_is_exact_without_pooling_biases_included(leaky):
    net = conv_relu_net(1, leaky)
    x = random_input(seed=2, shape=(6, 6, 6))
    lrp = ReferenceLRP(net, "blur", sigma=1.5)
    x_ref = lrp.reference_input(x)
    delta = (net(x) - net(x_ref)).detach()
    y, S, _ = lrp.forward_with_sums(x, keep_graph=False)
    torch.testing.assert_close(y, net(x).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, delta, rtol=1e-9, atol=1e-10)  # S_a = f_a(x) - f_a(x_ref), every voxel
    for c, idx in ((1, (2, 3, 4)), (0, (0, 5, 1))):
        m = relevance_of(lrp, x, c, idx)
        assert float(m.sum()) == pytest.approx(float(delta[(0, c, *idx)]), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_completeness_on_our_unet_is_with_respect_to_the_modified_reference_output(norm):
    """UNet3D (max-pooling; BatchNorm or InstanceNorm): sum M_a = y_a(x) - y~_a(x_ref) exactly, with y~ the
    reference through x's argmax positions (and x's InstanceNorm statistics)."""
    net = random_unet(seed=3, norm=norm)
    x = random_input(seed=4, shape=(8, 8, 8))
    lrp = as_lrp(net, "reference-blur")
    assert isinstance(lrp, ReferenceLRP)
    y_x, y_ref = lrp.outputs(x)
    torch.testing.assert_close(y_x[None], net(x).detach(), rtol=1e-10, atol=1e-10)
    _, S, _ = lrp.forward_with_sums(x, keep_graph=False)
    torch.testing.assert_close(S[0], y_x - y_ref, rtol=1e-8, atol=1e-9)
    m = relevance_of(lrp, x, 1, (3, 4, 5))
    assert float(m.sum()) == pytest.approx(float((y_x - y_ref)[1, 3, 4, 5]), rel=1e-8, abs=1e-9)
    if norm == "batch":
        # the maxima of x_ref itself would give f(x_ref); with x's positions the two differ
        true_ref = net(lrp.reference_input(x)).detach()[0]
        assert float((y_ref - true_ref).abs().max()) > 1e-6


def test_equals_captum_deeplift():
    captum = pytest.importorskip("captum.attr")
    net = conv_relu_net(5)
    x = random_input(seed=6, shape=(6, 6, 6))
    lrp = ReferenceLRP(net, "blur", sigma=2.0)
    x_ref = lrp.reference_input(x)
    dl = captum.DeepLift(conv_relu_net(5))
    for target in ((1, 2, 2, 3), (0, 4, 1, 0)):
        ref = dl.attribute(x.clone(), baselines=x_ref, target=target)
        ours = relevance_of(lrp, x, target[0], target[1:])
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-7, atol=1e-10)


def test_eq2_one_pass_equals_per_voxel_loop():
    net = random_unet(seed=7, dtype=torch.float32)
    x = random_input(seed=8, shape=(8, 8, 8), dtype=torch.float32)[0].numpy()
    region = np.random.default_rng(1).random(x.shape[1:]) < 0.015
    lrp = as_lrp(net, "reference-blur")
    fast = region_relevance(lrp, x, region, 1, device="cpu")
    slow = region_relevance_loop(lrp, x, region, 1)
    np.testing.assert_allclose(fast.sums, slow.sums, rtol=1e-4, atol=1e-6 * np.abs(slow.sums).max())
    assert fast.n_excluded == slow.n_excluded
    assert rel_err(fast.maps, slow.maps) < 1e-4


def test_sequence_relevance_runs_with_both_reference_presets():
    net = random_unet(seed=9, dtype=torch.float32)
    x = random_input(seed=10, shape=(8, 8, 8), dtype=torch.float32)[0].numpy()
    with_tumor(net, x, 0.2)
    for preset in ("reference-blur", "reference-mean"):
        res = sequence_relevance(net, x, preset=preset, device="cpu")
        assert res.shares.sum() == pytest.approx(1.0, abs=1e-6)


def test_references():
    x = random_input(seed=11, shape=(6, 8, 8))
    blur = ReferenceLRP(conv_relu_net(), "blur").reference_input(x)
    np.testing.assert_allclose(blur[0].numpy(), baseline_image(x[0].numpy(), "blur"), rtol=1e-12, atol=1e-12)
    assert float(ReferenceLRP(conv_relu_net(), "mean").reference_input(x).abs().max()) == 0.0
    values = np.arange(6.0)
    ref = ReferenceLRP(conv_relu_net(), values).reference_input(x)
    np.testing.assert_array_equal(ref[0, :, 2, 3, 4].numpy(), values)
    with pytest.raises(ValueError, match="5 reference values for 6 sequences"):
        ReferenceLRP(conv_relu_net(), values[:5]).reference_input(x)
    with pytest.raises(ValueError, match="unknown reference"):
        ReferenceLRP(conv_relu_net(), "median")
    image = x[0].numpy()
    liver = np.zeros(image.shape[1:], bool)
    liver[1:3, 2:5, 2:5] = True
    np.testing.assert_allclose(liver_means(image, liver), image[:, 1:3, 2:5, 2:5].mean(axis=(1, 2, 3)))
    with pytest.raises(ValueError, match="liver mask"):
        liver_means(image, liver[:, :4])


def test_functional_nonlinearity_is_refused():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(6, 2, 1)

        def forward(self, x):
            return F.relu(self.conv(x))

    with pytest.raises(LRPError, match="'relu' as a module"):
        ReferenceLRP(Functional().double()).build(random_input(shape=(4, 4, 4)))

"""The default sequence relevance (method ``contribution``): exact Shapley values of Sec. 2.3's output with
reference-based LRP maps that add up to them.

The shares against a brute-force Shapley computation over all 720 orderings of the six sequences (a nonlinear
network, the blurred reference); efficiency (they sum to f(all) - f(none)); the maps' own sums against a direct
reference-LRP pass; the shifted maps summing to the Shapley values; a model that reads one sequence gets all of
it there; Dice and f come from one set of 64 forward passes; bad methods and cases without a predicted tumor get
one-line errors.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from LiverTumorLRPLib import analysis
from LiverTumorLRPLib.case_io import Case
from LiverTumorLRPLib.explain import relevance
from LiverTumorLRPLib.lrp.reference import ReferenceLRP
from LiverTumorLRPLib.model_info import ModelInfo
from LiverTumorLRPLib.necessity import calibrated_maps, game_shapley
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS
from test_necessity import OneSequence    # tumor wherever one sequence is bright: f depends on it alone


class SmallNet(nn.Module):
    """Conv - ReLU - conv, seeded, its tumor bias set so that about 5 % of the voxels are predicted tumor."""

    def __init__(self, image: np.ndarray):
        super().__init__()
        torch.manual_seed(4)
        self.a, self.relu, self.b = nn.Conv3d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1)
        self.model_info = ModelInfo(strides=(1, 1, 1))
        with torch.no_grad():
            y = self(torch.from_numpy(image)[None])[0]
            self.b.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.95))

    def forward(self, x):
        return self.b(self.relu(self.a(x)))


def blob_case(c: int = 2, label: bool = True):
    import SimpleITK as sitk

    rng = np.random.default_rng(5)
    image = rng.normal(0, 0.5, size=(6, 10, 20, 22)).astype(np.float32)
    z, y, x = np.ogrid[:10, :20, :22]
    blob = (z - 5) ** 2 / 9 + (y - 10) ** 2 / 25 + (x - 11) ** 2 / 25 <= 1
    image[c][blob] += 3.0
    image[0][blob] += 1.0
    reference = sitk.GetImageFromArray(np.zeros(image.shape[1:], np.float32))
    return Case("blob", image, reference, label=blob.astype(np.uint8) if label else None)


def f_weights(net, image):
    """Sec. 2.3's f in expectation over B, written out: 1/|T| on the tumor logit over the predicted tumor T,
    1/N on the background logit of each of the N other voxels."""
    with torch.no_grad():
        y = net(torch.from_numpy(image)[None])[0].numpy()
    tumor = y.argmax(axis=0) == 1
    w = np.zeros(y.shape)
    w[1][tumor] = 1.0 / tumor.sum()
    w[0][~tumor] = 1.0 / (~tumor).sum()
    return w


def brute_force_shapley(net, image, w):
    """Shapley values of f over all 6! orderings, a sequence absent = its Gaussian blur (sigma 3 voxels)."""
    blur = np.stack([ndimage.gaussian_filter(c, 3.0) for c in image])

    def f(present):
        x = np.stack([image[i] if i in present else blur[i] for i in range(6)])
        with torch.no_grad():
            return float((w * net(torch.from_numpy(x)[None])[0].double().numpy()).sum())

    cache, phi = {}, np.zeros(6)
    for order in itertools.permutations(range(6)):
        before = frozenset()
        for i in order:
            after = before | {i}
            for s in (before, after):
                if s not in cache:
                    cache[s] = f(s)
            phi[i] += cache[after] - cache[before]
            before = after
    return phi / math.factorial(6), cache[frozenset(range(6))] - cache[frozenset()]


def test_shares_are_the_exact_shapley_values_of_f():
    case = blob_case()
    net = SmallNet(case.image).eval()
    p = analysis.prepare(case, net)
    e = analysis.sequence_relevance(p, device="cpu")
    assert e.details["method"] == "contribution" and e.details["exact"] and e.details["forward_passes"] == 64
    w = f_weights(net, p.image)
    phi, total = brute_force_shapley(net, p.image, w)
    got = np.array([e.details["shapley_f"][k] for k in SEQUENCE_KEYS])
    np.testing.assert_allclose(got, phi, rtol=1e-4, atol=1e-6 * np.abs(phi).max())
    assert math.isclose(got.sum(), total, rel_tol=1e-5)                       # efficiency
    np.testing.assert_allclose(e.shares, phi / phi.sum(), rtol=1e-4, atol=1e-6)
    assert math.isclose(e.details["f_full"] - e.details["f_reference"], total, rel_tol=1e-5)
    # the maps: reference-based LRP of f against the same blur, shifted per sequence onto the Shapley values
    lrp = relevance(ReferenceLRP(net, "blur", sigma=3.0), p.image, w, device="cpu")
    sums = lrp.reshape(6, -1).sum(axis=1)
    np.testing.assert_allclose([e.details["lrp_sums"][k] for k in SEQUENCE_KEYS], sums, rtol=1e-4,
                               atol=1e-6 * np.abs(sums).max())
    np.testing.assert_allclose(e.maps.reshape(6, -1).sum(axis=1), phi, rtol=1e-3, atol=1e-5 * np.abs(phi).max())
    # the shift moved what the maps did not carry (a nonlinear network: something), no more
    assert e.details["calibration_moved"] > 1e-3
    moved = np.abs(phi - sums).sum() / np.abs(e.maps).sum()
    assert math.isclose(e.details["calibration_moved"], moved, rel_tol=1e-3)
    # Dice of the same passes, against the label
    assert e.necessity.target == "label" and e.necessity.forward_passes == 64
    assert set(e.agreement) >= {"spearman", "same_top", "warning"}


def test_a_model_that_reads_one_sequence_gets_all_of_it_there():
    c = SEQUENCE_KEYS.index("T1_20s")
    p = analysis.prepare(blob_case(c, label=False), OneSequence(c))
    e = analysis.sequence_relevance(p, device="cpu", necessity_reference="zero")
    expected = np.eye(6)[c]
    np.testing.assert_allclose(e.shares, expected, atol=1e-9)
    # a linear network: reference-based LRP is exact, the maps need no shift
    assert e.details["calibration_moved"] < 1e-5
    assert e.most_relevant == "T1_20s" and e.agreement["same_top"] and e.agreement["warning"] is None
    assert e.necessity.target == "prediction" and e.necessity.reference == "zero"


def test_dice_and_f_come_from_one_set_of_forward_passes(monkeypatch):
    from LiverTumorLRPLib import inference

    case = blob_case()
    net = SmallNet(case.image).eval()
    p = analysis.prepare(case, net)
    seg = analysis.segment(p, "cpu")
    seen = []
    original = inference.predict_logits

    def counting(model, images, **kw):
        seen.append(len(images) if np.ndim(images) == 5 else 1)
        return original(model, images, **kw)

    monkeypatch.setattr(inference, "predict_logits", counting)
    e = analysis.sequence_relevance(p, device="cpu", seg=seg)
    assert sum(seen) == 64 and e.necessity.forward_passes == 64
    seen.clear()
    analysis.sequence_relevance(p, device="cpu", seg=seg, necessity_reference=None)
    assert sum(seen) == 64        # f still needs every subset; only the Dice is not reported


def test_calibrated_maps_sum_to_the_shapley_values():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    maps[2] = 0.0
    phi = np.array([2.0, -1.0, 0.5])
    out = calibrated_maps(maps, phi)
    np.testing.assert_allclose(out.reshape(3, -1).sum(axis=1), phi, rtol=1e-5)
    np.testing.assert_allclose(out[2], 0.5 / maps[2].size, rtol=1e-6)     # nothing to follow: spread evenly
    same = calibrated_maps(maps[:2], maps[:2].reshape(2, -1).sum(axis=1).astype(np.float64))
    np.testing.assert_allclose(same, maps[:2], atol=1e-6)                 # nothing to move


def test_sampled_shapley_values_above_eight_sequences():
    weights = np.arange(1.0, 10.0)
    phi, err, passes = game_shapley(lambda subsets: [sum(weights[list(s)]) for s in subsets], 9, samples=8)
    np.testing.assert_allclose(phi, weights)            # an additive game: every ordering gives the exact value
    assert err is not None and np.allclose(err, 0) and passes == 8 * 10


def test_bad_method_and_no_tumor_are_one_line_errors():
    c = SEQUENCE_KEYS.index("T2")
    p = analysis.prepare(blob_case(c), OneSequence(c))
    with pytest.raises(ValueError, match="unknown sequence relevance method 'shap'; use one of contribution, paper"):
        analysis.sequence_relevance(p, device="cpu", method="shap")
    empty = blob_case(c)
    empty.image[c] = 0.0
    with pytest.raises(ValueError, match="predicts no tumor voxels"):
        analysis.sequence_relevance(analysis.prepare(empty, OneSequence(c)), device="cpu")


def test_a_reference_with_more_evidence_keeps_the_ranking_and_is_told():
    """f(all) < f(none): the shares are over |f(all) - f(none)| (summing to -1), so the sequence that raises the
    evidence most still ranks first, and the user is told why they sum to -1."""
    c, e_ = SEQUENCE_KEYS.index("T1_20s"), SEQUENCE_KEYS.index("T2")
    case = blob_case(c, label=False)
    case.image[e_] = 1.0 + 0.05 * np.random.default_rng(1).normal(size=case.image[e_].shape).astype(np.float32)
    net = nn.Conv3d(6, 2, 1)
    with torch.no_grad():          # tumor where T1 20 s is bright; background evidence that T2 = 1 lowers
        net.weight.zero_()
        net.weight[1, c], net.weight[0, e_] = 10.0, -40.0
        net.bias.copy_(torch.tensor([50.0, -15.0]))
    net.model_info = ModelInfo(strides=(1, 1, 1))
    e = analysis.sequence_relevance(analysis.prepare(case, net.eval()), device="cpu", necessity_reference="zero")
    phi = np.array([e.details["shapley_f"][k] for k in SEQUENCE_KEYS])
    assert e.details["f_full"] < e.details["f_reference"] and phi.sum() < 0
    np.testing.assert_allclose(e.shares, phi / abs(phi.sum()), rtol=1e-6)
    assert e.shares.sum() == pytest.approx(-1.0) and e.most_relevant == "T1_20s"
    assert "the shares sum to -1" in e.agreement["warning"]

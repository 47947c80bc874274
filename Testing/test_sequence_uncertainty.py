"""Uncertainty of Sec. 2.3 (issue 15, item 2): Eq. 2 with per-voxel weights, resampled regions and the exact
expectation over the random background region B."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch
from torch import nn

from LiverTumorLRPLib.explain import (choose_regions, region_relevance_loop, sequence_relevance,
                                      sequence_relevance_interval, weighted_relevance)
from LiverTumorLRPLib.lrp import LRP
from lrp_models import random_input, random_unet
from test_lrp_engine import rel_err, with_tumor


def tiny_net(seed=0) -> nn.Module:
    """A small conv net that accepts any spatial size (no down-sampling)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(6, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1)).double().eval()
    net.size_divisor = 1
    return net


def test_weighted_relevance_equals_the_weighted_per_voxel_loop():
    model = random_unet(seed=3, dtype=torch.float64)
    x = random_input(seed=4, shape=(8, 8, 8))[0].numpy()
    rng = np.random.default_rng(0)
    w = np.zeros((2,) + x.shape[1:])
    w[0][rng.random(x.shape[1:]) < 0.02] = rng.random() + 0.5
    w[1][rng.random(x.shape[1:]) < 0.02] = -2.0
    indicator = np.zeros_like(w)
    indicator[1] = w[1] != 0
    lrp = LRP(model, "recommended")
    fast, region = weighted_relevance(lrp, x, [w, indicator], device="cpu", threshold=0.0)
    # oracle: one backward pass per voxel, sum_a w_a M_a / S_a
    xt = torch.from_numpy(x)[None]
    lo, hi = x.reshape(6, -1).min(1), x.reshape(6, -1).max(1)
    slow = np.zeros_like(x)
    for c, *idx in zip(*np.nonzero(w)):
        y, s = lrp.forward(xt, (lo, hi))
        seed = torch.zeros_like(y)
        seed[(0, c, *idx)] = 1.0
        (m,) = torch.autograd.grad(y, s, seed)
        slow += w[(c, *idx)] * (m[0] / m.sum()).numpy()
    assert rel_err(fast, slow) < 1e-8
    # an indicator weight set is Eq. 2's region relevance
    loop = region_relevance_loop(lrp, x, indicator[1].astype(bool), 1, threshold=0.0)
    assert rel_err(region, loop.maps) < 1e-6


def test_weighted_relevance_checks_the_shape():
    x = random_input(seed=1, shape=(4, 4, 4))[0].numpy()
    with pytest.raises(ValueError, match="weight set shape"):
        weighted_relevance(tiny_net(), x, [np.ones((2, 4, 4, 5))], device="cpu")


def test_draws_are_sequence_relevance_of_their_regions():
    model = random_unet(seed=15, dtype=torch.float32)
    x = random_input(seed=16, shape=(8, 16, 16), dtype=torch.float32)[0].numpy()
    with_tumor(model, x, 0.2)
    lrp = LRP(model, "recommended")
    iv = sequence_relevance_interval(lrp, x, resamples=4, device="cpu", seed=3, max_voxels=100, threshold=0.0)
    base = sequence_relevance(lrp, x, device="cpu", seed=3, max_voxels=100, threshold=0.0)
    np.testing.assert_array_equal(iv.background_region, base.background_region)
    np.testing.assert_allclose(iv.shares, base.shares, rtol=1e-4, atol=1e-6)
    assert rel_err(iv.maps, base.maps) < 1e-4
    assert iv.resampled.shape == (4, 6)
    pred = (torch.as_tensor(model(torch.from_numpy(x)[None]))[0].detach().numpy())
    pred = pred[1] > pred[0]
    for k in (1, 3):
        t, b = choose_regions(pred, 3 + k, "random", 100)
        ref = sequence_relevance(lrp, x, device="cpu", regions=(t, b), threshold=0.0)
        np.testing.assert_allclose(iv.resampled[k], ref.shares, rtol=1e-4, atol=1e-6)
    assert len({tuple(np.round(r, 6)) for r in iv.resampled}) == 4  # the draws differ
    assert (iv.low <= iv.mean + 1e-12).all() and (iv.mean <= iv.high + 1e-12).all() and (iv.std > 0).all()
    d = iv.as_dict()
    assert d["resamples"] == 4 and len(d["relevance_p97.5"]) == 6 and len(d["relevance_expected"]) == 6
    assert d["relevance"] == pytest.approx(base.as_dict()["relevance"], rel=1e-4, abs=1e-6)


def test_expectation_is_the_mean_over_every_possible_background_region():
    """N = 8 background candidates, n = 3 tumor voxels: averaging M over all C(8, 3) = 56 regions B equals the
    one-pass expectation (n / N) sum_b M_b / S_b, as LRP is linear in the seed."""
    net = tiny_net(5)
    x = random_input(seed=6, shape=(1, 1, 11))[0].numpy()
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None])[0]
        margin = (y[1] - y[0]).flatten()
        net[2].bias[1] -= float(torch.sort(margin, descending=True).values[2:4].mean())  # 3 voxels tumor
        y = net(torch.from_numpy(x)[None])[0]
    pred = (y[1] > y[0]).numpy()
    assert pred.sum() == 3
    iv = sequence_relevance_interval(net, x, resamples=2, preset="epsilon", device="cpu", threshold=0.0)
    cand = np.flatnonzero(~pred)
    tumor = region_relevance_loop(net, x, pred, 1, preset="epsilon", threshold=0.0).maps
    per_voxel = {}
    for b in cand:
        r = np.zeros(pred.size, bool)
        r[b] = True
        per_voxel[b] = region_relevance_loop(net, x, r.reshape(pred.shape), 0, preset="epsilon", threshold=0.0).maps
    subsets = list(combinations(cand, 3))
    mean = sum(sum(per_voxel[b] for b in s) for s in subsets) / len(subsets) + tumor
    assert rel_err(iv.expected_maps, mean) < 1e-5
    flat = mean.reshape(6, -1).sum(1)
    np.testing.assert_allclose(iv.expected, flat / flat.sum(), rtol=1e-5, atol=1e-7)


def test_resamples_must_be_positive():
    with pytest.raises(ValueError, match="resamples"):
        sequence_relevance_interval(tiny_net(), random_input(shape=(4, 4, 4))[0].numpy(), resamples=0)


def test_analysis_writes_the_spread_and_draws_error_bars(tmp_path):
    import csv
    import json

    from LiverTumorLRPLib.cohort import write_cohort_outputs
    from LiverTumorLRPLib.pipeline import analyze_case
    from pipeline_fixtures import make_cases, make_model

    (folder,) = make_cases(str(tmp_path / "cases"), n=1)
    model = make_model(str(tmp_path / "m.safetensors"), folder)
    out = str(tmp_path / "out")
    summary = analyze_case(folder, out, model, device="cpu", resamples=3, method="paper")   # Sec. 2.3 with B drawn
    saved = json.loads(open(f"{out}/sequence_relevance.json").read())
    assert saved["resamples"] == 3 and len(saved["relevance_p97.5"]) == 6 and len(saved["relevance_expected"]) == 6
    rows = list(csv.DictReader(open(f"{out}/sequence_relevance.csv")))
    assert len(rows) == 6
    for row, lo, hi, mean in zip(rows, saved["relevance_p2.5"], saved["relevance_p97.5"], saved["relevance_mean"]):
        assert float(row["relevance_p2.5"]) == pytest.approx(lo) and float(row["relevance_p97.5"]) == pytest.approx(hi)
        assert lo <= mean <= hi
    assert summary["relevance"] == pytest.approx([float(r["relevance"]) for r in rows])
    # Fig. 1 with each case's interval, and a cohort of cases without one
    write_cohort_outputs(str(tmp_path / "cohort"), {"a": saved, "b": saved}, {})
    plain = {k: v for k, v in saved.items() if not k.startswith("relevance_")}
    write_cohort_outputs(str(tmp_path / "cohort_plain"), {"a": plain}, {})
    for d in ("cohort", "cohort_plain"):
        assert (tmp_path / d / "cohort_relevance.png").stat().st_size > 0

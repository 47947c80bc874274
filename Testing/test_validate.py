"""Validation checks (issue 6), tiny versions: exact Shapley values, ablation, known truth, randomisation,
class sensitivity and region perturbation on models whose answers are known."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from LiverTumorLRPLib import validation as V
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

SHAPE = (8, 16, 16)


def linear_model(seed=0, only_channel=None) -> nn.Module:
    """Logits linear in the input: every sequence adds its own contribution (Shapley = ablation)."""
    torch.manual_seed(seed)
    conv = nn.Conv3d(6, 2, 3, padding=1)
    if only_channel is not None:
        with torch.no_grad():
            keep = torch.zeros(6, dtype=torch.bool)
            keep[only_channel] = True
            conv.weight[:, ~keep] = 0.0
    return nn.Sequential(conv).eval()


def random_case(model, seed=0) -> V.ValidationCase:
    image = np.random.default_rng(seed).standard_normal((6,) + SHAPE).astype(np.float32)
    return V.make_case(model, image, f"random_{seed}", max_voxels=200)


def test_the_default_method_is_checked_with_the_checks_own_f():
    """``contribution`` in the checks: the blurred-baseline Shapley values of the case's f (its T and B), with
    reference-based LRP maps that add up to them."""
    from LiverTumorLRPLib.validation.checks import contribution

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(6, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1)).eval()
    with torch.no_grad():    # about a third of the voxels predicted tumor, whatever the random weights
        y = model(torch.from_numpy(np.random.default_rng(0).standard_normal((1, 6) + SHAPE).astype(np.float32)))
        model[2].bias[1] -= float(torch.quantile((y[0, 1] - y[0, 0]).flatten(), 0.67))
    case = random_case(model)
    c = contribution(model, case)
    phi = V.shapley_values(model, case, "blur")
    np.testing.assert_allclose(c.sums, phi)
    np.testing.assert_allclose(c.shares, phi / phi.sum())
    np.testing.assert_allclose(c.maps.reshape(6, -1).sum(axis=1), phi, rtol=1e-4, atol=1e-6)


def test_regions_are_equally_large_and_disjoint():
    case = random_case(linear_model())
    assert case.tumor.sum() == case.background.sum() > 0
    assert not (case.tumor & case.background).any()
    y = V.logits(linear_model(), case.image)[0]
    assert bool((y[1] > y[0])[torch.from_numpy(case.tumor)].all())


def test_shapley_is_exact_for_an_additive_model():
    model = linear_model()
    case = random_case(model)
    phi = V.shapley_values(model, case, "zero")
    # efficiency: the values add up to f(all) - f(none)
    f_all, f_none = (float(V.target(V.logits(model, x), case)[0]) for x in (case.image, np.zeros_like(case.image)))
    assert phi.sum() == pytest.approx(f_all - f_none, rel=1e-4, abs=1e-4)
    # additive model: each value is the sequence's own contribution, which is also its ablation drop
    np.testing.assert_allclose(phi, V.sequence_ablation(model, case, "zero"), rtol=1e-4, atol=1e-4)
    for i in range(6):
        x = np.zeros_like(case.image)
        x[i] = case.image[i]
        own = float(V.target(V.logits(model, x), case)[0]) - f_none
        assert phi[i] == pytest.approx(own, rel=1e-4, abs=1e-4)


def test_lrp_of_f_equals_shapley_for_an_additive_bias_free_model():
    """Without biases and with LRP-epsilon (tiny), LRP of a linear f gives each sequence exactly its own
    contribution w_i * x_i, which is its Shapley value with the zero baseline."""
    model = linear_model(2)
    with torch.no_grad():
        model[0].bias.zero_()
    case = random_case(model, 2)
    phi = V.shapley_values(model, case, "zero")
    np.testing.assert_allclose(V.lrp_of_target(model, case, "epsilon"), phi, rtol=1e-4, atol=1e-5)
    assert V.spearman(V.lrp_of_target(model, case, "epsilon"), phi) == pytest.approx(1.0)


def test_shapley_of_an_interaction_is_split_equally():
    """f = a * b (two sequences interacting): each gets half, the others zero."""
    class Product(nn.Module):
        def forward(self, x):
            v = (x[:, 0] * x[:, 3]).mean(dim=(1, 2, 3))
            return torch.stack([torch.zeros_like(x[:, 0]), v[:, None, None, None] + 0 * x[:, 0]], 1)

    image = np.ones((6,) + SHAPE, np.float32)
    tumor = np.zeros(SHAPE, bool)
    tumor[0, 0, :4] = True
    back = np.zeros(SHAPE, bool)
    back[-1, -1, :4] = True
    case = V.ValidationCase("product", image, tumor, back)
    np.testing.assert_allclose(V.shapley_values(Product(), case), [0.5, 0, 0, 0.5, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="unknown baseline 'noise'"):
        V.shapley_values(Product(), case, "noise")


def test_known_truth_ranks_the_only_used_sequence_first():
    model = linear_model(only_channel=SEQUENCE_KEYS.index("T1_120s"))
    cases = [random_case(model, s) for s in range(2)]
    for c in cases:
        c.informative = ["T1_120s"]
    res = V.known_truth(model, cases, ["recommended", "epsilon"])
    for preset in ("recommended", "epsilon"):
        r = res[preset]
        assert (r["hits"], r["tumor_class_hits"], r["cases"]) == (2, 2, 2)
        assert (r["share"], r["tumor_class_share"]) == (1.0, 1.0)
        assert [c["case"] for c in r["per_case"]] == ["random_0", "random_1"]
        for c in r["per_case"]:
            for key in ("shares", "tumor_class_shares"):
                assert np.argmax(c[key]) == SEQUENCE_KEYS.index("T1_120s") and sum(c[key]) == pytest.approx(1.0)
    # the Shapley reference: sequences the model never reads get exactly 0, whatever the baseline
    k = SEQUENCE_KEYS.index("T1_120s")
    assert set(res["shapley"]) == {"zero", "mean", "blur"}
    for b, r in res["shapley"].items():
        phis = np.array([c["shapley"] for c in r["per_case"]])
        np.testing.assert_allclose(np.delete(phis, k, axis=1), 0.0, atol=1e-6)
        assert r["hits"] == int((phis[:, k] > 0).sum()) and r["cases"] == 2
    assert V.informative_ranked_first([0.1, 0.2, 0.05, 0.3, 0.25, 0.1], ["T1_60s", "T1_120s"])
    assert not V.informative_ranked_first([0.1, 0.2, 0.05, 0.3, 0.25, 0.1], ["T2"])


def test_randomisation_cascade_leaves_the_model_alone():
    torch.manual_seed(0)
    model = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    image = np.random.default_rng(0).standard_normal((6,) + SHAPE).astype(np.float32)
    y = V.logits(model, image)[0]
    with torch.no_grad():  # shift the tumor logit so that about half the voxels are predicted tumor
        model.head.bias[1] += float((y[0] - y[1]).median())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    case = V.make_case(model, image, "unet", max_voxels=200)
    layers = V.linear_layers_in_order(model, case.image)
    assert layers[-1] == "head" and layers[0].startswith("encoders.0")
    rows = V.randomisation_cascade(model, case, "recommended", steps=(1, 2))
    assert [r["step"] for r in rows] == [0, 1, 2, len(layers)]
    assert rows[0]["map"] == 1.0 and rows[1]["layer"] == "head"
    assert all(-1.0 <= r["map"] <= 1.0 for r in rows[1:] if "error" not in r)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_class_sensitivity_of_antisymmetric_logits():
    """y0 = -y1: the Eq. 1 maps are exact opposites (rho -1); Eq. 2's per-voxel normalisation cancels the sign."""
    conv = nn.Conv3d(6, 2, 1, bias=False)
    with torch.no_grad():
        w = torch.randn(1, 6, 1, 1, 1)
        conv.weight.copy_(torch.cat([-w, w]))
    model = nn.Sequential(conv).eval()
    case = random_case(model, 3)
    res = V.class_sensitivity(model, case, "epsilon")
    assert res["raw_map"] == pytest.approx(-1.0, abs=1e-6)
    assert res["map"] == pytest.approx(1.0, abs=1e-6) and res["shares_l1"] == pytest.approx(0.0, abs=1e-5)


def test_aopc_orders_on_an_additive_model():
    """For a linear model gradient x input and occlusion are exact cube contributions, so removing the most
    relevant cubes first drops the score at least as fast as any random order, and least-relevant first
    at most as fast."""
    model = linear_model(1)
    case = random_case(model, 1)
    res = V.aopc(model, case, ["gradient-x-input", "occlusion", "epsilon"], cube=(4, 8, 8), fraction=0.5,
                 points=5, n_random=2)
    assert res["n_cubes"] == 8 and res["steps"] == [0, 1, 2, 3, 4]
    gi, occ, rnd = res["gradient-x-input"], res["occlusion"], res["random"]
    assert gi["morf_curve"][0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(gi["morf_curve"], occ["morf_curve"], atol=1e-5)
    assert all(m >= r - 1e-5 for m, r in zip(gi["morf_curve"], rnd["morf_curve"]))
    assert gi["morf"] >= rnd["morf"] >= gi["lerf"]


def test_validate_command_tiny(tmp_path, capsys):
    from LiverTumorLRPLib.cli import main

    out = tmp_path / "val"
    assert main(["validate", "--out", str(out), "--cases", "1", "--detail-cases", "1", "--crop", "16", "32", "32",
                 "--presets", "recommended", "contribution", "--baseline-methods", "gradient-x-input",
                 "--randomisation-steps", "1", "3", "--device", "cpu"]) == 0
    res = json.loads((out / "validation.json").read_text())
    assert len(res["cases"]) == 1 and set(res["per_preset"]) == {"recommended", "contribution"}
    assert "contribution" in res["aopc"][0] and "contribution" not in res["class_sensitivity"]
    row = res["per_preset"]["recommended"]
    for key in ("shapley_rho_median", "shapley_f_rho_median", "randomised_top3_map_rho_median",
                "class_raw_map_rho_median", "aopc_morf"):
        assert -1.0 <= row[key] <= 1.0 or key == "aopc_morf", key
    assert len(res["shapley"][0]["shapley"]) == 6 and len(res["shapley"][0]["lrp_of_f"]["recommended"]) == 6
    for name in ("presets.csv", "report.html", "randomisation.png", "aopc.png", "shapley.png"):
        assert os.path.getsize(out / name) > 0
    assert "recommended" in capsys.readouterr().out
    # per-case results, named, in every check's entry; rates with their Wilson interval
    name = res["cases"][0]
    assert res["shapley"][0]["case"] == name and res["aopc"][0]["case"] == name
    assert res["class_sensitivity"]["recommended"][0]["case"] == name
    assert {r["case"] for r in res["randomisation"]["recommended"][0]} == {name}
    steps = [r["step"] for r in res["randomisation"]["recommended"][0]]
    assert steps[:3] == [0, 1, 3] and len(steps) == 4 and steps[-1] > 3  # the asked steps, then all layers
    assert res["crop"] == [16, 32, 32] and not res["whole_volumes"]
    r = row["rates"]["randomised_top3_map_rho_lt_0.3"]
    assert r["cases"] == 1 and r["ci95"] == pytest.approx(V.wilson_interval(r["hits"], 1))
    assert "randomised_top3_map_rho_lt_0.3" in (out / "rates.csv").read_text()
    # the five goals: known truth not run, Shapley with the zero baseline is not the goal's blurred one
    goals = res["goals"]["recommended"]
    assert [g["value"] is None for g in goals] == [True, True, True, False, False]
    rand, aopc = goals[3], goals[4]
    assert rand["value"] == row["randomised_top3_map_rho_median"] and rand["met"] == (rand["value"] < 0.3)
    diff = res["aopc"][0]["recommended"]["morf"] - res["aopc"][0]["gradient-x-input"]["morf"]
    assert aopc["value"] == pytest.approx(diff) and aopc["met"] == (diff > 0) and aopc["cases"] == 1
    assert "Goals for the default preset" in (out / "report.html").read_text()


def test_median_interval_has_95_percent_coverage():
    from scipy import stats

    for n in (6, 10, 17, 30, 61):
        x = np.arange(n, dtype=float)
        low, high = V.median_interval(x[::-1])
        k = int(low) + 1  # [x_(k), x_(n+1-k)], 1-based order statistics
        assert high == n - k
        coverage = stats.binom.cdf(n - k, n, 0.5) - stats.binom.cdf(k - 1, n, 0.5)
        tighter = stats.binom.cdf(n - k - 1, n, 0.5) - stats.binom.cdf(k, n, 0.5)
        assert coverage >= 0.95 > tighter
    assert V.median_interval(np.arange(30.0)) == [9.0, 20.0]  # the 10th and 21st of 30, coverage 95.7 %
    assert all(np.isnan(V.median_interval([1.0, 2.0, 3.0, 4.0, 5.0])))  # 5 values cannot give 95 %
    assert V.median_with_interval([3.0, float("nan"), 1.0, 2.0])["cases"] == 3


def test_wilson_interval_known_values():
    # 7 of 10: the interval the validation issue quotes (about 40-89 %); Wilson (1927), z = 1.96
    assert V.wilson_interval(7, 10) == pytest.approx([0.3968, 0.8922], abs=1e-4)
    assert V.wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert V.wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert V.wilson_interval(29, 30) == pytest.approx([0.8333, 0.9941], abs=1e-4)
    assert all(np.isnan(V.wilson_interval(0, 0)))
    assert V.rate([True, False, True, True]) == {"hits": 3, "cases": 4, "share": 0.75,
                                                 "ci95": V.wilson_interval(3, 4)}


def test_whole_volumes_are_the_default(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    V.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path)])
    assert args.crop is None and args.known_truth_cases >= 30 and "reference-blur" in args.presets
    assert p.parse_args(["--out", "o", "--crop", "24", "64", "64"]).crop == [24, 64, 64]


def test_known_truth_model_needs_its_informative_sequences(tmp_path):
    from LiverTumorLRPLib.models import save_model

    path = save_model(UNet3D(UNetConfig(depth=2, base_channels=4)).eval(), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="records no 'informative' sequences"):
        V.informative_of(str(path))


def test_known_truth_run_reports_rates_with_intervals_and_per_case_hits(tmp_path):
    from LiverTumorLRPLib.train import case_arrays
    from LiverTumorLRPLib.models import save_model

    torch.manual_seed(0)
    model = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    image, _ = case_arrays(V.VALIDATION_SEED, (48, 128, 128), (4.0, 3.0, 3.0))
    with torch.no_grad():
        y = model(torch.from_numpy(image[:, 16:32, 32:64, 32:64])[None])[0]
        model.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.97))
    path = str(save_model(model, tmp_path / "kt.safetensors", {"informative": ["T1_120s"]}))
    res = V.run_validation(str(tmp_path / "out"), model, checks=["known-truth"], known_truth_models=[path],
                           presets=["epsilon"], crop=(16, 32, 32), known_truth_cases=1, log=lambda *a: None)
    kt = res["known_truth"][path]["epsilon"]
    assert kt["cases"] == len(kt["per_case"]) >= 1 and kt["hits"] == sum(c["hit"] for c in kt["per_case"])
    assert kt["ci95"] == pytest.approx(V.wilson_interval(kt["hits"], kt["cases"]))
    row = res["per_preset"]["epsilon"]
    assert row["known_truth_share_ci95"] == pytest.approx(kt["ci95"])
    assert row["rates"]["known_truth T1_120s"]["hits"] == kt["hits"]
    assert res["known_truth_shapley_ci95"]["blur"] == pytest.approx(
        V.wilson_interval(res["known_truth"][path]["shapley"]["blur"]["hits"], kt["cases"]))
    rates = (tmp_path / "out" / "rates.csv").read_text()
    assert "known_truth T1_120s" in rates and "shapley-blur" in rates
    assert res["goals"]["epsilon"][0]["value"] == kt["share"] and res["goals"]["epsilon"][0]["cases"] == kt["cases"]
    # the presets and the Shapley values run apart, then merged: the same summary as one run
    kw = dict(checks=["known-truth"], known_truth_models=[path], crop=(16, 32, 32), known_truth_cases=1,
              log=lambda *a: None)
    only_presets = V.run_validation(str(tmp_path / "a"), model, presets=["epsilon"], known_truth_shapley=(), **kw)
    V.run_validation(str(tmp_path / "b"), model, presets=[], known_truth_shapley=("blur",), **kw)
    assert "shapley" not in only_presets["known_truth"][path] or not only_presets["known_truth"][path]["shapley"]
    merged = V.merge_results([json.loads((tmp_path / d / "validation.json").read_text()) for d in "ab"])
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN-safe)
    assert same(merged["per_preset"], res["per_preset"])
    assert merged["known_truth_shapley"] == {"blur": res["known_truth_shapley"]["blur"]}
    assert same(merged["goals"], res["goals"])
    # each preset against the exact blurred-baseline Shapley values of the same known-truth case
    agree = merged["per_preset"]["epsilon"]["known_truth_shapley_agreement"]["T1_120s"]
    case = res["known_truth"][path]["epsilon"]["per_case"][0]
    phi = res["known_truth"][path]["shapley"]["blur"]["per_case"][0]["shapley"]
    assert agree["tumor_class_rho"]["median"] == pytest.approx(V.spearman(case["tumor_class_shares"], phi))
    same = V.informative_ranked_first(phi, [SEQUENCE_KEYS[int(np.argmax(case["shares"]))]])
    assert agree["sec23_same_top"]["hits"] == int(same) and agree["sec23_same_top"]["cases"] == 1


def test_readme_tables_are_those_of_the_committed_validation_run(capsys):
    """The README's whole-volume tables are printed by scripts/validation_tables.py from docs/validation_results."""
    import runpy

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tables = runpy.run_path(os.path.join(root, "scripts", "validation_tables.py"))
    tables["main"]([os.path.join(root, "docs", "validation_results", f"{n}.json") for n in ("KT", "KTS", "S", "R", "A")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    assert len(rows) >= 4 * 6 and all(row in readme for row in rows)

"""Necessity: Dice without each sequence and the Shapley values of Dice, and the agreement check.

Shapley values against games whose values are known (additive, symmetric, efficiency), the sampled estimate
against the exact one; on a model that reads one sequence only, the case layer finds that sequence needed and the
others not; the analysis files, CSV and cohort outputs carry it; a ranking the model contradicts is flagged.
"""
import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from LiverTumorLRPLib import analysis
from LiverTumorLRPLib.case_io import Case
from LiverTumorLRPLib.model_info import ModelInfo
from LiverTumorLRPLib.necessity import (agreement, all_subsets, reference_image, sampled_shapley_values,
                                        sequence_necessity, shapley_values, with_only)
from LiverTumorLRPLib.sequences import DISPLAY_NAMES, SEQUENCE_KEYS


def test_shapley_values_of_known_games():
    w = np.array([0.5, -0.2, 0.0, 1.5, 0.3])
    additive = {s: float(sum(w[i] for i in s)) for s in all_subsets(5)}
    np.testing.assert_allclose(shapley_values(additive, 5), w, atol=1e-12)
    # "both needed": v = 1 only when players 0 and 1 are both present: each gets 1/2, the others 0
    both = {s: float({0, 1} <= s) for s in all_subsets(4)}
    np.testing.assert_allclose(shapley_values(both, 4), [0.5, 0.5, 0, 0], atol=1e-12)
    rng = np.random.default_rng(0)
    game = {s: float(rng.normal()) if s else 0.0 for s in all_subsets(6)}
    phi = shapley_values(game, 6)
    assert math.isclose(phi.sum(), game[frozenset(range(6))] - game[frozenset()], abs_tol=1e-12)  # efficiency


def test_sampled_shapley_values_estimate_the_exact_ones():
    n = 9
    weights = np.linspace(0.1, 0.9, n)

    def v(s):  # not additive: the best two players count
        return float(sum(sorted((weights[i] for i in s), reverse=True)[:2]))

    exact = shapley_values({s: v(s) for s in all_subsets(n)}, n)
    est, err = sampled_shapley_values(lambda subsets: [v(s) for s in subsets], n, samples=400, seed=1)
    assert np.all(err > 0)
    assert np.all(np.abs(est - exact) < 4 * err + 1e-9)
    additive, err0 = sampled_shapley_values(lambda subsets: [float(sum(weights[list(s)])) for s in subsets], n, 20)
    np.testing.assert_allclose(additive, weights, atol=1e-12)      # every ordering gives every weight exactly
    np.testing.assert_allclose(err0, 0, atol=1e-12)


def test_more_than_eight_sequences_are_sampled_with_standard_errors():
    keys = [f"s{i}" for i in range(10)]
    w = np.arange(10) / 45.0

    def dice_of(subsets):
        return [float(sum(w[list(s)])) for s in subsets]

    nec = sequence_necessity(dice_of, keys, samples=16)
    assert not nec.exact and set(nec.shapley_stderr) == set(keys)
    np.testing.assert_allclose([nec.shapley_dice[k] for k in keys], w, atol=1e-12)
    np.testing.assert_allclose([nec.dice_without[k] for k in keys], 1.0 - w, atol=1e-12)
    assert nec.forward_passes == 12 + 16 * 11


def test_reference_images():
    x = np.random.default_rng(0).normal(size=(3, 8, 10, 12)).astype(np.float32)
    assert not reference_image(x, "zero").any()
    np.testing.assert_allclose(reference_image(x, "mean")[1], x[1].mean(), rtol=1e-5)
    blur = reference_image(x, "blur")
    assert blur.dtype == x.dtype and blur.std() < 0.5 * x.std()
    kept = with_only(x, blur, {0, 2})
    assert np.array_equal(kept[0], x[0]) and np.array_equal(kept[1], blur[1]) and np.array_equal(kept[2], x[2])
    with pytest.raises(ValueError, match="unknown reference 'noise'"):
        reference_image(x, "noise")


class OneSequence(nn.Module):
    """Tumor wherever sequence ``c`` (normalised) exceeds 1.5: a model that needs that sequence only."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv3d(6, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, c] = 4.0
            self.conv.bias.copy_(torch.tensor([0.0, -6.0]))
        self.model_info = ModelInfo(strides=(1, 1, 1))

    def forward(self, x):
        return self.conv(x)


def blob_case(c: int, label: bool = True):
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    image = rng.normal(0, 0.3, size=(6, 12, 24, 24)).astype(np.float32)
    z, y, x = np.ogrid[:12, :24, :24]
    blob = (z - 6) ** 2 / 9 + (y - 12) ** 2 / 25 + (x - 12) ** 2 / 25 <= 1
    image[c][blob] += 3.0
    reference = sitk.GetImageFromArray(np.zeros(image.shape[1:], np.float32))
    return Case("blob", image, reference, label=blob.astype(np.uint8) if label else None), blob


@pytest.mark.parametrize("with_label", [True, False])
def test_a_model_that_reads_one_sequence_needs_only_that_one(with_label):
    c = SEQUENCE_KEYS.index("T1_20s")
    case, blob = blob_case(c, with_label)
    p = analysis.prepare(case, OneSequence(c))
    nec = analysis.necessity(p, reference="zero", device="cpu")
    assert nec.target == ("label" if with_label else "prediction") and nec.exact and nec.forward_passes == 64
    assert nec.dice_full > 0.9 and nec.dice_none == 0.0
    assert nec.dice_without["T1_20s"] == 0.0
    assert all(nec.dice_without[k] == nec.dice_full for k in SEQUENCE_KEYS if k != "T1_20s")
    assert math.isclose(nec.shapley_dice["T1_20s"], nec.dice_full, abs_tol=1e-12)
    assert all(abs(nec.shapley_dice[k]) < 1e-12 for k in SEQUENCE_KEYS if k != "T1_20s")
    e = analysis.sequence_relevance(p, preset="epsilon", device="cpu", resamples=0, necessity_reference="zero")
    assert e.necessity.shapley_dice == nec.shapley_dice
    assert e.agreement["same_top"] and e.agreement["top_necessity"] == "T1_20s" and e.agreement["warning"] is None


def test_disagreement_is_flagged():
    phi = dict(zip(SEQUENCE_KEYS, [0.5, 0.1, 0.0, 0.0, 0.0, 0.0]))
    agree = agreement([0.6, 0.2, 0.05, 0.05, 0.05, 0.05], phi, SEQUENCE_KEYS, DISPLAY_NAMES)
    assert agree["same_top"] and agree["spearman"] > 0.5 and agree["warning"] is None
    against = agreement([0.05, 0.05, 0.6, 0.1, 0.1, 0.1], phi, SEQUENCE_KEYS, DISPLAY_NAMES)
    assert not against["same_top"] and against["spearman"] < 0.5
    assert "relevance ranks T1 20 s first, the segmentation needs T2 most" in against["warning"]
    flat = agreement([0.2] * 6, dict.fromkeys(SEQUENCE_KEYS, 0.0), SEQUENCE_KEYS, DISPLAY_NAMES)
    assert flat["spearman"] is None and flat["same_top"] is None and "cannot be checked" in flat["warning"]


def test_analysis_files_and_cohort_carry_necessity(tmp_path):
    from LiverTumorLRPLib import cohort, pipeline
    from pipeline_fixtures import make_cases, make_model

    folders = make_cases(str(tmp_path / "cases"), n=2)
    model = make_model(str(tmp_path / "m.safetensors"), folders[0])
    summary = pipeline.analyze_case(folders[0], str(tmp_path / "a"), model, device="cpu", resamples=2)
    nec = summary["necessity"]
    assert nec["reference"] == "blur" and nec["target"] == "label" and nec["exact"] and nec["forward_passes"] == 64
    assert math.isclose(summary["dice"], nec["dice_full"], abs_tol=1e-9)   # the same segmentation, the same Dice
    assert math.isclose(sum(nec["shapley_dice"].values()), nec["dice_full"] - nec["dice_none"], abs_tol=1e-9)
    assert set(summary["agreement"]) >= {"spearman", "same_top", "warning"}
    with open(tmp_path / "a" / "sequence_relevance.json", encoding="utf-8") as fh:
        assert json.load(fh)["necessity"] == nec
    with open(tmp_path / "a" / "sequence_relevance.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["shapley_dice"]) for r in rows] == pytest.approx([nec["shapley_dice"][k] for k in SEQUENCE_KEYS])
    back = pipeline.read_explanation_files(str(tmp_path / "a"))
    assert back.necessity.shapley_dice == nec["shapley_dice"] and back.agreement == summary["agreement"]
    res = cohort.run_cohort(str(tmp_path / "cases"), str(tmp_path / "c"), model, device="cpu", max_components=0,
                            resamples=0)
    assert not res["failures"]
    with open(tmp_path / "c" / "cohort.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert all(r[f"shapley_dice_{k}"] != "" and r[f"dice_without_{k}"] != "" for r in table for k in SEQUENCE_KEYS)
    report = open(tmp_path / "c" / "report.html", encoding="utf-8").read()
    warned = sum(bool(r["warning"]) for r in table)
    assert (f"{warned} of 2 cases: the relevance ranking disagrees" in report) == (warned > 0)
    off = pipeline.analyze_case(folders[1], str(tmp_path / "b"), model, device="cpu", resamples=0,
                                necessity_reference=None)
    assert "necessity" not in off and "shapley_dice" not in off["sequences"][0]

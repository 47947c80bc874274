"""The bundled model: it loads from safetensors + JSON, segments fresh phantom cases, and the demo runs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from LiverTumorLRPLib.cli import main
from LiverTumorLRPLib.models import bundled_model_path, load_model
from LiverTumorLRPLib.phantom import generate_case, write_case

FRESH_SEEDS = (777001, 777002, 777003)  # used by neither training (seed * 10000 + i) nor the model card (100000+)


def test_bundled_model_files():
    path = bundled_model_path()
    assert path.exists() and path.with_suffix(".json").exists()
    assert path.stat().st_size < 5 * 2**20
    cfg = json.loads(path.with_suffix(".json").read_text())
    assert cfg["in_channels"] == 6 and cfg["out_channels"] == 2
    assert cfg["sequences"] == ["T2", "T1_plain", "T1_20s", "T1_60s", "T1_120s", "T1_15min"]
    model = load_model("bundled")
    assert not model.training


def test_segment_fresh_phantom_cases_reaches_dice_floor(tmp_path):
    dices = []
    for seed in FRESH_SEEDS:
        case_dir = write_case(generate_case(seed), str(tmp_path / f"case_{seed}"))
        out = str(tmp_path / f"seg_{seed}")
        assert main(["segment", case_dir, "--out", out, "--device", "cpu"]) == 0
        import SimpleITK as sitk
        seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "tumor_segmentation.nii.gz"))) > 0
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(case_dir, "label.nii.gz"))) > 0
        dices.append(2 * (seg & label).sum() / max(seg.sum() + label.sum(), 1))
    assert np.mean(dices) >= 0.6, dices


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "sequence relevance" in text and "Dice" in text
    result = json.load(open(os.path.join(out, "analysis", "result.json")))
    assert sum(result["relevance"]) == pytest.approx(1.0, abs=1e-5)
    assert result["method"] == "contribution" and result["n_tumor"] > 0   # the default: Shapley values of f
    phi = [result["shapley_f"][k] for k in result["shapley_f"]]
    assert sum(phi) == pytest.approx(result["f_full"] - result["f_reference"], rel=1e-6)
    assert result["relevance"] == pytest.approx([v / abs(sum(phi)) for v in phi], rel=1e-6)
    for name in ("sequence_relevance.png", "relevance_T1_120s.nii.gz", "tumor_segmentation.nii.gz"):
        assert os.path.exists(os.path.join(out, "analysis", name))

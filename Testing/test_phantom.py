"""The phantom: determinism, contrast per the notes' table, mimics, known-importance variants, files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorLRPLib.cli import main
from LiverTumorLRPLib.phantom import generate_case, write_case
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS

SMALL = dict(shape=(24, 64, 64), spacing=(8.0, 6.0, 6.0))


def contrast(case):
    """Median tumor / surrounding liver intensity per sequence for the largest tumor (noise-free cases)."""
    comps, n = ndimage.label(case.label > 0)
    sizes = ndimage.sum(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    t = comps == 1 + int(np.argmax(sizes))
    core = ndimage.binary_erosion(t)
    core = core if core.any() else t
    ring = ndimage.binary_dilation(t, iterations=3) & ~ndimage.binary_dilation(t)
    liver_like = ring & (case.images["T1_plain"] > 0.8 * 1000)  # liver, not fat or vessels, pre-contrast
    return {k: float(np.median(v[core]) / np.median(v[liver_like])) for k, v in case.images.items()}


def test_deterministic_for_a_seed():
    a, b, c = generate_case(3, **SMALL), generate_case(3, **SMALL), generate_case(4, **SMALL)
    for key in SEQUENCE_KEYS:
        np.testing.assert_array_equal(a.images[key], b.images[key])
    np.testing.assert_array_equal(a.label, b.label)
    assert a.lesions == b.lesions
    assert any(not np.array_equal(a.images[k], c.images[k]) for k in SEQUENCE_KEYS)


def test_hcc_and_metastasis_contrast_within_the_table():
    found = {"hcc": 0, "metastasis": 0}
    for seed in range(6):
        for kind in found:
            case = generate_case(seed, shape=(32, 96, 96), spacing=(6.0, 4.0, 4.0), tumor_kind=kind, noise=False,
                                 residual_misalignment=False)
            if case.label.sum() < 30:
                continue
            ratio = contrast(case)
            liver_t2 = 1.1 if case.info["cirrhotic"] else 1.0
            if kind == "hcc":
                assert 1.5 / liver_t2 * 0.85 <= ratio["T2"] <= 2.0 / liver_t2 * 1.15
                assert ratio["T1_plain"] == pytest.approx(0.9, abs=0.1)
            else:
                assert 2.0 * 0.85 <= ratio["T2"] <= 2.5 * 1.15
                assert ratio["T1_plain"] < 0.8            # hypo-intense core
                assert ratio["T1_15min"] < 0.8            # no hepatocytes: hypo in the hepatobiliary phase
            found[kind] += 1
    assert min(found.values()) >= 2


def test_mimics_present_and_labelled_background():
    kinds = set()
    for seed in range(6):
        case = generate_case(seed, **SMALL)
        for les in case.lesions:
            kinds.add(les["kind"])
            assert les["is_tumor"] == (les["kind"] in ("hcc", "metastasis"))
        assert set(np.unique(case.label)) <= {0, 1}
    assert {"cyst", "hemangioma"} <= kinds and kinds & {"hcc", "metastasis"}


def test_informative_variant_hides_tumors_elsewhere():
    case = generate_case(5, shape=(32, 96, 96), spacing=(6.0, 4.0, 4.0), tumor_kind="hcc", informative=["T1_120s"],
                         noise=False, residual_misalignment=False)
    ratio = contrast(case)
    for key in SEQUENCE_KEYS:
        if key == "T1_120s":
            continue
        assert ratio[key] == pytest.approx(1.0, abs=0.06), key
    assert abs(ratio["T1_120s"] - 1.0) > 0.2
    assert case.info["informative"] == ["T1_120s"]
    with pytest.raises(ValueError, match="unknown sequence 'T3'"):
        generate_case(0, informative=["T3"], **SMALL)


def test_unregistered_motion_is_recorded_and_bounded():
    case = generate_case(7, unregistered=True, **SMALL)
    assert case.motion["T1_15min"] == [0.0, 0.0, 0.0]
    for key in SEQUENCE_KEYS[:-1]:
        lr, ap, hf = case.motion[key]
        assert abs(lr) <= 2 and abs(ap) <= 3 and abs(hf) <= 10


def test_write_case_and_cli(tmp_path):
    import SimpleITK as sitk

    case = generate_case(1, **SMALL)
    folder = write_case(case, str(tmp_path / "c"))
    names = sorted(os.listdir(folder))
    assert names == sorted([f"{k}.nii.gz" for k in SEQUENCE_KEYS] + ["label.nii.gz", "lesions.json"])
    ref = sitk.ReadImage(os.path.join(folder, "T1_15min.nii.gz"))
    assert ref.GetSize() == (64, 64, 24) and ref.GetSpacing() == pytest.approx((6.0, 6.0, 8.0))
    for f in names[:-1]:
        img = sitk.ReadImage(os.path.join(folder, f))
        assert img.GetOrigin() == pytest.approx(ref.GetOrigin()) and img.GetSize() == ref.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "label.nii.gz"))),
                                  case.label)
    meta = json.load(open(os.path.join(folder, "lesions.json")))
    assert meta["seed"] == 1 and len(meta["lesions"]) == len(case.lesions)
    assert main(["phantom", str(tmp_path / "cli"), "--cases", "2", "--seed", "3", "--shape", "16", "32", "32",
                 "--spacing", "8", "8", "8", "--informative", "T2"]) == 0
    assert sorted(os.listdir(tmp_path / "cli")) == ["case_000", "case_001"]
    assert json.load(open(tmp_path / "cli" / "case_001" / "lesions.json"))["seed"] == 4

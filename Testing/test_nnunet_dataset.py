"""nnU-Net, MSD and BraTS datasets in (issue 23, part 1): imagesTs/imagesTr folders, 4D files, BraTS names,
multi-class labels, failed cases with their reasons."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorLRPLib.case_io import (GeometryWarning, find_cases, label_on_grid, match_channel, read_case,
                                      write_image)
from LiverTumorLRPLib.cli import main
from LiverTumorLRPLib.cohort import case_names
from LiverTumorLRPLib.model_info import model_info
from LiverTumorLRPLib.models import load_model, save_model
from LiverTumorLRPLib.phantom import generate_case, write_case
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS
from LiverTumorLRPLib.unet import UNet3D, UNetConfig
from pipeline_fixtures import make_model

SHAPE, SPACING = (12, 40, 40), (4, 3, 3)
LABELS = {"background": 0, "liver": 1, "tumor": 2}
BRATS = ["T1", "T1ce", "T2", "FLAIR"]  # the 4-channel model's channel names
QUICK = ["--device", "cpu", "--resamples", "0"]


def multiclass(case) -> np.ndarray:
    """0 background, 1 liver (a box around the middle), 2 tumor (the phantom's label)."""
    lab = np.zeros(case.label.shape, np.uint8)
    lab[2:-2, 6:-6, 6:-6] = 1
    lab[case.label > 0] = 2
    return lab


def write_nnunet_case(case, folder: str, name: str, order=SEQUENCE_KEYS, labels: str = None):
    """``name_000i.nii.gz`` = sequence ``order[i]``, the multi-class label ``labels/name.nii.gz``."""
    ref = case.reference()
    for i, key in enumerate(order):
        write_image(case.images[key], ref, os.path.join(folder, f"{name}_{i:04d}.nii.gz"), dtype=np.float32)
    if labels:
        write_image(multiclass(case), ref, os.path.join(labels, f"{name}.nii.gz"), dtype=np.uint8)


def write_dataset_json(folder: str, channels, labels=LABELS, key="channel_names"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "dataset.json"), "w") as fh:
        json.dump({key: {str(i): c for i, c in enumerate(channels)}, "labels": labels, "file_ending": ".nii.gz"}, fh)


def same_case(a, b):
    assert a.channels == b.channels
    np.testing.assert_array_equal(a.image, b.image)
    assert a.reference.GetSize() == b.reference.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(a.reference, get)() == getattr(b.reference, get)()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Dataset001_Liver/{imagesTs,labelsTs,dataset.json}: cases a, b (complete), c (no _0003); plain folders."""
    root = tmp_path_factory.mktemp("nnunet")
    cases = {n: generate_case(seed, shape=SHAPE, spacing=SPACING) for n, seed in (("a", 1), ("b", 2), ("c", 3))}
    ds = root / "Dataset001_Liver"
    images, labels = str(ds / "imagesTs"), str(ds / "labelsTs")
    for name, case in cases.items():
        write_case(case, str(root / "plain" / name))
        write_nnunet_case(case, images, name, labels=labels)
    os.remove(os.path.join(images, "c_0003.nii.gz"))
    write_dataset_json(str(ds), SEQUENCE_KEYS)
    model = make_model(str(root / "model" / "tiny.safetensors"), str(root / "plain" / "a"), fraction=0.1)
    return root, cases, images, model


def test_imagesTs_case_is_the_plain_case_folder(data):
    root, cases, images, _ = data
    plain = read_case(str(root / "plain" / "a"))
    for path in (os.path.join(images, "a"), os.path.join(images, "a_0000.nii.gz")):
        case = read_case(path, sequences=SEQUENCE_KEYS)
        assert case.name == "a"
        same_case(case, plain)
        np.testing.assert_array_equal(case.label, plain.label)  # the tumor class (2) of the multi-class label
        assert case.label.max() == 1 and case.label.sum() == (cases["a"].label > 0).sum()


def test_channels_by_the_datasets_own_names(tmp_path, data):
    """dataset.json channel_names in another order (and other spellings) than the model's: mapped by name."""
    _, cases, _, _ = data
    order = ("T1_15min", "T2", "T1_plain", "T1_120s", "T1_20s", "T1_60s")
    write_nnunet_case(cases["a"], str(tmp_path / "imagesTr"), "a", order=order, labels=str(tmp_path / "labelsTr"))
    write_dataset_json(str(tmp_path), ["T1 15 min HBP", "T2w", "T1 plain", "T1_120s", "arterial", "portal venous"],
                       labels={"background": 0, "liver": 1, "cancer": 2})
    case = read_case(str(tmp_path / "imagesTr" / "a"))
    same_case(case, read_case(str(tmp_path / "imagesTr" / "a_0000.nii.gz")))
    np.testing.assert_array_equal(case.image[0], read_case(str(data[0] / "plain" / "a")).image[0])
    assert case.label.sum() == (cases["a"].label > 0).sum()  # "cancer" is the lesion when no class is "tumor"


def test_find_cases_one_entry_per_case_labels_not_searched(data):
    root, _, images, _ = data
    ds = os.path.dirname(images)
    found = find_cases(ds)
    assert found == [os.path.join(images, n) for n in ("a", "b", "c")]
    assert case_names(ds, found) == ["imagesTs/a", "imagesTs/b", "imagesTs/c"]
    assert find_cases(images) == found
    assert [c for c in find_cases(str(root)) if "imagesTs" in c] == found


def test_cohort_runs_every_case_lesion_class_dice_missing_channel_fails(data, capsys):
    root, cases, images, model = data
    out = str(root / "out_cohort")
    code = main(["cohort", images, "--out", out, "--model", model, "--max-components", "0", *QUICK])
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED c:" in text and "c_0003.nii.gz" in text and "missing channel file" in text
    assert "c_0003.nii.gz" in open(os.path.join(out, "c", "error.txt")).read()
    for name in ("a", "b"):
        result = json.load(open(os.path.join(out, name, "result.json")))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, name, "tumor_segmentation.nii.gz"))) > 0
        tumor, liver = cases[name].label > 0, multiclass(cases[name]) > 0
        dice = 2 * (seg & tumor).sum() / (seg.sum() + tumor.sum())
        assert seg.any() and result["dice"] == pytest.approx(dice, abs=1e-6)
        assert result["dice"] != pytest.approx(2 * (seg & liver).sum() / (seg.sum() + liver.sum()), abs=1e-3)


def test_single_case_by_first_file_and_by_id_and_a_missing_channel(data, tmp_path, capsys):
    _, cases, images, model = data
    for i, path in enumerate((os.path.join(images, "a_0000.nii.gz"), os.path.join(images, "a"))):
        assert main(["segment", path, "--out", str(tmp_path / str(i)), "--model", model, "--device", "cpu"]) == 0
        assert "a: " in capsys.readouterr().out and os.path.exists(tmp_path / str(i) / "tumor_segmentation.nii.gz")
    assert main(["segment", os.path.join(images, "c"), "--out", str(tmp_path / "c"), "--model", model]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "error" in ln]  # not the progress bar
    assert "Traceback" not in err and len(lines) == 1
    assert "c_0003.nii.gz: missing channel file (T1_60s)" in lines[0]
    assert main(["segment", images, "--out", str(tmp_path / "d"), "--model", model]) == 1
    assert "nnU-Net dataset folder of 3 cases" in capsys.readouterr().err


def test_seven_channel_files_for_a_six_channel_model(data, tmp_path):
    _, cases, images, _ = data
    folder = str(tmp_path / "imagesTs")
    write_nnunet_case(cases["a"], folder, "x", order=(*SEQUENCE_KEYS, "T2"))
    with pytest.raises(ValueError, match=r"x_0006\.nii\.gz: case x has 7 channel files but the model takes 6"):
        read_case(os.path.join(folder, "x"))
    write_dataset_json(str(tmp_path), [*SEQUENCE_KEYS, "ADC"])  # the dataset itself has 7 channels
    with pytest.raises(ValueError, match=r"dataset has 7 channels .* model takes 6"):
        read_case(os.path.join(folder, "x_0000.nii.gz"))


def test_msd_4d_file_is_the_same_case_as_separate_files(data, tmp_path):
    root, cases, images, _ = data
    case = cases["b"]
    ref = case.reference()
    vols = []
    for key in SEQUENCE_KEYS:
        img = sitk.GetImageFromArray(case.images[key].astype(np.float32))
        img.CopyInformation(ref)
        vols.append(img)
    os.makedirs(tmp_path / "imagesTr")
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "imagesTr" / "liver_001.nii.gz"))
    write_image(multiclass(case), ref, str(tmp_path / "labelsTr" / "liver_001.nii.gz"), dtype=np.uint8)
    write_dataset_json(str(tmp_path), SEQUENCE_KEYS, labels={"0": "background", "1": "liver", "2": "cancer"},
                       key="modality")
    separate = read_case(os.path.join(images, "b"))
    for path in ("liver_001.nii.gz", "liver_001"):
        msd = read_case(str(tmp_path / "imagesTr" / path))
        same_case(msd, separate)
        np.testing.assert_array_equal(msd.label, separate.label)
    assert find_cases(str(tmp_path)) == [str(tmp_path / "imagesTr" / "liver_001")]
    sitk.WriteImage(sitk.JoinSeries(vols[:5]), str(tmp_path / "imagesTr" / "liver_002.nii.gz"))
    with pytest.raises(ValueError, match=r"liver_002\.nii\.gz: case liver_002 holds 5 channels but the model takes 6"):
        read_case(str(tmp_path / "imagesTr" / "liver_002"))


def _brats_model(path, names):
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(in_channels=4, depth=2, base_channels=4, sequences=list(names))).eval()
    return str(save_model(net, path, {"sequences": list(names)}))


def test_brats_names_map_to_a_four_channel_models_channels(data, tmp_path, capsys):
    _, cases, _, _ = data
    case = cases["a"]
    ref = case.reference()
    source = {"t1n": "T1_plain", "t1c": "T1_20s", "t2w": "T2", "t2f": "T1_15min"}  # stand-in images
    seg = (case.label > 0).astype(np.uint8) * 3
    seg[0] = 2  # BraTS sub-regions: every non-zero value is tumor
    new, old = tmp_path / "BraTS-GLI-00001-000", tmp_path / "BraTS20_Training_001"
    for suffix, key in source.items():
        write_image(case.images[key], ref, str(new / f"{new.name}-{suffix}.nii.gz"), dtype=np.float32)
    for suffix, key in zip(("t1", "t1ce", "t2", "flair"), source.values()):
        write_image(case.images[key], ref, str(old / f"{old.name}_{suffix}.nii.gz"), dtype=np.float32)
    write_image(seg, ref, str(new / f"{new.name}-seg.nii.gz"), dtype=np.uint8)
    model = _brats_model(tmp_path / "brats.safetensors", BRATS)
    channels = model_info(load_model(model)).channels
    assert channels == tuple(BRATS)
    a, b = read_case(str(new), sequences=channels), read_case(str(old), sequences=channels)
    same_case(a, b)
    np.testing.assert_array_equal(a.image[0], read_case(str(old), sequences=("t1n", "t1c", "t2w", "t2f")).image[0])
    assert a.label.sum() == (seg > 0).sum() and b.label is None
    assert a.files["T1ce"].endswith("-t1c.nii.gz") and b.files["FLAIR"].endswith("_flair.nii.gz")
    assert find_cases(str(tmp_path)) == [str(new), str(old)]
    assert main(["segment", str(new), "--out", str(tmp_path / "out"), "--model", model, "--device", "cpu"]) == 0
    assert "Dice" in capsys.readouterr().out
    # an nnU-Net BraTS dataset whose dataset.json names the channels as the MSD brain-tumour task does
    order = ("t2f", "t1n", "t1c", "t2w")
    folder = tmp_path / "Dataset002" / "imagesTr"
    for i, s in enumerate(order):
        write_image(case.images[source[s]], ref, str(folder / f"b_{i:04d}.nii.gz"), dtype=np.float32)
    write_dataset_json(str(tmp_path / "Dataset002"), ["FLAIR", "T1w", "t1gd", "T2w"])
    same_case(read_case(str(folder / "b"), sequences=channels), a)


def test_channel_name_aliases():
    assert [match_channel(n, BRATS) for n in ("t1n", "T1w", "t1c", "T1Gd", "t2w", "T2", "t2f", "Flair")] == \
        ["T1", "T1", "T1ce", "T1ce", "T2", "T2", "FLAIR", "FLAIR"]
    assert [match_channel(n, SEQUENCE_KEYS) for n in ("T2w", "T1 15 min", "portal venous", "ADC")] == \
        ["T2", "T1_15min", "T1_60s", None]


def test_label_on_grid_multiclass_only_when_asked(data):
    _, cases, _, _ = data
    lab = sitk.GetImageFromArray(multiclass(cases["a"]))
    lab.CopyInformation(cases["a"].reference())
    ref = cases["a"].reference()
    with pytest.raises(ValueError, match=r"has values 2; expected only 0 \(background\) and 1 \(tumor\)"):
        label_on_grid(lab, ref, "l.nii.gz")
    np.testing.assert_array_equal(label_on_grid(lab, ref, "l.nii.gz", lesion=(2,)), cases["a"].label > 0)
    np.testing.assert_array_equal(label_on_grid(lab, ref, "l.nii.gz", lesion="nonzero"), multiclass(cases["a"]) > 0)
    with pytest.raises(ValueError, match=r"has values 2; expected only 0 \(background\), 1 \(tumor\)"):
        label_on_grid(lab, ref, "l.nii.gz", lesion=(1,), classes={0: "background", 1: "tumor"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        assert label_on_grid(lab, ref, "l.nii.gz", lesion=(1, 2)).sum() == (multiclass(cases["a"]) > 0).sum()


def test_nnunet_model_channel_names_stay_apart_when_the_guesser_would_merge_them():
    from LiverTumorLRPLib.nnunet import _channels

    assert _channels({"channel_names": {"0": "T1n", "1": "T1c", "2": "T2w", "3": "T2f"}}, "d.json") == \
        ("T1n", "T1c", "T2w", "T2f")
    liver = {str(i): n for i, n in enumerate(["T2", "T1 plain", "arterial", "portal venous", "transitional",
                                              "hepatobiliary"])}
    assert _channels({"channel_names": liver}, "d.json") == ("T2", "T1_plain", "T1_20s", "T1_60s", "T1_120s",
                                                             "T1_15min")

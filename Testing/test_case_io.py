"""Reading cases (files, DICOM, case.json), geometry, errors and atomic writers of case_io."""
from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorLRPLib.case_io import (Case, GeometryWarning, case_from_images, find_cases, read_case,
                                      write_image, write_json, write_text)
from LiverTumorLRPLib.sequences import REFERENCE_KEY, SEQUENCE_KEYS

SHAPE = (10, 20, 24)  # z, y, x
SPACING = (1.5, 1.5, 3.0)  # x, y, z
ORIGIN = (-18.0, -15.0, 12.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane: not the identity


def volume(channel: int, shape=SHAPE, seed=0) -> np.ndarray:
    """A smooth positive volume whose mean differs per channel (so the channel order can be checked)."""
    z, y, x = np.indices(shape, dtype=np.float32)
    blob = np.exp(-(((z - shape[0] / 2) / 3) ** 2 + ((y - shape[1] / 2) / 5) ** 2 + ((x - shape[2] / 2) / 6) ** 2))
    rng = np.random.default_rng(seed + channel)
    return (100.0 * (channel + 1) * (0.2 + blob) + rng.normal(0, 2, shape)).astype(np.float32)


def image(arr: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def label_array(shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:6, 8:12, 9:14] = 1
    return lab


def make_case(folder, ext=".nii.gz", skip=(), with_label=True, overrides=None) -> str:
    os.makedirs(folder, exist_ok=True)
    overrides = overrides or {}
    for c, key in enumerate(SEQUENCE_KEYS):
        if key in skip:
            continue
        img = overrides.get(key, image(volume(c)))
        sitk.WriteImage(img, os.path.join(folder, key + ext))
    if with_label:
        sitk.WriteImage(image(label_array()), os.path.join(folder, "label" + ext))
    return str(folder)


def write_dicom_series(img: sitk.Image, folder: str) -> None:
    """Write a 3D int16 image as one DICOM file per slice with position/orientation tags."""
    os.makedirs(folder, exist_ok=True)
    img = sitk.Cast(img, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1000) % 10**9)
    tags = [("0008|0060", "MR"), ("0010|0010", "Phantom^Test"), ("0020|000d", series_uid + ".1"),
            ("0020|000e", series_uid + ".2"), ("0008|103e", "T1 20s"),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])))]
    for i in range(img.GetDepth()):
        sl = img[:, :, i]
        for k, v in tags:
            sl.SetMetaData(k, v)
        sl.SetMetaData("0008|0018", f"{series_uid}.3.{i + 1}")
        sl.SetMetaData("0020|0013", str(i + 1))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, i))))
        sl.SetMetaData("0018|0050", f"{img.GetSpacing()[2]:.6f}")
        writer.SetFileName(os.path.join(folder, f"slice{i:03d}.dcm"))
        writer.Execute(sl)


# --------------------------------------------------------------------------- reading

@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_read_case_formats_channel_order_and_geometry(tmp_path, ext):
    folder = make_case(tmp_path / "case01", ext=ext)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # identical grids: no resampling, no warning
        case = read_case(folder)
    assert isinstance(case, Case) and case.name == "case01"
    assert case.image.shape == (6, *SHAPE) and case.image.dtype == np.float32
    assert case.raw.shape == (6, *SHAPE)
    # identical grids are used as they are, in channel order
    for c in range(6):
        np.testing.assert_allclose(case.raw[c], volume(c), rtol=1e-6, atol=1e-3)
        assert abs(float(case.image[c].mean())) < 1.5  # normalised per sequence
    assert np.all(np.abs(case.image) <= 5.0)
    np.testing.assert_allclose(case.spacing, SPACING)
    np.testing.assert_allclose(case.spacing_zyx, SPACING[::-1])
    np.testing.assert_allclose(case.origin, ORIGIN)
    np.testing.assert_allclose(case.direction, DIRECTION, atol=1e-6)
    assert case.label.dtype == np.uint8 and np.array_equal(case.label, label_array())
    assert set(case.files) == set(SEQUENCE_KEYS) | {"label"}
    assert case.files["T2"].endswith("T2" + ext)


def test_read_case_without_normalisation(tmp_path):
    case = read_case(make_case(tmp_path / "c", with_label=False), normalise=False)
    np.testing.assert_allclose(case.image[SEQUENCE_KEYS.index("T1_60s")], volume(3), atol=1e-3)
    assert case.label is None


def test_read_case_dicom_series_folder(tmp_path):
    folder = make_case(tmp_path / "dcm", skip=("T1_20s",))
    ref = image(np.round(volume(2)).astype(np.int16))
    write_dicom_series(ref, os.path.join(folder, "T1_20s"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # the series has exactly the reference grid
        case = read_case(folder, normalise=False)
    assert case.files["T1_20s"].endswith("T1_20s")
    np.testing.assert_allclose(case.image[2], np.round(volume(2)), atol=1e-3)


def test_case_json_mapping_and_label(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mapping = {"name": "patient7"}
    for c, key in enumerate(SEQUENCE_KEYS):
        fname = f"series_{c}_{key.lower()}.nrrd"
        sitk.WriteImage(image(volume(c)), str(data / fname))
        mapping[key] = f"../data/{fname}"
    sitk.WriteImage(image(label_array()), str(data / "seg.nii.gz"))
    mapping["label"] = "../data/seg.nii.gz"
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "case.json").write_text(json.dumps(mapping))
    for path in (tmp_path / "case", tmp_path / "case" / "case.json"):
        case = read_case(str(path), normalise=False)
        assert case.name == "patient7"
        for c in range(6):
            np.testing.assert_allclose(case.image[c], volume(c), atol=1e-3)
        assert int(case.label.sum()) == int(label_array().sum())


def test_case_json_missing_file_names_json_and_key(tmp_path):
    (tmp_path / "case.json").write_text(json.dumps({k: f"{k}.nii.gz" for k in SEQUENCE_KEYS}))
    with pytest.raises(FileNotFoundError, match=r"case\.json.*T2.*does not exist"):
        read_case(str(tmp_path))


def test_different_grid_warns_and_is_resampled_to_reference(tmp_path):
    # T2 thicker slices and coarser pixels covering the same region
    t2 = image(volume(0, shape=(5, 10, 12)), spacing=(3.0, 3.0, 6.0),
               origin=tuple(np.array(ORIGIN) + np.array([0.75, -0.75, 1.5])))
    folder = make_case(tmp_path / "c", overrides={"T2": t2})
    with pytest.warns(GeometryWarning, match=r"T2 \(.*T2\.nii\.gz\).*resampled onto the T1_15min grid"):
        case = read_case(folder)
    assert case.image.shape == (6, *SHAPE)
    np.testing.assert_allclose(case.origin, ORIGIN)
    assert np.all(np.isfinite(case.image))


def test_label_on_other_grid_is_resampled_nearest(tmp_path):
    folder = make_case(tmp_path / "c", with_label=False)
    big = np.repeat(label_array(), 2, axis=0)  # slices halved: same region, twice as many
    lab = image(big, spacing=(SPACING[0], SPACING[1], SPACING[2] / 2),
                origin=tuple(np.array(ORIGIN) - np.array(DIRECTION).reshape(3, 3)[:, 2] * SPACING[2] / 4))
    sitk.WriteImage(lab, os.path.join(folder, "label.nrrd"))
    with pytest.warns(GeometryWarning, match="label"):
        case = read_case(folder)
    assert set(np.unique(case.label)) == {0, 1}
    assert np.array_equal(case.label, label_array())


# --------------------------------------------------------------------------- errors

def test_missing_sequence_lists_found_keys_and_files(tmp_path):
    folder = make_case(tmp_path / "c", skip=("T1_20s",))
    os.rename(os.path.join(folder, "T1_60s.nii.gz"), os.path.join(folder, "portal venous.nii.gz"))
    with pytest.raises(FileNotFoundError) as e:
        read_case(folder)
    msg = str(e.value)
    assert "missing sequence(s) T1_20s, T1_60s" in msg
    assert "found: T2, T1_plain, T1_120s, T1_15min" in msg
    assert "portal venous.nii.gz" in msg and "looks like T1_60s" in msg
    assert folder in msg


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])  # ITK's NIfTI reader turns NaN into 0: checked separately
def test_nan_voxels_error_names_file_and_sequence(tmp_path, ext):
    bad = volume(3)
    bad[2, 3, 4] = np.nan
    bad[1, 1, 1] = np.inf
    folder = make_case(tmp_path / "c", ext=ext, overrides={"T1_60s": image(bad)})
    with pytest.raises(ValueError, match=rf"T1_60s \(.*T1_60s\{ext}\): contains 2 NaN or infinite"):
        read_case(folder)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_empty_or_constant_image_error(tmp_path, value):
    folder = make_case(tmp_path / "c", overrides={"T1_plain": image(np.full(SHAPE, value, np.float32))})
    with pytest.raises(ValueError, match=r"T1_plain \(.*T1_plain\.nii\.gz\): the image is empty/constant"):
        read_case(folder)


def test_non_overlapping_sequence_error(tmp_path):
    far = image(volume(4), origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 500.0))
    folder = make_case(tmp_path / "c", overrides={"T1_120s": far})
    with pytest.raises(ValueError, match=r"T1_120s \(.*T1_120s\.nii\.gz\): does not overlap the T1_15min"):
        read_case(folder)


@pytest.mark.parametrize("shape", [(20, 24), (2, 4, 8, 8)])
def test_2d_and_4d_images_are_rejected(tmp_path, shape):
    arr = np.random.default_rng(0).random(shape).astype(np.float32)
    img = sitk.GetImageFromArray(arr, isVector=False)
    folder = make_case(tmp_path / "c", overrides={"T2": img})
    with pytest.raises(ValueError, match=rf"T2 \(.*T2\.nii\.gz\): is a {len(shape)}D image"):
        read_case(folder)


def test_unreadable_file_error(tmp_path):
    folder = make_case(tmp_path / "c", skip=("T1_20s",))
    with open(os.path.join(folder, "T1_20s.nii.gz"), "wb") as fh:
        fh.write(b"this is not an image")
    with pytest.raises(ValueError, match=r"T1_20s \(.*T1_20s\.nii\.gz\): cannot be read"):
        read_case(folder)


def test_label_that_cannot_be_resampled(tmp_path):
    folder = make_case(tmp_path / "c", with_label=False)
    lab = image(np.zeros((4, 5, 6), np.uint8), origin=(1000.0, 0.0, 0.0))
    sitk.WriteImage(lab, os.path.join(folder, "label.nii.gz"))
    with pytest.raises(ValueError, match=r"label \(.*label\.nii\.gz\): size \(6, 5, 4\) differs.*cannot resample"):
        read_case(folder)


def test_label_with_other_values_is_rejected(tmp_path):
    folder = make_case(tmp_path / "c", with_label=False)
    sitk.WriteImage(image(label_array() * 2), os.path.join(folder, "label.nii.gz"))
    with pytest.raises(ValueError, match=r"label \(.*\): has values 2"):
        read_case(folder)


# --------------------------------------------------------------------------- in-memory cases, registration

def test_case_from_images_in_memory():
    images = {k: image(volume(c)) for c, k in enumerate(SEQUENCE_KEYS)}
    images["T2"] = volume(0)  # numpy arrays take the reference geometry
    case = case_from_images(images, name="mem", label=label_array())
    assert case.image.shape == (6, *SHAPE) and case.name == "mem"
    np.testing.assert_allclose(case.origin, ORIGIN)
    np.testing.assert_allclose(case.raw[0], volume(0), atol=1e-3)
    assert case.label.sum() == label_array().sum()
    with pytest.raises(ValueError, match="missing sequence.*T1_plain"):
        case_from_images({k: v for k, v in images.items() if k != "T1_plain"})


def test_read_case_register_aligns_shifted_sequence(tmp_path):
    shape = (16, 32, 32)
    z, y, x = np.indices(shape, dtype=np.float32)

    def blobs(dz):
        v = np.exp(-(((z - 8 - dz) / 3) ** 2 + ((y - 12) / 4) ** 2 + ((x - 14) / 5) ** 2))
        v += 0.7 * np.exp(-(((z - 6 - dz) / 2.5) ** 2 + ((y - 22) / 3) ** 2 + ((x - 20) / 3) ** 2))
        return (100 * (0.1 + v)).astype(np.float32)

    spacing = (2.0, 2.0, 3.0)
    over = {k: image(blobs(0), spacing, (0, 0, 0), np.eye(3).ravel()) for k in SEQUENCE_KEYS}
    over["T1_20s"] = image(blobs(2.0), spacing, (0, 0, 0), np.eye(3).ravel())  # moved 6 mm head-foot
    folder = make_case(tmp_path / "c", with_label=False, overrides=over)
    plain = read_case(folder, normalise=False)
    reg = read_case(folder, normalise=False, register=True, bspline=False)
    ref = plain.image[5]
    err_before = np.abs(plain.image[2] - ref).mean()
    err_after = np.abs(reg.image[2] - ref).mean()
    assert err_after < 0.25 * err_before
    assert set(reg.transforms) == set(SEQUENCE_KEYS) - {REFERENCE_KEY}
    moved = np.array(reg.transforms["T1_20s"].TransformPoint((30.0, 30.0, 24.0))) - (30.0, 30.0, 24.0)
    np.testing.assert_allclose(moved, (0.0, 0.0, 6.0), atol=1.0)


# --------------------------------------------------------------------------- finding cases

def test_find_cases(tmp_path):
    make_case(tmp_path / "b_case", with_label=False)
    (tmp_path / "group" / "a_case").mkdir(parents=True)
    (tmp_path / "group" / "a_case" / "case.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "b_case" / "nested").mkdir()
    sitk.WriteImage(image(volume(5)), str(tmp_path / "b_case" / "nested" / "T1_15min.nii.gz"))
    found = find_cases(str(tmp_path))
    assert found == sorted([str(tmp_path / "b_case"), str(tmp_path / "group" / "a_case")])
    with pytest.raises(FileNotFoundError):
        find_cases(str(tmp_path / "nope"))


# --------------------------------------------------------------------------- atomic writers

@pytest.mark.parametrize("name", ["seg.nii.gz", "seg.nrrd", "seg.mhd"])
def test_write_image_atomic_and_geometry(tmp_path, name):
    ref = image(volume(5))
    arr = label_array()
    out = tmp_path / "out" / name
    write_image(arr, ref, str(out))
    assert sorted(os.listdir(tmp_path / "out")) == sorted([name] + (["seg.zraw"] if name.endswith(".mhd") else []))
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin())
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-6)
    # overwrite in place
    write_image(arr.astype(bool), ref, str(out))
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8


def test_write_image_failure_leaves_nothing(tmp_path):
    ref = image(volume(5))
    with pytest.raises(ValueError, match=r"seg\.nii\.gz.*does not match"):
        write_image(np.zeros((3, 3, 3)), ref, str(tmp_path / "seg.nii.gz"))
    with pytest.raises(ValueError, match=r"seg\.unknownext.*cannot be written"):
        write_image(label_array(), ref, str(tmp_path / "seg.unknownext"))
    assert os.listdir(tmp_path) == []


def test_write_image_keeps_old_file_when_a_write_fails(tmp_path, monkeypatch):
    ref = image(volume(5))
    out = str(tmp_path / "seg.nii.gz")
    write_image(label_array(), ref, out)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(ValueError, match="disk full"):
        write_image(np.zeros(SHAPE, np.uint8), ref, out)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["seg.nii.gz"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), label_array())


def test_write_json_and_text_atomic(tmp_path):
    out = tmp_path / "r" / "report.json"
    write_json({"dice": np.float32(0.5), "n": np.int64(3), "v": np.arange(3), "bad": float("nan")}, str(out))
    assert json.loads(out.read_text()) == {"dice": 0.5, "n": 3, "v": [0, 1, 2], "bad": None}
    with pytest.raises(TypeError):
        write_json({"x": object()}, str(out))
    assert json.loads(out.read_text())["n"] == 3  # the failed write left the old file
    write_text("hello\n", str(tmp_path / "r" / "a.txt"))
    assert sorted(os.listdir(tmp_path / "r")) == ["a.txt", "report.json"]

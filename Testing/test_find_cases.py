"""Cohorts lose no patient: which folders are cases (issue 11, item 4)."""
from __future__ import annotations

import os

from LiverTumorLRPLib.case_io import find_cases
from LiverTumorLRPLib.cohort import case_names
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_every_folder_with_a_sequence_or_case_json_is_a_case(tmp_path):
    r = str(tmp_path)
    for key in SEQUENCE_KEYS:
        touch(f"{r}/centre_a/p001/{key}.nii.gz")
    for key in SEQUENCE_KEYS[:-1]:  # no T1_15min: found, then fails with its reason
        touch(f"{r}/centre_b/p001/{key}.nrrd")
    touch(f"{r}/centre_b/p002/T1_20s/IM0001")  # DICOM series folders named by key
    touch(f"{r}/centre_b/p002/T2/IM0001")
    touch(f"{r}/centre_b/p002/T2/nested/T1_15min.nii.gz")  # inside a case: not searched
    touch(f"{r}/p003/t2_tse.nii.gz")  # a name guess_sequence recognises
    touch(f"{r}/p004/case.json")
    touch(f"{r}/native_study/p005/T1_plain.mha")  # "native" is an alias, but the folder holds folders
    touch(f"{r}/p006/portal venous/IM0001")  # a guessed DICOM series folder (a leaf)
    touch(f"{r}/docs/readme.txt")
    touch(f"{r}/docs/label.nii.gz")
    os.makedirs(f"{r}/empty")
    touch(f"{r}/out/p001/relevance_T2.nii.gz")  # the output folder inside ROOT
    touch(f"{r}/.hidden/T2.nii.gz")
    expected = ["centre_a/p001", "centre_b/p001", "centre_b/p002", "native_study/p005", "p003", "p004", "p006"]
    found = find_cases(r, exclude=[f"{r}/out"])
    assert found == [os.path.join(r, *e.split("/")) for e in expected]
    assert case_names(r, found) == expected  # p001 twice, two output folders
    assert os.path.join(r, "out", "p001") in find_cases(r)


def test_a_case_folder_given_as_root_is_one_case(tmp_path):
    touch(str(tmp_path / "patient" / "T1_15min.nii.gz"))
    touch(str(tmp_path / "patient" / "T2" / "IM0001"))
    found = find_cases(str(tmp_path / "patient"))
    assert found == [str(tmp_path / "patient")]
    assert case_names(str(tmp_path / "patient"), found) == ["patient"]


def test_nnunet_msd_and_brats_datasets_one_entry_per_case(tmp_path):
    r = str(tmp_path)
    for case in ("liver_001", "liver_002"):
        for i in range(6):
            touch(f"{r}/Dataset001_Liver/imagesTs/{case}_{i:04d}.nii.gz")
        touch(f"{r}/Dataset001_Liver/labelsTs/{case}.nii.gz")
    touch(f"{r}/Dataset001_Liver/imagesTr/liver_003.nii.gz")  # MSD: one 4D file per case
    touch(f"{r}/Dataset001_Liver/labelsTr/pre_003.nii.gz")  # "pre" is an alias, but a labels folder is no case
    touch(f"{r}/Dataset001_Liver/dataset.json")
    touch(f"{r}/mine/p9_0000.nii.gz")  # a folder of nnU-Net channel files, whatever its name
    touch(f"{r}/mine/p9_0001.nii.gz")
    touch(f"{r}/brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz")
    touch(f"{r}/brats/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz")
    expected = ["Dataset001_Liver/imagesTr/liver_003", "Dataset001_Liver/imagesTs/liver_001",
                "Dataset001_Liver/imagesTs/liver_002", "brats/BraTS-GLI-00001-000", "brats/BraTS20_Training_001",
                "mine/p9"]
    found = find_cases(r)
    assert found == [os.path.join(r, *e.split("/")) for e in expected]
    assert case_names(r, found) == expected
    images = os.path.join(r, "Dataset001_Liver", "imagesTs")
    assert case_names(images, find_cases(images)) == ["liver_001", "liver_002"]

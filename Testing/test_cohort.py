"""Headless batch: the liver-lrp commands and cohort runs (failures, resume, kill-safety, geometry)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from LiverTumorLRPLib.cli import main
from pipeline_fixtures import geometry, make_cases, make_model


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    cases = make_cases(str(root / "cases"), n=3)
    model = make_model(str(root / "model" / "tiny.safetensors"), cases[0])
    os.remove(os.path.join(cases[2], "T2.nii.gz"))  # the broken case
    return root, cases, model


def test_cohort_two_results_one_clear_failure_and_resume(cohort, capsys):
    root, cases, model = cohort
    out = str(root / "out")
    code = main(["cohort", str(root / "cases"), "--out", out, "--model", model, "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED case_002" in text and "T2" in text
    assert os.path.exists(os.path.join(out, "case_002", "error.txt"))
    for name in ("case_000", "case_001"):
        result = json.load(open(os.path.join(out, name, "result.json")))
        assert abs(sum(result["relevance"])) == pytest.approx(1.0, abs=1e-5)   # -1: see analysis.sequence_contribution
        assert 0.0 <= result["dice"] <= 1.0
        for key in ("T2", "T1_15min"):
            assert geometry(os.path.join(out, name, f"relevance_{key}.nii.gz")) == \
                geometry(os.path.join(root, "cases", name, "T1_15min.nii.gz"))
        assert geometry(os.path.join(out, name, "tumor_segmentation.nii.gz")) == \
            geometry(os.path.join(root, "cases", name, "T1_15min.nii.gz"))
    rows = open(os.path.join(out, "cohort.csv")).read().splitlines()
    assert rows[0].startswith("case,status,dice,tumor_voxels,T2,T1_plain")
    assert len(rows) == 4 and "case_002,failed" in rows[3]
    report = open(os.path.join(out, "report.html")).read()
    assert report.count("data:image/png;base64,") >= 3 and "case_002" in report
    assert os.path.getsize(os.path.join(out, "cohort_relevance.png")) > 1000

    # resume: finished cases are not recomputed, a case whose result is missing is
    stamp = os.path.getmtime(os.path.join(out, "case_000", "relevance_T2.nii.gz"))
    os.remove(os.path.join(out, "case_001", "result.json"))
    code = main(["cohort", str(root / "cases"), "--out", out, "--model", model, "--device", "cpu"])
    assert code == 1
    assert "1 already finished" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "case_000", "relevance_T2.nii.gz")) == stamp
    assert os.path.exists(os.path.join(out, "case_001", "result.json"))


def test_cohort_killed_mid_run_loses_no_finished_case(cohort):
    root, cases, model = cohort
    out = str(root / "killed")
    cmd = [sys.executable, "-m", "LiverTumorLRPLib", "cohort", str(root / "cases"), "--out", out, "--model", model,
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    first = os.path.join(out, "case_000", "result.json")
    deadline = time.time() + 300
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(first)
    import SimpleITK as sitk
    for dirpath, _, files in os.walk(out):
        for f in files:
            if f.endswith(".nii.gz") and not f.startswith("."):
                sitk.ReadImage(os.path.join(dirpath, f))  # every visible file is complete
            if f.endswith(".json") and not f.startswith("."):
                json.load(open(os.path.join(dirpath, f)))
    stamp = os.path.getmtime(first)
    assert main(["cohort", str(root / "cases"), "--out", out, "--model", model, "--device", "cpu"]) == 1
    assert os.path.getmtime(first) == stamp
    assert os.path.exists(os.path.join(out, "case_001", "result.json"))


def test_explain_and_segment_commands(cohort, capsys):
    root, cases, model = cohort
    out = str(root / "explain")
    assert main(["explain", cases[0], "--out", out, "--model", model, "--device", "cpu", "--class", "background",
                 "--region", "tumor", "--preset", "paper"]) == 0
    summary = json.load(open(os.path.join(out, "sequence_relevance.json")))
    assert summary["class"] == "background" and summary["preset"] == "paper"
    assert sum(summary["relevance"]) == pytest.approx(1.0, abs=1e-5)
    assert len([f for f in os.listdir(out) if f.startswith("overlay_slice")]) >= 1
    assert os.path.exists(os.path.join(out, "sequence_relevance.csv"))
    # a mask file as region
    import SimpleITK as sitk
    ref = sitk.ReadImage(os.path.join(cases[0], "T1_15min.nii.gz"))
    mask = np.zeros(sitk.GetArrayFromImage(ref).shape, np.uint8)
    mask[8, 20:24, 20:24] = 1
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(ref)
    sitk.WriteImage(m, str(root / "mask.nii.gz"))
    out2 = str(root / "explain_mask")
    assert main(["explain", cases[0], "--out", out2, "--model", model, "--device", "cpu",
                 "--region", str(root / "mask.nii.gz")]) == 0
    assert json.load(open(os.path.join(out2, "sequence_relevance.json")))["n_voxels"] == 16
    assert main(["segment", cases[1], "--out", str(root / "seg"), "--model", model, "--device", "cpu"]) == 0
    assert "tumor voxels" in capsys.readouterr().out


def test_command_errors_are_clear(cohort, capsys):
    root, cases, model = cohort
    assert main(["analyze", cases[2], "--out", str(root / "bad"), "--model", model, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "T2" in err and "error" in err
    assert main(["analyze", cases[0], "--out", str(root / "bad2"), "--model", str(root / "nope.safetensors")]) == 1
    assert "model weights not found" in capsys.readouterr().err


def test_help_for_every_command(capsys):
    for cmd in ("phantom", "train", "segment", "explain", "analyze", "cohort", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: liver-lrp " + cmd in capsys.readouterr().out

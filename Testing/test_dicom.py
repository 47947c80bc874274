"""DICOM studies in, DICOM SEG and Parametric Maps out, a real PACS (issue 23, parts 2 and 3).

The phantom study (``liver-lrp phantom --dicom``: localiser, T2, one dynamic series of four phases, diffusion,
hepatobiliary phase, ground-truth SEG) is read back onto exactly the phantom's grid and values; copies of it
with phases deleted, series duplicated, other vendors' wording or no bolus time test identification; the
outputs are read back with highdicom and stored into Orthanc (Debian's package, started here on 127.0.0.1
with authentication) through DICOMweb.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
sitk = pytest.importorskip("SimpleITK")

from LiverTumorLRPLib.dicom import (describe_mapping, is_dicom_study, read_dicom_study, read_dicom_volume,  # noqa: E402
                                   source_datasets, store, write_dicom_outputs, write_phantom_study,
                                   write_sequences_json)
from LiverTumorLRPLib.phantom import generate_case  # noqa: E402
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS, display_name, guess_sequence  # noqa: E402

SHAPE, SPACING = (12, 48, 48), (4.0, 3.0, 3.0)
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "lrp", "s3cret-pacs"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    case = generate_case(3, shape=SHAPE, spacing=SPACING)
    study = write_phantom_study(case, str(tmp_path_factory.mktemp("study") / "case_003"))
    return case, study


def copy_study(src: str, dst: str, change=None) -> str:
    """Every DICOM file of ``src`` into one flat folder ``dst`` (new names), ``change(ds)`` -> False drops it."""
    os.makedirs(dst, exist_ok=True)
    for i, path in enumerate(sorted(p for p in _walk(src) if p.endswith(".dcm"))):
        ds = pydicom.dcmread(path)
        if change is None or change(ds) is not False:
            ds.save_as(os.path.join(dst, f"{i:05d}"), enforce_file_format=True)
    return dst


def _walk(folder):
    for root, _, names in os.walk(folder):
        for n in names:
            yield os.path.join(root, n)


def same_grid(image, reference) -> bool:
    return (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-5)
            and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6))


def by_key(mapping):
    return {m["key"]: m for m in mapping}


def test_phantom_study_reads_back_exactly(phantom, tmp_path):
    case, study = phantom
    assert is_dicom_study(study.folder) and not is_dicom_study(str(tmp_path))
    shutil.copytree(os.path.join(study.folder, "DICOM", "SE0002_t2_haste_tra_mbh"), str(tmp_path / "case" / "T2"))
    assert not is_dicom_study(str(tmp_path / "case"))      # a case folder: one DICOM folder per sequence key
    images, label, mapping = read_dicom_study(study.folder)
    ref = case.reference()
    assert list(images) == list(SEQUENCE_KEYS)
    for key in SEQUENCE_KEYS:
        assert same_grid(images[key], ref), key
        got = sitk.GetArrayFromImage(images[key])
        assert np.array_equal(got, study.images[key]), key            # exactly what the study stores
        slope = float(pydicom.dcmread(by_key(mapping)[key]["files"][0], stop_before_pixels=True).RescaleSlope)
        assert np.abs(got - case.images[key]).max() <= slope / 2 + 1e-6   # the phantom to the stored precision
    m = by_key(mapping)
    dynamic = m["T1_plain"]["series_uid"]
    assert [(m[k]["series_uid"], m[k]["phase"]) for k in SEQUENCE_KEYS[1:5]] == [(dynamic, p) for p in (1, 2, 3, 4)]
    assert {f"{m[k]['series_uid']}:{m[k]['phase']}" if m[k]["phase"] else m[k]["series_uid"]
            for k in SEQUENCE_KEYS} == set(study.series.values())
    assert not set(study.ignored) & {x["series_uid"] for x in mapping}          # localiser and diffusion
    assert [m[k]["time_after_contrast_s"] for k in SEQUENCE_KEYS[2:]] == [20.0, 60.0, 120.0, 900.0]
    assert m["T1_plain"]["time_after_contrast_s"] is None and m["T1_20s"]["contrast_agent"] == "Primovist"
    assert "before ContrastBolusStartTime" in m["T1_plain"]["why"] and "T1 20 s window" in m["T1_20s"]["why"]
    assert np.array_equal(sitk.GetArrayFromImage(label), case.label) and same_grid(label, ref)
    path = write_sequences_json(mapping, str(tmp_path / "sequences.json"))
    written = json.load(open(path))["sequences"]
    assert [x["key"] for x in written] == list(SEQUENCE_KEYS) and "files" not in written[0]
    assert {"series_uid", "description", "time_after_contrast_s", "why"} <= set(written[0])
    assert len(describe_mapping(mapping).splitlines()) == 6


def test_overrides(phantom):
    case, study = phantom
    dynamic = study.series["T1_20s"].split(":")[0]
    images, _, mapping = read_dicom_study(study.folder, overrides={"T1_20s": f"{dynamic}:3", "T1_60s": f"{dynamic}:2"})
    assert np.array_equal(sitk.GetArrayFromImage(images["T1_20s"]), study.images["T1_60s"])
    assert np.array_equal(sitk.GetArrayFromImage(images["T1_60s"]), study.images["T1_20s"])
    assert by_key(mapping)["T1_20s"]["why"].startswith(f"override T1_20s={dynamic}:3")
    with pytest.raises(ValueError, match="the series has 4 phases .* name one as"):
        read_dicom_study(study.folder, overrides={"T1_20s": dynamic})
    with pytest.raises(ValueError, match="no image series .* with that UID"):
        read_dicom_study(study.folder, overrides={"T2": "1.2.3.4"})
    with pytest.raises(ValueError, match="unknown sequence"):
        read_dicom_study(study.folder, overrides={"T3": "1.2.3.4"})
    images, _, _ = read_dicom_study(study.folder, sequences=("T2", "T1_15min"))   # a model with two channels
    assert list(images) == ["T2", "T1_15min"]


def test_incomplete_study_names_what_is_missing(phantom, tmp_path):
    _, study = phantom
    folder = copy_study(study.folder, str(tmp_path / "incomplete"),
                        lambda ds: ds.get("TemporalPositionIdentifier") != 3)
    with pytest.raises(ValueError) as err:
        read_dicom_study(folder)
    msg = str(err.value)
    assert "\n" not in msg and "missing T1_60s" in msg and "Choose with KEY=SERIES_UID[:PHASE]" in msg
    assert study.series["T2"] in msg and "t=120 s -> T1_120s" in msg and "'localizer' (localiser)" in msg


def test_ambiguous_study_lists_the_candidates(phantom, tmp_path):
    _, study = phantom
    t2 = study.series["T2"]
    src = copy_study(study.folder, str(tmp_path / "a"))
    twin = pydicom.uid.generate_uid()

    def second_t2(ds):
        if ds.SeriesInstanceUID != t2:
            return False
        ds.SeriesInstanceUID, ds.SeriesNumber = twin, 7
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    copy_study(study.folder, str(tmp_path / "a" / "more"), second_t2)
    with pytest.raises(ValueError) as err:
        read_dicom_study(src)
    msg = str(err.value)
    assert "\n" not in msg and "2 equal candidates for T2" in msg and t2 in msg and twin in msg
    images, _, mapping = read_dicom_study(src, overrides={"T2": twin})
    assert by_key(mapping)["T2"]["series_uid"] == twin and len(images) == 6


def test_other_vendor_wording_without_bolus_time_or_temporal_positions(phantom, tmp_path):
    """GE-like German descriptions, no ContrastBolusStartTime (times from the first post-contrast phase), no
    TemporalPositionIdentifier (phases by acquisition order): the same mapping."""
    case, study = phantom
    names = {"t2_haste_tra_mbh": "Ax SSFSE FS", "t1_vibe_fs_tra_dyn": "Ax LAVA dynamisch",
             "t1_vibe_fs_tra_15min": "Ax LAVA leberspezifische Phase", "localizer": "3-Plane Loc",
             "ep2d_diff_b50_800_tra": "Ax DWI b800"}

    def ge(ds):
        if ds.Modality != "MR":
            return False
        ds.SeriesDescription = ds.ProtocolName = names[ds.SeriesDescription]
        for keyword in ("ContrastBolusStartTime", "TemporalPositionIdentifier", "SequenceName", "ImageType"):
            if keyword in ds:
                delattr(ds, keyword)
    folder = copy_study(study.folder, str(tmp_path / "ge"), ge)
    images, label, mapping = read_dicom_study(folder)
    m = by_key(mapping)
    for key in SEQUENCE_KEYS:
        assert np.array_equal(sitk.GetArrayFromImage(images[key]), study.images[key]), key
    assert [m[k]["time_after_contrast_s"] for k in SEQUENCE_KEYS[2:]] == [20.0, 60.0, 120.0, 900.0]
    assert "first post-contrast phase" in m["T1_60s"]["time_source"] and label is None
    assert "T2-weighted ('ssfse')" in m["T2"]["why"]


def test_dynamic_written_as_a_series_per_phase_without_contrast_tags(phantom, tmp_path):
    """Siemens-like: each dynamic phase its own series of the same protocol, no ContrastBolusAgent or bolus
    time: the first is the mask, the others are timed from the first post-contrast phase."""
    _, study = phantom
    dynamic = study.series["T1_20s"].split(":")[0]
    uids = {p: pydicom.uid.generate_uid() for p in (1, 2, 3, 4)}

    def per_phase(ds):
        if ds.Modality != "MR":
            return False
        if ds.SeriesInstanceUID == dynamic:
            position = int(ds.TemporalPositionIdentifier)
            ds.SeriesInstanceUID, ds.SeriesNumber = uids[position], 10 + position
        for keyword in ("ContrastBolusAgent", "ContrastBolusStartTime", "TemporalPositionIdentifier",
                        "NumberOfTemporalPositions"):
            if keyword in ds:
                delattr(ds, keyword)
    folder = copy_study(study.folder, str(tmp_path / "siemens"), per_phase)
    images, _, mapping = read_dicom_study(folder)
    m = by_key(mapping)
    assert [m[k]["series_uid"] for k in SEQUENCE_KEYS[1:5]] == [uids[p] for p in (1, 2, 3, 4)]
    assert [m[k]["time_after_contrast_s"] for k in SEQUENCE_KEYS[2:]] == [20.0, 60.0, 120.0, 900.0]
    assert "first phase of a dynamic series" in m["T1_plain"]["why"]
    for key in SEQUENCE_KEYS:
        assert np.array_equal(sitk.GetArrayFromImage(images[key]), study.images[key]), key


def test_two_studies_in_one_folder_a_missing_slice_and_a_corrupt_file(phantom, tmp_path):
    from LiverTumorLRPLib.dicom import dicom_studies

    case, study = phantom
    other = write_phantom_study(generate_case(4, shape=(6, 32, 32), spacing=SPACING), str(tmp_path / "b" / "other"))
    copy_study(study.folder, str(tmp_path / "b" / "first"))
    studies = dicom_studies(str(tmp_path / "b"))
    assert len(studies) == 2 and {s["folder"] for s in studies.values()} == {str(tmp_path / "b" / "first"),
                                                                            os.path.join(other.folder, "DICOM")}
    with pytest.raises(ValueError, match=r"2 studies in one folder .*name one"):
        read_dicom_study(str(tmp_path / "b"))
    uid = next(u for u, s in studies.items() if s["folder"].endswith("first"))
    images, _, _ = read_dicom_study(str(tmp_path / "b"), study_uid=uid)
    assert same_grid(images["T2"], case.reference())
    t2 = study.series["T2"]
    gap = copy_study(study.folder, str(tmp_path / "gap"),
                     lambda ds: not (ds.SeriesInstanceUID == t2 and int(ds.InstanceNumber) == 5))
    with pytest.raises(ValueError, match=rf"series {t2} 't2_haste_tra_mbh': missing slices or uneven slice spacing"):
        read_dicom_study(gap)
    hbp = study.series["T1_15min"]
    corrupt = copy_study(study.folder, str(tmp_path / "corrupt"))
    victim = next(os.path.join(corrupt, n) for n in sorted(os.listdir(corrupt))
                  if pydicom.dcmread(os.path.join(corrupt, n), stop_before_pixels=True).SeriesInstanceUID == hbp)
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:-500])                  # pixel data cut short
    with pytest.raises(ValueError, match=rf"series {hbp} 't1_vibe_fs_tra_15min': cannot be read \("):
        read_dicom_study(corrupt)


@pytest.mark.parametrize("text,key", [
    ("Ax LAVA arteriell", "T1_20s"), ("fase portale venosa", "T1_60s"), ("phase tardive", "T1_120s"),
    ("t1_vibe_spät", "T1_120s"), ("hepatobiliär 20 min", "T1_15min"), ("Leberspezifische Phase", "T1_15min"),
    ("eTHRIVE unenhanced", "T1_plain"), ("fase epatobiliare", "T1_15min"), ("T1 20 s", "T1_20s"),
])
def test_phase_words_of_several_languages(text, key):
    assert guess_sequence(text) == key


def test_seg_and_parametric_maps_read_back(phantom, tmp_path):
    case, study = phantom
    images, _, mapping = read_dicom_study(study.folder)
    reference, maps = images["T1_15min"], relevance(case.label.shape)
    paths = write_dicom_outputs(str(tmp_path / "out"), reference, case.label, maps, "unet-phantom",
                                source_datasets(mapping))
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths)   # no temp files
    src = by_key(mapping)
    seg = pydicom.dcmread(paths[0])
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == pydicom.dcmread(src["T2"]["files"][0]).StudyInstanceUID
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Tumor" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert "LiverTumorLRP unet-phantom" in segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    assert {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence} == {m["series_uid"] for m in mapping}
    mask = read_dicom_volume(paths[0])
    assert same_grid(mask, reference) and np.array_equal(sitk.GetArrayFromImage(mask), case.label)
    for key, path in zip(SEQUENCE_KEYS, paths[1:]):
        pm = pydicom.dcmread(path)
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"      # Parametric Map Storage
        assert "FloatPixelData" in pm and pm.SeriesDescription.startswith("LRP relevance ")
        mapping_item = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert float(mapping_item.RealWorldValueSlope) == 1.0 and mapping_item.LUTLabel == "LRP"
        refs = {s.SeriesInstanceUID for s in pm.ReferencedSeriesSequence}
        assert {src["T1_15min"]["series_uid"], src[key]["series_uid"]} == refs
        values = read_dicom_volume(path)
        assert same_grid(values, reference)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(values), maps[key])   # float32, identity mapping
    assert [pydicom.dcmread(p).SeriesDescription for p in paths[1:]] == \
        [f"LRP relevance {display_name(k)}" for k in SEQUENCE_KEYS]


def relevance(shape):
    rng = np.random.default_rng(1)
    return {k: (rng.standard_normal(shape) * 10.0 ** -(i + 2)).astype(np.float32) for i, k in enumerate(SEQUENCE_KEYS)}


def test_outputs_for_a_nifti_case_on_an_oblique_grid(tmp_path):
    """No source DICOM: a source series of the reference image is synthesised; everything lies on the grid."""
    ref = sitk.GetImageFromArray(np.random.default_rng(2).uniform(0, 900, (6, 20, 24)).astype(np.float32))
    ref.SetSpacing((1.5, 1.25, 3.5))
    ref.SetOrigin((10.0, -20.0, 35.0))
    angle = 0.3
    ref.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    mask = (sitk.GetArrayFromImage(ref) > 600).astype(np.uint8)
    maps = {k: v for k, v in relevance(mask.shape).items() if k in ("T2", "T1_20s")}
    paths = write_dicom_outputs(str(tmp_path), ref, mask, maps, "m", None, case_name="case 7")
    source = [p for p in paths if "source_T1_15min" in p]
    assert len(source) == 6 and paths[len(source)].endswith("seg_tumor.dcm")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(source)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    back = reader.Execute()
    assert same_grid(back, ref)
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(ref)).max() <= 2.0 ** -6
    seg = pydicom.dcmread(paths[len(source)])
    assert seg.StudyInstanceUID == pydicom.dcmread(source[0]).StudyInstanceUID and str(seg.PatientID) == "case 7"
    assert np.array_equal(sitk.GetArrayFromImage(read_dicom_volume(paths[len(source)])), mask)
    for key, path in zip(maps, paths[len(source) + 1:]):
        values = read_dicom_volume(path)
        assert same_grid(values, ref) and np.array_equal(sitk.GetArrayFromImage(values), maps[key])


# ---------------------------------------------------------------------------------------------------- Orthanc

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_orthanc():
    if os.path.exists(ORTHANC) and os.path.exists(DICOMWEB_PLUGIN):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "orthanc", "orthanc-dicomweb"], check=True, env=env,
                       capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"Orthanc not installed and apt-get failed ({type(e).__name__})")
    if not (os.path.exists(ORTHANC) and os.path.exists(DICOMWEB_PLUGIN)):
        pytest.skip("Orthanc not installed")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real PACS: Orthanc with its DICOMweb plugin on 127.0.0.1, authentication on, storage in a temporary
    folder; yields the DICOMweb root URL."""
    import requests

    _install_orthanc()
    folder = tmp_path_factory.mktemp("orthanc")
    http = _free_port()
    config = {"Name": "LRPTEST", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": http, "DicomPort": _free_port(), "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [DICOMWEB_PLUGIN],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(f"{base}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-800:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_store_in_orthanc_and_find_by_qido(phantom, orthanc, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    case, study = phantom
    images, _, mapping = read_dicom_study(study.folder)
    paths = write_dicom_outputs(str(tmp_path), images["T1_15min"], case.label, relevance(case.label.shape),
                                "unet-phantom", source_datasets(mapping))
    stored = store(paths, f"{orthanc}/dicom-web", USER, PASSWORD)
    assert len(stored) == 7
    client = DICOMwebClient(f"{orthanc}/dicom-web", session=create_session_from_user_pass(USER, PASSWORD))
    study_uid = str(pydicom.dcmread(mapping[0]["files"][0], stop_before_pixels=True).StudyInstanceUID)
    in_study = [pydicom.Dataset.from_json(s) for s in client.search_for_series(study_uid)]
    assert sorted(s.SeriesDescription for s in in_study) == sorted(
        [f"LRP relevance {display_name(k)}" for k in SEQUENCE_KEYS] + ["Tumor segmentation (LiverTumorLRP unet-phantom)"])
    # (Debian's Orthanc DICOMweb plugin 1.7 matches no percent-encoded query value, e.g. one with a space:
    # series are found by study and modality, their descriptions checked here)
    segs = [pydicom.Dataset.from_json(s) for s in client.search_for_series(search_filters={"Modality": "SEG"})]
    assert [s.SeriesDescription for s in segs] == ["Tumor segmentation (LiverTumorLRP unet-phantom)"]
    back = client.retrieve_series(segs[0].StudyInstanceUID, segs[0].SeriesInstanceUID)
    assert [ds.SOPInstanceUID for ds in back] == [stored[0]]
    assert str(back[0].StudyInstanceUID) == study_uid
    assert np.array_equal(sitk.GetArrayFromImage(read_dicom_volume(paths[0])), case.label)


def test_orthanc_refuses_without_credentials(orthanc, tmp_path):
    import requests

    assert requests.get(f"{orthanc}/dicom-web/studies", timeout=5).status_code == 401
    assert requests.get(f"{orthanc}/system", auth=(USER, "wrong"), timeout=5).status_code == 401
    ref = sitk.Image([8, 8, 3], sitk.sitkFloat32)
    paths = write_dicom_outputs(str(tmp_path), ref, np.zeros((3, 8, 8), np.uint8), {}, "m")
    with pytest.raises(ValueError, match=r"PACS .*: refused the login"):
        store(paths, f"{orthanc}/dicom-web", USER, "wrong")
    with pytest.raises(ValueError, match=r"PACS .*: cannot be reached"):
        store(paths, f"http://127.0.0.1:{_free_port()}/dicom-web", USER, PASSWORD, attempts=1)


def test_phantom_command_writes_a_study(tmp_path):
    from LiverTumorLRPLib.cli import main

    assert main(["phantom", str(tmp_path), "--dicom", "--seed", "5", "--shape", "8", "32", "32"]) == 0
    folder = str(tmp_path / "case_000")
    assert is_dicom_study(folder) and os.path.exists(os.path.join(folder, "lesions.json"))
    images, label, mapping = read_dicom_study(folder)
    case = generate_case(5, shape=(8, 32, 32), spacing=(4.0, 3.0, 3.0))
    assert same_grid(images["T1_15min"], case.reference()) and np.array_equal(sitk.GetArrayFromImage(label), case.label)
    series = {m["series_uid"] for m in mapping}
    assert len(series) == 3     # T2, the dynamic series (four phases), the hepatobiliary phase


@pytest.fixture(scope="module")
def tiny_model(phantom, tmp_path_factory):
    """A seeded u-net that predicts some tumor on the phantom study's case (fast LRP)."""
    import torch

    from LiverTumorLRPLib.intensity import normalise_image
    from LiverTumorLRPLib.models import save_model
    from LiverTumorLRPLib.unet import UNet3D, UNetConfig

    case, _ = phantom
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    with torch.no_grad():
        y = net(torch.from_numpy(normalise_image(np.stack([case.images[k] for k in SEQUENCE_KEYS])))[None])[0]
        net.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.95))
    return str(save_model(net, tmp_path_factory.mktemp("model") / "tiny.safetensors"))


def _outputs_match(out, dicom_files, case_shape):
    """The DICOM SEG and Parametric Maps equal the NIfTI outputs: same grid, SEG = the segmentation, maps to
    float32 precision."""
    seg_nifti = sitk.ReadImage(os.path.join(out, "tumor_segmentation.nii.gz"))
    seg = read_dicom_volume(next(p for p in dicom_files if os.path.basename(p) == "seg_tumor.dcm"))
    assert same_grid(seg, seg_nifti) and seg.GetSize()[::-1] == case_shape
    assert np.array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(seg_nifti))
    for key in SEQUENCE_KEYS:
        nifti = sitk.ReadImage(os.path.join(out, f"relevance_{key}.nii.gz"))
        pm = read_dicom_volume(next(p for p in dicom_files if os.path.basename(p) == f"relevance_{key}.dcm"))
        assert same_grid(pm, nifti)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(pm), sitk.GetArrayFromImage(nifti))


def test_analyze_a_dicom_study_folder_with_dicom_out(phantom, tiny_model, tmp_path, capsys):
    from LiverTumorLRPLib.cli import main

    case, study = phantom
    out, dicom_out = tmp_path / "out", tmp_path / "dicom"
    assert main(["analyze", study.folder, "--out", str(out), "--model", tiny_model, "--device", "cpu",
                 "--resamples", "0", "--necessity", "none", "--dicom-out", str(dicom_out)]) == 0
    assert "T1_20s <- " in capsys.readouterr().err               # the chosen mapping is printed
    mapping = json.load(open(out / "sequences.json"))["sequences"]
    assert [m["key"] for m in mapping] == list(SEQUENCE_KEYS) and all("why" in m for m in mapping)
    summary = json.load(open(out / "result.json"))
    assert "dice" in summary                                    # the study's manual SEG is the label
    files = summary["dicom_files"]
    assert sorted(os.path.basename(p) for p in files) == sorted(
        ["seg_tumor.dcm", *[f"relevance_{k}.dcm" for k in SEQUENCE_KEYS]])   # no synthesised source: it has one
    _outputs_match(str(out), files, case.label.shape)
    seg = pydicom.dcmread(os.path.join(dicom_out, "seg_tumor.dcm"))
    sources = {m["series_uid"] for m in mapping}
    referenced = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    assert sources <= referenced | {str(seg.SeriesInstanceUID)} and referenced & sources


def test_round_trip_through_the_pacs(phantom, tiny_model, orthanc, tmp_path, monkeypatch, capsys):
    """Upload the phantom study, analyze it from the PACS by its Study Instance UID (credentials from the
    environment), store SEG and Parametric Maps back, retrieve them and compare with the NIfTI outputs."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    from LiverTumorLRPLib.cli import main
    from LiverTumorLRPLib.dicom import dicom_files

    case, study = phantom
    url = f"{orthanc}/dicom-web"
    uploads = [p for p in dicom_files(study.folder)]
    store(uploads, url, USER, PASSWORD)
    uid = str(pydicom.dcmread(uploads[0], stop_before_pixels=True).StudyInstanceUID)
    client = DICOMwebClient(url, session=create_session_from_user_pass(USER, PASSWORD))
    before = {s["0020000E"]["Value"][0] for s in client.search_for_series(uid)}
    out = tmp_path / "out"
    args = ["analyze", uid, "--pacs", url, "--out", str(out), "--model", tiny_model, "--device", "cpu",
            "--resamples", "0", "--necessity", "none"]
    monkeypatch.delenv("LIVER_LRP_PACS_USER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                   # no netrc either: the PACS refuses
    assert main(args) == 1 and "refused the login" in capsys.readouterr().err
    assert {s["0020000E"]["Value"][0] for s in client.search_for_series(uid)} == before   # nothing stored
    monkeypatch.setenv("LIVER_LRP_PACS_USER", USER)
    monkeypatch.setenv("LIVER_LRP_PACS_PASSWORD", PASSWORD)
    assert main(args) == 0 and "stored 7 DICOM object(s)" in capsys.readouterr().out
    new = [pydicom.Dataset.from_json(s) for s in client.search_for_series(uid)
           if s["0020000E"]["Value"][0] not in before]
    assert len(new) == 7
    back = tmp_path / "back"
    for s in new:
        for ds in client.retrieve_series(uid, s.SeriesInstanceUID):
            name = "seg_tumor.dcm" if ds.Modality == "SEG" else \
                f"relevance_{next(k for k in SEQUENCE_KEYS if ds.SeriesDescription.endswith(display_name(k)))}.dcm"
            os.makedirs(back, exist_ok=True)
            ds.save_as(os.path.join(back, name), enforce_file_format=True)
    _outputs_match(str(out), [str(p) for p in back.iterdir()], case.label.shape)
    assert main([*args[:1], "1.2.3.4.5.404", *args[2:]]) == 1 and "no study 1.2.3.4.5.404" in capsys.readouterr().err


def test_cohort_of_dicom_studies(phantom, tiny_model, tmp_path):
    """Every study under the root is a case (found by StudyInstanceUID, nested any way), with DICOM out per case."""
    from LiverTumorLRPLib.cohort import run_cohort

    case, study = phantom
    root = tmp_path / "cohort"
    shutil.copytree(study.folder, root / "centre_a" / "patient_1" / "study")
    write_phantom_study(generate_case(4, shape=SHAPE, spacing=SPACING), str(root / "centre_b" / "p2"))
    res = run_cohort(str(root), str(tmp_path / "out"), tiny_model, device="cpu", max_components=0, resamples=0,
                     necessity_reference=None, dicom_out=str(tmp_path / "dicom"))
    # each study's case is the deepest folder holding all its files (the phantom writes them under DICOM/)
    assert sorted(res["results"]) == ["centre_a/patient_1/study/DICOM", "centre_b/p2/DICOM"]
    assert not res["failures"]
    for name in res["results"]:
        assert os.path.exists(tmp_path / "out" / name / "sequences.json")
        assert os.path.exists(tmp_path / "dicom" / name / "seg_tumor.dcm")

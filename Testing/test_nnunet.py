"""nnU-Net v2 model folders: loading, nnU-Net's geometry, equality with nnUNetPredictor, LRP on its networks.

The model folders are written at test time by nnU-Net's own fingerprint extractor, planner, preprocessor
and trainer (a few synthetic cases, 1 epoch of 2 iterations on CPU), once per session.
"""
import contextlib
import io
import json
import multiprocessing
import multiprocessing.pool
import os
import random
import shutil
import types
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("nnunetv2")

from LiverTumorLRPLib import explain  # noqa: E402
from LiverTumorLRPLib.lrp import LRP  # noqa: E402
from LiverTumorLRPLib.model_info import ModelInfo  # noqa: E402
from LiverTumorLRPLib.nnunet import is_nnunet_folder, load_nnunet  # noqa: E402
from LiverTumorLRPLib.lrp.presets import get_preset  # noqa: E402

LIVER_CHANNELS = ["T2", "T1 plain", "T1 20s", "T1 60s", "T1 120s", "T1 15min"]
BRAIN_CHANNELS = ["FLAIR", "T1", "T1ce", "T2"]


# ---- synthetic data and nnU-Net's own pipeline ------------------------------------------------------------------
def synthetic_case(rng, shape, n_channels, n_labels):
    """(C, z, y, x) float32 with a zero border, and a label map (1 = organ, last label = lesion)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    organ = ((zz - c[0]) / (shape[0] * 0.35)) ** 2 + ((yy - c[1]) / (shape[1] * 0.33)) ** 2 + \
        ((xx - c[2]) / (shape[2] * 0.33)) ** 2 < 1
    t = c + rng.uniform(-2, 2, 3)
    lesion = organ & (((zz - t[0]) / 3) ** 2 + ((yy - t[1]) / 5) ** 2 + ((xx - t[2]) / 5) ** 2 < 1)
    label = np.zeros(shape, np.uint8)
    if n_labels == 3:
        label[organ] = 1
    label[lesion] = n_labels - 1
    body = np.zeros(shape, bool)
    body[2:-2, 4:-4, 4:-4] = True
    img = np.stack([(body * 100 + organ * 40 * (ch + 1) + lesion * (-30 if ch % 2 else 60)
                     + rng.normal(0, 5, shape)) * body for ch in range(n_channels)]).astype(np.float32)
    return img, label


def write_case(folder, name, img, label, spacing_xyz):
    for ch, vol in enumerate(img):
        im = sitk.GetImageFromArray(vol)
        im.SetSpacing(spacing_xyz)
        sitk.WriteImage(im, os.path.join(folder, "imagesTr" if label is not None else "", f"{name}_{ch:04d}.nii.gz"))
    if label is not None:
        im = sitk.GetImageFromArray(label)
        im.SetSpacing(spacing_xyz)
        sitk.WriteImage(im, os.path.join(folder, "labelsTr", f"{name}.nii.gz"))


def nnunet_folder(dataset_id, channels, labels, train, coarse_x=False):
    """Plan, preprocess and (when ``train``) train 1 epoch x 2 iterations with nnU-Net's own code; otherwise
    nnU-Net's trainer writes its freshly initialised network as the checkpoint.  ``coarse_x``: the coarsest
    spacing along x, so that nnU-Net's planner transposes the axes (transpose_forward [2, 0, 1])."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    name = f"Dataset{dataset_id}_Tiny{len(channels)}"
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, sub))
    rng = np.random.default_rng(dataset_id)
    for i in range(5):
        img, label = synthetic_case(rng, (20, 40, 40), len(channels), len(labels))
        spacing = (3.0, 1.0, 1.0 + 0.1 * i) if coarse_x else (1.0 + 0.1 * i, 1.0, 3.0)
        write_case(raw, f"case_{i:03d}", img, label, spacing)
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {str(k): n for k, n in enumerate(channels)},
                   "labels": {n: i for i, n in enumerate(labels)}, "numTraining": 5, "file_ending": ".nii.gz"}, f)
    fpe = DatasetFingerprintExtractor(dataset_id, 1, verbose=False)
    fpe.num_foreground_voxels_for_intensitystats = 20000  # default 1e8 samples: minutes on CI
    fpe.run(overwrite_existing=True)
    plans_id = plan_experiments([dataset_id])
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    with open(os.path.join(pre, plans_id + ".json")) as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False
    # fewer features than the planner's 32..256 (as a user may edit plans.json): fast on CI's 2 cores
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [8 * 2 ** i for i in range(len(arch["features_per_stage"]))]
    preprocess([dataset_id], plans_id, configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # single-threaded data augmentation
    random.seed(dataset_id)  # the same tiny model every run
    np.random.seed(dataset_id)
    torch.manual_seed(dataset_id)
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    if train:
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
        trainer.run_training()
    else:
        from batchgenerators.utilities.file_and_folder_operations import save_json

        trainer.initialize()
        os.makedirs(trainer.output_folder, exist_ok=True)
        save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"), sort_keys=False)
        save_json(dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    os.environ["nnUNet_n_proc_DA"] = "1"
    return trainer.output_folder_base


@pytest.fixture(scope="session")
def nnunet_models(tmp_path_factory):
    """Two real nnU-Net folders: 'liver' (6 sequences; background, liver, tumor; trained) and 'brain'
    (4 channels; background, tumor; nnU-Net's initialised network) plus one unseen case each."""
    root = tmp_path_factory.mktemp("nnunet")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(k, str(root / k))
            (root / k).mkdir()
        mp.setenv("nnUNet_n_proc_DA", "1")
        # nnU-Net's pools spawn fresh interpreters (seconds each on 2 cores): threads do the same work here
        mp.setattr(multiprocessing, "get_context",
                   lambda method=None: types.SimpleNamespace(Pool=multiprocessing.pool.ThreadPool))
        threads = torch.get_num_threads()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = {"liver": nnunet_folder(501, LIVER_CHANNELS, ["background", "liver", "tumor"], True),
                      "brain": nnunet_folder(502, BRAIN_CHANNELS, ["background", "tumor"], False, coarse_x=True)}
        torch.set_num_threads(threads)
    rng = np.random.default_rng(7)
    cases = {}
    for key, n_ch, n_lab in (("liver", 6, 3), ("brain", 4, 2)):
        img, _ = synthetic_case(rng, (20, 40, 48), n_ch, n_lab)
        ref = sitk.GetImageFromArray(img[0])
        ref.SetSpacing((0.9, 1.1, 2.5) if key == "liver" else (2.5, 1.1, 0.9))  # not the plans': nnU-Net resamples
        cases[key] = types.SimpleNamespace(raw=img, reference=ref)
    return {"folders": models, "cases": cases, "root": root}


@pytest.fixture(scope="session")
def predictors(nnunet_models):
    """nnU-Net's own predictor on the same folders (no mirroring, CPU): the oracle."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for key, folder in nnunet_models["folders"].items():
            p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), allow_tqdm=False)
            p.initialize_from_trained_model_folder(folder, use_folds=(0,))  # our own test file: trusted
            out[key] = p
    return out


# ---- loading ----------------------------------------------------------------------------------------------------
def test_model_info_from_plans_and_dataset_json(nnunet_models):
    folder = nnunet_models["folders"]["liver"]
    assert is_nnunet_folder(folder) and is_nnunet_folder(os.path.join(folder, "fold_0"))
    assert not is_nnunet_folder(nnunet_models["root"])
    net = load_nnunet(folder)
    info = net.model_info
    plans = json.load(open(os.path.join(folder, "plans.json")))["configurations"]["3d_fullres"]
    assert info.channels == ("T2", "T1_plain", "T1_20s", "T1_60s", "T1_120s", "T1_15min")
    assert info.classes == ("background", "liver", "tumor") and info.lesion == "tumor"
    assert info.strides == tuple(int(np.prod(s)) for s in zip(*plans["architecture"]["arch_kwargs"]["strides"]))
    assert info.patch_size == tuple(plans["patch_size"]) and info.spacing == tuple(plans["spacing"])
    assert (info.padding, info.pad_to_patch, info.tile_step) == ("zero", True, 0.5)
    assert info.normalisation.startswith("ZScoreNormalization")
    assert type(net).__name__ == "PlainConvUNet" and not net.training
    assert not net.decoder.deep_supervision
    # the fold folder loads the same weights
    same = load_nnunet(os.path.join(folder, "fold_0"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))

    brain = load_nnunet(nnunet_models["folders"]["brain"]).model_info
    assert brain.channels == ("FLAIR", "T1", "T1ce", "T2")  # unmapped names kept as given
    assert brain.classes == ("background", "tumor") and brain.n_channels == 4
    assert brain.notes["transpose_forward"] == [2, 0, 1]  # x is the coarsest axis: nnU-Net transposes


def test_load_model_dispatches_to_nnunet(nnunet_models):
    from LiverTumorLRPLib.models import load_model

    net = load_model(nnunet_models["folders"]["liver"])
    assert net.model_info.classes == ("background", "liver", "tumor")


# ---- nnU-Net's geometry and predictions -------------------------------------------------------------------------
def nnunet_logits(predictor, data):
    with contextlib.redirect_stdout(io.StringIO()):
        return predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()


def nnunet_sliding_window_float32(predictor, data):
    """nnU-Net's sliding window (pad_nd_image, compute_steps_for_sliding_window, compute_gaussian) in float32:
    the algorithm of ``predict_sliding_window_return_logits`` without its float16 accumulation."""
    import itertools

    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    patch = tuple(predictor.configuration_manager.patch_size)
    x, revert = pad_nd_image(torch.from_numpy(data), patch, "constant", {"value": 0}, True, None)
    g = compute_gaussian(patch, 1. / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
    out, norm = torch.zeros((predictor.label_manager.num_segmentation_heads,) + x.shape[1:]), torch.zeros(x.shape[1:])
    half = torch.zeros(x.shape[1:], dtype=torch.half)  # nnU-Net's own float16 weight sum
    with torch.no_grad():
        for start in itertools.product(*compute_steps_for_sliding_window(x.shape[1:], patch, 0.5)):
            sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
            out[(slice(None),) + sl] += predictor.network(x[(slice(None),) + sl][None])[0] * g
            norm[sl] += g
            half[sl] += g.half()
    crop = tuple(revert[1:])
    return (out / norm)[(slice(None),) + crop].numpy(), half[crop].float().numpy()


@pytest.mark.parametrize("key", ["liver", "brain"])
def test_matches_nnunet_predictor(nnunet_models, predictors, key):
    """Our preprocessing and sliding window give nnU-Net's logits, and nnU-Net's segmentation on the case grid."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from LiverTumorLRPLib.inference import predict_logits

    case, pred = nnunet_models["cases"][key], predictors[key]
    net = load_nnunet(nnunet_models["folders"][key])
    gm = net.grid_map_for(case)
    image = gm.image_to_network(case.raw)
    with contextlib.redirect_stdout(io.StringIO()):
        data, _, props = pred.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
            case.raw.copy(), None, {"spacing": list(case.reference.GetSpacing()[::-1])}, pred.plans_manager,
            pred.configuration_manager, pred.dataset_json)
    np.testing.assert_array_equal(image, data)  # nnU-Net's own preprocessing
    assert any(n > p for n, p in zip(image.shape[1:], net.model_info.patch_size))  # several windows
    ours = predict_logits(net, image, device="cpu")
    exact, half_norm = nnunet_sliding_window_float32(pred, data)
    scale = np.abs(exact).max()
    assert ours.shape == exact.shape and np.abs(ours - exact).max() <= 1e-5 * scale
    # nnUNetPredictor itself accumulates in float16: within its rounding where its weight sum is a normal
    # float16 number; in the image corners its weights (and so its logits) are subnormal, hence coarse
    ref = nnunet_logits(pred, data)
    normal = half_norm >= 2.0 ** -14
    err = np.abs(ours - ref).max(axis=0) / scale
    assert normal.mean() > 0.5 and err[normal].max() < 3e-3, (err[normal].max(), normal.mean())
    assert np.linalg.norm((ours - ref)[:, normal]) <= 1e-3 * np.linalg.norm(ref[:, normal])
    # segmentation on the case grid: nnU-Net's export of its logits vs our map of ours.  A barely trained
    # model has near-ties that nnUNetPredictor's float16 rounding decides at random: Dice is taken where
    # nnU-Net's own probabilities decide by more than 0.01 (its float16 error is below 0.005 there)
    with contextlib.redirect_stdout(io.StringIO()):
        seg_ref, prob_ref = convert_predicted_logits_to_segmentation_with_correct_shape(
            torch.from_numpy(ref), pred.plans_manager, pred.configuration_manager, pred.label_manager, props, True)
    seg = gm.to_case(ours, "segmentation")
    assert seg.shape == seg_ref.shape == case.raw.shape[1:]
    top2 = np.sort(np.asarray(prob_ref, dtype=np.float64), axis=0)[-2:]
    decided = top2[1] - top2[0] > 0.01
    assert decided.mean() > 0.9
    for label in range(1, len(net.model_info.classes)):
        a, b = (seg == label) & decided, (seg_ref == label) & decided
        if a.any() or b.any():
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99, label
    assert np.mean(seg == seg_ref) >= 0.99


def test_fold_ensemble_and_mirroring_match_nnunet_predictor(nnunet_models, predictors, tmp_path):
    """--folds 0 1 --mirror: nnU-Net's ensemble of folds with test-time mirroring (its default), and its
    explanation conserves (Eq. 2 on the averaged prediction)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from LiverTumorLRPLib.inference import predict_logits
    from LiverTumorLRPLib.models import load_model
    from LiverTumorLRPLib.nnunet import FoldEnsemble, read_checkpoint

    folder = tmp_path / "model"
    shutil.copytree(nnunet_models["folders"]["liver"], folder)
    ckpt = read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")  # a second fold: perturbed weights
    gen = torch.Generator().manual_seed(0)
    ckpt["network_weights"] = {k: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=gen)
                               if v.is_floating_point() and v.numel() > 1 else v
                               for k, v in ckpt["network_weights"].items()}
    (folder / "fold_1").mkdir()
    torch.save(ckpt, folder / "fold_1" / "checkpoint_final.pth")
    net = load_model({"path": str(folder), "folds": [0, 1], "mirror": True})
    assert isinstance(net, FoldEnsemble) and len(net.folds) == 2
    assert net.model_info.mirror_axes == tuple(ckpt["inference_allowed_mirroring_axes"])
    assert len(net.model_info.mirrors) == 2 ** len(net.model_info.mirror_axes) > 1
    case = nnunet_models["cases"]["liver"]
    image = net.grid_map_for(case).image_to_network(case.raw)
    with contextlib.redirect_stdout(io.StringIO()):
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                               device=torch.device("cpu"), allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(folder), use_folds=(0, 1))  # our own test file: trusted
    ref = nnunet_logits(pred, image)
    _, half_norm = nnunet_sliding_window_float32(predictors["liver"], image)
    ours = predict_logits(net, image, device="cpu")
    single = predict_logits(load_nnunet(folder), image, device="cpu")
    normal = half_norm >= 2.0 ** -14
    scale = np.abs(ref).max()
    assert np.linalg.norm((ours - ref)[:, normal]) <= 1e-3 * np.linalg.norm(ref[:, normal])
    assert np.abs(ours - ref).max(axis=0)[normal].max() < 3e-3 * scale
    assert np.abs(single - ref).max() > 10 * np.abs(ours - ref).max(axis=0)[normal].max()  # the options matter
    region = np.zeros(image.shape[1:], bool)
    region[tuple(s // 2 for s in region.shape)] = region[0, 0, -1] = True
    res = explain.region_relevance(net, image.astype(np.float64), region, "tumor", device="cpu")
    assert res.n_excluded == 0 and abs(res.maps.sum() - 2.0) < 1e-6
    with pytest.raises(Exception, match="folds and test-time mirroring are options of nnU-Net"):
        load_model({"path": "bundled", "mirror": True})


def test_grid_map_masks_probabilities_relevance(nnunet_models, predictors):
    case = nnunet_models["cases"]["liver"]
    net = load_nnunet(nnunet_models["folders"]["liver"])
    gm = net.grid_map_for(case)
    assert gm.wants_raw and gm.network_spacing == net.model_info.spacing
    # nnU-Net's export of these logits (resampled, softmax, crop put back, transposed back)
    logits = nnunet_logits(predictors["liver"], gm.image_to_network(case.raw))
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    p = predictors["liver"]
    with contextlib.redirect_stdout(io.StringIO()):
        seg_ref, prob_ref = convert_predicted_logits_to_segmentation_with_correct_shape(
            torch.from_numpy(logits), p.plans_manager, p.configuration_manager, p.label_manager, gm.props, True)
    np.testing.assert_array_equal(gm.to_case(logits, "segmentation"), seg_ref)
    prob = gm.to_case(torch.softmax(torch.from_numpy(logits), 0).numpy(), "probability")
    assert prob.shape == prob_ref.shape
    outside = np.ones(case.raw.shape[1:], bool)
    (lo, hi) = np.array(gm.props["bbox_used_for_cropping"]).T
    outside[tuple(slice(a, b) for a, b in zip(lo, hi))] = False
    assert outside.any() and np.all(prob[0][outside] == 1) and np.all(prob[1:, outside] == 0)
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    # a one-voxel region stays non-empty; a label map maps back nearest-neighbour
    one = np.zeros(case.raw.shape[1:], bool)
    one[12, 20, 30] = True
    m = gm.mask_to_network(one)
    assert m.shape == gm.network_shape and m.sum() >= 1
    back = gm.to_case(m.astype(np.uint8), "segmentation")
    assert back.shape == one.shape and back[one].all()
    # relevance keeps each channel's total, and its positive and negative mass (here: one sign per channel)
    rel = np.random.default_rng(0).normal(size=(6,) + gm.network_shape).astype(np.float32)
    rel[0], rel[1] = np.abs(rel[0]), -np.abs(rel[1])
    up = gm.to_case(rel, "relevance").astype(np.float64)
    assert up.shape == (6,) + case.raw.shape[1:]
    np.testing.assert_allclose(up.reshape(6, -1).sum(1), rel.reshape(6, -1).astype(np.float64).sum(1), rtol=1e-5)
    np.testing.assert_allclose([up[0].sum(), up[1].sum()], [rel[0].astype(np.float64).sum(),
                                                            rel[1].astype(np.float64).sum()], rtol=1e-5)
    assert up[0].min() >= 0 and up[1].max() <= 0 and np.all(up[:, outside] == 0)


# ---- LRP on nnU-Net's networks ------------------------------------------------------------------------------------
def small_net(kind, n_in=2, n_out=3):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    kw = {"n_stages": 3, "features_per_stage": [4, 8, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
          "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
          "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
          "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}}
    kw["n_blocks_per_stage" if kind == "ResidualEncoderUNet" else "n_conv_per_stage"] = [1, 2, 2]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_network_from_plans(f"dynamic_network_architectures.architectures.unet.{kind}", kw,
                                     ["conv_op", "norm_op", "dropout_op", "nonlin"], n_in, n_out,
                                     deep_supervision=False)
    for m in net.modules():  # trained-looking affine InstanceNorm parameters
        if isinstance(m, torch.nn.InstanceNorm3d):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
    net.model_info = ModelInfo(channels=tuple(f"c{i}" for i in range(n_in)),
                               classes=("background", "liver", "tumor")[-n_out:], strides=(2, 4, 4))
    return net.double().eval()


def _not_used_warnings(record):
    return [str(w.message) for w in record if "was not used" in str(w.message)]


@pytest.mark.parametrize("kind", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_eq2_one_pass_equals_loop(kind):
    net = small_net(kind)
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64).numpy()
    region = np.zeros((4, 16, 16), bool)
    region[1:3, 6, 7] = True
    region[2, 9, 4] = True
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fast = explain.region_relevance(net, x, region, cls=1, device="cpu")
        slow = explain.region_relevance_loop(net, x, region, cls=1, device="cpu")
    # aliases (ConvDropoutNormReLU's conv/norm inside all_modules) are replaced, not reported unused; only the
    # deep-supervision heads, which really are not run, are
    assert all("seg_layers" in w for w in _not_used_warnings(record)), _not_used_warnings(record)
    assert fast.n_excluded == slow.n_excluded == 0
    scale = np.abs(slow.maps).max()
    assert scale > 0 and np.abs(fast.maps - slow.maps).max() <= 1e-6 * scale


def _zero_bias(preset):
    def rules(layers):
        out = get_preset(preset)(layers)
        for r in out.values():
            r.zero_bias = True
        return out
    return rules


@pytest.mark.parametrize("kind", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_instance_norm_conservation_is_bounded(kind):
    """InstanceNorm is folded with this input's mean and variance, so its shift acts as a bias.  Measure
    conservation, sum(M) / seeded relevance, with biases kept and zeroed in the rules: finite and of order one
    for the gamma/z^B presets; exact (1) for all-gamma + z^B with zeroed biases.  (LRP-0/epsilon with zeroed
    biases, i.e. the InstanceNorm shift dropped, is the unstable case: not a preset here.)"""
    net = small_net(kind)
    torch.manual_seed(1)
    x = torch.randn(1, 2, 4, 16, 16, dtype=torch.float64)
    ratios = {}
    for name, zero in (("recommended", False), ("recommended", True), ("epsilon-gamma-box", True),
                       ("epsilon", False)):
        lrp = LRP(net, _zero_bias(name) if zero else name)
        y, s = lrp.forward(x)
        seed = torch.zeros_like(y)
        seed[0, 1, 2, 7, 8] = 1.0
        (m,) = torch.autograd.grad(y, s, seed)
        yv = float(y.detach()[0, 1, 2, 7, 8])
        ratios[(name, zero)] = float(m.sum()) / yv
        assert torch.isfinite(m).all()
        assert float(m.abs().max()) < 1e2 * abs(yv), (name, zero)  # no numerical explosion
    print(kind, {f"{k[0]}{' zero-bias' if k[1] else ''}": round(v, 3) for k, v in ratios.items()})
    assert all(0.02 < abs(r) < 50 for r in ratios.values()), ratios
    assert abs(ratios[("epsilon-gamma-box", True)] - 1) < 1e-3


# ---- refusing bad folders -----------------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this would call os.system-like code: write a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_checkpoint_that_runs_code_is_refused(nnunet_models, tmp_path):
    folder = _copy_folder(nnunet_models["folders"]["liver"], tmp_path / "evil")
    marker = tmp_path / "marker.txt"
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    from LiverTumorLRPLib.nnunet import read_checkpoint

    good = read_checkpoint(ckpt)  # safe: weights_only with the numpy allow-list
    torch.save({**good, "logging": _RunsCode(str(marker))}, ckpt)
    with pytest.raises(ValueError) as exc:
        load_nnunet(folder)
    msg = str(exc.value)
    assert "\n" not in msg and str(ckpt) in msg and "refused" in msg
    assert not marker.exists()
    # the payload is real: the checkpoint's pickle names io.open (builtin open), and unpickling the object runs it
    import pickle
    import zipfile

    with zipfile.ZipFile(ckpt) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"io\nopen" in data
    pickle.loads(pickle.dumps(_RunsCode(str(marker))))
    assert marker.exists()


def test_bad_folders_give_one_line_naming_the_file(nnunet_models, tmp_path):
    src = nnunet_models["folders"]["liver"]
    a = _copy_folder(src, tmp_path / "no_plans")
    os.remove(a / "plans.json")
    b = _copy_folder(src, tmp_path / "broken_dataset")
    (b / "dataset.json").write_text('{"channel_names": {"0": "T2"}, "labels": ')
    c = _copy_folder(src, tmp_path / "other_class")
    plans = json.loads((c / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (c / "plans.json").write_text(json.dumps(plans))
    d = _copy_folder(src, tmp_path / "regions")
    dj = json.loads((d / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "liver": [1, 2], "tumor": 2}
    dj["regions_class_order"] = [1, 2]
    (d / "dataset.json").write_text(json.dumps(dj))
    for folder, file, words in ((a, "plans.json", "missing"), (b, "dataset.json", "not valid JSON"),
                                (c, "plans.json", "not supported"), (d, "dataset.json", "region-based")):
        with pytest.raises(ValueError) as exc:
            load_nnunet(folder)
        msg = str(exc.value)
        assert "\n" not in msg and str(folder / file) in msg and words in msg, msg
    with pytest.raises(ValueError, match="fold_3"):
        load_nnunet(src, fold=3)


# ---- the command line ---------------------------------------------------------------------------------------------
def test_cli_analyze_with_an_nnunet_folder(nnunet_models, predictors, tmp_path, capsys):
    """`liver-lrp analyze CASE --model FOLDER`: outputs on the case grid, shares computed on nnU-Net's grid."""
    from LiverTumorLRPLib.cli import main
    from LiverTumorLRPLib.inference import plan_for

    case = nnunet_models["cases"]["liver"]
    folder = tmp_path / "case"
    folder.mkdir()
    for key, vol in zip(load_nnunet(nnunet_models["folders"]["liver"]).model_info.channels, case.raw):
        im = sitk.GetImageFromArray(vol)
        im.CopyInformation(case.reference)
        sitk.WriteImage(im, str(folder / f"{key}.nii.gz"))
    out = tmp_path / "out"
    assert main(["analyze", str(folder), "--model", nnunet_models["folders"]["liver"], "--out", str(out),
                 "--device", "cpu", "--resamples", "0"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["lesion_class"] == "tumor" and result["model_classes"] == ["background", "liver", "tumor"]
    gm = load_nnunet(nnunet_models["folders"]["liver"]).grid_map_for(case)
    assert tuple(result["network_grid"]) == gm.network_shape
    info = load_nnunet(nnunet_models["folders"]["liver"]).model_info
    assert result["window_shape"] == list(info.patch_size)  # nnU-Net: exactly its patch, never grown
    assert result["windows"] == len(plan_for(info, gm.network_shape).windows) > 1
    assert abs(sum(r["relevance"] for r in result["sequences"]) - 1) < 1e-5
    rel = sitk.ReadImage(str(out / "relevance_T1_20s.nii.gz"))
    assert rel.GetSize() == case.reference.GetSize()
    assert np.allclose(rel.GetSpacing(), case.reference.GetSpacing(), rtol=1e-6)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert set(np.unique(labels)) <= {0, 1, 2} and result["tumor_voxels"] == int((labels == 2).sum())
    # --folds / --mirror reach the model: the segmentation is the mirrored prediction's
    from LiverTumorLRPLib import pipeline
    from LiverTumorLRPLib.case_io import read_case
    from LiverTumorLRPLib.models import load_model

    assert main(["segment", str(folder), "--model", nnunet_models["folders"]["liver"], "--folds", "0", "--mirror",
                 "--out", str(tmp_path / "seg"), "--device", "cpu"]) == 0
    net = load_model({"path": nnunet_models["folders"]["liver"], "folds": [0], "mirror": True})
    assert net.model_info.mirror_axes
    case_files = read_case(str(folder), sequences=net.model_info.channels)
    want = pipeline.segment_case(case_files, str(tmp_path / "seg2"), net, "cpu")["probability"]
    plain = pipeline.segment_case(case_files, str(tmp_path / "seg3"), load_model(nnunet_models["folders"]["liver"]),
                                  "cpu")["probability"]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / "tumor_probability.nii.gz")))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-3

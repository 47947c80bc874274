"""``liver-lrp segment | explain | analyze | demo``: one case at a time, with progress bars."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .analysis import DEFAULT_METHOD, DEFAULT_RESAMPLES, METHODS
from .necessity import REFERENCE, REFERENCES
from .lrp.presets import PRESETS


@contextlib.contextmanager
def progress_bar(desc: str):
    """A tqdm bar driven by ``progress(fraction, message)`` callbacks (to stderr)."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def update(fraction, message):
        bar.n = int(round(100 * fraction))
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _common(p: argparse.ArgumentParser, case: bool = True):
    if case:
        p.add_argument("case", help="case folder (files named by sequence key, or case.json), an nnU-Net case "
                                    "(imagesTs/CASE or its first file), a DICOM study folder, or with --pacs the "
                                    "Study Instance UID")
    p.add_argument("--out", required=True, help="output folder")
    add_model_arguments(p)
    p.add_argument("--register", action="store_true", help="register every sequence to T1 15 min first")
    add_labels_argument(p)
    add_dicom_arguments(p)
    p.add_argument("--sequence", action="append", default=[], metavar="KEY=SERIES_UID[:PHASE]",
                   help="DICOM study: take this series (or phase of a multi-phase series) as sequence KEY instead "
                        "of the one its headers suggest (repeatable)")
    p.add_argument("--pacs", default=None, metavar="URL",
                   help="DICOMweb root of a PACS (e.g. http://host:8042/dicom-web): CASE is a Study Instance UID "
                        "read from it, and the DICOM results are stored back (credentials: LIVER_LRP_PACS_USER / "
                        "LIVER_LRP_PACS_PASSWORD or a netrc file, never on the command line)")


def add_dicom_arguments(p: argparse.ArgumentParser):
    p.add_argument("--dicom-out", default=None, metavar="DIR",
                   help="also write the tumor segmentation as DICOM SEG and each sequence's relevance as a DICOM "
                        "Parametric Map into DIR, referencing the source series")


def sequence_overrides(args) -> dict:
    """``--sequence KEY=UID[:PHASE]`` as a dict; ValueError for a malformed one."""
    out = {}
    for item in args.sequence or ():
        key, sep, uid = item.partition("=")
        if not sep or not key or not uid:
            raise ValueError(f"--sequence {item}: expected KEY=SERIES_UID (e.g. T1_20s=1.2.840...)")
        out[key.strip()] = uid.strip()
    return out


def add_labels_argument(p: argparse.ArgumentParser):
    p.add_argument("--labels", default=None, metavar="DIR",
                   help="nnU-Net datasets: the folder of label files (CASE.nii.gz; default: the labelsTs/labelsTr "
                        "folder beside the images)")


def add_model_arguments(p: argparse.ArgumentParser):
    """The model and how it runs, for every case command and cohorts: --model, --folds, --mirror, --device,
    --patch."""
    p.add_argument("--model", default="bundled",
                   help="'bundled', a .safetensors file with its .json config, or an nnU-Net v2 trained-model folder")
    add_model_options(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="sliding-window patch size on the network grid (default: the model's patch; "
                        "0 0 0: the whole volume in one window)")


def add_sequence_relevance_arguments(p: argparse.ArgumentParser):
    """Sequence relevance options, for ``analyze`` and cohorts: --method; Sec. 2.3's --preset, --seed, --background,
    --max-voxels, --resamples (method paper); --necessity."""
    _method(p)
    _preset(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the background region's random choice")
    p.add_argument("--background", default="random", choices=["random", "shell"],
                   help="how the predicted-background region B is chosen")
    p.add_argument("--max-voxels", type=int, default=None, help="use at most this many voxels in T and in B")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help="draws of the random region B for the shares' spread and exact expectation (0: one)")
    p.add_argument("--necessity", default=REFERENCE, choices=[*REFERENCES, "none"], dest="necessity_reference",
                   help="what replaces a sequence for the Dice without it and the Shapley values of Dice "
                        f"(2^C forward passes; default {REFERENCE}: a blurred copy of it; none: skip)")


def add_model_options(p: argparse.ArgumentParser):
    """``--folds`` and ``--mirror``: how an nnU-Net model folder predicts (as nnUNetv2_predict's -f and TTA)."""
    p.add_argument("--folds", nargs="+", default=None, metavar="FOLD",
                   help="nnU-Net folder: the folds to ensemble (e.g. 0 1 2 3 4, or all; default: fold_0)")
    p.add_argument("--mirror", action="store_true",
                   help="nnU-Net folder: test-time mirroring over the checkpoint's axes (explained as averaged)")


def model_spec(args):
    """The ``--model`` argument with ``--folds``/``--mirror`` as :func:`.models.load_model` takes it."""
    if args.folds is None and not args.mirror:
        return args.model
    folds = None if args.folds is None else [int(f) if f.isdigit() else f for f in args.folds]
    return {"path": args.model, "folds": folds, "mirror": bool(args.mirror)}


def _preset(p):
    p.add_argument("--preset", default="recommended", choices=list(PRESETS),
                   help="LRP preset (explain, and sequence relevance with --method paper)")


def _method(p):
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                   help="sequence relevance: contribution (default; exact Shapley values of Sec. 2.3's output over "
                        "the sequences, with reference-based LRP maps that add up to them) or paper (Sec. 2.3 "
                        "exactly: Eq. 2 maps with --preset over --resamples draws of B)")


def add_arguments(p: argparse.ArgumentParser, name: str):
    if name == "demo":
        _common(p, case=False)
        p.add_argument("--seed", type=int, default=0, help="phantom seed")
        _method(p)
        _preset(p)
        return
    _common(p)
    if name == "explain":
        _preset(p)
        p.add_argument("--region", default="tumor",
                       help="tumor | background (predicted), or a mask file on the case's grid")
        p.add_argument("--class", dest="cls", default="tumor",
                       help="the class to explain, by name or index (default tumor)")
    if name == "analyze":
        add_sequence_relevance_arguments(p)


def _read(args, net):
    from .case_io import read_case
    from .model_info import model_info

    info = model_info(net)
    return read_case(args.case, register=args.register, sequences=info.channels, labels=args.labels,
                     lesion=info.lesion, model_classes=info.classes, dicom_overrides=sequence_overrides(args) or None)


def necessity_reference(args):
    """``--necessity``: the reference that replaces an absent sequence, or None (``none``: not computed)."""
    return None if args.necessity_reference == "none" else args.necessity_reference


def patch_from_args(args):
    """``--patch``: None (the model's), ``"whole"`` for 0 0 0, else (z, y, x)."""
    if not args.patch:
        return None
    return "whole" if tuple(args.patch) == (0, 0, 0) else tuple(args.patch)


def _how(args) -> str:
    """How the sequence relevance was computed, for the one-line result."""
    method = getattr(args, "method", DEFAULT_METHOD)
    if args.command == "explain" or method == "paper":
        return f"{'Sec. 2.3, ' if args.command != 'explain' else ''}preset {args.preset}"
    return "Shapley values of Sec. 2.3's output, reference-based LRP maps"


def _print_shares(summary: dict):
    need = summary.get("necessity")
    if need:
        print(f"  {'':10s} {'share':>6s}   Dice without it (all: {need['dice_full']:.3f})   Shapley value of Dice")
    for row in summary["sequences"]:
        spread = (f"  (95 % of resampled B: {row['relevance_p2.5']:+.3f} to {row['relevance_p97.5']:+.3f}; "
                  f"expected {row['relevance_expected']:+.3f})") if "relevance_expected" in row else ""
        needed = f"   {row['dice_without']:.3f}{'':24s}{row['shapley_dice']:+.3f}" if "shapley_dice" in row else ""
        print(f"  {row['display_name']:10s} {row['relevance']:+.3f}{needed}{spread}")
    warning = (summary.get("agreement") or {}).get("warning")
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)


def run(args) -> int:
    if args.command == "demo":
        return run_demo(args)
    if args.pacs:
        return _run_with_pacs(args)
    summary = _run_case(args)
    if args.command != "segment":
        _print_shares(summary)
    return 0


def _run_case(args) -> dict:
    """Read the case, run the command's pipeline job, print its one-line result; the summary."""
    from . import pipeline
    from .models import load_model

    patch = patch_from_args(args)
    with progress_bar(args.command) as bar:
        net = load_model(model_spec(args))
        case = _read(args, net)
        if args.command == "segment":
            info = pipeline.segment_case(case, args.out, net, args.device, bar, patch_size=patch,
                                         dicom_out=args.dicom_out)
            print(f"{case.name}: {info['tumor_voxels']} tumor voxels ({info['tumor_volume_ml']:.1f} ml)"
                  + (f", Dice {info['dice']:.3f}" if "dice" in info else "") + f" -> {args.out}")
            return info
        if args.command == "explain":
            summary = pipeline.explain_case(case, args.out, net, args.region, args.cls, args.preset,
                                            args.device, patch, bar, dicom_out=args.dicom_out)
        else:
            summary = pipeline.analyze_case(case, args.out, net, args.preset, args.device, args.seed,
                                            args.background, args.max_voxels, patch, bar,
                                            resamples=args.resamples,
                                            necessity_reference=necessity_reference(args), dicom_out=args.dicom_out,
                                            method=args.method)
    print(f"{case.name}: {summary['title']} ({_how(args)}) -> {args.out}")
    return summary


def _run_with_pacs(args) -> int:
    """``--pacs URL``: the study ``args.case`` (a Study Instance UID) read from the PACS into a temporary folder,
    analysed, and its DICOM results stored back in one STOW-RS request once every file is written (a case that
    fails stores nothing)."""
    import tempfile

    from .dicom.pacs import retrieve_study, store

    uid = args.case
    with tempfile.TemporaryDirectory(prefix="liver-lrp-pacs-") as tmp:
        args.case = os.path.join(tmp, "study")
        retrieve_study(args.pacs, uid, args.case)
        args.dicom_out = args.dicom_out or os.path.join(tmp, "dicom_out")
        summary = _run_case(args)
        if args.command != "segment":
            _print_shares(summary)
        stored = store(summary["dicom_files"], args.pacs)
    print(f"stored {len(stored)} DICOM object(s) in {args.pacs} (study {uid})")
    return 0


def run_demo(args) -> int:
    """The README's main job: a phantom case, segmented by the bundled model, analysed, with pictures."""
    from . import pipeline
    from .phantom import generate_case, write_case

    case_dir = os.path.join(args.out, "case")
    with progress_bar("demo") as bar:
        bar(0.0, "generating phantom case")
        write_case(generate_case(args.seed), case_dir)
        from .case_io import read_case

        case = read_case(case_dir)
        summary = pipeline.analyze_case(case, os.path.join(args.out, "analysis"), args.model, args.preset,
                                        args.device, progress=bar, method=args.method)
    print(f"phantom case (seed {args.seed}) -> {case_dir}")
    print(f"segmentation Dice vs ground truth: {summary.get('dice', float('nan')):.3f}")
    print(f"sequence relevance ({_how(args)}):")
    _print_shares(summary)
    print(f"outputs: {os.path.join(args.out, 'analysis')} (relevance_*.nii.gz, sequence_relevance.png, "
          f"overlay_slice*.png, sequence_relevance.json/.csv)")
    return 0


__all__ = ["add_arguments", "add_dicom_arguments", "add_labels_argument", "add_model_arguments",
           "add_sequence_relevance_arguments", "model_spec", "necessity_reference", "patch_from_args",
           "sequence_overrides", "run", "run_demo"]

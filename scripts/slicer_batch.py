"""Headless batch run through the Slicer module's worker jobs: segment + sequence relevance of one case.

In Slicer:   Slicer --no-splash --no-main-window --python-script scripts/slicer_batch.py -- CASE_DIR OUT_DIR
Headless:    .venv/bin/python scripts/slicer_batch.py CASE_DIR OUT_DIR        (slicer-core from PyPI)

In Slicer the extension's module has put its bundled LiverTumorLRPLib on the path (from a source checkout:
add ``--additional-module-paths LiverTumorLRP``); headless, the library is the installed (editable) package.

CASE_DIR holds the six sequences (see LiverTumorLRPLib.case_io).  OUT_DIR receives
``tumor_probability.nii.gz``, ``tumor_label.nii.gz``, ``relevance_<KEY>.nii.gz`` for each sequence
and ``sequence_relevance.csv``.  The computation runs in the module's worker process (PythonSlicer inside
Slicer, this Python headless), the scene I/O here.  Exit code 0 on success, 1 on an error, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", help="case folder or case.json")
    p.add_argument("out", help="output folder")
    p.add_argument("--model", default="bundled", help="bundled (default) or a .safetensors file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--preset", default="recommended")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args([a for a in argv if a != "--"] if argv and argv[0] == "--" else argv)


def load_case(case_path, scene):
    """Load the six sequences as scalar volume nodes (named by key); key -> node."""
    import slicer

    from LiverTumorLRPLib.case_io import case_files

    from LiverTumorLRPLib.sequences import SEQUENCE_KEYS

    _, files = case_files(case_path)
    nodes = {}
    for key in SEQUENCE_KEYS:
        path = files[key]
        if getattr(slicer, "app", None) is not None:
            node = slicer.util.loadVolume(path, {"name": key, "show": False})
        else:
            logic = slicer.modules.volumes.logic()
            node = logic.AddArchetypeVolume(path, key)
        if node is None:
            raise RuntimeError(f"could not load {path}")
        nodes[key] = node
    return nodes


def save_volume(node, path):
    """Write a volume node with a storage node (works with and without slicer.app)."""
    storage = node.GetScene().AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(path)
        storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write {path}")
    finally:
        node.GetScene().RemoveNode(storage)
    return path


def label_volume(segmentation_node, reference):
    """The Tumor segment as a labelmap volume node on the reference grid."""
    import slicer
    import vtk

    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tumor label")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentation_node.GetSegmentation().GetSegmentIdBySegmentName("Tumor"))
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap,
                                                                          reference)
    return labelmap


def write_table(result, path):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence", "display_name", "relevance", "positive", "negative"])
        for i, key in enumerate(result.volumes):
            w.writerow([key, result.table.GetTable().GetValue(i, 0).ToString(), f"{result.shares[i]:.6f}",
                        f"{result.positive[i]:.6f}", f"{result.negative[i]:.6f}"])
    return path


def worker_python() -> str:
    """The interpreter of the worker process: PythonSlicer inside Slicer, this Python headless."""
    import shutil

    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    return shutil.which("PythonSlicer") or os.path.join(app.slicerHome, "bin", name)


def run(args) -> int:
    from LiverTumorLRPLib import slicer_logic as sl

    python = worker_python()

    def report(fraction, message):
        print(f"  {100 * fraction:5.1f} %  {message}", flush=True)

    def run_job(job):
        try:
            return job.run(progress=report)
        finally:
            for m in job.take_messages():
                print(m)

    with sl.headless_scene() as hs:
        nodes = load_case(args.case, hs.scene)
        seg = run_job(sl.segment_job(nodes, args.model, args.device, python=python))
        print(f"tumor: {seg.n_tumor} voxels, {seg.tumor_ml:.1f} ml")
        os.makedirs(args.out, exist_ok=True)
        save_volume(seg.probability, os.path.join(args.out, "tumor_probability.nii.gz"))
        label = label_volume(seg.segmentation, nodes["T1_15min"])
        save_volume(label, os.path.join(args.out, "tumor_label.nii.gz"))
        hs.scene.RemoveNode(label)
        if seg.n_tumor == 0:
            print("no tumor predicted: sequence relevance needs a predicted tumor", file=sys.stderr)
            return 1
        result = run_job(sl.analyze_sequences_job(nodes, args.model, args.preset, args.device, args.seed,
                                                  python=python))
        for key, node in result.volumes.items():
            save_volume(node, os.path.join(args.out, f"relevance_{key}.nii.gz"))
        write_table(result, os.path.join(args.out, "sequence_relevance.csv"))
        print(sl.summary(result))
    return 0


def main(argv=None) -> int:
    """Run the batch; returns the exit code (0 ok, 1 error, 2 bad arguments)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    try:
        return run(args)
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())

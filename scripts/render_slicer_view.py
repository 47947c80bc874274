"""Regenerate the README picture: a Slicer slice view of a phantom case explained by the bundled model.

    .venv/bin/python scripts/render_slicer_view.py                    # writes docs/slicer_view.png

Headless with the real Slicer core (slicer-core from PyPI): phantom case -> segment -> sequence relevance ->
:func:`render_slice_view` (Slicer's slice pipeline: the sequence as background, its relevance as foreground,
the predicted tumor's outline, a colour legend).  ``--sequence`` picks the sequence shown (default: the most
relevant one); the colour window is +-the 99.5th percentile of |relevance| (``--percentile``), as the maximum
alone would leave all but a few voxels in the transparent band.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # for the default --out only


def main(argv=None) -> int:
    import numpy as np
    import slicer

    from LiverTumorLRPLib import slicer_logic as sl
    from LiverTumorLRPLib.sequences import DISPLAY_NAMES, SEQUENCE_KEYS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "slicer_view.png"))
    p.add_argument("--model", default="bundled", help="bundled (default) or a .safetensors file")
    p.add_argument("--seed", type=int, default=0, help="phantom case seed")
    p.add_argument("--sequence", choices=SEQUENCE_KEYS, help="sequence to show (default: the most relevant)")
    p.add_argument("--orientation", default="Axial", choices=("Axial", "Sagittal", "Coronal"))
    p.add_argument("--size", type=int, nargs=2, default=(560, 480), metavar=("WIDTH", "HEIGHT"))
    p.add_argument("--percentile", type=float, default=99.5,
                   help="colour window +-this percentile of |relevance| of the shown map (100: the maximum)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    with sl.headless_scene():
        nodes = sl.add_phantom_case(args.seed)
        seg = sl.segment(model=args.model, device=args.device).segmentation
        result = sl.analyze_sequences(model=args.model, device=args.device)
        key = args.sequence or result.most_relevant
        relevance = result.volumes[key]
        limit = float(np.percentile(np.abs(slicer.util.arrayFromVolume(relevance)), args.percentile))
        view = sl.render_slice_view(nodes[key], relevance, args.out, seg, orientation=args.orientation,
                                    size=tuple(args.size), value_range=(-limit, limit))
    print(sl.summary(result))
    print(f"{view.path}: {DISPLAY_NAMES[SEQUENCE_KEYS.index(key)]}, {args.orientation} offset {view.offset:.1f} mm, "
          f"{os.path.getsize(view.path) / 1024:.0f} KB, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
